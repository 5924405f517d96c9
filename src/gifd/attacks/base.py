"""What every attack shares: its config, the Attack class and the registry; the parts live in their
own modules (`target`, `matching`, `batchnorm`, `result`, `loop`) and are importable from here.

The attacker sees a `Target`: the victim (architecture and weights: white-box), the shared
`Update`, and the labels it inferred (or was disclosed). It never sees the private images; the
types keep ground truth out (only `gifd.metrics` receives it).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from gifd.attacks.batchnorm import AffineBatchNorm, affine_batch_norm_copy
from gifd.attacks.loop import LossLog, Stopwatch, clamp_bounds, progress_bar, to_victim_images
from gifd.attacks.matching import GradientMatcher
from gifd.attacks.objectives import GradientDistance
from gifd.attacks.result import AttackResult, Pruning, StageResult
from gifd.attacks.target import Target
from gifd.config import Count, NonNegative, Positive, build_config
from gifd.errors import GifdError
from gifd.registry import Registry

#: The attack API, importable from here (each part lives in its own module).
__all__ = [
    "ATTACKS",
    "AffineBatchNorm",
    "Attack",
    "AttackConfig",
    "AttackResult",
    "GradientMatcher",
    "LossLog",
    "Pruning",
    "StageResult",
    "Stopwatch",
    "Target",
    "affine_batch_norm_copy",
    "clamp_bounds",
    "progress_bar",
    "register_attack",
    "to_victim_images",
]


class AttackConfig(BaseModel):
    """Settings shared by every attack; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    steps: Count = 1000
    restarts: Count = 4
    lr: Positive = 0.1
    distance: GradientDistance = "cosine"
    #: Optional weight per gradient tensor (in the victim's parameter order).
    layer_weights: list[NonNegative] | None = None
    #: Log (and record the loss curve) every this many steps.
    log_every: Count = 25
    #: Compute the restarts' gradient losses as one batched computation (torch.func vmap over the
    #: restarts); false: one restart after another. Both give the same numbers up to float
    #: rounding; the sequential loop stays for comparison and for victims vmap cannot batch.
    batched: bool = True


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

    def check(self) -> None:
        """Raise a GifdError if the settings cannot work with this attack's inputs (e.g. its
        prior); called before any compute. Settings alone are checked by the Config."""

    def run(self, target: Target, generator: torch.Generator) -> AttackResult:
        raise NotImplementedError


ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: register an attack under its `name`."""
    ATTACKS.register(cls.name)(cls)
    return cls


# ------------------------------------------------------------------------------- shared loop parts


