"""The threat model: what the attacker knows, checked in one place before any compute.

gifd's attacker is an honest-but-curious server with white-box access to the victim (architecture
and weights) and the update it received. Beyond that it knows, or does not know, the client's
labels (disclosed with the update, or inferred by a label rule), the defense (its parameters, only
its kind, or nothing: `defense_knowledge`) and a generative prior (for the attacks that declare
`needs_prior`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gifd.attacks import ATTACKS
from gifd.attacks.labels import LabelRule, check_label_inference
from gifd.defenses import Defense
from gifd.errors import GifdError
from gifd.update import Update
from gifd.victims import Victim

DefenseKnowledge = Literal["adaptive", "estimated", "oblivious"]


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker knows beyond the victim's weights and the update."""

    #: The client sends its labels with the update (else they are inferred by `label_rule`).
    disclosed_labels: bool
    label_rule: LabelRule
    defense_knowledge: DefenseKnowledge
    #: The generative prior the attacker holds (None: none).
    prior: str | None

    def check(self, victim: Victim, attacks: list[str], batch_size: int) -> None:
        """Refuse, before any compute, what this threat model cannot do: labels inferred from a
        victim without a linear classifier, or distinct labels for a batch larger than the class
        count, or an attack that needs a prior the attacker lacks."""
        if not self.disclosed_labels:
            check_label_inference(victim)
            if self.label_rule != "count" and batch_size > victim.num_classes:
                raise GifdError(
                    f"batch size {batch_size} exceeds the victim's {victim.num_classes} classes, so its labels "
                    f"cannot all differ as label inference {self.label_rule!r} assumes: pass --label-inference count"
                )
        if self.prior is None:
            needing = [name for name in attacks if ATTACKS.get(name).needs_prior]
            if needing:
                raise GifdError(f"{', '.join(needing)} need(s) a generative prior: pass --prior")

    def attacker_defense(self, defense: Defense, update: Update, victim: Victim) -> Defense | None:
        """The attacker's model of the client's defense: the defense itself ("adaptive"), one with
        its parameters estimated from the update ("estimated"), or none ("oblivious")."""
        if defense.spec() == "none" or self.defense_knowledge == "oblivious":
            return None
        if self.defense_knowledge == "estimated":
            names = [name for name, _ in victim.named_parameters()]
            return defense.estimated(update.ordered(victim), names)
        return defense
