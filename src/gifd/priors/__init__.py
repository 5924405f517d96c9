"""Generative priors behind one interface, `StagedGenerator` (see `gifd.priors.base`)."""

from gifd.priors.base import (
    PRIORS,
    Context,
    PriorEntry,
    StagedGenerator,
    Variables,
    create_prior,
    prior_settings,
    register_prior,
)

__all__ = [
    "PRIORS",
    "Context",
    "PriorEntry",
    "StagedGenerator",
    "Variables",
    "create_prior",
    "prior_settings",
    "register_prior",
]

# Each module registers its priors on import.
import gifd.priors.biggan
import gifd.priors.dcgan
import gifd.priors.stylegan2  # noqa: F401
