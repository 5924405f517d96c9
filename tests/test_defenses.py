"""Defenses: client transforms on known tensors, adaptive transforms, DP-SGD, parsing, estimates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gifd.client import Update, compute_update
from gifd.defenses import (
    ClientContext,
    ClipDefense,
    Compose,
    DPSGDDefense,
    NoDefense,
    NoiseDefense,
    PruneDefense,
    SoteriaDefense,
    apply_defense,
    clip_per_example,
    clipped_mean_gradient,
    fc_input_features,
    parse_defense,
    parse_defense_sweep,
    per_example_gradients,
    soteria_mask,
    soteria_scores,
    utility_cost,
)
from gifd.errors import GifdError
from gifd.victims import Victim, create_victim


class TinyNet(nn.Module):
    """3 x 2 x 2 input -> 4 tanh features -> 3 classes: small enough to check by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.feature = nn.Linear(12, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.feature(x.flatten(1))))


def tiny_victim(dtype: torch.dtype = torch.float32, seed: int = 0) -> Victim:
    torch.manual_seed(seed)
    model = TinyNet().to(dtype).eval()
    return Victim("tiny", model, resolution=2, num_classes=3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def tiny_batch(n: int = 3, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 2, 2, generator=gen, dtype=dtype), torch.tensor([0, 2, 1, 0, 2][:n])


@pytest.fixture(scope="module")
def lenet16() -> Victim:
    return create_victim("lenet", resolution=16, num_classes=10, seed=0)


@pytest.fixture(scope="module")
def cifar16(cifar32: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(cifar32[:4], 2)


def names_of(victim: Victim) -> list[str]:
    return [n for n, _ in victim.named_parameters()]


def loss_gradient(victim: Victim, inputs: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    params = [p for _, p in victim.named_parameters()]
    loss = F.cross_entropy(victim.model(inputs), labels)
    return list(torch.autograd.grad(loss, params, create_graph=True))


# ---------------------------------------------------------------------------------- client transforms
def test_prune_keeps_exactly_the_largest_entries() -> None:
    values = torch.tensor([0.5, -0.1, 2.0, 0.05, -3.0, 0.3, -0.2, 1.0, 0.01, -0.7])
    out = PruneDefense(0.2).apply([values])[0]
    assert int((out == 0).sum()) == 2  # floor(0.2 * 10)
    assert torch.equal(out == 0, values.abs() <= 0.05)  # the two smallest magnitudes: 0.01, 0.05
    assert torch.equal(out[out != 0], values[out != 0])
    gen = torch.Generator().manual_seed(0)
    update = {"a": torch.randn(30, 37, generator=gen), "b": torch.randn(7, generator=gen)}
    pruned = PruneDefense(0.3).apply(update)
    assert list(pruned) == ["a", "b"]
    assert int((pruned["a"] == 0).sum()) == math.floor(0.3 * 30 * 37) == 333
    assert int((pruned["b"] == 0).sum()) == 2
    threshold = update["a"].abs().flatten().sort().values[332]
    assert bool((update["a"].abs()[pruned["a"] == 0] <= threshold).all())
    assert bool((update["a"].abs()[pruned["a"] != 0] > threshold).all())


def exact_norm(tensors) -> float:
    """The l2 norm of the float values themselves, accumulated in float64 (a float32 sum would add
    rounding of its own and could report a norm <= C above C, or the reverse)."""
    return float(torch.sqrt(sum(t.double().pow(2).sum() for t in tensors)))


def test_clip_bounds_the_norm_and_leaves_small_updates_alone() -> None:
    gen = torch.Generator().manual_seed(0)
    update = [torch.randn(20, 10, generator=gen) * 3, torch.randn(5, generator=gen)]
    norm = exact_norm(update)
    clipped = ClipDefense(4.0).apply(update)
    assert exact_norm(clipped) <= 4.0 and exact_norm(clipped) > 4.0 - 1e-4
    for a, b in zip(update, clipped, strict=True):  # one global scale, direction kept
        # float32 rounding of the scale and of each product: a few ulps (assert_close's float32 rtol)
        torch.testing.assert_close(b, a * (4.0 / (norm + 1e-6)))
    small = [t / norm for t in update]  # norm 1 < 4
    for a, b in zip(small, ClipDefense(4.0).apply(small), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_clipped_norms_never_exceed_the_bound(dtype: torch.dtype) -> None:
    """norm <= C exactly (DP-SGD's accounting assumes it), whatever the CPU's kernels round: over
    many sizes and bounds, including norms just above the bound, globally and per example."""
    gen = torch.Generator().manual_seed(1)
    for trial in range(200):
        sizes = torch.randint(1, 3000, (int(torch.randint(1, 5, (1,), generator=gen)),), generator=gen)
        update = [torch.randn(int(n), generator=gen, dtype=torch.float64).to(dtype) for n in sizes]
        bound = exact_norm(update) * (1 - 10 ** -float(torch.randint(1, 9, (1,), generator=gen))) if trial % 2 else 0.37
        assert exact_norm(ClipDefense(bound).apply(update)) <= bound, trial
        per_example = [t.unsqueeze(0) for t in update]  # a batch of one: the mean is the clipped gradient
        assert exact_norm(clip_per_example(per_example, bound)) <= bound, trial


def test_noise_has_the_right_std_and_follows_the_seed() -> None:
    update = {"w": torch.ones(400, 500), "b": torch.zeros(10, dtype=torch.float64)}
    noisy = NoiseDefense(0.01).apply(update, torch.Generator().manual_seed(3))
    diff = noisy["w"] - 1
    assert abs(float(diff.std()) - 0.01) < 0.0002  # 200k samples: relative error ~0.2 %
    assert abs(float(diff.mean())) < 1e-4
    assert noisy["b"].dtype == torch.float64
    again = NoiseDefense(0.01).apply(update, torch.Generator().manual_seed(3))
    assert torch.equal(noisy["w"], again["w"])
    with pytest.raises(GifdError, match="Generator"):
        NoiseDefense(0.01).apply(update)


def expected_soteria_columns(victim: Victim, images: torch.Tensor, fraction: float) -> list[int]:
    """By hand: r = tanh(A x + c), so ||d r_bf / d x_b|| = (1 - r_bf^2) ||A_f||."""
    model = victim.model
    with torch.no_grad():
        r = torch.tanh(model.feature(images.flatten(1)))
        row_norms = model.feature.weight.norm(dim=1)
        scores = ((1 - r**2) * row_norms / r.abs()).sum(0)
    drop = math.floor(fraction * scores.numel())
    return sorted(torch.argsort(scores)[:drop].tolist())


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_soteria_zeroes_the_hand_computed_columns(fraction: float) -> None:
    victim = tiny_victim()
    images, labels = tiny_batch()
    update = compute_update(victim, images, labels)
    defended = SoteriaDefense(fraction).apply(update.tensors, context=ClientContext(victim, images, labels))
    zero_columns = (defended["fc.weight"] == 0).all(dim=0).nonzero().flatten().tolist()
    expected = expected_soteria_columns(victim, images, fraction)
    assert zero_columns == expected and len(expected) == math.floor(4 * fraction)
    kept = [c for c in range(4) if c not in expected]
    assert torch.equal(defended["fc.weight"][:, kept], update.tensors["fc.weight"][:, kept])
    for name in ("feature.weight", "feature.bias", "fc.bias"):
        assert torch.equal(defended[name], update.tensors[name])
    with pytest.raises(GifdError, match="ClientContext"):
        SoteriaDefense(fraction).apply(update.tensors)


def test_soteria_scores_match_a_jacobian_loop(lenet16: Victim, cifar16: torch.Tensor) -> None:
    images = cifar16[:2]
    scores = soteria_scores(lenet16, images, chunk=50)  # 192 features in 4 batched passes
    assert scores.shape == (192,)
    inputs = lenet16.normalize(images)
    with torch.no_grad():
        r = fc_input_features(lenet16, inputs)
    for f in (0, 7, 100, 191):  # an independent reference: one backward pass per sample and feature
        total = 0.0
        for b in range(2):
            x = inputs[b : b + 1].clone().requires_grad_(True)
            (jac,) = torch.autograd.grad(fc_input_features(lenet16, x)[0, f], x)
            total += float(jac.norm()) / abs(float(r[b, f]))
        assert scores[f].item() == pytest.approx(total, rel=1e-4)


# ------------------------------------------------------------------------------------------- DP-SGD
def test_per_example_clipping_equals_a_python_loop() -> None:
    victim = tiny_victim(torch.float64)
    images, labels = tiny_batch(5, torch.float64)
    params = [p for _, p in victim.named_parameters()]
    loop = []
    for i in range(5):
        loss = F.cross_entropy(victim.model(images[i : i + 1]), labels[i : i + 1])
        loop.append(torch.autograd.grad(loss, params))
    batched = per_example_gradients(victim, images, labels)
    for j, g in enumerate(batched):
        torch.testing.assert_close(g, torch.stack([loop[i][j] for i in range(5)]))
    norms = [float(torch.sqrt(sum(t.pow(2).sum() for t in loop[i]))) for i in range(5)]
    clip = sorted(norms)[2]  # some examples are clipped, some not
    expected = [
        sum(loop[i][j] * min(1.0, clip / (norms[i] + 1e-6)) for i in range(5)) / 5 for j in range(len(params))
    ]
    for got, want in zip(clipped_mean_gradient(victim, images, labels, clip), expected, strict=True):
        torch.testing.assert_close(got, want)
    context = ClientContext(victim, images, labels)
    update = compute_update(victim, images, labels)
    defended = DPSGDDefense(clip, 0.0).apply(update.tensors, context=context)
    for name, want in zip(names_of(victim), expected, strict=True):
        torch.testing.assert_close(defended[name], want)


def test_dpsgd_noise_std_on_the_mean(lenet32: Victim, cifar32: torch.Tensor) -> None:
    images, labels = cifar32[:4], torch.tensor([0, 1, 2, 3])
    update = compute_update(lenet32, images, labels)
    context = ClientContext(lenet32, images, labels)
    clean = DPSGDDefense(1.0, 0.0).apply(update.tensors, context=context)
    noisy = DPSGDDefense(1.0, 2.0).apply(update.tensors, torch.Generator().manual_seed(0), context)
    diff = torch.cat([(noisy[n] - clean[n]).flatten() for n in clean])
    assert diff.numel() > 10000
    assert float(diff.std()) == pytest.approx(2.0 * 1.0 / 4, rel=0.03)
    with pytest.raises(GifdError, match="FedAvg"):
        apply_defense(Update(update.tensors, 4, kind="delta"), "dpsgd:1,1", context=context)


# -------------------------------------------------------------------------------- adaptive transforms
def test_adaptive_transforms_pass_gradcheck() -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (5,)]
    dummy = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]
    shared = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    shared[0][:, 1] = 0
    names = ["fc.weight", "fc.bias"]
    for defense in (ClipDefense(0.5), PruneDefense(0.4), SoteriaDefense(0.25), NoiseDefense(0.1)):
        assert torch.autograd.gradcheck(
            lambda *d, defense=defense: tuple(defense.adapt(list(d), shared, names)), dummy
        )
    out = SoteriaDefense(0.25).adapt(dummy, shared, names)
    assert bool((out[0][:, 1] == 0).all()) and bool((out[0][:, 0] == dummy[0][:, 0]).all())
    assert int((PruneDefense(0.4).adapt(dummy, shared, names)[0] == 0).sum()) == 4


@pytest.mark.parametrize(
    "defense", [ClipDefense(0.05), PruneDefense(0.3), SoteriaDefense(0.5), DPSGDDefense(0.2, 1.0)], ids=str
)
def test_adaptive_dummy_update_is_differentiable_in_the_inputs(defense) -> None:
    """gradcheck of inputs -> dummy gradient (as the client computes it) -> adapt -> a scalar."""
    victim = tiny_victim(torch.float64)
    images, labels = tiny_batch(3, torch.float64)
    shared_update = apply_defense(
        compute_update(victim, images, labels),
        defense,
        generator=torch.Generator().manual_seed(0),
        context=ClientContext(victim, images, labels),
    )
    shared = shared_update.ordered(victim)
    names = names_of(victim)
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in shared]

    def objective(inputs: torch.Tensor) -> torch.Tensor:
        dummy = defense.dummy_gradient(victim, inputs, labels)
        if dummy is None:
            dummy = loss_gradient(victim, inputs, labels)
        adapted = defense.adapt(dummy, shared, names)
        return sum((a * w).sum() for a, w in zip(adapted, weights, strict=True))

    inputs = (torch.rand(3, 3, 2, 2, generator=gen, dtype=torch.float64) - 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(objective, (inputs,))
    # The adaptive model of the client's own batch reproduces the noiseless shared update.
    if not isinstance(defense, DPSGDDefense):
        reproduced = defense.adapt(loss_gradient(victim, images, labels), shared, names)
        for a, b in zip(reproduced, shared, strict=True):
            torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------- parsing
def test_parse_defense_valid_specs_round_trip() -> None:
    assert parse_defense("noise:0.01") == NoiseDefense(0.01)
    assert parse_defense("clip:4") == ClipDefense(4.0)
    assert parse_defense("prune:0.2") == PruneDefense(0.2)
    assert parse_defense("soteria:0.1") == SoteriaDefense(0.1)
    assert parse_defense("dpsgd:1.0,1.1") == DPSGDDefense(1.0, 1.1)
    assert parse_defense(None) == NoDefense() == parse_defense("none") == parse_defense("")
    chained = parse_defense("clip:4+noise:0.01")
    assert chained == Compose([ClipDefense(4.0), NoiseDefense(0.01)])
    assert chained.spec() == "clip:4+noise:0.01"
    for spec in ("noise:0.01", "clip:4", "prune:0.2", "soteria:0.1", "dpsgd:1,1.1", "dpsgd:1,1.1+prune:0.5"):
        assert parse_defense(spec).spec() == spec
        assert parse_defense(parse_defense(spec).spec()) == parse_defense(spec)
        assert parse_defense(spec).describe()
    assert parse_defense(" Clip:4 + none ") == ClipDefense(4.0)
    assert [d.strength for d in parse_defense_sweep("prune:0.1,0.3,0.5")] == [0.1, 0.3, 0.5]
    assert parse_defense_sweep("dpsgd:1.0,1.1") == [DPSGDDefense(1.0, 1.1)]


def test_compose_applies_left_to_right() -> None:
    update = [torch.full((100,), 1.0)]
    out = parse_defense("clip:4+noise:0.01").apply(update, torch.Generator().manual_seed(0))
    clipped = ClipDefense(4).apply(update)
    noise = NoiseDefense(0.01).apply([torch.zeros(100)], torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[0], clipped[0] + noise[0])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("blur:2", "unknown defense 'blur'"),
        ("clip", "takes 1 number"),
        ("clip:a", "non-number"),
        ("clip:-1", "clip bound must be"),
        ("prune:1.5", r"fraction in \[0, 1\)"),
        ("soteria:10", "soteria:0.1 prunes 10 %"),
        ("dpsgd:1", "takes 2 number"),
        ("noise:-0.1", "noise std must be"),
        ("clip:4+", "empty part"),
        ("noise:0.01+dpsgd:1,1", "must come first"),
    ],
)
def test_parse_defense_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(GifdError, match=message) as info:
        parse_defense(spec)
    if "number" in message or "unknown" in message or "empty" in message:
        assert "noise:STD, clip:BOUND, prune:RATIO, soteria:FRACTION, dpsgd:CLIP,SIGMA" in str(info.value)


# ----------------------------------------------------------------------------------------- estimates
def test_estimates_recover_the_parameters(lenet16: Victim, cifar16: torch.Tensor) -> None:
    images, labels = cifar16[:2], torch.tensor([3, 5])
    update = compute_update(lenet16, images, labels)
    names = names_of(lenet16)
    clean = update.ordered(lenet16)
    context = ClientContext(lenet16, images, labels)

    clipped = ClipDefense(0.5).apply(clean)
    assert ClipDefense.estimate(clipped).bound == pytest.approx(0.5, rel=1e-5)

    pruned = PruneDefense(0.37).apply(clean)
    estimate = PruneDefense.estimate(pruned)
    assert estimate.ratio == pytest.approx(0.37, abs=0.005)
    for a, b in zip(estimate.apply(clean), pruned, strict=True):  # the same counts, the same masks
        assert torch.equal(a, b)

    soteria = SoteriaDefense(0.3).apply(clean, context=context)
    found = SoteriaDefense.estimate(soteria, names)
    assert found.fraction == pytest.approx(math.floor(0.3 * 192) / 192)
    assert int((soteria_mask(soteria[names.index("fc.weight")]) == 0).sum()) == math.floor(0.3 * 192)

    both = Compose([ClipDefense(0.5), PruneDefense(0.37)])
    shared = both.apply(clean)
    guessed = both.estimated(shared, names)
    assert isinstance(guessed, Compose)
    assert guessed.defenses[0].bound == pytest.approx(float(torch.sqrt(sum(t.pow(2).sum() for t in shared))))
    assert guessed.defenses[1].ratio == pytest.approx(0.37, abs=0.005)


# -------------------------------------------------------------------------------- update and utility
def test_apply_defense_and_utility_cost(lenet32: Victim, cifar32: torch.Tensor) -> None:
    images, labels = cifar32[:2], torch.tensor([3, 5])
    update = compute_update(lenet32, images, labels)
    defended = apply_defense(update, "clip:0.1", disclose=True)
    assert defended.metadata["defense"] == "clip:0.1" and "defense" not in update.metadata
    assert list(defended.tensors) == list(update.tensors)
    cost = utility_cost(update.tensors, defended.tensors)
    assert cost["cosine"] == pytest.approx(1.0, abs=1e-6)
    norm = float(torch.sqrt(sum(t.double().pow(2).sum() for t in update.tensors.values())))
    assert cost["norm_ratio"] == pytest.approx(0.1 / norm, rel=1e-4)
    assert cost["relative_l2_error"] == pytest.approx(1 - 0.1 / norm, rel=1e-4)

    pruned = apply_defense(update, "prune:0.5")
    cost = utility_cost(update.tensors, pruned.tensors)
    c = torch.cat([t.flatten().double() for t in update.tensors.values()])
    d = torch.cat([t.flatten().double() for t in pruned.tensors.values()])
    assert cost["relative_l2_error"] == pytest.approx(float((c - d).norm() / c.norm()), rel=1e-9)
    assert cost["cosine"] == pytest.approx(float(c @ d / (c.norm() * d.norm())), rel=1e-9)
    assert cost["zero_fraction"] == pytest.approx(0.5, abs=0.001)
    assert 0 < cost["cosine"] < 1
    assert utility_cost(update.tensors, apply_defense(update, "none").tensors)["relative_l2_error"] == 0
    with pytest.raises(GifdError, match="different parameter names"):
        utility_cost(update.tensors, {"x": torch.zeros(1)})


def test_every_built_in_defense_names_two_strengths_that_parse_back() -> None:
    from gifd.defenses import default_strengths
    from gifd.reproduce.config import ReproduceConfig

    specs = default_strengths()
    builtin = ("noise", "clip", "prune", "soteria", "dpsgd")
    assert [spec.split(":")[0] for spec in specs] == [name for name in builtin for _ in range(2)]
    for spec in specs:
        assert parse_defense(spec).spec() == spec
    assert ReproduceConfig().defenses == specs
