"""Reading a run directory for the report: its results.json, checked, and the lookups on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gifd.errors import GifdError
from gifd.metrics.info import METRIC_INFO
from gifd.rundir import read_marker


class RunView:
    """A results dict with the lookups the report needs (tolerant of missing optional keys)."""

    def __init__(self, results: dict[str, Any], run_dir: Path):
        self.results = results
        self.dir = run_dir
        self.config: dict[str, Any] = results.get("config") or {}
        self.attacks: list[str] = list(results.get("attacks") or {})
        self.batches: list[dict[str, Any]] = list(results.get("batches") or [])
        self.true_labels: list[int] = list(results.get("true_labels") or [])
        self.inferred_labels: list[int] = list(results.get("inferred_labels") or [])
        names = (results.get("images") or {}).get("names") or []
        #: False for an audit of a received update: no private images, no true labels, no metrics.
        self.has_truth = bool(results.get("images")) or self._count_pngs("original") > 0
        reconstructed = max((self._count_pngs(a) for a in self.attacks), default=0)
        self.count = max(len(self.true_labels), len(names), self._count_pngs("original"), reconstructed)
        self.names = [names[i] if i < len(names) else f"image {i}" for i in range(self.count)]
        self.batch_size = int(self.config.get("batch_size") or 1)

    def _count_pngs(self, prefix: str) -> int:
        """How many images/<prefix>_NNN.png the run holds (stage images have another pattern)."""
        return len(list((self.dir / "images").glob(f"{prefix}_[0-9][0-9][0-9].png")))

    def summary(self, attack: str) -> dict[str, Any]:
        return (self.results.get("attacks") or {}).get(attack) or {}

    def per_batch(self, attack: str) -> list[dict[str, Any]]:
        """The attack's summary in every batch (empty dicts where it is missing)."""
        return [(b.get("attacks") or {}).get(attack) or {} for b in self.batches]

    def metric_keys(self) -> list[str]:
        """Metrics present for any attack: the known ones in display order, then any others."""
        present: list[str] = []
        for attack in self.attacks:
            for key in self.summary(attack).get("per_image") or {}:
                if key not in present:
                    present.append(key)
        return [k for k in METRIC_INFO if k in present] + [k for k in present if k not in METRIC_INFO]

    def notes(self) -> list[str]:
        """The evaluation's notes (omitted metrics, caveats), each once."""
        seen: list[str] = []
        for batch in self.batches:
            for run in (batch.get("attacks") or {}).values():
                for note in (run.get("metrics") or {}).get("notes") or []:
                    if note not in seen:
                        seen.append(note)
        return seen

    def staged(self, attack: str) -> bool:
        return any(run.get("stages") for run in self.per_batch(attack))

    def png(self, relative: str) -> Path | None:
        path = self.dir / relative
        return path if path.is_file() else None


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """The parsed results.json of `run_dir`, checked to be a gifd run (GifdError naming the fix)."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
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
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GifdError(
            f"cannot read {path}: {exc}: rerun `gifd attack --out {run_dir}` to rewrite it"
        ) from None
    missing = [
        key for key in ("config", "attacks", "batches") if not isinstance(results, dict) or key not in results
    ]
    if missing:
        raise GifdError(
            f"{path} is not a gifd results file (missing {', '.join(missing)}): "
            "pass the --out directory of a `gifd attack` run"
        )
    return results
