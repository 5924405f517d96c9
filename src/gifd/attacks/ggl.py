"""GGL baseline (Li et al. 2022, "Auditing privacy defenses in federated learning via generative
gradient leakage"): a gradient-free CMA-ES search over the latent of a pretrained generator.

What is searched. The stage-0 variables of the prior named in `variables` (default: every stage-0
variable except the noise maps `noise_*`, i.e. z for the DCGAN and BigGAN, w+ for StyleGAN2; noise
maps stay at each restart's random draw). They are searched in *standardised* coordinates: the
per-coordinate mean and standard deviation of the prior's own `init_latent` draws (2048 draws at
most, fixed seed) map a search point u to the latent mean + std * u. For the N(0, I) latents of the
DCGAN and BigGAN this is the identity up to sampling noise; for other latents it gives CMA-ES a
space where the prior's samples are roughly N(0, I), so `sigma` and the bound mean the same thing
for every prior.

Bounded latent (tanh, like the original). CMA-ES moves an unbounded x; the latent coordinate is
u = bound * tanh(x / bound), so no candidate can leave the box [-bound, bound] (in prior standard
deviations) where the generator has seen its inputs. The original bounds BigGAN's z by plain
tanh(x), i.e. to (-1, 1), which suits BigGAN's truncated latents; for a Gaussian latent such as the
DCGAN's z that box would cut off most of the prior, so the bound is a config (default 3: the map is
close to the identity within 1.5 standard deviations and saturates at 3). `bound: null` searches the
raw coordinates. cma's own box constraints were not used: they act on the candidates CMA-ES is
told about only through a penalty / repair, while the tanh map is exact and smooth.

Objective (minimised): the L2 gradient distance (paper: "L2 loss"; `distance` selects another) of the
candidate's gradient to the shared one, plus `kl` x KL(N(m, s^2) || N(0, 1)), where m and s are the
mean and standard deviation of the candidate's standardised latent entries (GGL's KL prior on z,
which keeps the latent on the prior's typical set). The original weights it 0.1 for BigGAN and 0.02
for StyleGAN2 and adds it only when tanh is off, since tanh(x) in (-1, 1) is not Gaussian-shaped;
here the bounded latent is still Gaussian-shaped up to the bound, so the term applies in both
cases. Default 0.1 (the BigGAN value: the DCGAN's z is N(0, I) like BigGAN's). Restarts are scored by
the gradient term alone. A prior's `sphere_latent` flag (GIFD's norm constraint) is not applied: GGL
has none, its KL term plays that role.

Budget. The paper runs 800 generations x 50 candidates per image. `steps` (the CLI's `--steps`,
"each method's total step budget per restart") is the number of CMA-ES **generations** per restart
and `population` the candidates per generation (defaults 800 and 50, the paper's). One generation
renders the population in one batched generator forward and computes each candidate's first-order
gradient (a forward and a backward through the victim, no double backward), which costs about as
much as one step of a gradient-based attack on a batch: generations = steps is the equal-compute
rule used across methods. `lr` of the shared config is not used (CMA-ES adapts its own step size,
starting from `sigma`).

Batch size 1, as in the original: the gradient of a batch is one sum and cannot be split per image,
and a joint search over B latents scales CMA-ES's dimension by B; a batch of more than one image is
refused with a GifdError.

Restarts and output. `restarts` independent CMA-ES runs, each from its own latent draw and seed,
advance together (their populations share the generator's batched forwards). A run's answer is the
better, by the objective, of its best evaluated candidate and its final mean; the output is the run
whose answer has the lowest gradient loss. A run stops early only on cma's scale-free termination
criteria (the scale-dependent `tolfun*` are switched off, since gradient losses can be tiny).

Randomness. Each restart's start latent comes from the given torch.Generator, and so does the seed
of the restart's own numpy Generator, passed to cma as its `randn`. cma's `seed` option was not used
on purpose: it reseeds numpy's *global* RNG (a side effect on the caller) and is ignored once
`randn` is set. cma's printing and log files are off (verbose -9, verb_log 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cma
import numpy as np
import torch
import torch.nn.functional as F
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
    progress_bar,
    register_attack,
    to_victim_images,
)
from gifd.attacks.objectives import GradientDistance, gradient_distance
from gifd.errors import GifdError, list_some
from gifd.priors.base import Context, StagedGenerator, Variables

#: Draws of the prior's `init_latent` used to standardise the searched coordinates.
STATS_SAMPLES = 2048
#: Cap on the number of latent entries drawn for the statistics (fewer draws for huge latents).
STATS_MAX_ENTRIES = 1 << 22
#: Seed of those draws (fixed, so the search space is a property of the prior, not of the run).
STATS_SEED = 0
#: Objective value told to CMA-ES for a candidate whose loss is NaN or infinite.
NON_FINITE_PENALTY = 1e30


class GGLConfig(AttackConfig):
    """Settings of GGL; `steps` counts CMA-ES generations per restart."""

    steps: int = Field(800, ge=1)
    restarts: int = Field(4, ge=1)
    distance: GradientDistance = "l2"
    #: Candidates per CMA-ES generation (cma's popsize).
    population: int = Field(50, ge=2)
    #: CMA-ES's initial step size, in prior standard deviations.
    sigma: float = Field(0.5, gt=0)
    #: Latent box half-width in prior standard deviations (tanh map); null: unbounded.
    bound: float | None = Field(3.0, gt=0)
    #: Weight of the KL prior on the standardised latent.
    kl: float = Field(0.1, ge=0)
    #: Stage-0 variables searched; null: all but the noise maps (`noise_*`).
    variables: list[str] | None = None
    #: Above this many searched dimensions CMA-ES keeps a diagonal covariance (sep-CMA, linear cost).
    diagonal_above: int = Field(2000, ge=1)
    #: Largest number of candidates rendered by one generator forward.
    generator_batch: int = Field(64, ge=1)


@dataclass
class LatentSpace:
    """The searched stage-0 variables of a prior, flattened and standardised."""

    names: list[str]
    shapes: dict[str, tuple[int, ...]]
    mean: Tensor
    std: Tensor
    bound: float | None

    @property
    def dim(self) -> int:
        return int(self.mean.numel())

    @classmethod
    def of(
        cls, prior: StagedGenerator, labels: Tensor, variables: list[str] | None, bound: float | None
    ) -> LatentSpace:
        """Measure the per-coordinate mean and std of the searched variables of `prior`."""
        probe = prior.init_latent(1, labels[:1], torch.Generator().manual_seed(STATS_SEED))
        available = list(probe)
        if variables is None:
            names = [k for k in available if not k.startswith("noise")]
        else:
            unknown = [k for k in variables if k not in probe]
            if unknown:
                raise GifdError(
                    f"ggl variables {unknown} are not stage-0 variables of {type(prior).__name__}: "
                    f"use some of {list_some(available, 10)}"
                )
            names = list(dict.fromkeys(variables))
        if not names:
            raise GifdError(
                f"ggl has nothing to search in {type(prior).__name__} (stage-0 variables: "
                f"{list_some(available, 10)}): set `variables` to some of them"
            )
        shapes = {k: tuple(probe[k].shape[1:]) for k in names}
        dim = sum(math.prod(s) for s in shapes.values())
        n = max(64, min(STATS_SAMPLES, STATS_MAX_ENTRIES // max(dim, 1)))
        with torch.no_grad():
            draws = prior.init_latent(n, labels[:1].repeat(n), torch.Generator().manual_seed(STATS_SEED))
            flat = torch.cat([draws[k].flatten(1).double() for k in names], dim=1)
        std = flat.std(0).clamp_min(1e-6)
        return cls(names, shapes, flat.mean(0).cpu(), std.cpu(), bound)

    def standardise(self, variables: Variables) -> np.ndarray:
        """The search coordinates (before the bound) of one sample's variables."""
        flat = torch.cat([variables[k].flatten(1).double().cpu() for k in self.names], dim=1)[0]
        return ((flat - self.mean) / self.std).numpy()

    def bounded(self, x: Tensor) -> Tensor:
        """Search points -> standardised latent coordinates (the tanh box)."""
        return x if self.bound is None else self.bound * torch.tanh(x / self.bound)

    def kl(self, x: Tensor) -> Tensor:
        """GGL's KL prior per row: KL(N(m, s^2) || N(0, 1)) of the row's standardised entries."""
        u = self.bounded(x)
        m, var = u.mean(1), u.var(1, unbiased=False)
        return 0.5 * (m.pow(2) + var - 1 - torch.log(var + 1e-10))

    def variables(self, x: Tensor, fixed: Variables, dtype: torch.dtype, device: torch.device) -> Variables:
        """Prior variables for search points `x` (CPU rows), the other stage-0 variables from `fixed`."""
        latent = self.mean + self.std * self.bounded(x)
        out: Variables = {}
        start = 0
        for k in self.names:
            size = math.prod(self.shapes[k])
            out[k] = latent[:, start : start + size].reshape(-1, *self.shapes[k]).to(device, dtype)
            start += size
        for k, v in fixed.items():
            if k not in out:
                out[k] = v.expand(x.shape[0], *v.shape[1:])
        return out


def first_order_losses(matcher: GradientMatcher, inputs: Tensor) -> Tensor:
    """Gradient distance of each single-image candidate in `inputs` (N, 3, H, W), no graph kept.

    Each candidate's dummy gradient is that of the cross-entropy of the victim on it with the
    attacker's labels (batch size 1), computed without create_graph: CMA-ES needs loss values only.
    A defense the attacker models, or a FedAvg delta, goes through the matcher's full dummy update.
    """
    if matcher.defense is not None or matcher.local is not None:
        return torch.stack([matcher(inputs[i : i + 1]).detach() for i in range(inputs.shape[0])])
    losses = []
    with torch.enable_grad():
        for i in range(inputs.shape[0]):
            loss = F.cross_entropy(matcher.victim.model(inputs[i : i + 1]), matcher.labels)
            grads = torch.autograd.grad(loss, matcher.params)
            losses.append(
                gradient_distance(grads, matcher.target_tensors, matcher.distance, matcher.layer_weights)
            )
    return torch.stack(losses).detach()


@dataclass
class _Search:
    """One restart: its CMA-ES state, fixed variables and best candidate so far."""

    es: Any
    fixed: Variables
    best_x: np.ndarray
    best_objective: float = math.inf
    active: bool = True
    pending: list[np.ndarray] = field(default_factory=list)
    last_best_loss: float = math.nan


@register_attack
class GGL(Attack):
    """GGL: CMA-ES over a generator's latent, L2 gradient matching + KL prior (batch size 1)."""

    name = "ggl"
    Config = GGLConfig
    needs_prior = True
    config: GGLConfig

    def __init__(
        self,
        config: GGLConfig | dict[str, Any] | None = None,
        *,
        progress: bool = True,
        prior: StagedGenerator | None = None,
    ):
        super().__init__(config, progress=progress)
        if prior is None:
            raise GifdError("ggl needs a generative prior: pass --prior")
        if not isinstance(prior, StagedGenerator):
            raise GifdError(f"ggl needs a generative prior (a StagedGenerator), got {type(prior).__name__}")
        self.prior = prior

    def run(self, target: Target, generator: torch.Generator) -> AttackResult:
        cfg, prior = self.config, self.prior
        if target.batch_size != 1:
            raise GifdError(
                f"ggl supports batch size 1 (as in the original), got a batch of {target.batch_size}: "
                "use --batch-size 1 or another attack"
            )
        clock = Stopwatch(target.device)
        labels = target.labels.to(prior.device)
        with torch.no_grad():
            space = LatentSpace.of(prior, labels, cfg.variables, cfg.bound)
        matcher = GradientMatcher(target, cfg.distance, cfg.layer_weights)
        searches = [self._start(space, labels, generator) for _ in range(cfg.restarts)]
        log = LossLog(cfg.restarts)
        with progress_bar(cfg.steps, self.name, self.progress) as advance:
            for generation in range(cfg.steps):
                active = [s for s in searches if s.active]
                for s in active:
                    s.pending = s.es.ask()
                if active:
                    points = np.concatenate([np.asarray(s.pending) for s in active])
                    losses, objectives, _ = self._evaluate(space, matcher, labels, points, active)
                    start = 0
                    for s in active:
                        stop = start + len(s.pending)
                        values = objectives[start:stop]
                        s.es.tell(s.pending, values.tolist())
                        best = int(values.argmin())
                        if values[best] < s.best_objective:
                            s.best_objective, s.best_x = float(values[best]), np.array(s.pending[best])
                        finite = losses[start:stop][np.isfinite(losses[start:stop])]
                        s.last_best_loss = float(finite.min()) if finite.size else math.inf
                        start = stop
                        s.active = not _stopped(s.es)
                if (generation + 1) % cfg.log_every == 0 or generation + 1 == cfg.steps:
                    values_logged = log.record(
                        generation + 1, torch.tensor([s.last_best_loss for s in searches])
                    )
                    done = generation + 1 - (log.steps[-2] if len(log.steps) > 1 else 0)
                    advance(done, min(values_logged))
        # Each restart's answer: the better (by the objective) of its best candidate and its mean.
        points = np.stack([p for s in searches for p in (s.best_x, np.asarray(s.es.result.xfavorite))])
        losses, objectives, images = self._evaluate(space, matcher, labels, points, searches)
        pick = [2 * r + int(objectives[2 * r + 1] < objectives[2 * r]) for r in range(cfg.restarts)]
        final = [float(losses[i]) if math.isfinite(losses[i]) else math.inf for i in pick]
        best = min(range(cfg.restarts), key=final.__getitem__)
        return AttackResult(
            attack=self.name,
            images=images[pick[best]][None].clamp(0, 1).cpu(),
            labels=target.labels.detach().cpu(),
            restart_losses=final,
            best_restart=best,
            loss_history=log.losses,
            log_steps=log.steps,
            steps=cfg.steps,
            seconds=clock.elapsed(),
        )

    # ------------------------------------------------------------------------------------- parts
    def _start(self, space: LatentSpace, labels: Tensor, generator: torch.Generator) -> _Search:
        """A CMA-ES run from a fresh latent draw, with a numpy RNG seeded from `generator`."""
        cfg = self.config
        with torch.no_grad():
            draw = self.prior.init_latent(1, labels, generator)
        seed = int(torch.randint(1, 2**31 - 1, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        x0 = space.standardise(draw)
        options = {
            "popsize": cfg.population,
            "randn": lambda *shape: rng.standard_normal(shape),
            "seed": math.nan,
            "verbose": -9,
            "verb_log": 0,
            "verb_disp": 0,
            "CMA_diagonal": space.dim > cfg.diagonal_above,
            "tolfun": 0,
            "tolfunhist": 0,
            "tolfunrel": 0,
            "maxiter": math.inf,
            "CMA_eigenmethod": _torch_eigh,
        }
        es = cma.CMAEvolutionStrategy(x0, cfg.sigma, options)
        return _Search(es=es, fixed=draw, best_x=x0)

    def _evaluate(
        self,
        space: LatentSpace,
        matcher: GradientMatcher,
        labels: Tensor,
        points: np.ndarray,
        searches: list[_Search],
    ) -> tuple[np.ndarray, np.ndarray, Tensor]:
        """Gradient losses, objectives and victim images in [0, 1] of the search points (rows),
        consecutive equal shares of which belong to `searches` in order."""
        cfg, prior, victim = self.config, self.prior, matcher.victim
        per_search = len(points) // len(searches)
        x = torch.as_tensor(points, dtype=torch.float64)  # CMA-ES side math stays on the CPU in float64
        dtype = next(iter(searches[0].fixed.values())).dtype
        grad_losses, images = [], []
        for start in range(0, len(points), cfg.generator_batch):
            rows = range(start, min(start + cfg.generator_batch, len(points)))
            chunk = x[rows.start : rows.stop]
            fixed = {
                k: torch.cat([searches[i // per_search].fixed[k] for i in rows])
                for k in searches[0].fixed
                if k not in space.names
            }
            with torch.no_grad():
                context: Context = prior.context(labels.repeat(len(rows)), len(rows))
                variables = space.variables(chunk, fixed, dtype, prior.device)
                chunk_images = to_victim_images(prior(0, variables, context), victim.resolution)
            chunk_images = chunk_images.to(matcher.victim.device, torch.float32)
            grad_losses.append(first_order_losses(matcher, victim.normalize(chunk_images)))
            images.append(chunk_images)
        losses = torch.cat(grad_losses).double().cpu()
        objectives = losses + cfg.kl * space.kl(x) if cfg.kl else losses.clone()
        objectives = torch.where(
            torch.isfinite(objectives), objectives, torch.full_like(objectives, NON_FINITE_PENALTY)
        )
        return losses.numpy(), objectives.numpy(), torch.cat(images)


def _torch_eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of cma's covariance with torch's LAPACK instead of numpy's.

    numpy's multi-threaded OpenBLAS competes with torch's own thread pool for the same cores: on a
    2-core machine, after torch has run, np.linalg.eigh of a 100 x 100 matrix took ~210 ms instead
    of ~5 ms (measured), more than the rest of a generation.
    """
    values, vectors = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(matrix)))
    return values.numpy(), vectors.numpy()


def _stopped(es: Any) -> bool:
    """Whether cma met a termination criterion (the budget is ours, so maxiter never counts)."""
    return bool({k: v for k, v in es.stop().items() if k not in ("maxiter", "maxfevals")})
