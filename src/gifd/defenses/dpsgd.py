"""DP-SGD's aggregation (`dpsgd:CLIP,SIGMA`): per-example clipping, mean, Gaussian noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from gifd.defenses.base import (
    Defense,
    Tensors,
    as_list,
    gaussian_noise,
    register_defense,
    require_context,
    spec_number,
)
from gifd.defenses.clip import clip_scale
from gifd.errors import GifdError
from gifd.victims import Victim


@register_defense
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
    arguments: ClassVar[tuple[str, ...]] = ("CLIP", "SIGMA")
    strengths: ClassVar[tuple[str, ...]] = ("dpsgd:4,0.001", "dpsgd:0.5,0.01")
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
        context = require_context(context, "DP-SGD")
        values, names = as_list(tensors)
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
        noisy = [g + gaussian_noise(g, std, generator) if std > 0 else g for g in clipped]
        by_name = dict(zip(param_names, noisy, strict=True))
        if names is None:
            return noisy  # type: ignore[return-value]
        return {n: by_name[n].to(dtype=t.dtype) for n, t in zip(names, values, strict=True)}  # type: ignore[return-value]

    def dummy_gradient(self, victim: Victim, inputs: Tensor, labels: Tensor) -> list[Tensor] | None:
        """The per-example-clipped mean gradient of the dummy batch (differentiable in `inputs`)."""
        return clipped_mean_gradient(victim, inputs, labels, self.clip)

    def parameters(self) -> dict[str, float]:
        """The noise multiplier first: it is the strength a sweep plots against."""
        return {"noise_multiplier": self.noise_multiplier, "clip": self.clip}

    def describe(self) -> str:
        return (
            f"DP-SGD aggregation: every example's gradient is clipped to l2 norm {spec_number(self.clip)}, "
            f"the clipped gradients are averaged and Gaussian noise of standard deviation "
            f"{spec_number(self.noise_multiplier)} x {spec_number(self.clip)} / batch size is added"
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
