"""A sweep's aggregate: one row per finished job and attack, written as JSON, a table and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gifd.imageio import write_atomically
from gifd.sweep.grid import Sweep
from gifd.sweep.jobs import JobError, job_is_finished, read_results, write_json
from gifd.sweep.plots import plot_aggregate
from gifd.sweep.table import METRIC_COLUMNS, format_aggregate_table


def aggregate_sweep(
    sweep: Sweep, out: str | Path, failures: dict[str, JobError] | None = None
) -> dict[str, Any]:
    """One row per finished job and attack, in job order, from the job directories' results.json."""
    out = Path(out)
    failures = failures or {}
    columns = [key for key in sweep.axes if key != "attacks"] + ["attack"]
    rows: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    for job in sweep.jobs:
        entry: dict[str, Any] = {"id": job.id, "dir": f"jobs/{job.id}", "axes": job.axes}
        results = read_results(out / "jobs" / job.id) if job_is_finished(job, out / "jobs" / job.id) else None
        if results is None:
            error = failures.get(job.id, {"message": "not run", "traceback": ""})
            jobs.append(
                {**entry, "status": "failed", "error": error["message"], "traceback": error["traceback"]}
            )
            continue
        jobs.append({**entry, "status": "done"})
        for attack, totals in results.attacks.items():
            row = {key: value for key, value in job.axes.items() if key != "attacks"}
            row["attack"] = attack
            for metric in METRIC_COLUMNS:
                row[metric] = totals.metric(metric)
            row["label_accuracy"] = results.label_accuracy
            cost = results.defense.utility_cost
            row["update_cosine"] = None if cost is None else cost["cosine"]
            row["seconds"] = totals.seconds
            row["job"] = job.id
            rows.append(row)
    return {
        "sweep": sweep.source,
        "axes": {key: values for key, values in sweep.axes.items()},
        "columns": [*columns, *METRIC_COLUMNS, "label_accuracy", "update_cosine", "seconds", "job"],
        "rows": rows,
        "jobs": jobs,
    }


def write_aggregate(out: str | Path, aggregate: dict[str, Any]) -> list[Path]:
    """Write OUT/aggregate.json, OUT/aggregate.md and OUT/plots/*.png (each atomically); their paths."""
    out = Path(out)
    written = [write_json(out / "aggregate.json", aggregate)]
    table = f"# Sweep {aggregate['sweep']}\n\n{format_aggregate_table(aggregate)}\n"
    written.append(write_atomically(out / "aggregate.md", lambda handle: handle.write(table.encode())))
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    for name, png in plot_aggregate(aggregate).items():
        written.append(write_atomically(plots / name, lambda handle, png=png: handle.write(png)))
    return written
