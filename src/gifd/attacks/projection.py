"""Euclidean projection onto the l1 ball (Duchi et al. 2008), per sample.

GIFD keeps every feature-domain variable inside an l1 ball around where its stage started:
after each step, h <- h_start + P(h - h_start), P the projection onto {v : |v|_1 <= r}.
"""

from __future__ import annotations

import torch
from torch import Tensor


def project_l1_ball(v: Tensor, radius: float | Tensor) -> Tensor:
    """Project each sample of `v` (first dim = batch) onto the l1 ball of `radius`.

    Sort-based exact projection: a point already inside the ball is returned unchanged; radius 0
    gives zeros. Works on any device and dtype, without host syncs.
    """
    flat = v.flatten(1)
    n, d = flat.shape
    radius_t = torch.as_tensor(radius, dtype=flat.dtype, device=flat.device).expand(n).unsqueeze(1)
    magnitude = flat.abs()
    inside = magnitude.sum(1, keepdim=True) <= radius_t
    sorted_mag = magnitude.sort(dim=1, descending=True).values
    cumulative = sorted_mag.cumsum(1)
    index = torch.arange(1, d + 1, device=flat.device, dtype=flat.dtype)
    # rho = the largest j with u_j > (cumsum_j - r) / j; always >= 1 for r >= 0.
    condition = sorted_mag * index > cumulative - radius_t
    rho = (condition * index).max(1, keepdim=True).values.clamp_min(1)
    theta = (cumulative.gather(1, rho.long() - 1) - radius_t) / rho
    projected = flat.sign() * (magnitude - theta.clamp_min(0)).clamp_min(0)
    return torch.where(inside, flat, projected).view_as(v)
