import pytest
import torch

from gifd.attacks.objectives import gradient_distance, image_norm, total_variation
from gifd.errors import GifdError


def test_global_cosine_is_one_minus_cosine_of_the_concatenation() -> None:
    g = [torch.randn(3, 4), torch.randn(5)]
    h = [torch.randn(3, 4), torch.randn(5)]
    flat_g, flat_h = torch.cat([t.flatten() for t in g]), torch.cat([t.flatten() for t in h])
    expected = 1 - torch.dot(flat_g, flat_h) / (flat_g.norm() * flat_h.norm())
    assert torch.allclose(gradient_distance(g, h, "cosine"), expected, atol=1e-6)
    assert gradient_distance(g, [2 * t for t in g], "cosine").abs() < 1e-6  # scale-invariant


def test_layer_cosine_and_l2() -> None:
    g = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])]
    h = [torch.tensor([0.0, 1.0]), torch.tensor([2.0, 2.0])]
    assert torch.allclose(gradient_distance(g, h, "cosine-layer"), torch.tensor(0.5))
    assert torch.allclose(gradient_distance(g, h, "l2"), torch.tensor((2.0 + 2.0) / 2))
    assert torch.allclose(
        gradient_distance(g, h, "cosine-layer", weights=[0.0, 1.0]), torch.tensor(0.0), atol=1e-6
    )


def test_bad_arguments() -> None:
    with pytest.raises(GifdError, match="unknown gradient distance"):
        gradient_distance([torch.ones(1)], [torch.ones(1)], "l1")  # type: ignore[arg-type]
    with pytest.raises(GifdError, match="2 layer weights given for 1"):
        gradient_distance([torch.ones(1)], [torch.ones(1)], weights=[1, 2])


def test_total_variation_and_norm() -> None:
    image = torch.zeros(1, 1, 2, 3)
    image[..., :, 2] = 1.0  # one vertical edge: |dx| = 1 at 2 of 4 places, no dy
    assert torch.allclose(total_variation(image), torch.tensor(0.5))
    assert torch.allclose(image_norm(torch.full((2, 3, 2, 2), 0.5)), torch.tensor(12**0.5 / 2))
