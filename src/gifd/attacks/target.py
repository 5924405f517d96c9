"""What an attack is given: the victim, the update it received, the labels, the defense model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gifd.defenses import Defense
from gifd.errors import GifdError
from gifd.update import Update, validate_update
from gifd.victims import Victim


@dataclass
class Target:
    """The attacker's view of one client update."""

    victim: Victim
    update: Update
    labels: Tensor
    #: The attacker's model of the client's defense (None: it assumes none, i.e. oblivious).
    defense: Defense | None = None

    def __post_init__(self) -> None:
        validate_update(self.update, self.victim)
        if self.labels.numel() != self.update.batch_size:
            raise GifdError(f"{self.labels.numel()} labels given for a batch of {self.update.batch_size}")

    @property
    def batch_size(self) -> int:
        return self.update.batch_size

    @property
    def device(self) -> torch.device:
        return self.victim.device
