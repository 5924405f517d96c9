"""Reading a run directory for the report: its results.json, checked, and the lookups on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gifd.errors import GifdError
from gifd.metrics.info import METRIC_INFO
from gifd.results import (
    RESULTS_NAME,
    AttackRecord,
    AttackTotals,
    BatchRecord,
    RunResults,
    read_results,
    validate_results,
)
from gifd.rundir import read_marker


class RunView:
    """A run's typed results (`gifd.results.RunResults`) and its directory, with the lookups the
    report needs. `results` None: a directory read for its images alone (a Flower audit's runs)."""

    def __init__(self, results: RunResults | dict[str, Any] | None, run_dir: Path):
        if isinstance(results, dict):
            results = validate_results(results, str(run_dir / RESULTS_NAME))
        self.results = results
        self.dir = run_dir
        self.config: dict[str, Any] = results.config if results else {}
        self.attacks: list[str] = list(results.attacks) if results else []
        self.batches: list[BatchRecord] = list(results.batches) if results else []
        self.true_labels: list[int] = list(results.true_labels or []) if results else []
        self.inferred_labels: list[int] = list(results.inferred_labels) if results else []
        names = results.images.names if results and results.images else []
        #: False for an audit of a received update: no private images, no true labels, no metrics.
        self.has_truth = bool(results and results.images) or self._count_pngs("original") > 0
        reconstructed = max((self._count_pngs(a) for a in self.attacks), default=0)
        self.count = max(len(self.true_labels), len(names), self._count_pngs("original"), reconstructed)
        self.names = [names[i] if i < len(names) else f"image {i}" for i in range(self.count)]
        self.batch_size = int(self.config.get("batch_size") or 1)

    def _count_pngs(self, prefix: str) -> int:
        """How many images/<prefix>_NNN.png the run holds (stage images have another pattern)."""
        return len(list((self.dir / "images").glob(f"{prefix}_[0-9][0-9][0-9].png")))

    def totals(self, attack: str) -> AttackTotals | None:
        """The attack's results over all batches."""
        return self.results.attacks.get(attack) if self.results else None

    def means(self, attack: str) -> dict[str, float | None]:
        """The attack's recorded mean metrics (a recorded None PSNR is an exact reconstruction),
        seconds and steps, by key."""
        totals = self.totals(attack)
        if totals is None:
            return {}
        recorded = [key for key in METRIC_INFO if key in totals.model_fields_set]
        return {
            **{key: totals.metric(key) for key in recorded},
            "seconds": totals.seconds,
            "steps": totals.steps,
        }

    def per_image(self, attack: str) -> dict[str, list[float | None]]:
        """The attack's per-image metric values, by metric."""
        totals = self.totals(attack)
        return totals.per_image if totals else {}

    def per_batch(self, attack: str) -> list[AttackRecord | None]:
        """The attack's record in every batch (None where it is missing)."""
        return [batch.attacks.get(attack) for batch in self.batches]

    def metric_keys(self) -> list[str]:
        """Metrics present for any attack: the known ones in display order, then any others."""
        present: list[str] = []
        for attack in self.attacks:
            for key in self.per_image(attack):
                if key not in present:
                    present.append(key)
        return [k for k in METRIC_INFO if k in present] + [k for k in present if k not in METRIC_INFO]

    def notes(self) -> list[str]:
        """The evaluation's notes (omitted metrics, caveats), each once."""
        seen: list[str] = []
        for batch in self.batches:
            for record in batch.attacks.values():
                for note in record.metrics.notes if record.metrics else []:
                    if note not in seen:
                        seen.append(note)
        return seen

    def staged(self, attack: str) -> bool:
        return any(record is not None and record.stages for record in self.per_batch(attack))

    def png(self, relative: str) -> Path | None:
        path = self.dir / relative
        return path if path.is_file() else None


def load_results(run_dir: str | Path) -> RunResults:
    """The typed results.json of `run_dir`, checked to be a gifd run (GifdError naming the fix)."""
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_NAME
    if run_dir.is_file():
        raise GifdError(f"{run_dir} is a file, not a run directory: pass the --out directory of a `gifd attack` run")
    if not run_dir.is_dir():
        raise GifdError(
            f"run directory {run_dir} does not exist: pass the --out directory of a `gifd attack` run"
        )
    kind = (read_marker(run_dir) or {}).get("kind")
    if kind == "sweep" or (run_dir / "sweep.json").is_file():
        raise GifdError(
            f"{run_dir} is a sweep, whose summary is {run_dir}/aggregate.md and plots/: pass one of its "
            f"jobs, {run_dir}/jobs/<id>"
        )
    if kind == "audit":
        raise GifdError(
            f"{run_dir} is a Flower audit, whose report is {run_dir}/report.html: pass one of its runs, "
            f"{run_dir}/round_RRR/client_ID"
        )
    if not path.is_file():
        raise GifdError(
            f"no results.json in {run_dir}: pass the --out directory of a finished `gifd attack` run"
        )
    return read_results(path, run_dir)
