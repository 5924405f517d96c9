"""Objectives of gradient inversion: gradient matching and image regularisers.

Gradient matching compares the gradient of a dummy batch with the shared one:
- `cosine` (the paper's): one global cosine distance over all tensors concatenated,
  1 - <g, g*> / (|g| |g*|);
- `cosine-layer`: the cosine distance of each tensor, averaged (IG's per-layer variant);
- `l2`: the sum of squared differences divided by the number of tensors.
Optional per-tensor weights multiply each tensor's contribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from gifd.errors import GifdError

GradientDistance = Literal["cosine", "cosine-layer", "l2"]
GRADIENT_DISTANCES = ("cosine", "cosine-layer", "l2")


def gradient_distance(
    dummy: Sequence[Tensor],
    target: Sequence[Tensor],
    distance: GradientDistance = "cosine",
    weights: Sequence[float] | None = None,
) -> Tensor:
    """Distance between two gradients given as matching lists of tensors (differentiable)."""
    if len(dummy) != len(target):
        raise GifdError(f"gradient lists differ in length: {len(dummy)} vs {len(target)}")
    w = [1.0] * len(dummy) if weights is None else list(weights)
    if len(w) != len(dummy):
        raise GifdError(f"{len(w)} layer weights given for {len(dummy)} gradient tensors")
    if distance == "cosine":
        dot = sum(wi * (d * t).sum() for wi, d, t in zip(w, dummy, target, strict=True))
        dummy_sq = sum(wi * d.pow(2).sum() for wi, d in zip(w, dummy, strict=True))
        target_sq = sum(wi * t.pow(2).sum() for wi, t in zip(w, target, strict=True))
        return 1 - dot / (dummy_sq.sqrt() * target_sq.sqrt() + 1e-12)
    if distance == "cosine-layer":
        terms = [
            wi * (1 - torch.nn.functional.cosine_similarity(d.flatten(), t.flatten(), dim=0, eps=1e-12))
            for wi, d, t in zip(w, dummy, target, strict=True)
        ]
        return torch.stack(terms).sum() / sum(w)
    if distance == "l2":
        return sum(wi * (d - t).pow(2).sum() for wi, d, t in zip(w, dummy, target, strict=True)) / len(dummy)
    raise GifdError(f"unknown gradient distance {distance!r}: use one of {', '.join(GRADIENT_DISTANCES)}")


def total_variation(images: Tensor) -> Tensor:
    """Anisotropic total variation: mean |dx| + mean |dy| over the batch (paper's definition)."""
    return restart_total_variation(images, 1)[0]


def image_norm(images: Tensor) -> Tensor:
    """Mean l2 norm of the images (GI's R_norm)."""
    return restart_image_norm(images, 1)[0]


def restart_total_variation(images: Tensor, restarts: int) -> Tensor:
    """`total_variation` of each restart's batch (restarts stacked along dim 0), shape (restarts,)."""
    x = images.reshape(restarts, -1, *images.shape[-2:])
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def restart_image_norm(images: Tensor, restarts: int) -> Tensor:
    """`image_norm` of each restart's batch (restarts stacked along dim 0), shape (restarts,)."""
    per_image = images.reshape(images.shape[0], -1).norm(dim=1)
    return per_image.reshape(restarts, -1).mean(1)
