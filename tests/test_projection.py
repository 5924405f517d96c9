"""The l1-ball projection against an independent solver (bisection on the dual threshold)."""

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from gifd.attacks.projection import project_l1_ball, threshold_by_active_set, threshold_by_sort


def reference_projection(v: np.ndarray, radius: float) -> np.ndarray:
    """argmin |x - v|_2 s.t. |x|_1 <= r: soft-thresholding at the root theta of sum(max(|v|-theta, 0)) = r."""
    magnitude = np.abs(v)
    if magnitude.sum() <= radius:
        return v.copy()
    if radius == 0:
        return np.zeros_like(v)
    theta = brentq(lambda t: np.maximum(magnitude - t, 0).sum() - radius, 0.0, magnitude.max(), xtol=1e-14)
    return np.sign(v) * np.maximum(magnitude - theta, 0)


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_reference_on_random_inputs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(6, 3, 4, 5)) * rng.uniform(0.1, 10)
    radii = np.array([0.0, 0.5, 5.0, 20.0, 1e3, np.abs(v[5]).sum() * 0.999])
    projected = project_l1_ball(torch.tensor(v), torch.tensor(radii)).numpy()
    for i, radius in enumerate(radii):
        expected = reference_projection(v[i].ravel(), radius).reshape(v[i].shape)
        np.testing.assert_allclose(projected[i], expected, atol=1e-9)
        assert np.abs(projected[i]).sum() <= radius + 1e-9


def test_points_inside_stay_and_radius_zero_gives_zero() -> None:
    v = torch.tensor([[0.1, -0.2, 0.3], [3.0, -4.0, 0.5]])
    assert torch.equal(project_l1_ball(v, 10.0), v)
    assert torch.equal(project_l1_ball(v, 0.0), torch.zeros_like(v))


def test_projection_is_the_closest_point_in_the_ball() -> None:
    # Brute force: no random point of the ball is closer to v than its projection.
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(1, 4, generator=generator) * 3
    projected = project_l1_ball(v, 1.0)
    candidates = torch.randn(20000, 4, generator=generator)
    candidates = (
        candidates / candidates.abs().sum(1, keepdim=True) * torch.rand(20000, 1, generator=generator)
    )
    assert (candidates - v).norm(dim=1).min() >= (projected - v).norm() - 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_active_set_threshold_equals_the_sort_threshold(dtype: torch.dtype) -> None:
    # The CPU path (Michelot's iteration) against the sort path used off the CPU, on feature-map
    # sized rows (a GIFD stage's h minus its start after a few Adam steps) and on edge cases.
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(4, 200_000, generator=generator, dtype=dtype) * 0.05
    v[3] = 0.25  # all entries equal
    magnitude = v.abs()
    radius = torch.tensor([[100.0], [7500.0], [0.0], [1.0]], dtype=dtype)
    inside = magnitude.sum(1, keepdim=True) <= radius
    assert not inside.any()
    by_sort = threshold_by_sort(magnitude, radius)
    by_active_set = threshold_by_active_set(magnitude, radius, inside)
    # Both are exact up to float rounding of sums over 2e5 entries (the sort's cumsum is in dtype).
    scale = float(magnitude.max())
    tolerance = 4 * (magnitude.shape[1] ** 0.5) * torch.finfo(dtype).eps * scale
    torch.testing.assert_close(by_active_set, by_sort, rtol=0, atol=tolerance)
    projected = project_l1_ball(v, radius.squeeze(1))
    sums = projected.abs().sum(1, dtype=torch.float64)
    assert (sums[:2] - radius[:2, 0].double()).abs().max() <= 1e-3 * radius[:2].max()
    assert torch.equal(projected[2], torch.zeros_like(projected[2]))
