"""The interface every generative prior implements: a generator cut into stages.

GIFD starts the generator from any intermediate layer. Stage 0 holds the latent variables (z, or
w+ and noise maps); stage i >= 1 holds the output of module i (plus, for StyleGAN2, the w+ and the
noise maps still used after it). Attacks depend only on this interface, so a new generator is one
class and no attack changes.

Also here: the prior registry (`register_prior`, `create_prior`) and the generic radius helpers
that scale an l1-ball schedule by a prior's own features (`radii_from_feature_norms`,
`linear_radii`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from gifd.config import build_config
from gifd.errors import GifdError

#: The optimisable variables of one stage, by name (e.g. {"z": ...} or {"h": ..., "w": ...}).
#: Every tensor has the batch as its first dimension.
Variables = dict[str, Tensor]
#: Fixed inputs that are not optimised (e.g. the class embedding of a conditional prior).
Context = dict[str, Tensor]

#: GIAS fine-tune: Adam's step relative to the RMS of the generator's weights (the weight-scale
#: rule of `StagedGenerator.gias_finetune_lr`).
FINETUNE_RELATIVE_STEP = 2.5e-3
#: Fraction of a stage's typical l1 norm that `radii_from_feature_norms` gives as its radius by
#: default (DCGAN priors keep it for their latent stage, unused by GIFD).
DEFAULT_RADIUS_FRACTION = 0.1
#: Number of random latents over which feature norms are averaged for the radii.
DEFAULT_RADIUS_SAMPLES = 128
#: Seed of the latents drawn to measure the radii (fixed so the radii are a property of the weights).
RADIUS_SEED = 0


class StagedGenerator(nn.Module, ABC):
    """A pretrained generator G = g_L o ... o g_1 that can be run from any stage.

    Subclasses set `resolution` (output side in pixels), `latent_dim`, `num_classes` (None for an
    unconditional prior) and `sphere_latent` (whether the stage-0 latent is kept on the sphere of
    its starting norm, as GIFD does for BigGAN's z). Images are returned in [-1, 1].
    """

    resolution: int
    latent_dim: int
    num_classes: int | None = None
    sphere_latent: bool = False

    @property
    @abstractmethod
    def num_stages(self) -> int:
        """Number of stages: 0 is the latent, 1..num_stages-1 the outputs of the modules."""

    @property
    def stage_names(self) -> list[str]:
        """Human-readable name of each stage (for reports)."""
        return ["latent"] + [f"module {i}" for i in range(1, self.num_stages)]

    @abstractmethod
    def init_latent(
        self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Variables:
        """The stage-0 variables for `n` samples, drawn from the prior's own distribution.

        `generator` is a CPU torch.Generator (draws are made on the CPU and moved to the prior's
        device, so a seed gives the same latent on every device).
        """

    def context(self, labels: Tensor | None, n: int) -> Context:
        """Fixed per-sample inputs: for a conditional prior the class conditioning of `labels`."""
        if self.num_classes is not None and labels is None:
            raise GifdError(f"{type(self).__name__} is class-conditional: labels are required")
        return {}

    @abstractmethod
    def forward(self, stage: int, variables: Variables, context: Context) -> Tensor:  # type: ignore[override]
        """The image in [-1, 1], shape (N, 3, resolution, resolution), from `stage`'s variables."""

    @abstractmethod
    def advance(self, stage: int, variables: Variables, context: Context) -> Variables:
        """The variables of stage + 1 computed from those of `stage` (no gradient)."""

    def trainable(self, stage: int) -> list[str]:
        """Names of the stage's variables that attacks optimise (and project); the rest stay fixed."""
        return list(self.stage_shapes(stage))

    @abstractmethod
    def default_radii(self) -> list[float]:
        """Default l1-ball radius per stage (applied per sample to every variable of the stage).

        Entries for stages whose variables are not projected (a sphere-constrained z) are ignored.
        """

    def configure(self, settings: BaseModel) -> None:
        """Apply the prior's settings (its registry entry's `settings` model); a prior without
        settings takes none, so there is nothing to apply."""

    def gias_finetune_lr(self) -> float:
        """GIAS's fine-tune learning rate for this prior (used when `finetune_lr` is not given).

        The weight-scale rule: FINETUNE_RELATIVE_STEP x the RMS of the generator's weights
        (parameters with two or more dimensions: kernels and matrices, not biases or norm
        scales), to one significant digit. Adam moves every weight by about the lr per step, so
        the rule bounds a step to 1/400 of a typical weight whatever the weights' scale: small
        enough that the per-image copies stay near the prior's weights (a generator far from
        them stops acting as a prior), large enough to fit within GIAS's budget. Priors whose
        GIAS value is published override this (BigGAN 1e-5, StyleGAN2 1e-3).
        """
        weights = [p.detach().flatten() for p in self.parameters() if p.ndim >= 2]
        if not weights:
            raise GifdError(
                f"{type(self).__name__} has no weight tensors to scale GIAS's fine-tune lr by: set finetune_lr"
            )
        rms = float(torch.cat(weights).double().pow(2).mean().sqrt())
        return float(f"{FINETUNE_RELATIVE_STEP * rms:.1g}")

    def stage_shapes(self, stage: int) -> dict[str, tuple[int, ...]]:
        """Per-sample shapes of the variables of `stage` (computed by a dry run, batch 1)."""
        gen = torch.Generator().manual_seed(0)
        labels = torch.zeros(1, dtype=torch.long) if self.num_classes is not None else None
        with torch.no_grad():
            ctx = self.context(labels, 1)
            variables = self.init_latent(1, labels, gen)
            for s in range(stage):
                variables = self.advance(s, variables, ctx)
        return {k: tuple(v.shape[1:]) for k, v in variables.items()}

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def check_stage(self, stage: int) -> None:
        """Raise a GifdError if `stage` is not one of this prior's stages."""
        if not 0 <= stage < self.num_stages:
            raise GifdError(
                f"stage {stage} does not exist: {type(self).__name__} has stages 0..{self.num_stages - 1}"
            )


@dataclass(frozen=True)
class PriorEntry:
    """A named prior in the registry: how to build it and where its weights come from."""

    name: str
    description: str
    #: Where the weights come from, in words (shown by `gifd priors`).
    weights_source: str
    #: Build the prior from a weights path (None: the default location, if the prior has one).
    build: Callable[[Path | None], StagedGenerator]
    #: The default weights location, or None when the user must give a path.
    default_weights: Callable[[], Path | None] = lambda: None
    #: The model of the prior's settings (`prior_settings` of a run), or None: it has none.
    settings: type[BaseModel] | None = None


PRIORS: dict[str, PriorEntry] = {}


def register_prior(entry: PriorEntry) -> PriorEntry:
    """Add `entry` to the prior registry (once per name)."""
    if entry.name in PRIORS:
        raise ValueError(f"prior {entry.name!r} is registered twice")
    PRIORS[entry.name] = entry
    return entry


def prior_settings(name: str, values: dict[str, Any] | None) -> BaseModel | None:
    """Validate `values` as the settings of the registered prior `name` (one-line errors, no
    weights loaded); None for a prior that has no settings and was given none."""
    if name not in PRIORS:
        raise GifdError(
            f"unknown prior {name!r}. Known priors: {', '.join(sorted(PRIORS))} (see `gifd priors`)."
        )
    model = PRIORS[name].settings
    if model is None:
        if values:
            raise GifdError(f"prior {name!r} takes no prior_settings, got {sorted(values)}: drop them")
        return None
    return build_config(model, dict(values or {}), f"prior_settings of {name}")


def create_prior(
    name: str,
    weights: str | Path | None = None,
    device: torch.device | str | None = None,
    settings: dict[str, Any] | None = None,
) -> StagedGenerator:
    """Build the registered prior `name` from `weights` (or its default location) with its
    `settings` (see `prior_settings`), in eval mode, without gradients on its parameters, on
    `device`."""
    validated = prior_settings(name, settings)
    prior = PRIORS[name].build(Path(weights).expanduser() if weights is not None else None)
    if validated is not None:
        prior.configure(validated)
    prior.eval().requires_grad_(False)
    if device is not None:
        prior.to(device)
    return prior


def linear_radii(norms: list[float], step: float, stage0: float) -> list[float]:
    """The official GIFD shape, scaled by a prior's own features: radius_i = `step` x norms[1] x i
    for each feature stage i >= 1 (the absolute room grows by a constant per stage, so the room
    relative to a deeper, larger feature shrinks); `stage0` for the latent stage."""
    return [stage0] + [step * norms[1] * i for i in range(1, len(norms))]


_RADII_CACHE: dict[tuple[Any, ...], list[float]] = {}


def radii_from_feature_norms(
    prior: StagedGenerator,
    fraction: float = DEFAULT_RADIUS_FRACTION,
    n_samples: int = DEFAULT_RADIUS_SAMPLES,
    seed: int = RADIUS_SEED,
) -> list[float]:
    """l1-ball radius per stage: `fraction` x the mean over `n_samples` random latents (drawn with
    `seed`) of the per-sample l1 norm of the stage's variables (summed over its variables).

    Scale-free: it depends only on the prior's own features, so it gives any staged generator radii
    of a comparable relative size. Results are cached per weights when the prior has a
    `weights_key` attribute (a file path with size and modification time).
    """
    if not fraction > 0:
        raise GifdError(f"radius fraction must be positive, got {fraction}")
    weights_key = getattr(prior, "weights_key", None)
    #: A stage cut (e.g. DCGANPrior.cut) changes the features, so it is part of the key.
    cut = getattr(prior, "cut", None)
    cache_key = (weights_key, cut, fraction, n_samples, seed) if weights_key is not None else None
    if cache_key is not None and cache_key in _RADII_CACHE:
        return list(_RADII_CACHE[cache_key])
    gen = torch.Generator().manual_seed(seed)
    labels = None
    if prior.num_classes is not None:
        labels = torch.randint(prior.num_classes, (n_samples,), generator=gen).to(prior.device)
    was_training = prior.training
    prior.eval()
    norms: list[float] = []
    with torch.no_grad():
        ctx = prior.context(labels, n_samples)
        variables = prior.init_latent(n_samples, labels, gen)
        for stage in range(prior.num_stages):
            if stage > 0:
                variables = prior.advance(stage - 1, variables, ctx)
            per_sample = sum(v.flatten(1).abs().sum(1).double() for v in variables.values())
            norms.append(float(per_sample.mean()))
    prior.train(was_training)
    radii = [fraction * n for n in norms]
    if cache_key is not None:
        _RADII_CACHE[cache_key] = radii
    return list(radii)
