"""Batched restarts (one vmapped computation) against the sequential loop, and successive halving."""

import math

import pytest
import torch
from torch import nn

from gifd.attacks import ATTACKS, GradientMatcher, Target
from gifd.attacks.base import AffineBatchNorm, affine_batch_norm_copy
from gifd.attacks.gifd import GIFDConfig, halving_survivors, preset_settings, select_restarts
from gifd.attacks.objectives import image_norm, restart_image_norm, restart_total_variation, total_variation
from gifd.client import compute_update
from gifd.errors import GifdError
from gifd.priors import create_prior
from gifd.priors.dcgan import radii_from_feature_norms
from gifd.victims import Victim, create_victim

RESTARTS, BATCH = 3, 2


def make_target(victim: Victim, images: torch.Tensor, labels: torch.Tensor) -> Target:
    return Target(victim, compute_update(victim, images, labels), labels)


def losses_and_input_gradients(matcher: GradientMatcher, inputs: torch.Tensor, batched: bool):
    inputs = inputs.clone().requires_grad_(True)
    compute = matcher.restart_losses if batched else matcher.sequential_losses
    losses = compute(inputs, RESTARTS)
    # Weight the restarts differently, so a mix-up of restarts shows in the gradient.
    weights = torch.arange(1, RESTARTS + 1, dtype=losses.dtype)
    (grad,) = torch.autograd.grad((losses * weights).sum(), [inputs])
    return losses.detach(), grad


@pytest.mark.parametrize(
    ("name", "side", "distance"),
    [
        ("lenet", 16, "cosine"),
        ("lenet", 16, "l2"),
        ("lenet", 16, "cosine-layer"),
        ("convnet", 16, "cosine"),
        ("resnet18", 8, "cosine"),
    ],
)
def test_batched_losses_and_input_gradients_equal_the_sequential_loop(name, side, distance) -> None:
    # float64 so that "equal" can mean 1e-9: only the summation order differs between the two.
    victim = create_victim(name, resolution=side, num_classes=5, seed=1)
    victim.model.double()
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([1, 4])
    target = make_target(victim, torch.rand(BATCH, 3, side, side, generator=gen, dtype=torch.float64), labels)
    n_tensors = len(victim.named_parameters())
    weights = [1.0 + i / n_tensors for i in range(n_tensors)] if distance == "cosine-layer" else None
    matcher = GradientMatcher(target, distance, weights)
    inputs = torch.randn(RESTARTS * BATCH, 3, side, side, generator=gen, dtype=torch.float64)
    batched, batched_grad = losses_and_input_gradients(matcher, inputs, batched=True)
    sequential, sequential_grad = losses_and_input_gradients(matcher, inputs, batched=False)
    assert matcher.batched_failure is None
    assert batched.shape == (RESTARTS,)
    # The losses differ between restarts (otherwise equality would prove little).
    assert float(batched.max() - batched.min()) > 1e-3 * float(batched.abs().max())
    torch.testing.assert_close(batched, sequential, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        batched_grad, sequential_grad, rtol=1e-7, atol=1e-12 * sequential_grad.abs().max()
    )
    # Each restart's loss equals the plain matcher on that restart's rows alone.
    for r in range(RESTARTS):
        alone = matcher(inputs[r * BATCH : (r + 1) * BATCH])
        assert float(alone.detach()) == pytest.approx(float(batched[r]), rel=1e-9)


def test_batched_losses_in_float32_and_without_grad(cifar32) -> None:
    victim = create_victim("convnet", resolution=32, num_classes=10, seed=0)
    labels = torch.tensor([3, 8])
    target = make_target(victim, cifar32[:2], labels)
    matcher = GradientMatcher(target)
    inputs = victim.normalize(cifar32[2 : 2 + RESTARTS * BATCH])
    batched, batched_grad = losses_and_input_gradients(matcher, inputs, batched=True)
    sequential, sequential_grad = losses_and_input_gradients(matcher, inputs, batched=False)
    torch.testing.assert_close(batched, sequential, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        batched_grad, sequential_grad, rtol=1e-3, atol=1e-4 * sequential_grad.abs().max()
    )
    with torch.no_grad():
        scored = matcher.restart_losses(inputs, RESTARTS)
        scored_sequential = matcher.sequential_losses(inputs, RESTARTS)
    assert not scored.requires_grad and not scored_sequential.requires_grad
    torch.testing.assert_close(scored, sequential, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scored_sequential, sequential, rtol=1e-6, atol=1e-8)


def test_wrongly_stacked_inputs_are_refused(lenet32) -> None:
    labels = torch.tensor([1, 2])
    target = make_target(lenet32, torch.rand(2, 3, 32, 32), labels)
    with pytest.raises(GifdError, match="5 stacked inputs do not hold 2 restarts of the batch of 2"):
        GradientMatcher(target).restart_losses(torch.randn(5, 3, 32, 32), 2)


class DataDependentNet(nn.Module):
    """A victim vmap cannot batch: its forward branches on a tensor's value."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.sum() > 0:  # data-dependent control flow
            x = x * 2
        return self.fc(x)


def test_batched_falls_back_to_the_loop_with_a_warning_when_vmap_fails() -> None:
    torch.manual_seed(0)
    victim = Victim("branchy", DataDependentNet().eval(), 8, 4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    labels = torch.tensor([0, 3])
    target = make_target(victim, torch.rand(2, 3, 8, 8), labels)
    matcher = GradientMatcher(target)
    inputs = torch.randn(RESTARTS * BATCH, 3, 8, 8)
    with pytest.warns(
        RuntimeWarning, match="batched restarts do not work for victim 'branchy'.*set batched: false"
    ):
        losses = matcher.restart_losses(inputs, RESTARTS)
    assert matcher.batched_failure is not None
    torch.testing.assert_close(losses, matcher.sequential_losses(inputs, RESTARTS))


def test_affine_batch_norm_copy_is_the_same_function_on_the_same_tensors() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4, affine=False), nn.Flatten()
    ).double()
    gen = torch.Generator().manual_seed(0)
    for norm in (model[1], model[3]):  # non-trivial running statistics
        norm.running_mean.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
        norm.running_var.copy_(torch.rand(4, generator=gen, dtype=torch.float64) + 0.5)
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
        model[1].bias.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
    model.eval()
    twin = affine_batch_norm_copy(model)
    assert isinstance(twin[1], AffineBatchNorm) and isinstance(twin[3], AffineBatchNorm)
    assert isinstance(model[1], nn.BatchNorm2d)  # the original is untouched
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert all(a is b for a, b in zip(twin.parameters(), model.parameters(), strict=True))
    assert twin[1].running_mean is model[1].running_mean
    x = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(twin(x), model(x), rtol=1e-12, atol=1e-12)


def test_train_mode_batch_norm_falls_back_to_the_loop(cifar32) -> None:
    victim = create_victim("convnet", resolution=16, num_classes=10, seed=0)
    labels = torch.tensor([3])
    target = make_target(victim, cifar32[:1, :, :16, :16], labels)
    victim.model.train()  # batch statistics and running-stat updates: vmap cannot batch those
    matcher = GradientMatcher(target)
    with pytest.warns(RuntimeWarning, match="batched restarts do not work for victim 'convnet'"):
        losses = matcher.restart_losses(torch.randn(RESTARTS, 3, 16, 16), RESTARTS)
    assert losses.shape == (RESTARTS,) and torch.isfinite(losses).all()


def test_per_restart_regularisers_equal_the_loop() -> None:
    images = torch.rand(RESTARTS * BATCH, 3, 9, 7, generator=torch.Generator().manual_seed(3))
    chunks = images.split(BATCH)
    torch.testing.assert_close(
        restart_total_variation(images, RESTARTS), torch.stack([total_variation(c) for c in chunks])
    )
    torch.testing.assert_close(
        restart_image_norm(images, RESTARTS), torch.stack([image_norm(c) for c in chunks])
    )


# ------------------------------------------------------------------------------------ halving
def test_halving_keeps_the_better_half_in_order() -> None:
    assert halving_survivors(torch.tensor([3.0, 1.0, math.nan, 2.0])) == [1, 3]
    assert halving_survivors(torch.tensor([0.5, 0.2, 0.9])) == [1]
    assert halving_survivors(torch.tensor([0.7])) == [0]
    assert halving_survivors(torch.tensor([1.0, 1.0, 1.0, 1.0])) == [0, 1]  # ties: lower index
    assert halving_survivors(torch.tensor([math.nan, 0.3, math.inf, 0.1, 0.2, 0.4, 0.0, 5.0])) == [1, 3, 4, 6]


def test_select_restarts_takes_the_rows_of_the_kept_restarts() -> None:
    stacked = torch.arange(4 * 2 * 3).view(8, 3)  # 4 restarts of 2 rows
    shared = torch.ones(1, 5)
    chosen = select_restarts({"h": stacked, "shared": shared}, [1, 3], restarts=4, batch_size=2)
    assert torch.equal(chosen["h"], torch.cat([stacked[2:4], stacked[6:8]]))
    assert chosen["shared"] is shared


def test_presets() -> None:
    assert preset_settings("fast") == {"batched": True, "halving": True, "rung": True, "early_stop": False}
    assert preset_settings("paper") == {"batched": True, "halving": False, "rung": False, "early_stop": False}
    fast = GIFDConfig(preset="fast")
    assert fast.halving and fast.batched and fast.rung and not fast.early_stop
    assert not GIFDConfig(preset="fast", halving=False).halving  # explicit keys win
    assert not GIFDConfig().halving and GIFDConfig().batched
    assert GIFDConfig.model_validate_json(fast.model_dump_json()) == fast
    with pytest.raises(GifdError, match="unknown GIFD preset 'quick': use one of paper, fast"):
        preset_settings("quick")
    with pytest.raises(GifdError, match="preset"):
        ATTACKS.get("gifd")({"preset": "quick"}, prior=object())


@pytest.fixture(scope="module")
def prior():
    return create_prior("digiface-dcgan64")


@pytest.fixture(scope="module")
def gifd_target(cifar32) -> Target:
    victim = create_victim("lenet", resolution=32, num_classes=10, seed=0)
    labels = torch.tensor([3])
    return make_target(victim, cifar32[:1], labels)


def run_gifd(prior, target, **settings):
    """GIFD with tight balls (0.1 x each stage's norm). With wide ones (the calibrated default),
    Adam's first steps turn the rounding noise of near-zero gradient entries (batched vs looped
    restarts, or batches of 4 vs 2 vs 1 restarts, round differently) into full-lr steps of either
    sign, and runs that agree to float rounding part by a few percent within a stage; projecting
    onto a tight ball erases that, so the equality checks keep their tolerances. An even split
    (4 steps per stage): the checks below count steps per stage."""
    tight = radii_from_feature_norms(prior, fraction=0.1)
    config = {
        "steps": 12,
        "restarts": 4,
        "log_every": 1,
        "stage_end": 2,
        "radii": tight,
        "latent_fraction": None,
        **settings,
    }
    return ATTACKS.get("gifd")(config, prior=prior, progress=False).run(
        target, torch.Generator().manual_seed(0)
    )


def test_halving_keeps_the_best_restarts_and_their_chains(prior, gifd_target) -> None:
    full = run_gifd(prior, gifd_target)
    halved = run_gifd(prior, gifd_target, halving=True)
    stage0, stage1, stage2 = (s.restart_losses for s in halved.stages)
    # Stage 0 runs all restarts exactly as without halving.
    assert stage0 == pytest.approx(full.stages[0].restart_losses, rel=1e-5)
    # Stage 1 runs the two best of stage 0, stage 2 the best of those; the others are inf.
    kept1 = sorted(sorted(range(4), key=stage0.__getitem__)[:2])
    assert [r for r in range(4) if math.isfinite(stage1[r])] == kept1
    kept2 = [min(kept1, key=stage1.__getitem__)]
    assert [r for r in range(4) if math.isfinite(stage2[r])] == kept2
    # Kept restarts are independent chains: the same losses as in the run without halving.
    for r in kept1:
        assert stage1[r] == pytest.approx(full.stages[1].restart_losses[r], rel=1e-4)
    assert stage2[kept2[0]] == pytest.approx(full.stages[2].restart_losses[kept2[0]], rel=1e-4)
    for stage in halved.stages:
        assert stage.loss == min(stage.restart_losses)
    # Pruned restarts are NaN in the loss history from the next stage on (steps 5..12).
    end0 = halved.stages[0].end_step
    for r in range(4):
        after = [v for s, v in zip(halved.log_steps, halved.loss_history[r], strict=True) if s > end0]
        assert all(math.isnan(v) for v in after) == (r not in kept1)
    assert halved.loss == min(s.loss for s in halved.stages)
    assert math.isfinite(halved.restart_losses[halved.best_restart])


def test_gifd_batched_and_sequential_give_the_same_result(prior, gifd_target) -> None:
    batched = run_gifd(prior, gifd_target, steps=6, restarts=2, log_every=2)
    sequential = run_gifd(prior, gifd_target, steps=6, restarts=2, log_every=2, batched=False)
    for a, b in zip(batched.stages, sequential.stages, strict=True):
        assert a.restart_losses == pytest.approx(b.restart_losses, rel=1e-3)
    torch.testing.assert_close(batched.images, sequential.images, atol=2e-3, rtol=0)
    assert batched.best_restart == sequential.best_restart


def test_ig_batched_and_sequential_give_the_same_result(lenet32, cifar32) -> None:
    labels = torch.tensor([3, 5])
    target = make_target(lenet32, cifar32[:2], labels)
    config = {"steps": 15, "restarts": 3, "log_every": 5}
    runs = [
        ATTACKS.get("ig")({**config, "batched": batched}, progress=False).run(
            target, torch.Generator().manual_seed(4)
        )
        for batched in (True, False)
    ]
    assert runs[0].restart_losses == pytest.approx(runs[1].restart_losses, rel=1e-3)
    for a, b in zip(runs[0].loss_history, runs[1].loss_history, strict=True):
        assert a == pytest.approx(b, rel=1e-3)
    torch.testing.assert_close(runs[0].images, runs[1].images, atol=1e-3, rtol=0)
