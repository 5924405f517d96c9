"""Defenses against gradient inversion, each holding both halves so they cannot drift apart.

Every defense is one class with
- `apply(tensors, generator, context)` — the client's transform of its real update (no grad).
  `tensors` is a {name: tensor} dict or a list in the victim's parameter order; the result has
  the same form. Randomness comes from `generator` (drawn on the CPU, then moved, so a seed gives
  the same numbers on every device). Soteria and DP-SGD need the private batch: pass a
  `ClientContext(victim, images, labels)` (`requires_context` says when).
- `adapt(dummy, shared, names)` — the adaptive attacker's differentiable model of the defense,
  applied to its own dummy update (list in parameter order; `shared` is the update it received,
  `names` the parameter names). Oblivious attackers skip it: that switch is the caller's.
- `dummy_gradient(victim, inputs, labels)` — None unless the defense changes how the client
  computes its gradient (DP-SGD: per-example clipping); then the attacker's differentiable
  version of that computation, to use instead of the plain mean gradient.
- `estimated(shared, names)` — the same defense with the parameters an attacker can read off the
  update (clip bound from the norm, pruning ratio from the zeros, Soteria mask from the zero
  columns); parameters that cannot be estimated are kept as given.
- `spec()` (the CLI form, parsed back by `parse_defense`), `describe()` (words for reports) and
  `parameters()` (numbers for sweep plots); `aimed_at(victim)` where it depends on the victim.

The table of paper.md (from GGL), plus DP-SGD:

| defense | client | adaptive attacker |
|---|---|---|
| `noise:STD` | add N(0, STD^2) to every entry | nothing (noise is not reproducible) |
| `clip:C` | scale all by min(1, C / (norm + 1e-6)), norm over all tensors | the same |
| `prune:P` | per tensor, zero the floor(P n) entries of smallest magnitude | the same, with its own mask |
| `soteria:P` | zero the fc-weight columns of the floor(P F) fc-input features with the lowest score | multiply by the zero-column mask of the shared update |
| `dpsgd:C,SIGMA` | per-example clip to C, mean, add N(0, (SIGMA C / B)^2) | per-example clip of the dummy batch (vmap) |

`Compose` chains defenses left to right (`clip:4+noise:0.01` clips, then adds noise).

A new defense is one class registered with `@register_defense` (see gifd.defenses.base); the
modules: `base` (Defense, the registry, NoDefense, Compose, shared helpers), one per built-in
defense (`noise`, `clip`, `prune`, `soteria`, `dpsgd`), `parsing` (specs) and `update` (a
defense on an Update: aimed at the victim, applied, its utility cost).
"""

from __future__ import annotations

from gifd.defenses.base import (
    DEFENSES,
    ClientContext,
    Compose,
    Defense,
    NoDefense,
    ReproducibleDefense,
    Tensors,
    default_strengths,
    register_defense,
    require_context,
)

# The built-in defenses, imported (so registered) in the order help texts list them: keep it.
# isort: off
from gifd.defenses.noise import NoiseDefense
from gifd.defenses.clip import NORM_EPS, ClipDefense, clip_scale, global_norm
from gifd.defenses.prune import PruneDefense, magnitude_mask, prune_count
from gifd.defenses.soteria import SoteriaDefense, fc_input_features, soteria_mask, soteria_scores
from gifd.defenses.dpsgd import DPSGDDefense, clip_per_example, clipped_mean_gradient, per_example_gradients
# isort: on

from gifd.defenses.parsing import defense_forms, defense_names, parse_defense, parse_defense_sweep
from gifd.defenses.update import aimed_at, apply_defense, utility_cost

__all__ = [
    "DEFENSES",
    "DEFENSE_FORMS",
    "NORM_EPS",
    "ClientContext",
    "ClipDefense",
    "Compose",
    "DPSGDDefense",
    "Defense",
    "NoDefense",
    "NoiseDefense",
    "PruneDefense",
    "ReproducibleDefense",
    "SoteriaDefense",
    "Tensors",
    "aimed_at",
    "apply_defense",
    "clip_per_example",
    "clip_scale",
    "clipped_mean_gradient",
    "default_strengths",
    "defense_forms",
    "defense_names",
    "fc_input_features",
    "global_norm",
    "magnitude_mask",
    "parse_defense",
    "parse_defense_sweep",
    "per_example_gradients",
    "prune_count",
    "register_defense",
    "require_context",
    "soteria_mask",
    "soteria_scores",
    "utility_cost",
]


def __getattr__(name: str) -> str:
    """`DEFENSE_FORMS`: the forms of the defenses registered so far (`defense_forms()`)."""
    if name == "DEFENSE_FORMS":
        return defense_forms()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
