"""Device choice and seeding: CUDA when available unless told otherwise, reproducible randomness."""

from __future__ import annotations

import hashlib
import json
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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch globally.

    Library code takes randomness from an explicit generator (`derived_generator`); the global
    seeds only guard code outside the project (e.g. cuDNN algorithm choice).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(seed: int, *names: str | int) -> int:
    """A 63-bit seed of the random stream `names` of a run seeded with `seed`.

    Each party, batch and attack draws from its own stream, e.g. ("client", 0, "defense") or
    ("attacker", 0, "attack", "gifd"), so what one draws never shifts what another draws: a noise
    defense changes the update the attacker sees and nothing else, and adding an attack leaves
    the others' random starts alone. The seed is the first 63 bits of the SHA-256 of the JSON
    list [seed, *names], the same on every platform and Python version.
    """
    text = json.dumps([int(seed), *names], separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def derived_generator(seed: int, *names: str | int) -> torch.Generator:
    """A CPU torch.Generator of the stream `names` of a run seeded with `seed` (`derived_seed`)."""
    return torch.Generator().manual_seed(derived_seed(seed, *names))


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
