"""A job's directory: running a job into it, telling whether it is finished, reading its results,
and the record of a job that failed. What every executor uses (gifd.sweep.executors)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any

from gifd.errors import GifdError
from gifd.experiment import ExperimentConfig, run_experiment
from gifd.imageio import write_atomically
from gifd.results import RESULTS_NAME, RunResults
from gifd.results import read_results as read_run_results
from gifd.rundir import check_replaceable
from gifd.sweep.grid import Job

#: A failed job's record: its one-line "message" and full "traceback".
JobError = dict[str, str]


def job_is_finished(job: Job, job_dir: str | Path) -> bool:
    """Whether `job_dir` holds a complete run of exactly this job's config."""
    path = Path(job_dir) / "results.json"
    try:
        stored = ExperimentConfig(**json.loads(path.read_text())["config"])
    except Exception:  # missing, unreadable or from an incompatible version: run it again
        return False
    expected = job.config.model_dump(mode="json")
    found = stored.model_dump(mode="json")
    if job.config.num_classes is None:  # a run records the class count it resolved
        found["num_classes"] = None
    return found == expected


def run_job(config: ExperimentConfig, job_dir: str) -> None:
    """Run one job into its directory (in a worker process, or in this one)."""
    run_experiment(config, job_dir, progress=False)


def run_job_packed(config: ExperimentConfig) -> dict[str, bytes]:
    """Run one job into a temporary directory and return its files (path -> bytes).

    Used by Ray tasks: the worker may be on another machine, so the driver writes the files.
    """
    with tempfile.TemporaryDirectory(prefix="gifd-job-") as temp:
        run_dir = Path(temp) / "run"
        run_job(config, str(run_dir))
        return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def unpack_job(files: dict[str, bytes], job_dir: Path) -> None:
    """Write a job's files into `job_dir`, all or nothing."""
    staging = Path(tempfile.mkdtemp(dir=job_dir.parent, prefix=f".{job_dir.name}.tmp-")).resolve()
    try:
        for relative, data in files.items():
            target = staging / relative
            if staging not in target.resolve().parents:
                raise GifdError(f"job {job_dir.name} returned a file outside its directory: {relative}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; a job directory is not
        if job_dir.exists():
            check_replaceable(job_dir, "run", flag="job directory")
            shutil.rmtree(job_dir)
        os.replace(staging, job_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def job_error(exc: BaseException) -> JobError:
    """A failed job's one-line message and full traceback."""
    cause = getattr(exc, "cause", None) or exc  # a RayTaskError wraps the job's own exception
    lines = str(cause).strip().splitlines()
    first = lines[0] if lines else ""
    message = first if isinstance(cause, GifdError) else f"{type(cause).__name__}: {first}"
    return {"message": message, "traceback": "".join(traceback.format_exception(exc))}


def read_results(job_dir: Path) -> RunResults | None:
    """A job directory's typed results, or None when they are missing or unreadable."""
    try:
        return read_run_results(job_dir / RESULTS_NAME, job_dir)
    except GifdError:
        return None


def write_json(path: Path, data: Any) -> Path:
    """Write `data` as indented JSON to `path` atomically (sweep.json, aggregate.json); the path."""
    text = json.dumps(data, indent=2, default=str)
    return write_atomically(path, lambda handle: handle.write(text.encode()))
