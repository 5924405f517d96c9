"""Defenses (see gifd.defenses.base)."""

from gifd.defenses.base import *  # noqa: F403
