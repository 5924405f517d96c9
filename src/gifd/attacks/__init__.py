"""Gradient inversion attacks on shared parts (objectives, label inference, loops, results)."""

from gifd.attacks import ggl, gias, gifd, pixel  # noqa: F401  (registers the attacks)
from gifd.attacks.base import (
    ATTACKS,
    Attack,
    AttackConfig,
    AttackResult,
    GradientMatcher,
    StageResult,
    Target,
)
from gifd.attacks.labels import LABEL_RULES, infer_labels

__all__ = [
    "ATTACKS",
    "LABEL_RULES",
    "Attack",
    "AttackConfig",
    "AttackResult",
    "GradientMatcher",
    "StageResult",
    "Target",
    "infer_labels",
]
