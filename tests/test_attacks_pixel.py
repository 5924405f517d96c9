import math

import pytest
import torch

from gifd.attacks import ATTACKS, Target
from gifd.attacks.base import GradientMatcher
from gifd.attacks.pixel import group_consistency, initial_inputs
from gifd.client import compute_update
from gifd.errors import GifdError
from gifd.metrics import psnr
from gifd.victims import create_victim


@pytest.fixture
def lenet_target(lenet32, cifar32) -> Target:
    labels = torch.tensor([3])
    return Target(lenet32, compute_update(lenet32, cifar32[:1], labels), labels)


def test_ig_recovers_a_cifar_image_from_lenet(lenet_target, cifar32) -> None:
    # DLG-style sanity setting, short schedule: random init is about 6 dB; the full 15k-step
    # schedule passes 25 dB on the mean of images 0-2 (bench/sanity.py; per image 39.6, 21.7, 17.5 dB).
    result = ATTACKS.get("ig")({"steps": 1500, "restarts": 1}, progress=False).run(
        lenet_target, torch.Generator().manual_seed(0)
    )
    assert result.images.shape == (1, 3, 32, 32)
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert float(psnr(result.images, cifar32[:1])) > 16
    history = result.loss_history[0]
    assert history[-1] < 0.05 * history[0]


def test_best_restart_has_the_lowest_final_gradient_loss(lenet_target) -> None:
    result = ATTACKS.get("ig")({"steps": 20, "restarts": 3, "log_every": 5}, progress=False).run(
        lenet_target, torch.Generator().manual_seed(1)
    )
    assert len(result.restart_losses) == 3 and result.best_restart == min(
        range(3), key=result.restart_losses.__getitem__
    )
    # The returned image is the best restart's: its gradient loss equals the recorded minimum.
    matcher = GradientMatcher(lenet_target)
    inputs = lenet_target.victim.normalize(result.images)
    assert float(matcher(inputs).detach()) == pytest.approx(min(result.restart_losses), rel=1e-3, abs=1e-6)
    assert result.log_steps == [5, 10, 15, 20]


def test_gi_runs_with_group_consistency(lenet_target) -> None:
    config = {"steps": 12, "restarts": 2, "group_start": 4, "group_every": 4, "log_every": 4}
    result = ATTACKS.get("gi")(config, progress=False).run(lenet_target, torch.Generator().manual_seed(0))
    assert (
        result.steps == 12 and len(result.loss_history) == 2 and all(len(h) == 3 for h in result.loss_history)
    )


def test_group_consistency_is_gi_l2_distance_to_the_group_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(3, 2, 3, 8, 8, generator=gen, dtype=torch.float64)
    mean = inputs.mean(0)
    # Independent reference: sqrt of the summed squares of each restart's difference, in Python floats.
    reference = sum(
        math.sqrt(sum(float(v) ** 2 for v in (inputs[r] - mean).flatten())) for r in range(3)
    )
    assert float(group_consistency(inputs, mean)) == pytest.approx(reference, rel=1e-12)
    # A scaled difference scales the term linearly (a distance, not a squared distance).
    assert float(group_consistency(mean + 2 * (inputs - mean), mean)) == pytest.approx(2 * reference, rel=1e-12)


def test_seed_makes_attacks_reproducible(lenet_target) -> None:
    runs = [
        ATTACKS.get("ig")({"steps": 10, "restarts": 2}, progress=False).run(
            lenet_target, torch.Generator().manual_seed(5)
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0].images, runs[1].images)


def test_unknown_config_key_is_an_error() -> None:
    with pytest.raises(GifdError, match="ig settings: unknown key 'stepz': did you mean 'steps'"):
        ATTACKS.get("ig")({"stepz": 3})


def test_target_refuses_a_label_count_that_does_not_fit(lenet32, cifar32) -> None:
    update = compute_update(lenet32, cifar32[:2], torch.tensor([1, 2]))
    with pytest.raises(GifdError, match="1 labels given for a batch of 2"):
        Target(lenet32, update, torch.tensor([1]))
    with pytest.raises(GifdError, match="does not fit victim"):
        Target(create_victim("convnet"), update, torch.tensor([1, 2]))


def test_uniform_init_starts_from_valid_images_and_randn_from_igs_draw(lenet_target) -> None:
    shape = (4, 1, 3, 32, 32)
    uniform = initial_inputs("uniform", shape, lenet_target, torch.Generator().manual_seed(0))
    images = lenet_target.victim.denormalize(uniform.flatten(0, 1))
    assert uniform.shape == shape and images.min() >= 0 and images.max() <= 1
    # U(0, 1) pixels: mean 1/2 and variance 1/12 in image space (12288 draws: 5-sigma bounds).
    assert abs(float(images.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / images.numel())
    assert float(images.var()) == pytest.approx(1 / 12, rel=0.05)
    randn = initial_inputs("randn", shape, lenet_target, torch.Generator().manual_seed(0))
    assert torch.equal(randn, torch.randn(shape, generator=torch.Generator().manual_seed(0)))


def test_ig_runs_from_the_uniform_start(lenet_target) -> None:
    config = {"steps": 3, "restarts": 2, "init": "uniform", "log_every": 1}
    result = ATTACKS.get("ig")(config, progress=False).run(lenet_target, torch.Generator().manual_seed(0))
    assert result.images.shape == (1, 3, 32, 32) and len(result.loss_history[0]) == 3
    with pytest.raises(GifdError, match="init"):
        ATTACKS.get("ig")({"init": "zeros"}, progress=False)
