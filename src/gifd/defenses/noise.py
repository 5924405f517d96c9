"""Gaussian noise on every entry of the update (`noise:STD`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from gifd.defenses.base import (
    Defense,
    Tensors,
    as_list,
    gaussian_noise,
    register_defense,
    same_form,
    spec_number,
)
from gifd.errors import GifdError


@register_defense
@dataclass(frozen=True)
class NoiseDefense(Defense):
    """Add independent Gaussian noise N(0, std^2) to every entry of the update."""

    std: float
    name: ClassVar[str] = "noise"
    arguments: ClassVar[tuple[str, ...]] = ("STD",)
    strengths: ClassVar[tuple[str, ...]] = ("noise:0.001", "noise:0.01")

    def __post_init__(self) -> None:
        if not (self.std >= 0) or math.isinf(self.std):
            raise GifdError(f"noise std must be a finite number >= 0 (e.g. noise:0.01), got {self.std:g}")

    @torch.no_grad()
    def apply(self, tensors: Tensors, generator=None, context=None) -> Tensors:  # type: ignore[override]
        values, names = as_list(tensors)
        if self.std == 0:
            return same_form(values, names)
        return same_form([t + gaussian_noise(t, self.std, generator) for t in values], names)

    def describe(self) -> str:
        return (
            f"Gaussian noise of standard deviation {spec_number(self.std)} added to every entry of the update "
            "(the adaptive attacker cannot reproduce it and matches the noisy update as it is)"
        )
