"""GAN-free baselines that optimise pixels directly: IG and GI (without batch-norm statistics).

- IG (Geiping et al. 2020, "Inverting Gradients"): dummy inputs in the normalised space drawn
  from randn, global cosine gradient distance + total variation 1e-4, Adam 0.1, step decay x0.1
  at 3/8, 5/8 and 7/8 of the steps, clamped to the valid image range after every step. IG's own
  code steps on the sign of the gradient (`signed: true`); off by default, since plain Adam
  reached higher PSNR here (LeNet, 32 px, 2000 steps: 18.9 dB plain vs 13.6 dB signed).
- GI (Yin et al. 2021, "GradInversion") with no BN statistics (the server does not have them):
  L2 gradient distance + TV 1e-4 + image norm 1e-6 + group consistency 0.01 (GI's
  R_group = ||x - E(x)||_2: the l2 distance of each restart to the mean over restarts, summed over
  the restarts, from step 500, the mean refreshed every 100 steps; `group_consistency`).
  GI's registration of restarts before averaging is not done (the restarts share no geometry
  worth aligning at these sizes); noted in the docs.
All restarts are optimised together; the output is the restart with the lowest gradient loss.
With `batched` (default) the restarts' gradient losses are one vmapped computation
(`GradientMatcher.restart_losses`), otherwise a loop over the restarts (same numbers). The loop
makes no host sync except at log intervals.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from gifd.attacks.base import (
    Attack,
    AttackConfig,
    AttackResult,
    GradientMatcher,
    LossLog,
    Stopwatch,
    Target,
    clamp_bounds,
    progress_bar,
    register_attack,
)
from gifd.attacks.objectives import GradientDistance, restart_image_norm, restart_total_variation
from gifd.config import Count, Fraction, Index, NonNegative


class PixelConfig(AttackConfig):
    """Settings of a pixel-space attack."""

    steps: Count = 15000
    tv: NonNegative = 1e-4
    norm: NonNegative = 0.0
    #: Adam on the sign of the gradient (IG's code) or on the gradient itself.
    signed: bool = False
    #: The dummy's start: "randn" draws N(0, 1) in the victim's normalised input space and clamps
    #: it to the image range (IG's and GI's code); "uniform" draws each pixel from U(0, 1) in
    #: image space, then normalises (every start is a valid image).
    init: Literal["randn", "uniform"] = "randn"
    #: Fractions of the steps at which the learning rate is multiplied by 0.1.
    decay_at: list[Fraction] = Field(default_factory=lambda: [3 / 8, 5 / 8, 7 / 8])
    #: Group consistency (GI): weight, first step, refresh interval of the restart mean.
    group: NonNegative = 0.0
    group_start: Index = 500
    group_every: Count = 100


class GIConfig(PixelConfig):
    distance: GradientDistance = "l2"
    norm: NonNegative = 1e-6
    group: NonNegative = 0.01


class PixelAttack(Attack):
    """Gradient inversion in pixel space (shared loop of IG and GI)."""

    Config = PixelConfig
    config: PixelConfig

    def run(self, target: Target, generator: torch.Generator) -> AttackResult:
        cfg, victim, device = self.config, target.victim, target.device
        clock = Stopwatch(device)
        side, restarts, n = victim.resolution, cfg.restarts, target.batch_size
        low, high = clamp_bounds(victim, device)
        inputs = initial_inputs(cfg.init, (restarts, n, 3, side, side), target, generator)
        inputs = torch.maximum(torch.minimum(inputs, high), low).requires_grad_(True)
        optimizer = torch.optim.Adam([inputs], lr=cfg.lr)
        milestones = sorted({max(1, int(cfg.steps * f)) for f in cfg.decay_at})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
        matcher = GradientMatcher(target, cfg.distance, cfg.layer_weights)
        log = LossLog(restarts)
        group_mean: Tensor | None = None
        with progress_bar(cfg.steps, self.name, self.progress) as advance:
            for step in range(cfg.steps):
                stacked = inputs.flatten(0, 1)  # restart r = rows r*N..(r+1)*N
                if cfg.batched:
                    per_restart = matcher.restart_losses(stacked, restarts)
                else:
                    per_restart = matcher.sequential_losses(stacked, restarts)
                total = per_restart.sum()
                if cfg.tv:
                    total = total + cfg.tv * restart_total_variation(stacked, restarts).sum()
                if cfg.norm:
                    total = total + cfg.norm * restart_image_norm(stacked, restarts).sum()
                if cfg.group and step >= cfg.group_start:
                    if group_mean is None or (step - cfg.group_start) % cfg.group_every == 0:
                        group_mean = inputs.detach().mean(0)
                    total = total + cfg.group * group_consistency(inputs, group_mean)
                (grad,) = torch.autograd.grad(total, [inputs])
                inputs.grad = grad.sign() if cfg.signed else grad
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    inputs.copy_(torch.maximum(torch.minimum(inputs, high), low))
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                    values = log.record(step + 1, per_restart)
                    advance((step + 1) - (log.steps[-2] if len(log.steps) > 1 else 0), min(values))
        if cfg.batched:
            with torch.no_grad():
                scores = matcher.restart_losses(inputs.detach().flatten(0, 1), restarts)
            final = [v if v == v else float("inf") for v in scores.double().cpu().tolist()]
        else:
            final = final_losses(matcher, [inputs[r].detach() for r in range(restarts)])
        best = int(torch.tensor(final).argmin())
        images = victim.denormalize(inputs[best].detach()).clamp(0, 1)
        return AttackResult(
            attack=self.name,
            images=images,
            labels=target.labels.detach().cpu(),
            restart_losses=final,
            best_restart=best,
            loss_history=log.losses,
            log_steps=log.steps,
            steps=cfg.steps,
            seconds=clock.elapsed(),
        )


def initial_inputs(
    init: Literal["randn", "uniform"], shape: tuple[int, ...], target: Target, generator: torch.Generator
) -> Tensor:
    """The restarts' dummy inputs in the victim's normalised space, drawn on the CPU from
    `generator` (so the start does not depend on the device), see `PixelConfig.init`."""
    if init == "randn":
        return torch.randn(shape, generator=generator).to(target.device)
    images = torch.rand(shape, generator=generator).to(target.device)
    return target.victim.normalize(images.flatten(0, 1)).view(shape)


def group_consistency(inputs: Tensor, group_mean: Tensor) -> Tensor:
    """GI's group-consistency term: the l2 distance ||x_r - mean||_2 of each restart's batch
    x_r = inputs[r] to the restarts' mean, summed over the restarts (Yin et al. 2021, eq. 8).

    The distance itself, not a per-entry mean of its square: that is smaller by the factor
    (number of entries) / distance, so at GI's weight 0.01 the term would barely act. Its
    gradient at a zero distance is 0.
    """
    return torch.linalg.vector_norm((inputs - group_mean).flatten(1), dim=1).sum()


def final_losses(matcher: GradientMatcher, candidates: list[Tensor]) -> list[float]:
    """Gradient loss of each candidate input batch (NaN counts as +inf, so it never wins)."""
    losses = []
    for inputs in candidates:
        with torch.enable_grad():
            value = float(matcher(inputs).detach())
        losses.append(value if value == value else float("inf"))
    return losses


@register_attack
class InvertingGradients(PixelAttack):
    """IG: cosine gradient matching with total variation, Adam with step decay."""

    name = "ig"


@register_attack
class GradInversion(PixelAttack):
    """GI without batch-norm statistics: L2 matching, TV, image norm, group consistency."""

    name = "gi"
    Config = GIConfig
