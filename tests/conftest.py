"""Shared fixtures: tiny victims and real built-in images, all seeded."""

from __future__ import annotations

import pytest
import torch

from gifd.attacks import Target
from gifd.client import compute_update
from gifd.data import load_images
from gifd.priors import StagedGenerator, create_prior
from gifd.victims import Victim, create_victim


@pytest.fixture(scope="session")
def cifar32() -> torch.Tensor:
    """Eight real CIFAR-10 images (32 px, [0, 1]) shipped inside the foolbox wheel."""
    return load_images("builtin:cifar10", 32, indices=list(range(8))).images


@pytest.fixture
def lenet32() -> Victim:
    return create_victim("lenet", resolution=32, num_classes=10, seed=0)


@pytest.fixture(scope="module")
def prior() -> StagedGenerator:
    """The pretrained face DCGAN (the built-in prior)."""
    return create_prior("digiface-dcgan64")


@pytest.fixture(scope="module")
def target(cifar32: torch.Tensor) -> Target:
    """The attacker's view of one CIFAR image's FedSGD gradient on a seeded LeNet (label 3)."""
    victim = create_victim("lenet", resolution=32, num_classes=10, seed=0)
    labels = torch.tensor([3])
    return Target(victim, compute_update(victim, cifar32[:1], labels), labels)
