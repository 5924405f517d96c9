"""Sweeps (see gifd.sweep.grid)."""

from gifd.sweep.grid import *  # noqa: F403
from gifd.sweep.grid import __all__  # noqa: F401
