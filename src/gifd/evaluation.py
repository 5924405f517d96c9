"""The evaluation: the only party that sees the private batch. It pairs each reconstruction with
its original (optimal assignment), scores it, and keeps the images for the run directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gifd.attacker import Attempt
from gifd.metrics import evaluate, label_accuracy
from gifd.victims import Victim


@dataclass
class Gallery:
    """Reconstructions per attack (one tensor per batch, paired with the originals when scored)
    and each staged attack's best images after every stage."""

    images: dict[str, list[Tensor]] = field(default_factory=dict)
    stages: dict[str, dict[int, list[Tensor]]] = field(default_factory=dict)

    def joined(self, num_batches: int) -> tuple[dict[str, Tensor], dict[str, dict[int, Tensor]]]:
        """One tensor per attack (and per stage that every batch reached), batches in order."""
        return (
            {name: torch.cat(parts) for name, parts in self.images.items()},
            {
                name: {stage: torch.cat(parts) for stage, parts in by_stage.items() if len(parts) == num_batches}
                for name, by_stage in self.stages.items()
            },
        )


def score_attempt(
    attempt: Attempt, truth: tuple[Tensor, Tensor] | None, victim: Victim, gallery: Gallery
) -> dict[str, Any]:
    """One batch's record for results.json: the labels, each attack's summary and, with `truth`
    (the private images and labels), its metrics; the images go into `gallery`."""
    batch: dict[str, Any] = {"inferred_labels": attempt.labels.tolist(), "attacks": {}}
    if truth is not None:
        batch["true_labels"] = truth[1].tolist()
        batch["label_accuracy"] = label_accuracy(attempt.labels, truth[1])
    for name, result in attempt.results.items():
        batch["attacks"][name] = result.summary()
        order = torch.arange(result.images.shape[0])
        if truth is not None:
            evaluation = evaluate(
                result.images.to(victim.device),
                truth[0].to(victim.device),
                features=lambda x: victim.model(victim.normalize(x)),
            )
            order = evaluation.order  # reconstructions paired with the originals
            batch["attacks"][name]["metrics"] = evaluation.to_dict()
        gallery.images.setdefault(name, []).append(result.images[order].cpu())
        for stage in result.stages:
            gallery.stages.setdefault(name, {}).setdefault(stage.stage, []).append(stage.images[order].cpu())
    return batch
