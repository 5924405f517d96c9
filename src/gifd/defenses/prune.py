"""Magnitude pruning of every tensor of the update (`prune:RATIO`)."""

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
    check_ratio,
    register_defense,
)
from gifd.errors import GifdError


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


@register_defense
@dataclass(frozen=True)
class PruneDefense(ReproducibleDefense):
    """Per tensor, zero the floor(ratio n) entries of smallest magnitude (sparsification)."""

    ratio: float
    name: ClassVar[str] = "prune"
    arguments: ClassVar[tuple[str, ...]] = ("RATIO",)
    strengths: ClassVar[tuple[str, ...]] = ("prune:0.5", "prune:0.9")

    def __post_init__(self) -> None:
        check_ratio("prune", self.ratio, "ratio")

    def transform(self, values: list[Tensor]) -> list[Tensor]:
        """The pruned tensors; the attacker prunes its dummy update with the dummy's own mask
        (gradients flow through the kept entries)."""
        return [t * magnitude_mask(t, self.ratio) for t in values]

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

    def describe(self) -> str:
        return (
            f"{100 * self.ratio:.4g} % of the entries of every tensor, those of smallest magnitude, "
            "are set to zero (sparsification)"
        )
