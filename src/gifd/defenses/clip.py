"""Global clipping of the update to an l2 bound (`clip:BOUND`), and the clipping arithmetic
DP-SGD shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from gifd.defenses.base import (
    Defense,
    ReproducibleDefense,
    register_defense,
    spec_number,
)
from gifd.errors import GifdError

#: Added to norms before dividing, as in the clipping of GGL and of DP-SGD implementations.
NORM_EPS = 1e-6


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


@register_defense
@dataclass(frozen=True)
class ClipDefense(ReproducibleDefense):
    """Scale the whole update by min(1, bound / (norm + 1e-6)), the norm taken over all tensors."""

    bound: float
    name: ClassVar[str] = "clip"
    arguments: ClassVar[tuple[str, ...]] = ("BOUND",)
    strengths: ClassVar[tuple[str, ...]] = ("clip:4", "clip:0.5")

    def __post_init__(self) -> None:
        if not (self.bound > 0) or math.isinf(self.bound):
            raise GifdError(f"clip bound must be a finite number > 0 (e.g. clip:4), got {self.bound:g}")

    def transform(self, values: list[Tensor]) -> list[Tensor]:
        """The clipped tensors; the attacker clips its dummy update the same way (a cosine
        distance ignores it)."""
        coarsest = max((t.dtype for t in values), key=lambda d: torch.finfo(d).eps)
        scale = clip_scale(global_norm(values), self.bound, coarsest)
        return [t * scale for t in values]

    @classmethod
    def estimate(cls, shared: Sequence[Tensor], names: Sequence[str] | None = None) -> ClipDefense:
        """The bound read off the update: its norm (exact when clipping was active)."""
        norm = float(global_norm([t.detach().double() for t in shared]))
        if norm <= 0:
            raise GifdError("cannot estimate a clip bound from an all-zero update: give the bound (clip:C)")
        return cls(norm)

    def estimated(self, shared: Sequence[Tensor], names: Sequence[str]) -> Defense:
        return self.estimate(shared, names)

    def describe(self) -> str:
        return f"the update is scaled down to l2 norm at most {spec_number(self.bound)} (global clipping)"
