"""Parts every attack loop shares: input bounds, generator output to victim images, the loss log,
the progress bar and the stopwatch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from gifd.victims import Victim


def clamp_bounds(victim: Victim, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-channel bounds of the normalised input space (images of [0, 1])."""
    zeros = torch.zeros(1, 3, 1, 1, device=device)
    return victim.normalize(zeros), victim.normalize(zeros + 1)


def to_victim_images(images: Tensor, resolution: int) -> Tensor:
    """Generator output in [-1, 1] -> [0, 1] at the victim's resolution.

    Shrinking uses area (average) pooling, as the paper does; enlarging uses bilinear interpolation.
    """
    images = (images + 1) / 2
    side = images.shape[-1]
    if side > resolution:
        return F.interpolate(images, size=(resolution, resolution), mode="area")
    if side < resolution:
        return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return images


@dataclass
class LossLog:
    """Gradient losses recorded at log intervals, per restart (host syncs only there)."""

    restarts: int
    steps: list[int] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.losses = [[] for _ in range(self.restarts)]

    def record(self, step: int, per_restart: Tensor) -> list[float]:
        values = per_restart.detach().double().cpu().tolist()
        self.steps.append(step)
        for r, v in enumerate(values):
            self.losses[r].append(v)
        return values


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool) -> Iterator[Callable[[int, float], None]]:
    """A tqdm bar with the best loss and ETA; yields `advance(steps, best_loss)`."""
    bar = tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, mininterval=0.5)

    def advance(steps: int, loss: float) -> None:
        if not math.isnan(loss):
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.update(steps)

    try:
        yield advance
    finally:
        bar.close()


class Stopwatch:
    """Wall time of an attack, synchronising CUDA so GPU work is counted."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def elapsed(self) -> float:
        return self._now() - self.start
