"""The typed results of a run: what `results.json` holds, as pydantic models.

The writer (`gifd.experiment`) validates its results against `RunResults` before anything is
written, so a drifting key fails the run instead of a reader later; the readers (the report, the
sweep aggregate, the Flower audit) read these models, never raw dicts. Unknown keys are errors.

Versions: 2 (this one) adds `version` and the attack records' `settings`, `pruned` and stage
budgets; version 1 (no `version` key) loads, its missing keys at their defaults. A newer version
than this gifd knows is refused with the fix (upgrade gifd).
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import gifd
from gifd.errors import GifdError

if TYPE_CHECKING:
    from gifd.data import ImageSet
    from gifd.defenses import Defense
    from gifd.plan import ExperimentConfig

#: The results.json format this gifd writes (and the newest it reads).
RESULTS_VERSION = 2
#: File name of the results inside a run directory.
RESULTS_NAME = "results.json"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LossHistory(_Record):
    """Gradient loss of every restart at the logged steps."""

    steps: list[int] = Field(default_factory=list)
    losses: list[list[float | None]] = Field(default_factory=list)


class StageRecord(_Record):
    """One stage of a staged attack (GIFD: latent, then each feature stage)."""

    stage: int
    name: str
    gradient_loss: float | None
    restart_losses: list[float | None]
    end_step: int | None = None
    budget: int | None = None
    steps: int | None = None
    stopped_early: bool = False


class PruningRecord(_Record):
    """Restarts a halving rung dropped: at which stage and step."""

    stage: int
    step: int
    restarts: list[int]


class Scores(_Record):
    """An attack's reconstructions scored against the private batch (`gifd.metrics.Evaluation`)."""

    order: list[int]
    per_image: dict[str, list[float | None]]
    mean: dict[str, float | None]
    notes: list[str] = Field(default_factory=list)


class AttackRecord(_Record):
    """One attack on one batch (`AttackResult.summary`, plus its scores when the truth was known)."""

    attack: str
    gradient_loss: float | None
    restart_losses: list[float | None]
    best_restart: int
    labels: list[int]
    steps: int
    seconds: float
    loss_history: LossHistory
    settings: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageRecord] = Field(default_factory=list)
    pruned: list[PruningRecord] = Field(default_factory=list)
    metrics: Scores | None = None


class BatchRecord(_Record):
    """One client update and every attack on it."""

    inferred_labels: list[int]
    attacks: dict[str, AttackRecord]
    true_labels: list[int] | None = None
    label_accuracy: float | None = None
    #: Similarity of the defended update to the clean one (None without a defense).
    utility_cost: dict[str, float] | None = None


class AttackTotals(_Record):
    """One attack over all batches: mean metrics (None where unscored or infinite), per-image
    values, time, steps and each batch's gradient loss."""

    psnr: float | None = None
    mse: float | None = None
    ssim: float | None = None
    ms_ssim: float | None = None
    lpips_st: float | None = None
    lpips: float | None = None
    feature_mse: float | None = None
    per_image: dict[str, list[float | None]] = Field(default_factory=dict)
    seconds: float
    steps: int
    gradient_loss: list[float | None]

    def metric(self, key: str) -> float | None:
        """The mean of metric `key` (None when it was not measured)."""
        return getattr(self, key, None) if key in type(self).model_fields else None


class ImagesRecord(_Record):
    """Where the private images came from."""

    source: str
    names: list[str]


class DefenseRecord(_Record):
    """The client's defense and what the attacker knew of it."""

    spec: str
    description: str
    knowledge: str
    utility_cost: dict[str, float] | None = None


class RunResults(_Record):
    """Everything a run records (results.json): its full config, provenance and results."""

    version: int = RESULTS_VERSION
    config: dict[str, Any]
    seed: int
    date: str
    versions: dict[str, str]
    device: str
    images: ImagesRecord | None
    inferred_labels: list[int]
    batches: list[BatchRecord]
    attacks: dict[str, AttackTotals]
    defense: DefenseRecord
    true_labels: list[int] | None = None
    label_accuracy: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, values: Any) -> Any:
        """Version 1 (no `version` key) reads as version 1; a newer version is refused."""
        if isinstance(values, dict):
            version = values.get("version", 1)
            if not isinstance(version, int) or version > RESULTS_VERSION:
                raise GifdError(
                    f"results version {version!r} is newer than this gifd reads ({RESULTS_VERSION}): upgrade gifd"
                )
            values = {**values, "version": version}
        return values

    def attack_in(self, batch: int, attack: str) -> AttackRecord | None:
        """Attack `attack`'s record in batch `batch` (None if it is missing)."""
        return self.batches[batch].attacks.get(attack) if batch < len(self.batches) else None


def validate_results(results: dict[str, Any], source: str = RESULTS_NAME) -> RunResults:
    """`results` as a `RunResults` (a one-line GifdError naming the first bad key)."""
    try:
        return RunResults.model_validate(results)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = ".".join(str(part) for part in error["loc"]) or "(top level)"
        raise GifdError(
            f"{source} is not a gifd results file of version <= {RESULTS_VERSION}: {location}: {error['msg']}"
        ) from None


def read_results(path: Path, run_dir: Path) -> RunResults:
    """Load and validate a results.json (the fix names `run_dir`)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GifdError(f"cannot read {path}: {exc}: rerun `gifd attack --out {run_dir}` to rewrite it") from None
    if not isinstance(raw, dict):
        raise GifdError(f"{path} is not a gifd results file: pass the --out directory of a `gifd attack` run")
    return validate_results(raw, str(path))


def run_results(
    config: ExperimentConfig,
    device: torch.device,
    private: ImageSet | None,
    batches: list[dict[str, Any]],
    defense: Defense,
) -> dict[str, Any]:
    """The results dict of a run: config, provenance, per-batch and per-attack results."""
    return {
        "version": RESULTS_VERSION,
        "config": config.model_dump(mode="json"),
        "seed": config.seed,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "device": str(device),
        "images": None if private is None else {"source": private.source, "names": private.names},
        "inferred_labels": [label for b in batches for label in b["inferred_labels"]],
        "batches": batches,
        "attacks": {name: attack_totals(name, batches) for name in config.attacks},
        "defense": {
            "spec": defense.spec(),
            "description": defense.describe(),
            "knowledge": config.defense_knowledge,
            "utility_cost": mean_utility_cost([b.get("utility_cost") for b in batches]),
        },
    }


def attack_totals(name: str, batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-image metric values of one attack over all batches, their means, time and steps."""
    per_image: dict[str, list[float | None]] = {}
    for batch in batches:
        scored = batch["attacks"][name].get("metrics") or {"per_image": {}}  # none without the truth
        for metric, values in scored["per_image"].items():
            per_image.setdefault(metric, []).extend(values)
    means = {m: mean_or_none(v) for m, v in per_image.items()}
    runs = [b["attacks"][name] for b in batches]
    return {
        **means,
        "per_image": per_image,
        "seconds": round(sum(r["seconds"] for r in runs), 3),
        "steps": runs[0]["steps"],
        "gradient_loss": [r["gradient_loss"] for r in runs],
    }


def mean_utility_cost(costs: list[dict[str, float] | None]) -> dict[str, float] | None:
    """Mean of each utility-cost measure over the batches (None without a defense)."""
    present = [c for c in costs if c is not None]
    if not present:
        return None
    return {key: float(np.mean([c[key] for c in present])) for key in present[0]}


def mean_or_none(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    if len(finite) < len(values):  # an infinite PSNR (exact reconstruction) is reported as None
        return None
    return float(np.mean(finite))


def versions() -> dict[str, str]:
    """Versions of what produced a run."""
    return {
        "gifd": gifd.__version__,
        "python": sys.version.split()[0],
        "torch": str(torch.__version__),  # a plain str: a str subclass is refused by weights-only loads
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
