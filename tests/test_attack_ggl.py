"""GGL: CMA-ES over the face DCGAN's latent against a LeNet victim (tiny budgets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from gifd.attacks import Target
from gifd.attacks.base import ATTACKS, GradientMatcher, to_victim_images
from gifd.attacks.ggl import GGL, LatentSpace
from gifd.client import compute_update
from gifd.errors import GifdError
from gifd.metrics import psnr
from gifd.priors import create_prior
from gifd.priors.base import Context, StagedGenerator, Variables
from gifd.victims import Victim, create_victim

TINY = {"steps": 20, "population": 10, "restarts": 1, "log_every": 5}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on this shared 2-core machine two threads made these many tiny batch-1
    ops 5-10x slower (thread contention); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prior() -> StagedGenerator:
    return create_prior("digiface-dcgan64")


@pytest.fixture(scope="module")
def victim() -> Victim:
    return create_victim("lenet", resolution=32, num_classes=10, seed=0)


def prior_images(prior: StagedGenerator, n: int, seed: int) -> Tensor:
    """`n` samples of the prior at the victim's resolution, in [0, 1]."""
    with torch.no_grad():
        z = prior.init_latent(n, None, torch.Generator().manual_seed(seed))
        return to_victim_images(prior(0, z, {}), 32)


def make_target(victim: Victim, image: Tensor, label: int) -> Target:
    labels = torch.tensor([label])
    return Target(victim, compute_update(victim, image, labels), labels)


def test_ggl_is_registered_and_needs_a_prior() -> None:
    assert ATTACKS.get("ggl") is GGL
    with pytest.raises(GifdError, match="ggl needs a generative prior: pass --prior"):
        GGL(TINY, progress=False)


def test_ggl_fits_a_prior_sample_better_than_chance(prior, victim) -> None:
    # The target is a sample of the prior itself, so the optimum is reachable. Over three targets
    # the reconstruction must beat random prior samples by PSNR and the loss must fall.
    found, chance = [], []
    for seed in range(3):
        images = prior_images(prior, 17, 100 + seed)
        truth, others = images[:1], images[1:]
        target = make_target(victim, truth, seed)
        result = GGL(TINY, progress=False, prior=prior).run(target, torch.Generator().manual_seed(seed))
        assert result.images.shape == (1, 3, 32, 32)
        assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1
        history = result.loss_history[0]
        assert result.log_steps == [5, 10, 15, 20] and len(history) == 4 and result.steps == 20
        # The answer is at least as good as the first generation's best candidate (best-ever).
        assert result.loss < history[0]
        found.append(float(psnr(result.images, truth).mean()))
        chance.append(float(psnr(others, truth.expand_as(others)).mean()))
    assert np.mean(found) > np.mean(chance) + 1.5, (found, chance)


def test_batch_of_two_is_refused(prior, victim) -> None:
    images = prior_images(prior, 2, 0)
    labels = torch.tensor([1, 2])
    target = Target(victim, compute_update(victim, images, labels), labels)
    with pytest.raises(GifdError, match="ggl supports batch size 1 .*got a batch of 2: use --batch-size 1"):
        GGL(TINY, progress=False, prior=prior).run(target, torch.Generator().manual_seed(0))


def test_same_seed_same_result_and_global_numpy_rng_untouched(prior, victim, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # cma must not write its log files anywhere
    target = make_target(victim, prior_images(prior, 1, 7), 4)
    config = {**TINY, "steps": 6, "population": 6, "restarts": 2}
    np.random.seed(123)
    numpy_state = np.random.get_state()[1].copy()
    runs = [
        GGL(config, progress=False, prior=prior).run(target, torch.Generator().manual_seed(s))
        for s in (5, 5, 6)
    ]
    assert torch.equal(runs[0].images, runs[1].images)
    assert runs[0].restart_losses == runs[1].restart_losses
    assert runs[0].loss_history == runs[1].loss_history
    assert runs[0].restart_losses != runs[2].restart_losses
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert list(tmp_path.iterdir()) == []


def test_best_restart_is_the_one_with_lowest_gradient_loss(prior, victim) -> None:
    target = make_target(victim, prior_images(prior, 1, 11), 2)
    result = GGL({**TINY, "steps": 5, "population": 6, "restarts": 3}, progress=False, prior=prior).run(
        target, torch.Generator().manual_seed(3)
    )
    assert len(result.restart_losses) == 3 and len(result.loss_history) == 3
    assert result.best_restart == int(np.argmin(result.restart_losses))
    assert len(set(result.restart_losses)) == 3  # independent restarts
    # The returned image is the best restart's: its L2 gradient loss is the recorded minimum.
    matcher = GradientMatcher(target, "l2")
    value = float(matcher(victim.normalize(result.images)).detach())
    assert value == pytest.approx(min(result.restart_losses), rel=1e-4)


def test_latent_space_bound_standardisation_and_kl(prior) -> None:
    space = LatentSpace.of(prior, torch.tensor([0]), None, 3.0)
    assert space.names == ["z"] and space.dim == 100
    # The DCGAN's z is N(0, I): the measured standardisation is close to the identity.
    assert float(space.mean.abs().max()) < 0.15 and float((space.std - 1).abs().max()) < 0.1
    x = torch.tensor([[-50.0, -1.0, 0.0, 1.0, 50.0] * 20], dtype=torch.float64)
    u = space.bounded(x)
    assert float(u.abs().max()) <= 3.0 and float(u[0, 4]) > 2.99 and float(u[0, 2]) == 0.0
    # KL of the entries' fitted Gaussian to N(0, 1), against torch.distributions.
    rows = torch.randn(4, 100, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.7 + 0.3
    unbounded = LatentSpace.of(prior, torch.tensor([0]), None, None)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(rows.mean(1), rows.std(1, unbiased=False)),
        torch.distributions.Normal(0.0, 1.0),
    )
    assert torch.allclose(unbounded.kl(rows), reference, atol=1e-8)


class TinyConditionalPrior(StagedGenerator):
    """A linear conditional 'generator' with a latent z and a noise map (records its labels)."""

    resolution, latent_dim, num_classes = 8, 6, 10

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(6, 3 * 8 * 8)
        self.seen_labels: list[list[int]] = []

    @property
    def num_stages(self) -> int:
        return 1

    def init_latent(self, n: int, labels=None, generator=None) -> Variables:
        return {
            "z": torch.randn(n, 6, generator=generator),
            "noise_0": torch.randn(n, 1, 8, 8, generator=generator),
        }

    def context(self, labels, n: int) -> Context:
        super().context(labels, n)
        self.seen_labels.append(labels.tolist())
        return {"class": torch.nn.functional.one_hot(labels, 10).float()}

    def forward(self, stage: int, variables: Variables, context: Context) -> Tensor:  # type: ignore[override]
        image = self.linear(variables["z"]).view(-1, 3, 8, 8) + 0.1 * variables["noise_0"]
        return torch.tanh(image + context["class"][:, :1, None, None])

    def advance(self, stage, variables, context) -> Variables:
        raise NotImplementedError

    def default_radii(self) -> list[float]:
        return [1.0]


def test_conditional_prior_gets_the_labels_and_noise_stays_fixed(victim) -> None:
    tiny = TinyConditionalPrior().requires_grad_(False)
    target = make_target(victim, torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), 6)
    result = GGL({**TINY, "steps": 3, "population": 4}, progress=False, prior=tiny).run(
        target, torch.Generator().manual_seed(0)
    )
    assert result.images.shape == (1, 3, 32, 32)
    assert tiny.seen_labels and all(set(labels) == {6} for labels in tiny.seen_labels)
    assert LatentSpace.of(tiny, torch.tensor([6]), None, 3.0).names == ["z"]
    with pytest.raises(
        GifdError, match=r"ggl variables \['w'\] are not stage-0 variables .*use some of z, noise_0"
    ):
        GGL({**TINY, "variables": ["w"]}, progress=False, prior=tiny).run(
            target, torch.Generator().manual_seed(0)
        )


def test_config_is_checked() -> None:
    with pytest.raises(GifdError, match="ggl settings: unknown key 'populaton': did you mean 'population'"):
        GGL({"populaton": 3}, prior=TinyConditionalPrior())
    with pytest.raises(GifdError, match="population = 1 is invalid"):
        GGL({"population": 1}, prior=TinyConditionalPrior())
