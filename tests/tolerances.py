"""The test suite's tolerance policy for float comparisons, written down once.

Two computations of the same value that differ only in their kernels (vector width, summation
order, fused multiply-add: what differs between CPUs and between ATEN_CPU_CAPABILITY settings,
or between a batched and a one-by-one path) round differently. For a sum of `terms` products of
magnitude at most `magnitude`, two summation orders differ by at most 2 * terms * eps * magnitude
(Higham, Accuracy and Stability of Numerical Algorithms, ch. 3) and, with overwhelming
probability, by less than a small multiple of sqrt(terms) * eps * magnitude (Higham & Mary 2019,
probabilistic rounding-error analysis). `depth` layers of such sums (a network) add their errors.

Rules:
- the same kernel on the same data (same process, same path) is compared with torch.equal;
- a kernel-dependent comparison uses `kernel_atol` / `kernel_rtol`, with the reduction it stands
  for named beside it;
- a bound that must hold exactly (a clipped norm <= C) is asserted exactly, on a float64 measure.
`.ci/run` runs the suite a second time under ATEN_CPU_CAPABILITY=default, so a comparison that
holds only on one CPU's kernels fails in CI, not on a user's machine.
"""

from __future__ import annotations

import math

import torch

#: Multiple of the probabilistic sqrt(n) bound: 4 standard deviations of the rounding walk.
SAFETY = 4.0


def kernel_atol(dtype: torch.dtype, terms: int, magnitude: float = 1.0, depth: int = 1) -> float:
    """Absolute tolerance for two kernels' results of `depth` stacked sums of `terms` terms each
    of size <= `magnitude`: SAFETY * depth * sqrt(terms) * eps(dtype) * magnitude."""
    return SAFETY * depth * math.sqrt(terms) * torch.finfo(dtype).eps * magnitude


def kernel_rtol(dtype: torch.dtype, terms: int, depth: int = 1) -> float:
    """Relative tolerance of the same bound (for values whose terms do not cancel)."""
    return kernel_atol(dtype, terms, 1.0, depth)
