"""GIAS baseline (Jeon et al., NeurIPS 2021, "Gradient Inversion with Generative Image Prior").

Two phases per restart, both minimising the same gradient-matching loss (plus the TV and image-norm
regularisers of every generative attack here):

1. Latent search: the prior's stage-0 variables, Adam at `latent_lr` (0.03 in the original). This
   phase *is* GIFD's stage 0, run by calling GIFD's own stage machinery (so any change to how GIFD
   scores restarts applies here too): the same warm-up / flat / cosine schedule, and, for a prior
   with `sphere_latent` (the DCGAN's and BigGAN's Gaussian z), the same per-sample sphere
   constraint on z. GIFD's l1 ball is off (GIAS has none), so a latent such as StyleGAN2's w+ and
   noise maps moves freely, as in the original.
2. Generator fine-tune: every image of every restart gets its own copy of the generator's
   parameters, initialised to the prior's, and the copies are optimised (Adam at `finetune_lr`)
   with the latent fixed at the restart's best latent of phase 1. Only parameters are tuned:
   buffers (batch-norm running statistics, BigGAN's spectral-norm vectors) are read from the prior
   and the prior runs in eval mode. Only the parameters the stage-0 image depends on are copied
   (found by one backward pass): StyleGAN2's mapping network, unused once w+ is optimised, and
   BigGAN's class embedding, which enters through the fixed context, stay shared and fixed (the
   original likewise copies only StyleGAN2's synthesis network). The shared prior is never
   modified.

The R x N copies (R restarts, N images) are stacked along a leading dimension and rendered by one
`torch.func.vmap` over `torch.func.functional_call` of the prior: one batched computation rather
than R x N small ones (on the CPU it costs the same as a loop over the copies, measured; it works
for the DCGAN, BigGAN and StyleGAN2 priors, checked against such a loop); their gradients come from the sum of the restarts' losses, and since
restarts are independent and Adam acts per element, one Adam over the stacks is R x N independent
Adams. Memory: the copies, their gradients and Adam's two moments take 16 bytes x parameters x R x
N (float32): 57 MB per copy for the 3.6 M-parameter face DCGAN (0.9 GB for 4 restarts of a batch
of 4), about 0.9 GB per copy for BigGAN-deep-256.

Budget. `steps` is the total per restart; the latent phase gets round(steps x `latent_fraction`)
(at least 1, at most steps - 1) and the fine-tune the rest. The default 1/9 is the original's
1000 latent + 8000 fine-tune iterations.

Learning rate of the fine-tune: `finetune_lr`, by default the prior's `gias_finetune_lr()` (the
value used is in the result's `settings`). The original uses 1e-5 for BigGAN and 1e-3 for StyleGAN2
(whose equalised-learning-rate weights are stored at unit scale), and those priors default to them;
the DCGAN priors follow a weight-scale rule (1e-4 for the face prior, see `DCGANPrior`). Measured on the face prior (LeNet victim, CIFAR image 0 at 32 px, 2 restarts, 30 latent +
300 fine-tune steps; gradient loss / PSNR of the fine-tune phase; latent phase 0.115 / 12.4 dB):
3e-5 0.0030 / 22.0 dB, 1e-4 0.0006 / 26.8 dB, 3e-4 0.0002 / 30.3 dB, 1e-3 0.0001 / 32.1 dB (GIFD
with the same 330 steps: 0.0019 / 21.8 dB). ConvNet victim, batch of 4, 1 restart, 20 + 200 steps:
1e-4 0.023 / 14.5 dB, 1e-3 0.008 / 17.7 dB (latent phase 0.179 / 10.3 dB). So a larger lr fits
faster on these small victims, whose gradient alone nearly fixes the image. But Adam moves every
weight by up to lr per step and the DCGAN's conv weights have a standard deviation of about 0.04:
at 1e-3 the copies leave the prior's weights within tens of steps and the generator stops acting
as a prior. 1e-4 is 2.5e-3 of a weight's spread per step, the order of StyleGAN2's 1e-3 on unit
weights, and already beats GIFD on the case above; raise it for short budgets.

Output. Each phase keeps every restart's best images by the gradient-matching loss alone (the
fine-tune scores its starting point too, so it starts no worse than phase 1 up to float rounding); the answer is the
better phase by its best restart's loss, as GIFD picks its best stage, so a fine-tune that
overfits cannot make the result worse. `stages` holds both phases for the report.

Differences from the original code, on purpose:
- each restart fine-tunes from its own best latent (the original fine-tunes every restart from the
  single best restart's z, which makes the restarts of the second phase identical copies);
- the schedule is GIFD's warm-up / flat / cosine in both phases (the original decays the lr x0.1 at
  3/8, 5/8 and 7/8 of each phase), so GIAS and GIFD differ only in what they optimise;
- the phase answer is the best image seen by the gradient loss, not the last iterate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import Tensor
from torch.func import functional_call, vmap

from gifd.attacks.base import (
    AttackResult,
    GradientMatcher,
    LossLog,
    StageResult,
    Stopwatch,
    Target,
    progress_bar,
    register_attack,
    to_victim_images,
)
from gifd.attacks.generative import (
    GenerativeAttack,
    GenerativeConfig,
    Plateau,
    StageRun,
    lr_factor,
    record_and_check,
)
from gifd.attacks.gifd import GIFD, GIFDConfig, latent_share
from gifd.errors import GifdError
from gifd.priors.base import Context, StagedGenerator, Variables

#: The original's split: 1000 latent iterations of 9000 in all.
DEFAULT_LATENT_FRACTION = 1000 / 9000


class GIASConfig(GenerativeConfig):
    """GIAS's settings: `steps` is the total per restart, split by `latent_fraction`."""

    steps: int = Field(9000, ge=2)
    restarts: int = Field(4, ge=1)
    #: Not used: GIAS has one lr per phase (`latent_lr`, `finetune_lr`).
    lr: None = None  # type: ignore[assignment]
    latent_fraction: float = Field(DEFAULT_LATENT_FRACTION, gt=0, lt=1)
    latent_lr: float = Field(0.03, gt=0)
    #: None: the prior's own default (`StagedGenerator.gias_finetune_lr`).
    finetune_lr: float | None = Field(None, gt=0)
    #: Schedule of both phases (GIFD's): linear warm-up over this fraction, flat until `flat`, cosine to 0.
    warmup: float = Field(0.05, ge=0, le=1)
    flat: float = Field(0.25, ge=0, le=1)

    @field_validator("lr", mode="before")
    @classmethod
    def _no_single_lr(cls, value: Any) -> None:
        if value is not None:
            raise ValueError("gias has one lr per phase: set latent_lr and finetune_lr instead of lr")
        return None

    def phase_steps(self) -> tuple[int, int]:
        """(latent steps, fine-tune steps): each phase at least one step."""
        latent = latent_share(self.steps, self.latent_fraction, 1)
        return latent, self.steps - latent


@dataclass
class FineTuned:
    """The fine-tune phase's inputs and final parameters (kept when asked: `keep_finetuned=True`).

    Copy k = r * batch_size + i belongs to restart r and image i: `latents[name][k]` is its fixed
    stage-0 input and `parameters[name][k]` its final value of the prior's parameter `name`.
    """

    restarts: int
    batch_size: int
    latents: Variables
    context: Context
    parameters: dict[str, Tensor]


@register_attack
class GIAS(GenerativeAttack):
    """GIAS: latent search (GIFD's stage 0), then per-image fine-tuned copies of the generator."""

    name = "gias"
    Config = GIASConfig
    config: GIASConfig

    def __init__(  # type: ignore[no-untyped-def]
        self,
        config=None,
        *,
        prior: StagedGenerator | None = None,
        progress: bool = True,
        keep_finetuned: bool = False,
    ):
        super().__init__(config, prior=prior, progress=progress)
        #: Keep the fine-tuned parameter copies of the last run in `finetuned` (they take memory).
        self.keep_finetuned = keep_finetuned
        self.finetuned: FineTuned | None = None
        #: Why vmap over the generator copies failed (then they are rendered one by one), or None.
        self._vmap_failure: str | None = None

    def latent_search(self) -> GIFD:
        """Phase 1 as a GIFD attack: its stage 0 alone, at `latent_lr`, without the l1 ball.

        Every setting the two configs share (distance, regularisers, schedule, restarts, ...) is
        passed on, so a setting added to the shared base config reaches phase 1 too.
        """
        cfg = self.config
        latent_steps, _ = cfg.phase_steps()
        # Not the preset: GIAS's own preset has set the shared keys it names (GIFD's "fast" would
        # add its rung, which would prune restarts the fine-tune expects). Not latent_fraction:
        # GIAS's own latent_fraction splits its two phases; phase 1 is one stage with all its steps.
        shared = (GIFDConfig.model_fields.keys() & type(cfg).model_fields.keys()) - {
            "steps",
            "lr",
            "preset",
            "latent_fraction",
        }
        settings = GIFDConfig(
            **{k: getattr(cfg, k) for k in sorted(shared)},
            steps=latent_steps,
            lr=cfg.latent_lr,
            stage_start=0,
            stage_end=0,
            ball=False,
        )
        return GIFD(settings, prior=self.prior, progress=False)

    def run(self, target: Target, generator: torch.Generator) -> AttackResult:
        cfg, prior = self.config, self.prior
        clock = Stopwatch(target.device)
        latent_steps, finetune_steps = cfg.phase_steps()
        restarts, n = cfg.restarts, target.batch_size
        context = self.prior_context(target, restarts)
        labels = target.labels.to(prior.device).repeat(restarts)
        start = prior.init_latent(restarts * n, labels if prior.num_classes is not None else None, generator)
        matcher = GradientMatcher(target, cfg.distance, cfg.layer_weights)
        log = LossLog(restarts)
        self.finetuned = None
        search = self.latent_search()
        with eval_mode(prior):  # before the latent phase, so a prior without parameters fails at once
            names = self.tuned_parameter_names(start, context)
        with eval_mode(prior), progress_bar(cfg.steps, self.name, self.progress) as advance:
            # No radius: the l1 ball is off (the sphere constraint on z, if any, still applies).
            latent = search.run_stage(
                0,
                latent_steps,
                start,
                context,
                target,
                matcher,
                radius=math.inf,
                log=log,
                offset=0,
                advance=advance,
            )
            latents = {k: v.detach() for k, v in latent.best_variables.items()}
            if latent.steps < latent_steps:  # stopped early
                advance(latent_steps - latent.steps, math.nan)
            tuned = self._finetune(
                names, latents, context, target, matcher, finetune_steps, log, latent.steps, advance
            )
        phases = [
            self._stage_result(
                0, f"latent search: {prior.stage_names[0]}", latent, target, latent.steps, latent_steps
            ),
            self._stage_result(
                1,
                "generator fine-tune (per-image copies)",
                tuned,
                target,
                latent.steps + tuned.steps,
                finetune_steps,
            ),
        ]
        best = phases[1] if phases[1].loss < phases[0].loss else phases[0]
        return AttackResult(
            attack=self.name,
            images=best.images,
            labels=target.labels.detach().cpu(),
            restart_losses=best.restart_losses,
            best_restart=min(range(restarts), key=best.restart_losses.__getitem__),
            loss_history=log.losses,
            log_steps=log.steps,
            steps=latent.steps + tuned.steps,
            seconds=clock.elapsed(),
            stages=phases,
            settings={"finetune_lr": self.finetune_lr()},
        )

    # ------------------------------------------------------------------------------------- parts
    def finetune_lr(self) -> float:
        """The fine-tune lr: `finetune_lr` if given, else the prior's default."""
        cfg = self.config
        return cfg.finetune_lr if cfg.finetune_lr is not None else self.prior.gias_finetune_lr()

    def tuned_parameter_names(self, latents: Variables, context: Context) -> list[str]:
        """Names of the prior's parameters that the stage-0 image depends on (one backward, batch 1)."""
        named = {k: p.detach().requires_grad_(True) for k, p in self.prior.named_parameters()}
        names = []
        if named:
            with torch.enable_grad():
                image = functional_call(
                    self.prior,
                    named,
                    (0, {k: v[:1] for k, v in latents.items()}, {k: c[:1] for k, c in context.items()}),
                )
                grads = torch.autograd.grad(image.sum(), list(named.values()), allow_unused=True)
            names = [k for k, g in zip(named, grads, strict=True) if g is not None]
        if not names:
            raise GifdError(
                f"gias: the image of {type(self.prior).__name__} depends on none of its parameters, "
                "so there is nothing to fine-tune: use an attack that searches the latent only (latent, ggl)"
            )
        return names

    def render(
        self, parameters: dict[str, Tensor], latents: Variables, context: Context, *, batched: bool = True
    ) -> Tensor:
        """Generator output (K, 3, H, W) of K stacked parameter copies, copy k on latent k.

        Batched: one vmap over the copies. If vmap cannot batch the prior's forward (an op without a
        batching rule, randomness, data-dependent control flow), it warns once and renders the copies
        one after another from then on (the same numbers); `batched=False` does so directly.
        """
        if batched and self._vmap_failure is None:
            try:
                return vmap(self._render_one)(parameters, latents, context)
            except (RuntimeError, NotImplementedError) as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                self._vmap_failure = reason
                warnings.warn(
                    f"gias cannot vmap the generator copies of {type(self.prior).__name__} ({reason}); "
                    "rendering them one after another instead (same numbers, slower)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        copies = next(iter(parameters.values())).shape[0]
        return torch.stack(
            [
                self._render_one(
                    {k: v[i] for k, v in parameters.items()},
                    {k: v[i] for k, v in latents.items()},
                    {k: c[i] for k, c in context.items()},
                )
                for i in range(copies)
            ]
        )

    def _render_one(self, params: dict[str, Tensor], variables: Variables, context: Context) -> Tensor:
        """The image (3, H, W) of one parameter copy from one sample's variables and context."""
        variables = {k: v.unsqueeze(0) for k, v in variables.items()}
        context = {k: c.unsqueeze(0) for k, c in context.items()}
        return functional_call(self.prior, params, (0, variables, context)).squeeze(0)

    def _finetune(
        self,
        names: list[str],
        latents: Variables,
        context: Context,
        target: Target,
        matcher: GradientMatcher,
        steps: int,
        log: LossLog,
        offset: int,
        advance: Callable[[int, float], None],
    ) -> StageRun:
        """Fine-tune one copy of the parameters `names` per image and restart; keep each restart's
        best images.

        Losses and regularisers are those of every generative attack (`GenerativeAttack`), with the
        settings the latent phase was given too, so both phases score restarts the same way.
        """
        cfg = self.config
        restarts, n = cfg.restarts, target.batch_size
        copies = restarts * n
        own = dict(self.prior.named_parameters())
        stacked = {
            k: own[k].detach().unsqueeze(0).repeat(copies, *[1] * own[k].ndim).requires_grad_(True)
            for k in names
        }
        params = list(stacked.values())
        # `batched` (the shared setting for vmapped restarts) also chooses between vmapped and
        # one-by-one rendering of the copies.
        batched = cfg.batched
        optimizer = _adam(params, self.finetune_lr())
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, max(steps, 1), cfg.warmup, cfg.flat)
        )
        best = StageRun(
            best_variables={},
            best_losses=torch.full((restarts,), float("inf"), device=target.device),
            best_images=torch.empty(0),
        )
        plateau = Plateau(steps, cfg.early_stop_window, cfg.early_stop_gain) if cfg.early_stop else None
        end = steps
        for step in range(steps + 1):
            images = self.render(stacked, latents, context, batched=batched)
            losses = self.restart_losses(images, target, matcher)
            best.keep(losses.detach(), {}, images.detach(), n)
            if step == end:  # the last pass only scores the final parameters
                break
            total = losses.sum() + self.regularisers(images, target, restarts)
            grads = torch.autograd.grad(total, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            optimizer.step()
            scheduler.step()
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
                previous = log.steps[-1] if log.steps and log.steps[-1] > offset else offset
                at = offset + step + 1
                values, stalled = record_and_check(log, at, losses.detach(), best, plateau, step + 1, steps)
                advance(at - previous, min(values))
                if stalled:
                    end = step + 1
        best.steps = end
        if self.keep_finetuned:
            self.finetuned = FineTuned(
                restarts=restarts,
                batch_size=n,
                latents={k: v.detach().clone() for k, v in latents.items()},
                context={k: c.detach().clone() for k, c in context.items()},
                parameters={k: v.detach() for k, v in stacked.items()},
            )
        return best

    def _stage_result(
        self, stage: int, name: str, run: StageRun, target: Target, end_step: int, budget: int
    ) -> StageResult:
        restarts, n = self.config.restarts, target.batch_size
        best = int(run.best_losses.argmin())
        images = run.best_images.view(restarts, n, *run.best_images.shape[1:])[best]
        return StageResult(
            stage=stage,
            name=name,
            images=to_victim_images(images, target.victim.resolution).clamp(0, 1).detach().cpu(),
            loss=float(run.best_losses[best]),
            restart_losses=[float(v) for v in run.best_losses],
            end_step=end_step,
            budget=budget,
            steps=run.steps,
        )


def _adam(params: list[Tensor], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where the device has one: on one CPU thread it steps 4 copies of
    the face DCGAN (14 M parameters) in 46 ms instead of 220 ms (measured), about as long as the rest of a
    fine-tune step. The same update rule, only another kernel."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # a device without a fused kernel
        return torch.optim.Adam(params, lr=lr)


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Run `module` in eval mode (batch norm on its running statistics, never updating them) and
    restore every submodule's own mode afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
