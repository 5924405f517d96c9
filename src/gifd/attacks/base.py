"""What every attack shares: the attacker's view, gradient matching, results, progress, registry.

The attacker sees a `Target`: the victim (architecture and weights: white-box), the shared
`Update`, and the labels it inferred (or was disclosed). It never sees the private images; the
types keep ground truth out (only `gifd.metrics` receives it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import Tensor
from tqdm.auto import tqdm

from gifd.attacks.objectives import GradientDistance, gradient_distance
from gifd.client import Update, validate_update
from gifd.config import build_config
from gifd.errors import GifdError
from gifd.registry import Registry
from gifd.victims import Victim


class AttackConfig(BaseModel):
    """Settings shared by every attack; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    steps: int = 1000
    restarts: int = 4
    lr: float = 0.1
    distance: GradientDistance = "cosine"
    #: Optional weight per gradient tensor (in the victim's parameter order).
    layer_weights: list[float] | None = None
    #: Log (and record the loss curve) every this many steps.
    log_every: int = 25


@dataclass
class Target:
    """The attacker's view of one client update."""

    victim: Victim
    update: Update
    labels: Tensor

    def __post_init__(self) -> None:
        validate_update(self.update, self.victim)
        if self.labels.numel() != self.update.batch_size:
            raise GifdError(f"{self.labels.numel()} labels given for a batch of {self.update.batch_size}")

    @property
    def batch_size(self) -> int:
        return self.update.batch_size

    @property
    def device(self) -> torch.device:
        return self.victim.device


class GradientMatcher:
    """Gradient-matching loss of dummy inputs against the shared update (differentiable).

    The dummy gradient is that of the mean cross-entropy of the victim on the dummy inputs with
    the attacker's labels, computed with create_graph so its distance to the target can be
    back-propagated to the inputs (the double backward of every gradient inversion attack).
    """

    def __init__(
        self,
        target: Target,
        distance: GradientDistance = "cosine",
        layer_weights: Sequence[float] | None = None,
    ):
        self.target = target
        self.victim = target.victim
        self.params = [p for _, p in self.victim.named_parameters()]
        self.target_tensors = [t.to(self.victim.device) for t in target.update.ordered(self.victim)]
        self.labels = target.labels.to(self.victim.device)
        self.distance = distance
        self.layer_weights = layer_weights

    def dummy_gradient(self, inputs: Tensor) -> list[Tensor]:
        """The gradient the client would send for normalised `inputs` and the attacker's labels."""
        loss = F.cross_entropy(self.victim.model(inputs), self.labels)
        return list(torch.autograd.grad(loss, self.params, create_graph=True))

    def __call__(self, inputs: Tensor) -> Tensor:
        """Gradient distance between the dummy gradient of `inputs` and the shared one."""
        return gradient_distance(
            self.dummy_gradient(inputs), self.target_tensors, self.distance, self.layer_weights
        )


@dataclass
class StageResult:
    """The best images of one stage of a staged attack and their gradient losses."""

    stage: int
    name: str
    images: Tensor
    loss: float
    restart_losses: list[float]
    #: Step (counted over the whole attack) at which this stage ended, for stage marks on loss curves.
    end_step: int | None = None


@dataclass
class AttackResult:
    """What an attack recovered from one update.

    `images` are the best restart's reconstructions in [0, 1] at the victim's resolution.
    `restart_losses` are the final gradient-matching losses, `loss_history[r]` the loss of
    restart r at the steps in `log_steps` (for curves). Staged attacks fill `stages`.
    """

    attack: str
    images: Tensor
    labels: Tensor
    restart_losses: list[float]
    best_restart: int
    loss_history: list[list[float]]
    log_steps: list[int]
    steps: int
    seconds: float
    stages: list[StageResult] = field(default_factory=list)

    @property
    def loss(self) -> float:
        return self.restart_losses[self.best_restart]

    def summary(self) -> dict[str, Any]:
        """JSON-friendly facts (no images)."""
        return {
            "attack": self.attack,
            "gradient_loss": self.loss,
            "restart_losses": self.restart_losses,
            "best_restart": self.best_restart,
            "labels": self.labels.tolist(),
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "loss_history": {"steps": self.log_steps, "losses": self.loss_history},
            "stages": [
                {
                    "stage": s.stage,
                    "name": s.name,
                    "gradient_loss": s.loss,
                    "restart_losses": s.restart_losses,
                    "end_step": s.end_step,
                }
                for s in self.stages
            ],
        }


class Attack:
    """Base of all attacks: a config and `run(target, generator) -> AttackResult`."""

    name: ClassVar[str]
    Config: ClassVar[type[AttackConfig]] = AttackConfig
    #: Whether the attack searches a generative prior (then it takes `prior=` when built).
    needs_prior: ClassVar[bool] = False

    def __init__(self, config: AttackConfig | dict[str, Any] | None = None, *, progress: bool = True):
        if isinstance(config, dict) or config is None:
            config = build_config(self.Config, config or {}, f"{self.name} settings")
        if not isinstance(config, self.Config):
            raise GifdError(f"{self.name} takes a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        self.progress = progress

    def run(self, target: Target, generator: torch.Generator) -> AttackResult:
        raise NotImplementedError


ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: register an attack under its `name`."""
    ATTACKS.register(cls.name)(cls)
    return cls


# ------------------------------------------------------------------------------- shared loop parts
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
