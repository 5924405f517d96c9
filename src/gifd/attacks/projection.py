"""Euclidean projection onto the l1 ball (Duchi et al. 2008), per sample.

GIFD keeps every feature-domain variable inside an l1 ball around where its stage started:
after each step, h <- h_start + P(h - h_start), P the projection onto {v : |v|_1 <= r}.

P soft-thresholds at theta, the root of sum(max(|v| - theta, 0)) = r. Two exact ways to find it:
sorting |v| (Duchi et al.; no host sync, used off the CPU) and, on the CPU, Michelot's active-set
iteration (theta = (sum of the active |v| - r) / their count, dropping the entries <= theta, until
none drops), which passes over a shrinking set instead of sorting all of it: a feature map of
millions of entries is sorted at every step otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor


def project_l1_ball(v: Tensor, radius: float | Tensor) -> Tensor:
    """Project each sample of `v` (first dim = batch) onto the l1 ball of `radius`.

    Exact projection: a point already inside the ball is returned unchanged; radius 0 gives zeros.
    Works on any device and dtype; off the CPU without host syncs.
    """
    flat = v.flatten(1)
    n = flat.shape[0]
    radius_t = torch.as_tensor(radius, dtype=flat.dtype, device=flat.device).expand(n).unsqueeze(1)
    magnitude = flat.abs()
    inside = magnitude.sum(1, keepdim=True) <= radius_t
    if flat.device.type == "cpu":
        theta = threshold_by_active_set(magnitude, radius_t, inside)
    else:
        theta = threshold_by_sort(magnitude, radius_t)
    projected = flat.sign() * (magnitude - theta.clamp_min(0)).clamp_min(0)
    return torch.where(inside, flat, projected).view_as(v)


def threshold_by_sort(magnitude: Tensor, radius: Tensor) -> Tensor:
    """theta per row of `magnitude` (n, d) for radii `radius` (n, 1), by sorting (no host sync)."""
    d = magnitude.shape[1]
    sorted_mag = magnitude.sort(dim=1, descending=True).values
    cumulative = sorted_mag.cumsum(1)
    index = torch.arange(1, d + 1, device=magnitude.device, dtype=magnitude.dtype)
    # rho = the largest j with u_j > (cumsum_j - r) / j; always >= 1 for r >= 0.
    condition = sorted_mag * index > cumulative - radius
    rho = (condition * index).max(1, keepdim=True).values.clamp_min(1)
    return (cumulative.gather(1, rho.long() - 1) - radius) / rho


def threshold_by_active_set(magnitude: Tensor, radius: Tensor, inside: Tensor) -> Tensor:
    """theta per row of `magnitude` (n, d) for radii `radius` (n, 1), by Michelot's iteration
    (sums in float64); rows `inside` the ball get 0. Reads sizes on the host at every iteration."""
    theta = torch.zeros_like(radius)
    for row in range(magnitude.shape[0]):
        if bool(inside[row]):
            continue
        r = float(radius[row])
        active = magnitude[row]
        value = (active.sum(dtype=torch.float64) - r) / active.numel()
        while True:
            # theta never decreases, so an entry <= theta now stays out; for r > 0 the entries
            # above theta are never all gone (their mean exceeds theta).
            kept = active[active > value]
            if kept.numel() == active.numel() or kept.numel() == 0:
                break
            active = kept
            value = (active.sum(dtype=torch.float64) - r) / active.numel()
        theta[row] = value.to(theta.dtype)
    return theta
