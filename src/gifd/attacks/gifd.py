"""GIFD (Fang et al., ICCV 2023): generative gradient inversion with feature-domain optimisation.

Stage 0 searches the prior's latent space; stage i >= 1 takes the output h_i of generator module
i computed from the previous stage's best variables and optimises it directly (the modules after
it fixed), kept inside an l1 ball of radius r_i around where the stage started. Each stage has a
fresh Adam (lr 0.1) with a warm-up / flat / cosine schedule. Every stage keeps its best restart's
images by the gradient-matching loss alone; the answer is the best over all stages run so far, so
a later stage that overfits cannot make the result worse.

Differences from the official code, on purpose (see ../shared/paper.md, known defects):
- each stage returns the best restart's own image (not the last restart's with the best score);
- the sphere constraint on z is per sample (not over the whole batch);
- restarts are independent chains (each continues from its own best variables of the previous
  stage, and owns its noise maps), so they can be compared and pruned.

Speed (none of it changes what a restart computes):
- `batched` (default): the restarts' gradient losses are one vmapped computation over the victim
  (`GradientMatcher.restart_losses`) instead of a loop; the same numbers up to float rounding.
- `halving` (successive halving, off in the "paper" preset, on in "fast"): at the end of every stage
  but the last, only the better half of the restarts (by their best loss in the stage; at least one)
  go on to the next stages. A kept restart follows the same chain as without halving, so the answer
  changes only if the restart that would have won was pruned. Pruned restarts show loss inf in the
  later stages' `restart_losses` and NaN in the loss history.
- `rung` (on in "fast"): at the middle of the first stage keep the better half of the restarts by
  their best loss so far; the survivors continue with their own variables and Adam state.
- `early_stop` (off in both presets; a setting of its own): a stage ends once its best loss has improved by less than 1 % over
  the last 10 % of its steps (checked at log intervals, in the same host transfer as the loss
  history); it then ran exactly a prefix of its full trajectory. `AttackResult.pruned` and each
  stage's `steps` / `budget` record what the preset cut.
- The inner loop makes no host sync except at log intervals (and once at the rung); stage transitions run without grad, and
  the pass that scores a stage's final variables runs without building a graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from gifd.attacks.base import (
    AttackResult,
    GradientMatcher,
    LossLog,
    Pruning,
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
from gifd.attacks.projection import project_l1_ball
from gifd.config import Count, Index
from gifd.errors import GifdError
from gifd.priors.base import Context, Variables

#: The latent stage's share of an equal-compute budget: the feature stages gain more from steps.
DEFAULT_LATENT_FRACTION = 1 / 9


class GIFDConfig(GenerativeConfig):
    """GIFD's settings. `steps` is the total budget per restart, split over the stages run (equal
    total compute): evenly, or `latent_fraction` of it to the latent stage and the rest evenly over
    the feature stages. `stage_steps` instead gives each stage its own: one count for every stage
    (the paper: 1000) or a list, one per stage run. Giving both `steps` and `stage_steps` is an
    error. The default split (1/9 to the latent stage) was calibrated on the face DCGAN at 300
    steps; the paper's budget is `stage_steps: 1000`, not the default `steps`."""

    steps: Count = 13000
    #: First and last stage to run (inclusive); None = the prior's last stage.
    stage_start: Index = 0
    stage_end: Index | None = None
    stage_steps: Count | list[Count] | None = None
    #: With `steps`: the fraction of it that the latent stage (stage 0) gets, the rest split evenly
    #: over the feature stages (as GIAS's `latent_fraction` splits its phases); None: every stage
    #: an equal share. The default was calibrated on public images (bench/README.md, "budget split").
    latent_fraction: float | None = Field(DEFAULT_LATENT_FRACTION, gt=0, lt=1)
    #: l1 radius per stage (None = the prior's defaults; inf or null: no ball in that stage), a radii file
    #: written by `gifd calibrate` (its path), or "auto" (calibrated for the run, see
    #: gifd.calibration.resolve_auto_radii); `ball: false` disables the projection.
    radii: list[float] | str | None = None
    ball: bool = True
    #: Adam's lr in the feature stages (None: `lr`, as in the paper). Adam moves every entry by up
    #: to about lr a step, whatever the feature's scale, so the room a step takes inside the ball
    #: depends on the prior's feature magnitudes (bench/README.md, "feature-stage lr").
    feature_lr: float | None = Field(None, gt=0)
    #: Schedule: linear warm-up over this fraction of a stage's steps, flat until `flat`, then cosine to 0.
    warmup: float = Field(0.05, ge=0, le=1)
    flat: float = Field(0.25, ge=0, le=1)
    #: Successive halving: after each stage but the last keep only the better half of the restarts.
    halving: bool = False
    #: A halving rung inside the first stage: at its midpoint keep the better half of the restarts
    #: (by their best loss so far) and run only those on.
    rung: bool = False

    @field_validator("radii", mode="before")
    @classmethod
    def _radii(cls, value: Any) -> Any:
        """A list of radii >= 0 (inf or null: no ball, as JSON writes it), "auto", or a radii file's path."""
        if value is None or (isinstance(value, str) and value.strip()):
            return value
        if not isinstance(value, (list, tuple)):
            raise GifdError(f"radii = {value!r} is invalid: pass a list of numbers >= 0, auto, or a radii file")
        for i, r in enumerate(value):
            if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not r >= 0):
                raise GifdError(f"radii.{i} = {r!r} is invalid: pass a number >= 0 (inf: no ball)")
        return [math.inf if r is None else float(r) for r in value]

    #: "paper": every restart gets the full budget (the paper's procedure; batched restarts compute
    #: the same numbers as its one-after-another loop). "fast": batched restarts, a rung at the
    #: middle of the first stage and successive halving after every stage but the last. Early stop
    #: is not part of it: at the paper's per-stage budget it cost 21-65 % of final loss, where the
    #: pruning alone stayed within the restarts' own spread (bench/README.md, "throughput").
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"batched": True, "halving": False, "rung": False, "early_stop": False},
        "fast": {"batched": True, "halving": True, "rung": True, "early_stop": False},
    }

    @field_validator("stage_steps", mode="before")
    @classmethod
    def _stage_counts(cls, value: Any) -> Any:
        """One line naming the bad value (pydantic's own error for the int-or-list union names a
        branch of the union, not the setting)."""
        counts = value if isinstance(value, list) else [] if value is None else [value]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in counts):
            raise GifdError(
                f"stage_steps {value!r} is invalid: give a step count >= 1 for every stage, or a list "
                "of counts, one per stage run"
            )
        return value

    @model_validator(mode="after")
    def _one_budget(self) -> GIFDConfig:
        """`steps` (a total split over the stages) and `stage_steps` (each stage's own) exclude
        each other: with both, which one holds would be a guess."""
        if self.stage_steps is not None and "steps" in self.model_fields_set:
            raise GifdError(
                "steps and stage_steps both set the budget: give steps (a total split over the stages) "
                "or stage_steps (each stage's own), not both"
            )
        if self.stage_steps is not None and self.latent_fraction_given:
            raise GifdError(
                "latent_fraction splits steps, but stage_steps gives every stage its own: drop one of them"
            )
        return self

    @property
    def latent_fraction_given(self) -> bool:
        """Whether the settings name a latent_fraction (not None) rather than leave the default."""
        return self.latent_fraction is not None and "latent_fraction" in self.model_fields_set


#: GIFD's named settings (see GIFDConfig.PRESETS).
PRESETS: dict[str, dict[str, Any]] = GIFDConfig.PRESETS


def preset_settings(name: str) -> dict[str, Any]:
    """The settings GIFD's preset `name` stands for (a copy; see PRESETS)."""
    if name not in PRESETS:
        raise GifdError(f"unknown GIFD preset {name!r}: use one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


class NoBallConfig(GIFDConfig):
    ball: bool = False


def _keep_adam_rows(
    optimizer: torch.optim.Optimizer,
    params: list[Tensor],
    select: Callable[[dict[str, Tensor]], dict[str, Tensor]],
) -> None:
    """Point `optimizer` (one parameter group) at `params`, the selected rows of its parameters,
    and carry over the same rows of its per-element state (Adam's moments; its step count as is)."""
    group = optimizer.param_groups[0]
    for old, new in zip(group["params"], params, strict=True):
        state = optimizer.state.pop(old, {})
        optimizer.state[new] = {
            key: select({key: value})[key] if torch.is_tensor(value) and value.shape == old.shape else value
            for key, value in state.items()
        }
    group["params"] = params


def even_split(steps: int, parts: int) -> list[int]:
    """`steps` in `parts` counts that differ by at most one, the larger first."""
    base, extra = divmod(steps, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def latent_share(steps: int, fraction: float, rest: int) -> int:
    """The latent stage's (or phase's) steps: round(steps x fraction), at least one, and at most
    `steps - rest` so that each of the `rest` stages (or phases) after it keeps one."""
    return min(max(round(steps * fraction), 1), steps - rest)


def halving_survivors(losses: Tensor) -> list[int]:
    """Successive halving: the indices (in their original order) of the better half of the
    restarts by `losses`, at least one; NaN losses rank last, ties keep the lower index."""
    keep = max(1, losses.numel() // 2)
    order = torch.sort(losses.detach().cpu(), stable=True).indices[:keep]
    return sorted(order.tolist())


def select_restarts(
    tensors: dict[str, Tensor], keep: list[int], restarts: int, batch_size: int
) -> dict[str, Tensor]:
    """The rows of the restarts `keep` from tensors that stack `restarts` batches of `batch_size`
    rows along dim 0 (tensors of another first dimension are shared by all and kept whole)."""
    selected = {}
    for name, t in tensors.items():
        if t.ndim == 0 or t.shape[0] != restarts * batch_size:
            selected[name] = t
            continue
        index = torch.tensor(keep, device=t.device)
        selected[name] = t.reshape(restarts, -1, *t.shape[1:]).index_select(0, index).flatten(0, 1)
    return selected


@register_attack
class GIFD(GenerativeAttack):
    """GIFD: latent search, then successive feature-domain stages in l1 balls."""

    name = "gifd"
    Config = GIFDConfig
    config: GIFDConfig

    def stages(self) -> list[int]:
        cfg, last = self.config, self.prior.num_stages - 1
        end = last if cfg.stage_end is None else cfg.stage_end
        if not 0 <= cfg.stage_start <= end <= last:
            raise GifdError(
                f"{self.name}: stages {cfg.stage_start}..{end} are not within the prior's stages 0..{last}"
            )
        return list(range(cfg.stage_start, end + 1))

    def stage_budget(self, stages: list[int]) -> list[int]:
        """Steps of each of `stages`: `stage_steps` (one count for all, or one per stage), else
        `steps` split: round(steps x `latent_fraction`) to stage 0 and the rest evenly over the
        others, or (no latent_fraction, or no more steps than stages) evenly over all; the first
        stages get the remainder."""
        cfg = self.config
        if isinstance(cfg.stage_steps, int):
            return [cfg.stage_steps] * len(stages)
        if cfg.stage_steps is not None:
            if len(cfg.stage_steps) != len(stages):
                raise GifdError(f"{self.name}: {len(cfg.stage_steps)} stage_steps for {len(stages)} stages")
            return list(cfg.stage_steps)
        if stages[0] != 0 and len(stages) > 1 and cfg.latent_fraction_given:
            raise GifdError(
                f"{self.name}: latent_fraction is stage 0's share, but the run starts at stage "
                f"{stages[0]}: set stage_start 0 or drop latent_fraction"
            )
        if cfg.latent_fraction is None or stages[0] != 0 or len(stages) == 1 or cfg.steps <= len(stages):
            # (no more steps than stages, as in smoke tests: one step each to the first stages)
            return even_split(cfg.steps, len(stages))
        feature_stages = len(stages) - 1
        latent = latent_share(cfg.steps, cfg.latent_fraction, feature_stages)
        return [latent, *even_split(cfg.steps - latent, feature_stages)]

    def radii(self) -> list[float]:
        radii = self.config.radii
        if radii == "auto":
            raise GifdError(
                f"{self.name}: radii: auto is calibrated for a run's victim by gifd.calibration.resolve_auto_radii "
                "(run_experiment does): call it first, or pass radii as a list or a `gifd calibrate` file"
            )
        if isinstance(radii, str):
            from gifd.radii import load_radii

            radii = load_radii(radii, self.prior)
        elif radii is None:
            radii = self.prior.default_radii()
        if len(radii) < self.prior.num_stages:
            raise GifdError(
                f"{self.name}: {len(radii)} radii for a prior with {self.prior.num_stages} stages"
            )
        return list(radii)

    def check(self) -> None:
        """Stages, their budgets and radii against the prior."""
        self.stage_budget(self.stages())
        if self.config.radii != "auto":  # resolved before the run (it needs the victim)
            self.radii()

    def run(self, target: Target, generator: torch.Generator) -> AttackResult:
        cfg, prior = self.config, self.prior
        clock = Stopwatch(target.device)
        stages, radii = self.stages(), self.radii()
        budget = self.stage_budget(stages)
        restarts, n = cfg.restarts, target.batch_size
        context = self.prior_context(target, restarts)
        labels = target.labels.to(prior.device).repeat(restarts)
        variables = prior.init_latent(
            restarts * n, labels if prior.num_classes is not None else None, generator
        )
        with torch.no_grad():
            for stage in range(stages[0]):
                variables = prior.advance(stage, variables, context)
        matcher = GradientMatcher(target, cfg.distance, cfg.layer_weights)
        log, results, pruned = LossLog(restarts), [], []
        best_overall: StageResult | None = None
        offset = 0
        #: Original indices of the restarts still running (all of them unless halving pruned some).
        active = list(range(restarts))
        with progress_bar(sum(budget), self.name, self.progress) as advance:
            for stage, steps in zip(stages, budget, strict=True):
                rung = steps // 2 if cfg.rung and stage == stages[0] and steps >= 2 else None
                run = self.run_stage(
                    stage,
                    steps,
                    variables,
                    context,
                    target,
                    matcher,
                    radius=radii[stage],
                    log=log,
                    offset=offset,
                    advance=advance,
                    active=active if len(active) < restarts else None,
                    rung=rung,
                )
                if run.survivors is not None and rung is not None:
                    dropped = [r for k, r in enumerate(active) if k not in run.survivors]
                    pruned.append(Pruning(stage=stage, step=offset + rung, restarts=dropped))
                    active = [active[k] for k in run.survivors]
                    context = run.context if run.context is not None else context
                if run.steps < steps:  # stopped early: the loss history is the prefix it ran
                    advance(steps - run.steps, math.nan)
                offset += run.steps
                losses = run.best_losses.detach().double().cpu()
                best = int(losses.argmin())
                images = to_victim_images(
                    run.best_images.view(len(active), n, *run.best_images.shape[1:])[best],
                    target.victim.resolution,
                )
                restart_losses = [math.inf] * restarts  # pruned restarts: inf
                for index, value in zip(active, losses.tolist(), strict=True):
                    restart_losses[index] = value
                stage_result = StageResult(
                    stage=stage,
                    name=prior.stage_names[stage],
                    images=images.clamp(0, 1).detach().cpu(),
                    loss=float(losses[best]),
                    restart_losses=restart_losses,
                    end_step=offset,
                    budget=steps,
                    steps=run.steps,
                )
                results.append(stage_result)
                if best_overall is None or stage_result.loss < best_overall.loss:
                    best_overall = stage_result
                if stage != stages[-1]:
                    chosen = run.best_variables
                    if cfg.halving and len(active) > 1:
                        keep = halving_survivors(losses)
                        chosen = select_restarts(chosen, keep, len(active), n)
                        context = select_restarts(context, keep, len(active), n)
                        dropped = [r for k, r in enumerate(active) if k not in keep]
                        pruned.append(Pruning(stage=stage, step=offset, restarts=dropped))
                        active = [active[k] for k in keep]
                    with torch.no_grad():
                        variables = prior.advance(stage, chosen, context)
        assert best_overall is not None
        return AttackResult(
            attack=self.name,
            images=best_overall.images,
            labels=target.labels.detach().cpu(),
            restart_losses=results[results.index(best_overall)].restart_losses,
            best_restart=min(range(restarts), key=best_overall.restart_losses.__getitem__),
            loss_history=log.losses,
            log_steps=log.steps,
            steps=offset,
            seconds=clock.elapsed(),
            stages=results,
            pruned=pruned,
        )

    def run_stage(
        self,
        stage: int,
        steps: int,
        start: Variables,
        context: Context,
        target: Target,
        matcher: GradientMatcher,
        *,
        radius: float,
        log: LossLog,
        offset: int,
        advance: Callable[[int, float], None],
        active: list[int] | None = None,
        rung: int | None = None,
    ) -> StageRun:
        """Optimise stage `stage`'s trainable variables from `start` for `steps` steps, for all
        restarts at once; return each restart's best variables, loss and images.

        One stage of GIFD, public so that GIAS runs its latent phase as GIFD's stage 0 (same
        schedule, sphere constraint and scoring) instead of a copy of it. The restarts are those
        stacked in `start` (N rows each). `radius` is the l1 ball's (math.inf: none); losses are
        recorded in `log` at steps `offset + k` and reported to `advance(steps, best_loss)` (a
        `progress_bar`'s). `active` gives the restarts' original indices when halving pruned some
        (for the loss history; None: all of them, in order).

        `rung`: before step `rung`, keep only the better half of the restarts by their best loss
        so far (one host sync) and run those on; their variables, Adam moments and best so far are
        the rows they had, so each survivor continues its own trajectory. The returned run then
        holds the survivors only (`survivors`, `context`). With the `early_stop` setting the stage
        ends (after scoring its current variables) once it has stalled (see `Plateau`); it then
        ran the prefix of the steps it would have run without, and `steps` says how many.
        """
        cfg, prior = self.config, self.prior
        n = target.batch_size
        restarts = next(iter(start.values())).shape[0] // n
        scatter = None
        if active is not None:
            scatter = torch.tensor(active, device=target.device)
        trainable = prior.trainable(stage)
        origin = {k: v.detach().clone() for k, v in start.items()}
        variables = {k: v.detach().clone().requires_grad_(k in trainable) for k, v in start.items()}
        params = [variables[k] for k in trainable]
        optimizer = torch.optim.Adam(params, lr=self.stage_lr(stage))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, max(steps, 1), cfg.warmup, cfg.flat)
        )
        sphere = stage == 0 and prior.sphere_latent
        norms = {k: origin[k].flatten(1).norm(dim=1) for k in trainable} if sphere else {}
        best = StageRun(
            best_variables={k: v.detach().clone() for k, v in variables.items()},
            best_losses=torch.full((restarts,), float("inf"), device=target.device),
            best_images=torch.empty(0),
        )
        plateau = Plateau(steps, cfg.early_stop_window, cfg.early_stop_gain) if cfg.early_stop else None
        end = steps
        for step in range(steps + 1):
            if step == end:  # the last pass only scores the final variables: no graph
                with torch.no_grad():
                    images = prior(stage, variables, context)
                    losses = self.restart_losses(images, target, matcher)
                best.keep(losses, variables, images, n)
                break
            if step == rung and restarts > 1:
                keep = halving_survivors(best.best_losses)
                kept = active if active is not None else list(range(restarts))
                active = [kept[k] for k in keep]
                scatter = torch.tensor(active, device=target.device)
                best.survivors = keep

                def select(
                    tensors: dict[str, Tensor], keep: list[int] = keep, count: int = restarts
                ) -> dict[str, Tensor]:
                    return select_restarts(tensors, keep, count, n)

                variables = {
                    k: v.detach().requires_grad_(k in trainable) for k, v in select(variables).items()
                }
                origin, norms, context = select(origin), select(norms), select(context)
                best.best_variables = select(best.best_variables)
                best.best_images = select({"images": best.best_images})["images"]
                best.best_losses = best.best_losses[torch.tensor(keep, device=target.device)]
                best.context = context
                params = [variables[k] for k in trainable]
                _keep_adam_rows(optimizer, params, select)
                restarts = len(keep)
            images = prior(stage, variables, context)
            losses = self.restart_losses(images, target, matcher)
            # These losses score the current variables: keep each restart's best (no host sync).
            best.keep(losses.detach(), variables, images.detach(), n)
            total = losses.sum() + self.regularisers(images, target, restarts)
            grads = torch.autograd.grad(total, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                self._constrain(variables, origin, trainable, sphere, norms, radius)
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
                previous = log.steps[-1] if log.steps and log.steps[-1] > offset else offset
                logged = losses.detach()
                if scatter is not None:  # pruned restarts are NaN in the history
                    logged = logged.new_full((log.restarts,), math.nan).index_copy(0, scatter, logged)
                values, stalled = record_and_check(
                    log, offset + step + 1, logged, best, plateau, step + 1, steps
                )
                advance(offset + step + 1 - previous, min((v for v in values if v == v), default=math.nan))
                if stalled:
                    end = step + 1
        best.steps = end
        return best

    def stage_lr(self, stage: int) -> float:
        """Adam's lr in `stage`: `lr` in the latent stage, `feature_lr` (else `lr`) after it."""
        cfg = self.config
        return cfg.lr if stage == 0 or cfg.feature_lr is None else cfg.feature_lr

    def _constrain(
        self,
        variables: Variables,
        origin: Variables,
        trainable: list[str],
        sphere: bool,
        norms: dict[str, Tensor],
        radius: float,
    ) -> None:
        """Sphere constraint on a stage-0 latent, else the l1 ball around the stage's start."""
        for k in trainable:
            v = variables[k]
            if sphere:
                scale = norms[k] / v.flatten(1).norm(dim=1).clamp_min(1e-12)
                v.mul_(scale.view(-1, *[1] * (v.ndim - 1)))
            elif self.config.ball:
                v.copy_(origin[k] + project_l1_ball(v - origin[k], radius))


@register_attack
class LatentSearch(GIFD):
    """The latent-only ablation: GIFD's stage 0 alone (a GAN-latent search)."""

    name = "latent"

    def stages(self) -> list[int]:
        return [0]


@register_attack
class GIFDNoBall(GIFD):
    """GIFD without the l1 ball (the paper's ablation): feature stages optimised unconstrained."""

    name = "gifd-noball"
    Config = NoBallConfig
