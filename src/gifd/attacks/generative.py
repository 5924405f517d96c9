"""The base of the attacks that search a generative prior (GIFD and its ablations, GIAS): their
shared settings (schedule, regularisers, presets), the prior's context and victim inputs, restart
scoring, the warm-up / flat / cosine schedule, and the per-stage run record."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from gifd.attacks.base import (
    Attack,
    AttackConfig,
    GradientMatcher,
    LossLog,
    Target,
    to_victim_images,
)
from gifd.attacks.objectives import restart_image_norm, restart_total_variation
from gifd.config import NonNegative
from gifd.errors import GifdError
from gifd.priors.base import Context, StagedGenerator, Variables


class GenerativeConfig(AttackConfig):
    """Settings of an attack that searches a generative prior."""

    #: Regularisers on the victim-resolution images in [0, 1] (paper: TV 1e-4, norm 1e-6).
    tv: NonNegative = 1e-4
    norm: NonNegative = 1e-6
    #: Early stop: end a stage once its best loss has improved by less than `early_stop_gain`
    #: (relative) over the last `early_stop_window` (a fraction) of its steps; checked at log
    #: intervals only (`log_every`), so it adds no host sync.
    early_stop: bool = False
    early_stop_window: float = Field(0.1, gt=0, le=1)
    early_stop_gain: float = Field(0.01, ge=0, lt=1)
    #: Named settings ("paper" or "fast", see the class's `PRESETS`); keys given explicitly
    #: override the preset's.
    preset: Literal["paper", "fast"] = "paper"

    #: "paper": every restart runs its full budget. "fast": stages stop early on a plateau.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"batched": True, "early_stop": False},
        "fast": {"batched": True, "early_stop": True},
    }

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        """Fill the settings the preset names unless they were given explicitly (at construction)."""
        if isinstance(values, dict) and values.get("preset") in cls.PRESETS:
            return {**cls.PRESETS[values["preset"]], **values}
        return values


def lr_factor(step: int, total: int, warmup: float, flat: float) -> float:
    """GIFD's schedule at `step` of `total`: linear warm-up, flat, cosine decay to 0.

    The warm-up factor is capped at 1: when warm-up x total is fractional or below 1, the last
    warm-up step (step + 1) / (warmup x total) would exceed the flat lr otherwise.
    """
    warm, flat_end = warmup * total, max(flat * total, warmup * total)
    if step < warm:
        return min(1.0, (step + 1) / warm)
    if step < flat_end or total <= flat_end:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - flat_end) / (total - flat_end)))


class GenerativeAttack(Attack):
    """An attack that needs a generative prior (passed as `prior=`)."""

    needs_prior = True
    config: GenerativeConfig

    def __init__(self, config=None, *, prior: StagedGenerator | None = None, progress: bool = True):  # type: ignore[no-untyped-def]
        super().__init__(config, progress=progress)
        if prior is None:
            raise GifdError(f"{self.name} needs a generative prior: pass --prior (see `gifd priors`)")
        self.prior = prior

    def prior_context(self, target: Target, copies: int) -> Context:
        """The prior's fixed inputs for `copies` stacked copies of the batch (restarts)."""
        labels = target.labels.to(self.prior.device).repeat(copies)
        if self.prior.num_classes is not None and int(labels.max()) >= self.prior.num_classes:
            raise GifdError(
                f"inferred labels {target.labels.tolist()} exceed the prior's {self.prior.num_classes} classes: "
                "use a victim whose classes are the prior's, or an unconditional prior"
            )
        return self.prior.context(labels if self.prior.num_classes is not None else None, labels.numel())

    def victim_inputs(self, images: Tensor, target: Target) -> Tensor:
        """Generator output in [-1, 1] -> the victim's normalised input."""
        victim = target.victim
        return victim.normalize(to_victim_images(images, victim.resolution))

    def restart_losses(self, images: Tensor, target: Target, matcher: GradientMatcher) -> Tensor:
        """Gradient-matching loss of each restart's batch, shape (restarts,), of generator output
        `images` (the restarts stacked along dim 0, N rows each).

        Vmapped or sequential per the `batched` setting. Public so that every generative attack
        (GIFD's stages, GIAS's fine-tune) scores restarts the same way.
        """
        inputs = self.victim_inputs(images, target)
        restarts = inputs.shape[0] // target.batch_size
        if self.config.batched:
            return matcher.restart_losses(inputs, restarts)
        return matcher.sequential_losses(inputs, restarts)

    def regularisers(self, images: Tensor, target: Target, restarts: int) -> Tensor:
        """TV and image norm (weights `tv`, `norm`) of generator output `images` on the victim's
        resolution in [0, 1], summed over the restarts: the scalar added to the summed
        `restart_losses` before the backward pass, shared by every generative attack."""
        cfg = self.config
        x = to_victim_images(images, target.victim.resolution)
        total = images.new_zeros(())
        if cfg.tv:
            total = total + cfg.tv * restart_total_variation(x, restarts).sum()
        if cfg.norm:
            total = total + cfg.norm * restart_image_norm(x, restarts).sum()
        return total


@dataclass
class StageRun:
    """Each restart's best variables of a stage, their losses and generator images (the result
    of `GIFD.run_stage`; GIAS's fine-tune fills one too)."""

    best_variables: Variables
    best_losses: Tensor  # (R,)
    best_images: Tensor  # (R*N, 3, H, W) generator output of the best variables
    #: Steps run (fewer than the stage's budget when it stopped early).
    steps: int = 0
    #: The rung's survivors: indices into the restarts the stage started with (None: no rung).
    survivors: list[int] | None = None
    #: The prior's context of the surviving restarts (None: the stage's own, unchanged).
    context: Context | None = None

    def keep(self, losses: Tensor, variables: Variables, images: Tensor, n: int) -> None:
        """Replace the restarts whose `losses` improve on their best (on device, no host sync)."""
        improved = losses < self.best_losses
        self.best_losses = torch.where(improved, losses, self.best_losses)
        per_sample = improved.repeat_interleave(n)
        for k, best in self.best_variables.items():
            mask = per_sample.view(-1, *[1] * (best.ndim - 1))
            self.best_variables[k] = torch.where(mask, variables[k].detach(), best)
        if self.best_images.numel() == 0:
            self.best_images = images
        else:
            self.best_images = torch.where(per_sample.view(-1, 1, 1, 1), images, self.best_images)


class Plateau:
    """Early stop of one stage: has its best loss improved by less than `gain` (relative) over the
    last `window` (a fraction) of its `steps`?

    It sees the best loss only at log intervals, and compares with the last check at least a
    window back; the best loss never rises, so an older reference can only show more improvement:
    the stage stops no sooner than an every-step check would let it.
    """

    def __init__(self, steps: int, window: float, gain: float) -> None:
        self.window = max(1, math.ceil(window * steps))
        self.gain = gain
        self.checks: list[tuple[int, float]] = []

    def stalled(self, done: int, best: float) -> bool:
        """Note the stage's best loss after `done` steps; whether the stage has stalled."""
        reference = None
        for step, value in self.checks:
            if step > done - self.window:
                break
            reference = value
        self.checks.append((done, best))
        return reference is not None and math.isfinite(reference) and best > (1 - self.gain) * reference


def record_and_check(
    log: LossLog, at: int, logged: Tensor, best: StageRun, plateau: Plateau | None, done: int, steps: int
) -> tuple[list[float], bool]:
    """Record `logged` in `log` at step `at`, and whether the stage (`done` of its `steps` run)
    has stalled by `plateau` (None: never): one host transfer for the history and the best so far."""
    host = torch.cat([logged, best.best_losses]).double().cpu()
    values = log.record(at, host[: logged.numel()])
    stalled = (
        plateau is not None and done < steps and plateau.stalled(done, float(host[logged.numel() :].min()))
    )
    return values, stalled
