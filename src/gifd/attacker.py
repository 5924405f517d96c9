"""The attacker's side of one update: infer the labels (or take the disclosed ones), then run every
attack of the plan, each from its own random stream ("attacker", batch, "label-inference" |
"attack", name). It sees the victim, the update and its model of the defense, never the private
batch; the evaluation (`gifd.evaluation`) scores what it returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from gifd.attacks import ATTACKS, AttackResult, Target, infer_labels
from gifd.attacks.labels import LabelRule
from gifd.defenses import Defense
from gifd.device import derived_generator
from gifd.plan import AttackPlan
from gifd.priors import StagedGenerator
from gifd.update import Update
from gifd.victims import Victim


@dataclass
class Attempt:
    """What the attacker made of one update: the labels it used and each attack's result."""

    labels: Tensor
    results: dict[str, AttackResult]


def attack_update(
    plan: AttackPlan,
    label_rule: LabelRule,
    seed: int,
    batch_index: int,
    victim: Victim,
    update: Update,
    *,
    prior: StagedGenerator | None = None,
    defense: Defense | None = None,
    progress: bool = True,
) -> Attempt:
    """Run every attack of `plan` on `update` (batch `batch_index` of a run seeded `seed`);
    `defense` is the attacker's model of the client's defense (None: it models none)."""
    if update.labels is not None:
        labels = update.labels.sort().values
    else:
        stream = derived_generator(seed, "attacker", batch_index, "label-inference")
        labels = infer_labels(update, victim, label_rule, generator=stream)
    target = Target(victim=victim, update=update, labels=labels, defense=defense)
    results: dict[str, AttackResult] = {}
    for name in plan.attacks:
        cls = ATTACKS.get(name)
        attack = cls(plan.settings_for(name), progress=progress, **({"prior": prior} if cls.needs_prior else {}))
        results[name] = attack.run(target, derived_generator(seed, "attacker", batch_index, "attack", name))
    return Attempt(labels, results)
