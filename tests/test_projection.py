"""The l1-ball projection against an independent solver (bisection on the dual threshold)."""

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from gifd.attacks.projection import project_l1_ball


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
