"""Device choice and seeding: CUDA when available unless told otherwise, reproducible randomness."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from gifd.errors import GifdError


def resolve_device(name: str | None = None) -> torch.device:
    """The torch device for `name` ("cpu", "cuda", "cuda:1"); None or "auto" = CUDA if available."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise GifdError(f"unknown device {name!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GifdError(f"device {name!r} asked for, but CUDA is not available here: use --device cpu")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and return a CPU torch.Generator seeded with `seed`.

    Library code takes randomness from an explicit generator; the global seeds only guard code
    outside the project (e.g. cuDNN algorithm choice).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block on `threads` torch CPU threads (None: as they are), then restore the count."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
