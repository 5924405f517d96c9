"""Defenses against gradient inversion, each holding both halves so they cannot drift apart.

Every defense is one class with
- `apply(tensors, generator, context)` — the client's transform of its real update (no grad).
  `tensors` is a {name: tensor} dict or a list in the victim's parameter order; the result has
  the same form. Randomness comes from `generator` (drawn on the CPU, then moved, so a seed gives
  the same numbers on every device). Soteria and DP-SGD need the private batch: pass a
  `ClientContext(victim, images, labels)` (`requires_context` says when).
- `adapt(dummy, shared, names)` — the adaptive attacker's differentiable model of the defense,
  applied to its own dummy update (list in parameter order; `shared` is the update it received,
  `names` the parameter names). Oblivious attackers skip it: that switch is the caller's.
- `dummy_gradient(victim, inputs, labels)` — None unless the defense changes how the client
  computes its gradient (DP-SGD: per-example clipping); then the attacker's differentiable
  version of that computation, to use instead of the plain mean gradient.
- `estimated(shared, names)` — the same defense with the parameters an attacker can read off the
  update (clip bound from the norm, pruning ratio from the zeros, Soteria mask from the zero
  columns); parameters that cannot be estimated are kept as given.
- `spec()` (the CLI form, parsed back by `parse_defense`), `describe()` (words for reports) and
  `parameters()` (numbers for sweep plots).

The table of paper.md (from GGL), plus DP-SGD:

| defense | client | adaptive attacker |
|---|---|---|
| `noise:STD` | add N(0, STD^2) to every entry | nothing (noise is not reproducible) |
| `clip:C` | scale all by min(1, C / (norm + 1e-6)), norm over all tensors | the same |
| `prune:P` | per tensor, zero the floor(P n) entries of smallest magnitude | the same, with its own mask |
| `soteria:P` | zero the fc-weight columns of the floor(P F) fc-input features with the lowest score | multiply by the zero-column mask of the shared update |
| `dpsgd:C,SIGMA` | per-example clip to C, mean, add N(0, (SIGMA C / B)^2) | per-example clip of the dummy batch (vmap) |

`Compose` chains defenses left to right (`clip:4+noise:0.01` clips, then adds noise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from gifd.client import Update
from gifd.errors import GifdError
from gifd.victims import Victim

Tensors = TypeVar("Tensors", dict[str, Tensor], list[Tensor])

#: The CLI forms, for error messages and help texts.
DEFENSE_FORMS = (
    "none, noise:STD, clip:BOUND, prune:RATIO, soteria:FRACTION, dpsgd:CLIP,SIGMA, "
    "joined with + to chain them (e.g. clip:4+noise:0.01)"
)

#: Added to norms before dividing, as in the clipping of GGL and of DP-SGD implementations.
NORM_EPS = 1e-6


@dataclass(frozen=True)
class ClientContext:
    """What a client-side defense may need besides the update: the victim and the private batch.

    `images` are in [0, 1] at the victim's resolution (as `compute_update` takes them); the
    defense normalises them itself. Only the client ever builds one.
    """

    victim: Victim
    images: Tensor
    labels: Tensor


# ------------------------------------------------------------------------------------------ helpers
def _as_list(tensors: Mapping[str, Tensor] | Sequence[Tensor]) -> tuple[list[Tensor], list[str] | None]:
    if isinstance(tensors, Mapping):
        return list(tensors.values()), list(tensors.keys())
    return list(tensors), None


def _like(values: list[Tensor], names: list[str] | None) -> Any:
    """`values` in the form the input came in (dict when names are known)."""
    return values if names is None else dict(zip(names, values, strict=True))


def _num(value: float) -> str:
    """A number for a spec string: 4 not 4.0, 0.01 not 1e-02, exact enough to round-trip."""
    return f"{float(value):.12g}"


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """The l2 norm of all tensors concatenated, accumulated in float64 (a 0-dim float64 tensor,
    differentiable): exact enough that `clip_scale` can guarantee its bound."""
    return torch.sqrt(sum(torch.linalg.vector_norm(t, dtype=torch.float64).square() for t in tensors))


def clip_scale(norms: Tensor, bound: float, dtype: torch.dtype) -> Tensor:
    """The clipping factor min(1, bound / (norm + 1e-6)) for tensors of `dtype` whose float64 l2
    norm is `norms`, shrunk by 4 machine epsilons of `dtype`, then rounded to `dtype`.

    Why the shrink: the product of a tensor with the factor is rounded entry by entry (relative
    error <= eps/2 each, and the factor itself rounds to `dtype` by as much), so without it the
    clipped norm can exceed the bound by an ulp, as it did on one CPU (4.0000002 > 4). With it,
    norm(clipped) <= norm * factor * (1 + eps/2)^2 < bound: the guarantee DP-SGD's accounting needs.
    """
    shrink = 1 - 4 * torch.finfo(dtype).eps
    return torch.clamp(bound * shrink / (norms + NORM_EPS), max=1.0).to(dtype)


def _noise_like(tensor: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        raise GifdError(
            "a noisy defense needs a torch.Generator: pass generator= "
            "(e.g. gifd.device.derived_generator(seed, 'client'))"
        )
    noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype, device="cpu")
    return noise.to(tensor.device) * std


def prune_count(numel: int, ratio: float) -> int:
    """How many entries pruning with `ratio` zeroes in a tensor of `numel` entries: floor(ratio numel)."""
    return min(numel, math.floor(ratio * numel + 1e-9))


def magnitude_mask(tensor: Tensor, ratio: float) -> Tensor:
    """A 0/1 mask of `tensor`'s shape keeping all but its floor(ratio n) smallest-magnitude entries.

    Exactly that many entries are dropped; ties are broken by position (torch.topk's order).
    """
    numel = tensor.numel()
    keep = numel - prune_count(numel, ratio)
    flat = tensor.detach().abs().flatten()
    mask = torch.zeros_like(flat)
    if keep > 0:
        mask[torch.topk(flat, keep, sorted=False).indices] = 1
    return mask.view_as(tensor)


def _classifier_index(names: Sequence[str], classifier: str) -> int:
    weight = f"{classifier}.weight" if classifier else "weight"
    if weight not in names:
        raise GifdError(
            f"Soteria needs the last linear layer's weight {weight!r} in the update, which has "
            f"{len(names)} other tensors: build the defense with classifier=<the victim's classifier name>"
        )
    return list(names).index(weight)


def _check_ratio(kind: str, value: float, what: str) -> None:
    if not (0 <= value < 1) or math.isnan(value):
        raise GifdError(f"{kind} {what} must be a fraction in [0, 1) (e.g. 0.2 for 20 %), got {value:g}")


# --------------------------------------------------------------------------------------------- base
class Defense:
    """One defense: the client's transform and the adaptive attacker's model of it."""

    #: The name in the CLI spec (`noise`, `clip`, ...).
    name: ClassVar[str] = ""
    #: Whether `apply` needs a `ClientContext` (the victim and the private batch).
    requires_context: ClassVar[bool] = False
    #: Whether the defense replaces how the gradient is computed (then it must come first).
    replaces_gradient: ClassVar[bool] = False

    def apply(
        self,
        tensors: Tensors,
        generator: torch.Generator | None = None,
        context: ClientContext | None = None,
    ) -> Tensors:
        """The client's defended update, in the form `tensors` came in (dict or list)."""
        raise NotImplementedError

    def adapt(self, dummy: list[Tensor], shared: list[Tensor], names: list[str]) -> list[Tensor]:
        """The attacker's differentiable model of the defense applied to its dummy update."""
        return list(dummy)

    def dummy_gradient(self, victim: Victim, inputs: Tensor, labels: Tensor) -> list[Tensor] | None:
        """The attacker's version of the client's gradient computation, or None for the plain one."""
        return None

    def estimated(self, shared: Sequence[Tensor], names: Sequence[str]) -> Defense:
        """This defense with parameters estimated from the shared update where possible."""
        return self

    def parameters(self) -> dict[str, float]:
        """The defense's numbers by name (for results files and sweep plots)."""
        return {}

    @property
    def strength(self) -> float | None:
        """The main parameter, the x axis of a sweep plot (None for no defense)."""
        values = list(self.parameters().values())
        return values[0] if values else None

    def spec(self) -> str:
        """The CLI form, which `parse_defense` turns back into an equal defense."""
        raise NotImplementedError

    def describe(self) -> str:
        """One sentence for reports."""
        raise NotImplementedError

    def members(self) -> list[Defense]:
        """The single defenses this one chains (itself, unless a Compose)."""
        return [self]

    def __str__(self) -> str:
        return self.spec()


@dataclass(frozen=True)
class NoDefense(Defense):
    """The update is sent unchanged."""

    name: ClassVar[str] = "none"

    def apply(self, tensors: Tensors, generator=None, context=None) -> Tensors:  # type: ignore[override]
        values, names = _as_list(tensors)
        return _like(values, names)

    def spec(self) -> str:
        return "none"

    def describe(self) -> str:
        return "no defense: the update is sent unchanged"

    def members(self) -> list[Defense]:
        return []


@dataclass(frozen=True)
class NoiseDefense(Defense):
    """Add independent Gaussian noise N(0, std^2) to every entry of the update."""

    std: float
    name: ClassVar[str] = "noise"

    def __post_init__(self) -> None:
        if not (self.std >= 0) or math.isinf(self.std):
            raise GifdError(f"noise std must be a finite number >= 0 (e.g. noise:0.01), got {self.std:g}")

    @torch.no_grad()
    def apply(self, tensors: Tensors, generator=None, context=None) -> Tensors:  # type: ignore[override]
        values, names = _as_list(tensors)
        if self.std == 0:
            return _like(values, names)
        return _like([t + _noise_like(t, self.std, generator) for t in values], names)

    def parameters(self) -> dict[str, float]:
        return {"std": self.std}

    def spec(self) -> str:
        return f"noise:{_num(self.std)}"

    def describe(self) -> str:
        return (
            f"Gaussian noise of standard deviation {_num(self.std)} added to every entry of the update "
            "(the adaptive attacker cannot reproduce it and matches the noisy update as it is)"
        )


@dataclass(frozen=True)
class ClipDefense(Defense):
    """Scale the whole update by min(1, bound / (norm + 1e-6)), the norm taken over all tensors."""

    bound: float
    name: ClassVar[str] = "clip"

    def __post_init__(self) -> None:
        if not (self.bound > 0) or math.isinf(self.bound):
            raise GifdError(f"clip bound must be a finite number > 0 (e.g. clip:4), got {self.bound:g}")

    def _clip(self, values: list[Tensor]) -> list[Tensor]:
        coarsest = max((t.dtype for t in values), key=lambda d: torch.finfo(d).eps)
        scale = clip_scale(global_norm(values), self.bound, coarsest)
        return [t * scale for t in values]

    @torch.no_grad()
    def apply(self, tensors: Tensors, generator=None, context=None) -> Tensors:  # type: ignore[override]
        values, names = _as_list(tensors)
        return _like(self._clip(values), names)

    def adapt(self, dummy: list[Tensor], shared: list[Tensor], names: list[str]) -> list[Tensor]:
        """The same clipping of the dummy update (differentiable). A cosine distance ignores it."""
        return self._clip(list(dummy))

    @classmethod
    def estimate(cls, shared: Sequence[Tensor], names: Sequence[str] | None = None) -> ClipDefense:
        """The bound read off the update: its norm (exact when clipping was active)."""
        norm = float(global_norm([t.detach().double() for t in shared]))
        if norm <= 0:
            raise GifdError("cannot estimate a clip bound from an all-zero update: give the bound (clip:C)")
        return cls(norm)

    def estimated(self, shared: Sequence[Tensor], names: Sequence[str]) -> Defense:
        return self.estimate(shared, names)

    def parameters(self) -> dict[str, float]:
        return {"bound": self.bound}

    def spec(self) -> str:
        return f"clip:{_num(self.bound)}"

    def describe(self) -> str:
        return f"the update is scaled down to l2 norm at most {_num(self.bound)} (global clipping)"


@dataclass(frozen=True)
class PruneDefense(Defense):
    """Per tensor, zero the floor(ratio n) entries of smallest magnitude (sparsification)."""

    ratio: float
    name: ClassVar[str] = "prune"

    def __post_init__(self) -> None:
        _check_ratio("prune", self.ratio, "ratio")

    def _prune(self, values: list[Tensor]) -> list[Tensor]:
        return [t * magnitude_mask(t, self.ratio) for t in values]

    @torch.no_grad()
    def apply(self, tensors: Tensors, generator=None, context=None) -> Tensors:  # type: ignore[override]
        values, names = _as_list(tensors)
        return _like(self._prune(values), names)

    def adapt(self, dummy: list[Tensor], shared: list[Tensor], names: list[str]) -> list[Tensor]:
        """The same pruning with the dummy's own mask; gradients flow through the kept entries."""
        return self._prune(list(dummy))

    @classmethod
    def estimate(cls, shared: Sequence[Tensor], names: Sequence[str] | None = None) -> PruneDefense:
        """The ratio read off the zeros: the middle of the ratios consistent with every tensor's count.

        Tensor i with n_i entries and k_i zeros allows ratios in [k_i / n_i, (k_i + 1) / n_i); when
        those intervals overlap (no zeros beyond the pruned ones) the estimate reproduces every
        count exactly, otherwise the overall zero fraction is returned.
        """
        counts = [(int((t == 0).sum()), t.numel()) for t in shared if t.numel() > 0]
        if not counts:
            raise GifdError("cannot estimate a pruning ratio from an empty update: give the ratio (prune:P)")
        low = max(k / n for k, n in counts)
        high = min((k + 1) / n for k, n in counts)
        overall = sum(k for k, _ in counts) / sum(n for _, n in counts)
        ratio = (low + high) / 2 if low < high else overall
        return cls(min(ratio, 1 - 1e-9))

    def estimated(self, shared: Sequence[Tensor], names: Sequence[str]) -> Defense:
        return self.estimate(shared, names)

    def parameters(self) -> dict[str, float]:
        return {"ratio": self.ratio}

    def spec(self) -> str:
        return f"prune:{_num(self.ratio)}"

    def describe(self) -> str:
        return (
            f"{100 * self.ratio:.4g} % of the entries of every tensor, those of smallest magnitude, "
            "are set to zero (sparsification)"
        )


@dataclass(frozen=True)
class SoteriaDefense(Defense):
    """Soteria (Sun et al. 2021): prune the fc-weight gradient columns of unimportant fc-input features.

    With r the input of the last linear layer (B x F) and x the model input, feature f's score is
    sum_b ||d r_bf / d x_b|| / |r_bf| (a feature with r_bf = 0 adds nothing for sample b); the
    floor(fraction F) features with the lowest scores have their columns of the fc-weight update
    zeroed. The client computes it from its batch (`soteria_scores`: costly), so `apply` needs
    a `ClientContext`; on a FedAvg delta the mask comes from the batch at the starting weights.
    `classifier` names the last linear layer (`Victim.classifier`).
    """

    fraction: float
    classifier: str = "fc"
    name: ClassVar[str] = "soteria"
    requires_context: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_ratio("soteria", self.fraction, "fraction")

    @torch.no_grad()
    def apply(self, tensors: Tensors, generator=None, context=None) -> Tensors:  # type: ignore[override]
        if context is None:
            raise GifdError(
                "the Soteria defense needs the client's batch: pass context=ClientContext(victim, images, labels)"
            )
        values, names = _as_list(tensors)
        param_names = names if names is not None else [n for n, _ in context.victim.named_parameters()]
        if len(param_names) != len(values):
            raise GifdError(
                f"{len(values)} tensors given for a victim with {len(param_names)} parameters: "
                "pass the update in the victim's parameter order"
            )
        index = _classifier_index(param_names, self.classifier)
        weight = values[index]
        scores = soteria_scores(context.victim, context.images, self.classifier)
        if scores.numel() != weight.shape[-1]:
            raise GifdError(
                f"Soteria found {scores.numel()} fc-input features but {param_names[index]} has "
                f"{weight.shape[-1]} columns: is {self.classifier!r} the victim's last linear layer?"
            )
        mask = torch.ones_like(scores)
        drop = prune_count(scores.numel(), self.fraction)
        if drop > 0:
            mask[torch.topk(scores, drop, largest=False).indices] = 0
        out = list(values)
        out[index] = weight * mask.to(weight.dtype).view(1, -1)
        return _like(out, names)

    def adapt(self, dummy: list[Tensor], shared: list[Tensor], names: list[str]) -> list[Tensor]:
        """Zero the dummy fc-weight columns that are all zero in the shared update."""
        index = _classifier_index(names, self.classifier)
        mask = soteria_mask(shared[index]).to(dummy[index].dtype)
        out = list(dummy)
        out[index] = dummy[index] * mask.view(1, -1)
        return out

    @classmethod
    def estimate(
        cls, shared: Sequence[Tensor], names: Sequence[str], classifier: str = "fc"
    ) -> SoteriaDefense:
        """The fraction read off the zero columns of the fc-weight update (`adapt` uses them directly)."""
        mask = soteria_mask(shared[_classifier_index(names, classifier)])
        fraction = float((mask == 0).sum()) / mask.numel()
        return cls(min(fraction, 1 - 1e-9), classifier)

    def estimated(self, shared: Sequence[Tensor], names: Sequence[str]) -> Defense:
        return self.estimate(shared, names, self.classifier)

    def parameters(self) -> dict[str, float]:
        return {"fraction": self.fraction}

    def spec(self) -> str:
        return f"soteria:{_num(self.fraction)}"

    def describe(self) -> str:
        return (
            f"Soteria: the last layer's weight update loses the columns of the {100 * self.fraction:.4g} % "
            "of its input features whose score ||d r_f / d x|| / |r_f| is lowest"
        )


def soteria_mask(fc_weight_update: Tensor) -> Tensor:
    """1 for the columns of a (C x F) fc-weight update with a nonzero entry, 0 for all-zero columns."""
    return (fc_weight_update.detach() != 0).any(dim=0).to(fc_weight_update.dtype)


def fc_input_features(victim: Victim, inputs: Tensor, classifier: str = "fc") -> Tensor:
    """The input of the victim's last linear layer for normalised `inputs`, B x F (keeps the graph)."""
    captured: list[Tensor] = []
    try:
        module = victim.model.get_submodule(classifier)
    except AttributeError as exc:
        raise GifdError(
            f"victim {victim.name!r} has no layer {classifier!r}: pass its classifier name"
        ) from exc
    hook = module.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    try:
        victim.model(inputs)
    finally:
        hook.remove()
    return captured[0].flatten(1)


def soteria_scores(
    victim: Victim, images: Tensor, classifier: str = "fc", chunk: int | None = None
) -> Tensor:
    """Soteria's per-feature scores (F,) for a batch of [0, 1] images (see `SoteriaDefense`).

    d r_bf / d x_b for `chunk` features at once: the batch is repeated `chunk` times and copy j
    back-propagates feature j only, one ordinary backward pass per chunk (samples must be
    independent: eval mode, as the victims are). The cost is about F / B forward-backward passes
    of the victim over the batch; e.g. ResNet-18 at 32 px, F = 512: ~25 s per image on one CPU core.
    """
    inputs = victim.normalize(images.to(victim.device)).detach()
    batch = inputs.shape[0]
    with torch.no_grad():
        features = fc_input_features(victim, inputs, classifier)
    num_features = features.shape[1]
    if chunk is None:
        chunk = max(1, min(num_features, 2**20 // max(1, batch * inputs[0].numel())))
    norms = torch.empty(num_features, batch, dtype=features.dtype, device=features.device)
    with torch.enable_grad():
        for start in range(0, num_features, chunk):
            stop = min(start + chunk, num_features)
            copies = inputs.repeat(stop - start, *([1] * (inputs.ndim - 1))).requires_grad_(True)
            replicated = fc_input_features(victim, copies, classifier).view(stop - start, batch, num_features)
            picked = replicated[torch.arange(stop - start), :, torch.arange(start, stop)]  # copy j, feature j
            (jac,) = torch.autograd.grad(picked.sum(), copies)
            norms[start:stop] = jac.view(stop - start, batch, -1).norm(dim=2)
    magnitude = features.abs().t()
    ratio = torch.where(magnitude > 0, norms / magnitude.clamp_min(torch.finfo(magnitude.dtype).tiny), 0.0)
    return ratio.sum(dim=1)


@dataclass(frozen=True)
class DPSGDDefense(Defense):
    """DP-SGD's aggregation: clip each example's gradient to `clip`, average, add N(0, (sigma clip / B)^2).

    The client recomputes its gradient from the batch (per-example gradients with torch.func), so
    `apply` needs a `ClientContext` and ignores the values it is given (only their names/order).
    The adaptive attacker clips its dummy batch's per-example gradients the same way, differentiably
    (`dummy_gradient`); it cannot reproduce the noise. A FedSGD gradient only: a FedAvg client would
    have to clip at every local step (`apply_defense` refuses a delta).
    """

    clip: float
    noise_multiplier: float
    name: ClassVar[str] = "dpsgd"
    requires_context: ClassVar[bool] = True
    replaces_gradient: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (self.clip > 0) or math.isinf(self.clip):
            raise GifdError(
                f"dpsgd clip bound must be a finite number > 0 (e.g. dpsgd:1.0,1.1), got {self.clip:g}"
            )
        if not (self.noise_multiplier >= 0) or math.isinf(self.noise_multiplier):
            raise GifdError(
                f"dpsgd noise multiplier must be a finite number >= 0 (e.g. dpsgd:1.0,1.1), got {self.noise_multiplier:g}"
            )

    @torch.no_grad()
    def apply(self, tensors: Tensors, generator=None, context=None) -> Tensors:  # type: ignore[override]
        if context is None:
            raise GifdError(
                "the DP-SGD defense needs the client's batch: pass context=ClientContext(victim, images, labels)"
            )
        values, names = _as_list(tensors)
        victim = context.victim
        param_names = [n for n, _ in victim.named_parameters()]
        if names is not None and sorted(names) != sorted(param_names):
            raise GifdError("the DP-SGD defense needs an update with exactly the victim's parameters")
        inputs = victim.normalize(context.images.to(victim.device))
        with torch.enable_grad():
            clipped = clipped_mean_gradient(
                victim, inputs, context.labels.to(victim.device).long(), self.clip
            )
        std = self.noise_multiplier * self.clip / inputs.shape[0]
        noisy = [g + _noise_like(g, std, generator) if std > 0 else g for g in clipped]
        by_name = dict(zip(param_names, noisy, strict=True))
        if names is None:
            return noisy  # type: ignore[return-value]
        return {n: by_name[n].to(dtype=t.dtype) for n, t in zip(names, values, strict=True)}  # type: ignore[return-value]

    def dummy_gradient(self, victim: Victim, inputs: Tensor, labels: Tensor) -> list[Tensor] | None:
        """The per-example-clipped mean gradient of the dummy batch (differentiable in `inputs`)."""
        return clipped_mean_gradient(victim, inputs, labels, self.clip)

    def parameters(self) -> dict[str, float]:
        return {"noise_multiplier": self.noise_multiplier, "clip": self.clip}

    def spec(self) -> str:
        return f"dpsgd:{_num(self.clip)},{_num(self.noise_multiplier)}"

    def describe(self) -> str:
        return (
            f"DP-SGD aggregation: every example's gradient is clipped to l2 norm {_num(self.clip)}, "
            f"the clipped gradients are averaged and Gaussian noise of standard deviation "
            f"{_num(self.noise_multiplier)} x {_num(self.clip)} / batch size is added"
        )


def per_example_gradients(victim: Victim, inputs: Tensor, labels: Tensor) -> list[Tensor]:
    """Each example's cross-entropy gradient, B x (parameter shape) per parameter, in parameter order.

    torch.func (functional_call + grad + vmap), not a Python loop; differentiable in `inputs`. The
    model's own parameters are read, not changed; batch norm must be in eval mode (as the victims are).
    """
    model = victim.model
    names = [n for n, _ in victim.named_parameters()]
    params = {n: p.detach() for n, p in victim.named_parameters()}
    buffers = dict(model.named_buffers())

    def example_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    grads = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, inputs, labels)
    return [grads[n] for n in names]


def clip_per_example(per_example: Sequence[Tensor], clip: float) -> list[Tensor]:
    """Mean over examples of each example's gradient scaled by min(1, clip / (norm + 1e-6)) (each
    clipped gradient's norm is <= clip exactly, see `clip_scale`)."""
    batch = per_example[0].shape[0]
    norms = torch.sqrt(
        sum(
            torch.linalg.vector_norm(g.reshape(batch, -1), dim=1, dtype=torch.float64).square()
            for g in per_example
        )
    )
    scale = clip_scale(norms, clip, per_example[0].dtype)
    return [(g * scale.view(-1, *([1] * (g.ndim - 1)))).mean(dim=0) for g in per_example]


def clipped_mean_gradient(victim: Victim, inputs: Tensor, labels: Tensor, clip: float) -> list[Tensor]:
    """DP-SGD's aggregate before noise: per-example gradients clipped to `clip`, then averaged."""
    return clip_per_example(per_example_gradients(victim, inputs, labels), clip)


@dataclass(frozen=True, init=False)
class Compose(Defense):
    """Several defenses applied left to right on the client; `adapt` chains theirs in the same order."""

    defenses: tuple[Defense, ...]
    name: ClassVar[str] = "compose"

    def __init__(self, defenses: Sequence[Defense]) -> None:
        flat: list[Defense] = []
        for defense in defenses:
            flat.extend(defense.members())
        for i, defense in enumerate(flat):
            if defense.replaces_gradient and i > 0:
                raise GifdError(
                    f"{defense.spec()} computes the gradient itself, so it must come first: "
                    f"write {defense.spec()}+... "
                )
        object.__setattr__(self, "defenses", tuple(flat))

    @property
    def requires_context(self) -> bool:  # type: ignore[override]
        return any(d.requires_context for d in self.defenses)

    @property
    def replaces_gradient(self) -> bool:  # type: ignore[override]
        return any(d.replaces_gradient for d in self.defenses)

    def apply(self, tensors: Tensors, generator=None, context=None) -> Tensors:  # type: ignore[override]
        for defense in self.defenses:
            tensors = defense.apply(tensors, generator, context)
        return tensors

    def adapt(self, dummy: list[Tensor], shared: list[Tensor], names: list[str]) -> list[Tensor]:
        for defense in self.defenses:
            dummy = defense.adapt(dummy, shared, names)
        return dummy

    def dummy_gradient(self, victim: Victim, inputs: Tensor, labels: Tensor) -> list[Tensor] | None:
        for defense in self.defenses:
            gradient = defense.dummy_gradient(victim, inputs, labels)
            if gradient is not None:
                return gradient
        return None

    def estimated(self, shared: Sequence[Tensor], names: Sequence[str]) -> Defense:
        return Compose([d.estimated(shared, names) for d in self.defenses])

    def parameters(self) -> dict[str, float]:
        return {f"{d.name}.{k}": v for d in self.defenses for k, v in d.parameters().items()}

    def spec(self) -> str:
        return "+".join(d.spec() for d in self.defenses) or "none"

    def describe(self) -> str:
        if not self.defenses:
            return NoDefense().describe()
        return "; then ".join(d.describe() for d in self.defenses)

    def members(self) -> list[Defense]:
        return list(self.defenses)


# ------------------------------------------------------------------------------------------ parsing
_PARSERS: dict[str, tuple[int, Any]] = {
    "noise": (1, lambda a: NoiseDefense(a[0])),
    "clip": (1, lambda a: ClipDefense(a[0])),
    "prune": (1, lambda a: PruneDefense(a[0])),
    "soteria": (1, lambda a: SoteriaDefense(a[0])),
    "dpsgd": (2, lambda a: DPSGDDefense(a[0], a[1])),
}


def defense_names() -> list[str]:
    """The defense names the CLI spec knows."""
    return ["none", *_PARSERS]


def _parse_term(term: str, whole: str) -> Defense:
    name, _, arg_text = term.partition(":")
    name = name.strip().lower()
    if name == "none" and not arg_text:
        return NoDefense()
    if name not in _PARSERS:
        raise GifdError(f"unknown defense {name!r} in {whole!r}: valid forms are {DEFENSE_FORMS}")
    count, build = _PARSERS[name]
    pieces = [p.strip() for p in arg_text.split(",")] if arg_text.strip() else []
    if len(pieces) != count:
        raise GifdError(
            f"defense {name!r} in {whole!r} takes {count} number(s), got {len(pieces)}: valid forms are {DEFENSE_FORMS}"
        )
    try:
        numbers = [float(p) for p in pieces]
    except ValueError:
        raise GifdError(
            f"defense {term!r} in {whole!r} has a non-number: valid forms are {DEFENSE_FORMS}"
        ) from None
    if name == "soteria" and numbers[0] >= 1:
        raise GifdError(f"soteria takes a fraction in [0, 1) (soteria:0.1 prunes 10 %), got {pieces[0]}")
    return build(numbers)


def parse_defense(spec: str | Defense | None) -> Defense:
    """The defense of a CLI spec: `noise:0.01`, `clip:4`, `prune:0.2`, `soteria:0.1`,
    `dpsgd:1.0,1.1`, `none`, or several joined with `+` (applied left to right).

    A Defense is returned as it is; None or "" mean no defense. Bad specs raise a GifdError that
    lists the valid forms.
    """
    if isinstance(spec, Defense):
        return spec
    if spec is None or not str(spec).strip():
        return NoDefense()
    if not isinstance(spec, str):
        raise GifdError(f"a defense is given as text like 'clip:4+noise:0.01', got {type(spec).__name__}")
    terms = [t.strip() for t in spec.split("+")]
    if any(not t for t in terms):
        raise GifdError(f"defense {spec!r} has an empty part around '+': valid forms are {DEFENSE_FORMS}")
    parsed = [_parse_term(t, spec) for t in terms]
    members = [d for d in parsed if not isinstance(d, NoDefense)]
    if not members:
        return NoDefense()
    if len(members) == 1:
        return members[0]
    return Compose(members)


def parse_defense_sweep(spec: str) -> list[Defense]:
    """The settings of a sweep spec: a single-number defense with several values, e.g.
    `prune:0.1,0.3,0.5` -> three pruning defenses; anything else is one setting (`parse_defense`).
    """
    name, _, arg_text = spec.strip().partition(":")
    name = name.strip().lower()
    if "+" not in spec and name in _PARSERS and _PARSERS[name][0] == 1 and "," in arg_text:
        return [parse_defense(f"{name}:{value}") for value in arg_text.split(",")]
    return [parse_defense(spec)]


def aimed_at(defense: Defense, victim: Victim) -> Defense:
    """`defense` with every Soteria member aimed at `victim`'s last linear layer (`Victim.classifier`:
    "fc" for the built-ins, found on a probe batch for a MODULE:FACTORY victim)."""
    members = defense.members()
    if not any(isinstance(d, SoteriaDefense) for d in members):
        return defense
    if victim.classifier is None:
        raise GifdError(
            f"Soteria prunes the input features of the last linear layer, and victim {victim.name} does not "
            "end in one: use another defense"
        )
    aimed = [
        replace(d, classifier=victim.classifier) if isinstance(d, SoteriaDefense) else d for d in members
    ]
    return aimed[0] if len(aimed) == 1 else Compose(aimed)


# ------------------------------------------------------------------------------------- on an Update
def apply_defense(
    update: Update,
    defense: Defense | str | None,
    *,
    generator: torch.Generator | None = None,
    context: ClientContext | None = None,
    disclose: bool = False,
) -> Update:
    """A copy of `update` with `defense` applied by the client.

    With `disclose`, the spec goes into the metadata ("defense"), for a threat model in which the
    server knows the defense. DP-SGD needs a FedSGD gradient (kind "gradient") and a context.
    """
    defense = parse_defense(defense)
    if update.kind != "gradient" and defense.replaces_gradient:
        raise GifdError(
            f"{defense.spec()} defends a FedSGD gradient, not a FedAvg weight delta: "
            "use one local step (--local-steps 1) or another defense"
        )
    if context is not None and context.images.shape[0] != update.batch_size:
        raise GifdError(
            f"the defense's context holds {context.images.shape[0]} images but the update is of a batch of "
            f"{update.batch_size}: pass the batch the update was computed from"
        )
    tensors = defense.apply(dict(update.tensors), generator, context)
    metadata = dict(update.metadata)
    if disclose:
        metadata["defense"] = defense.spec()
    return Update(
        tensors={k: v.detach() for k, v in tensors.items()},
        batch_size=update.batch_size,
        kind=update.kind,
        labels=update.labels,
        metadata=metadata,
    )


@torch.no_grad()
def utility_cost(
    clean: Mapping[str, Tensor] | Sequence[Tensor], defended: Mapping[str, Tensor] | Sequence[Tensor]
) -> dict[str, float]:
    """How far a defense moves the update the server averages (the victim's utility cost).

    `cosine`: cosine similarity of the defended to the clean update (1 = direction kept);
    `relative_l2_error`: ||defended - clean|| / ||clean||; `norm_ratio`: ||defended|| / ||clean||;
    `zero_fraction`: the fraction of exactly-zero entries in the defended update.
    """
    clean_list, clean_names = _as_list(clean)
    defended_list, defended_names = _as_list(defended)
    if clean_names is not None and defended_names is not None:
        if set(clean_names) != set(defended_names):
            raise GifdError("the clean and defended updates have different parameter names")
        defended_list = [dict(zip(defended_names, defended_list, strict=True))[n] for n in clean_names]
    if len(clean_list) != len(defended_list) or any(
        a.shape != b.shape for a, b in zip(clean_list, defended_list, strict=True)
    ):
        raise GifdError("the clean and defended updates differ in tensor count or shapes")
    c = torch.cat([t.detach().double().flatten().cpu() for t in clean_list])
    d = torch.cat([t.detach().double().flatten().cpu() for t in defended_list])
    clean_norm, defended_norm = float(c.norm()), float(d.norm())
    return {
        "cosine": float(c @ d) / (clean_norm * defended_norm)
        if clean_norm > 0 and defended_norm > 0
        else 0.0,
        "relative_l2_error": float((d - c).norm()) / clean_norm if clean_norm > 0 else math.inf,
        "norm_ratio": defended_norm / clean_norm if clean_norm > 0 else math.inf,
        "zero_fraction": float((d == 0).double().mean()),
    }
