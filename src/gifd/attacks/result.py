"""What an attack returns: the best images, per-restart and per-stage losses, timings, prunings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


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
    #: Steps the stage was given and the steps it ran (fewer when it stopped early on a plateau).
    budget: int | None = None
    steps: int | None = None

    @property
    def stopped_early(self) -> bool:
        return self.budget is not None and self.steps is not None and self.steps < self.budget


@dataclass
class Pruning:
    """Restarts an attack stopped running (successive halving): in which stage, after which step
    (counted over the whole attack), and which (original indices)."""

    stage: int
    step: int
    restarts: list[int]


@dataclass
class AttackResult:
    """What an attack recovered from one update.

    `images` are the best restart's reconstructions in [0, 1] at the victim's resolution.
    `restart_losses` are the final gradient-matching losses, `loss_history[r]` the loss of
    restart r at the steps in `log_steps` (for curves). Staged attacks fill `stages`; `steps` are
    the steps run per restart (fewer than the budget when a stage stopped early).
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
    #: Settings the attack resolved itself rather than took from its config (e.g. GIAS's fine-tune
    #: lr from the prior), recorded in results.json.
    settings: dict[str, Any] = field(default_factory=dict)
    #: Restarts pruned during the attack, in order (empty: every restart ran to the end).
    pruned: list[Pruning] = field(default_factory=list)

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
            "settings": dict(self.settings),
            "stages": [
                {
                    "stage": s.stage,
                    "name": s.name,
                    "gradient_loss": s.loss,
                    "restart_losses": s.restart_losses,
                    "end_step": s.end_step,
                    "budget": s.budget,
                    "steps": s.steps,
                    "stopped_early": s.stopped_early,
                }
                for s in self.stages
            ],
            "pruned": [{"stage": p.stage, "step": p.step, "restarts": p.restarts} for p in self.pruned],
        }
