"""Generative priors behind one interface, `StagedGenerator` (see `gifd.priors.base`)."""

from gifd.priors.base import PRIORS, Context, PriorEntry, StagedGenerator, Variables, create_prior, register_prior

__all__ = ["PRIORS", "Context", "PriorEntry", "StagedGenerator", "Variables", "create_prior", "register_prior"]
