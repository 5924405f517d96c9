"""Running a sweep: every unfinished job into OUT/jobs/<id>/ by an executor, then the aggregate."""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gifd.errors import GifdError
from gifd.rundir import check_replaceable, read_marker, write_marker
from gifd.sweep.aggregate import aggregate_sweep, write_aggregate
from gifd.sweep.executors import EXECUTORS
from gifd.sweep.grid import Job, Sweep, load_sweep
from gifd.sweep.jobs import JobError, job_is_finished, write_json


def run_sweep(
    sweep: Sweep | str | Path,
    out: str | Path,
    *,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_job_done: Callable[[Job, str | None], None] | None = None,
) -> dict[str, Any]:
    """Run every unfinished job of `sweep` into OUT/jobs/<id>/, then aggregate; returns the aggregate.

    `executor`: a name registered in gifd.sweep.EXECUTORS ("local", "ray", or your own).
    `workers`: jobs at a time (local default 1, run in this process; more: spawned worker
    processes with cores // workers torch threads each; ray default: every CPU of a local runtime,
    the whole cluster at `address`). `log` receives one-line messages (default: stderr).
    `on_job_done(job, error)` is called after each job in this run (error None on success).
    A job that fails is recorded in the aggregate (status "failed") and the sweep goes on; its
    directory is not written, so the next run retries it. With `workers>1` the pool spawns fresh
    interpreters, so a script calling this must do so under `if __name__ == "__main__":`.
    """
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep)
    factory = EXECUTORS.get(executor)
    if workers is not None and workers < 1:
        raise GifdError(f"--workers must be at least 1, got {workers}")
    say = log or _stderr
    runner = factory(workers=workers, address=address, log=say)  # its settings fail before any writing
    out = Path(out)
    jobs_dir = _prepare_out(out, sweep)
    start = time.perf_counter()
    finished = [job for job in sweep.jobs if job_is_finished(job, jobs_dir / job.id)]
    finished_ids = {job.id for job in finished}
    todo = [job for job in sweep.jobs if job.id not in finished_ids]
    axes = " x ".join(f"{key} ({len(values)})" for key, values in sweep.axes.items()) or "no axes"
    say(f"sweep {sweep.source}: {len(sweep.jobs)} jobs over {axes}")
    if finished:
        say(f"skipping {len(finished)} of {len(sweep.jobs)} jobs already finished in {jobs_dir}")
    failures: dict[str, JobError] = {}
    if todo:
        runs = runner.run(todo, jobs_dir)
        say(f"running {len(todo)} jobs in {runner.describe()}")
        bar = _progress_bar(len(sweep.jobs), len(finished), progress)
        with contextlib.closing(runs), bar:
            for job, error in runs:
                if error is not None:
                    failures[job.id] = error
                    bar.set_postfix(failed=len(failures))
                    say(f"job {job.id} failed: {error['message']}")
                bar.update(1)
                if on_job_done is not None:
                    on_job_done(job, None if error is None else error["message"])
    aggregate = aggregate_sweep(sweep, out, failures)
    aggregate["run"] = {
        "executor": executor,
        "workers": runner.workers,
        "address": address,
        "jobs": len(sweep.jobs),
        "skipped": len(finished),
        "ran": len(todo) - len(failures),
        "failed": len(failures),
        "seconds": round(time.perf_counter() - start, 3),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_aggregate(out, aggregate)
    return aggregate


def _stderr(message: str) -> None:
    """Print a line on stderr above the progress bar (if one is showing)."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def _progress_bar(total: int, done: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="sweep", unit="job", disable=not enabled, file=sys.stderr)


def _prepare_out(out: Path, sweep: Sweep) -> Path:
    """Check OUT is new, empty or a sweep's; create OUT/jobs; drop half-written job directories."""
    if out.exists() and not out.is_dir():
        raise GifdError(f"--out {out} is a file: pass a directory path")
    check_replaceable(out, "sweep")
    jobs_dir = out / "jobs"
    try:
        jobs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GifdError(f"cannot create --out {out}: {exc.strerror}: pass another path") from exc
    for leftover in jobs_dir.glob(".*.tmp-*"):  # staging directories of jobs killed while writing
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    if read_marker(out) is None:
        write_marker(out, "sweep", ["sweep.json", "aggregate.json", "aggregate.md"])
    resolved = {
        "source": sweep.source,
        "base": sweep.base,
        "axes": sweep.axes,
        "jobs": [
            {"id": job.id, "axes": job.axes, "config": job.config.model_dump(mode="json")}
            for job in sweep.jobs
        ],
    }
    write_json(out / "sweep.json", resolved)
    return jobs_dir
