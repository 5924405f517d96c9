"""Shared fixtures: tiny victims and real built-in images, all seeded."""

from __future__ import annotations

import pytest
import torch

from gifd.data import load_images
from gifd.victims import Victim, create_victim


@pytest.fixture(scope="session")
def cifar32() -> torch.Tensor:
    """Eight real CIFAR-10 images (32 px, [0, 1]) shipped inside the foolbox wheel."""
    return load_images("builtin:cifar10", 32, indices=list(range(8))).images


@pytest.fixture
def lenet32() -> Victim:
    return create_victim("lenet", resolution=32, num_classes=10, seed=0)
