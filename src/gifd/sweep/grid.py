"""Sweeps: the product of experiment settings, one result directory per job, resumable.

A sweep file (YAML; unknown keys are errors):

    base:                      # any ExperimentConfig keys, or the path of a config YAML
      victim: lenet            # (relative to the sweep file)
      steps: 100
    grid:                      # each key a list of values; the jobs are the product of all axes
      images_each: [0, 1, 2]   # one job per image (the same as indices: [[0], [1], [2]])
      attacks: [ig, gifd]      # one job per attack
      defense: [none]
      batch_size: [1]
      seed: [0, 1]

Any ExperimentConfig key may be an axis. For list-valued keys (indices, attacks, labels) a single
value stands for a one-element list, so `attacks: [ig, gifd]` is one job per attack and
`indices: [[0, 1], [2, 3]]` one job per pair of images.

`run_sweep` writes, under its output directory OUT:

    OUT/sweep.json          the resolved sweep: every job's id, axis values and full config
    OUT/jobs/<id>/          one run directory per job, as `gifd attack --out` writes it
    OUT/aggregate.json      one row per job and attack (axis values, mean metrics) and run facts
    OUT/aggregate.md        the same rows as a markdown table
    OUT/plots/*.png         mean PSNR/SSIM/LPIPS per attack, split by the defense (or another
                            varied axis); PSNR against each defense's strength when swept

A job directory appears only once the job is complete, and a job whose directory holds a
results.json with the job's config is skipped, so a sweep killed midway resumes where it
stopped. Jobs run in this process (`workers=1`), in a pool of worker processes (`workers>1`), or
as Ray tasks (`executor="ray"`: on the cluster at `address`, else on a local Ray runtime; each
task asks for one GPU when the cluster has GPUs). On a cluster, gifd must be installed on every
node; results travel back to the driver, so OUT needs no shared filesystem.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import io
import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import traceback
import types
import typing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gifd.config import build_config, read_yaml
from gifd.errors import GifdError
from gifd.experiment import ExperimentConfig, run_experiment
from gifd.imageio import write_atomically
from gifd.metrics.info import METRIC_INFO
from gifd.rundir import check_replaceable, read_marker, write_marker

__all__ = [
    "Job",
    "Sweep",
    "SweepFile",
    "aggregate_sweep",
    "config_hash",
    "format_aggregate_table",
    "job_is_finished",
    "load_sweep",
    "plot_aggregate",
    "run_sweep",
    "sweep_from_dict",
    "write_aggregate",
]

Executor = Literal["local", "ray"]
EXECUTORS: tuple[str, ...] = ("local", "ray")

#: torch threads of every job unless the sweep sets `threads` (in base or as an axis).
DEFAULT_JOB_THREADS = 1
#: Grid key that expands to one job per image: `images_each: [0, 1]` == `indices: [[0], [1]]`.
IMAGES_EACH = "images_each"
#: Metric columns of the aggregate (their names and directions: gifd.metrics.METRIC_INFO).
METRIC_COLUMNS = ("psnr", "ssim", "lpips_st")
#: Short prefixes of axis values in job names (no prefix: the value names itself).
_NAME_PREFIX = {
    "indices": "img",
    "batch_size": "b",
    "seed": "seed",
    "attacks": "",
    "defense": "",
    "victim": "",
    "prior": "",
}
#: Longest readable part of a job id (before the hash).
_MAX_NAME = 60


class SweepFile(BaseModel):
    """The keys of a sweep file: the shared settings and the axes to vary."""

    model_config = ConfigDict(extra="forbid")

    #: ExperimentConfig keys shared by every job, or the path of a config YAML holding them.
    base: dict[str, Any] | str = Field(default_factory=dict)
    #: Axis name (an ExperimentConfig key, or images_each) -> list of values.
    grid: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """One experiment of a sweep: its id (also its directory name), axis values and config."""

    id: str
    axes: dict[str, Any]
    config: ExperimentConfig


@dataclass
class Sweep:
    """A validated sweep: the shared settings, the axes (in file order) and the jobs (their product)."""

    source: str
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    jobs: list[Job] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Reading a sweep


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; every problem is a one-line GifdError naming the fix."""
    path = Path(path)
    return sweep_from_dict(read_yaml(path), source=str(path), root=path.parent)


def sweep_from_dict(values: dict[str, Any], source: str = "sweep", root: str | Path | None = None) -> Sweep:
    """Validate a sweep given as a mapping (`base`, `grid`) and expand it into jobs.

    `root` is where a `base` given as a file path is looked up (default: the working directory).
    """
    spec = build_config(SweepFile, values, source)
    if isinstance(spec.base, str):
        base_path = Path(spec.base)
        if not base_path.is_absolute() and root is not None:
            base_path = Path(root) / base_path
        base = read_yaml(base_path)
        base_source = str(base_path)
    else:
        base = dict(spec.base)
        base_source = f"{source} base"
    # Every job runs on a fixed number of torch threads, so its numbers do not depend on --workers
    # (float sums split over threads round differently).
    base.setdefault("threads", DEFAULT_JOB_THREADS)
    build_config(ExperimentConfig, base, base_source)  # base errors name the base, not a job
    axes = _grid_axes(spec.grid, source)
    sweep = Sweep(source=source, base=base, axes=axes)
    seen: dict[str, Job] = {}
    for combination in itertools.product(*axes.values()):
        chosen = dict(zip(axes, combination, strict=True))
        name = _job_name(chosen)
        config = build_config(ExperimentConfig, {**base, **chosen}, f"{source} job {name}")
        job = Job(id=f"{name}-{config_hash(config)}", axes=chosen, config=config)
        if job.id in seen:
            raise GifdError(
                f"{source}: jobs {seen[job.id].axes} and {chosen} have the same settings: drop one"
            )
        seen[job.id] = job
        sweep.jobs.append(job)
    return sweep


def _grid_axes(grid: dict[str, Any], source: str) -> dict[str, list[Any]]:
    """The grid's axes with their values normalised (single values of list keys wrapped)."""
    fields = ExperimentConfig.model_fields
    valid = [*fields, IMAGES_EACH]
    axes: dict[str, list[Any]] = {}
    if IMAGES_EACH in grid and "indices" in grid:
        raise GifdError(f"{source}: grid has both {IMAGES_EACH!r} and 'indices': keep one")
    for key, values in grid.items():
        key = str(key)
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
            raise GifdError(f"{source}: unknown grid key {key!r}: {hint}")
        if not isinstance(values, list):
            raise GifdError(
                f"{source}: grid axis {key!r} must be a list of values, not {values!r}: write {key}: [{values}]"
            )
        if not values:
            raise GifdError(f"{source}: grid axis {key!r} is empty: give it at least one value or remove it")
        if key == IMAGES_EACH:
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise GifdError(
                    f"{source}: grid.{IMAGES_EACH} must list image indices (integers), got {values!r}"
                )
            key, values = "indices", [[v] for v in values]
        elif _accepts_list(fields[key].annotation):
            values = [v if isinstance(v, list) or v is None else [v] for v in values]
        texts = [json.dumps(v, sort_keys=True, default=str) for v in values]
        for i, text in enumerate(texts):
            if text in texts[:i]:
                raise GifdError(
                    f"{source}: grid axis {key!r} repeats the value {values[i]!r}: give each value once"
                )
        axes[key] = values
    return axes


def _accepts_list(annotation: Any) -> bool:
    """Whether a field's type is a list (possibly optional)."""
    origin = typing.get_origin(annotation)
    if annotation is list or origin is list:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_list(arg) for arg in typing.get_args(annotation))
    return False


def _job_name(chosen: dict[str, Any]) -> str:
    """A readable name from a job's axis values, safe as a directory name."""
    parts = []
    for key, value in chosen.items():
        prefix = _NAME_PREFIX.get(key, f"{key}-")
        parts.append(prefix + _value_text(value))
    name = re.sub(r"[^A-Za-z0-9._+=-]+", "-", "_".join(parts) or "job").strip("-._") or "job"
    name = re.sub(r"-+", "-", name)
    return name[:_MAX_NAME].rstrip("-_.")


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "-".join(_value_text(v) for v in value) or "empty"
    if isinstance(value, dict):
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:6]
    if value is None:
        return "none"
    return str(value)


def config_hash(config: ExperimentConfig) -> str:
    """Eight hex digits identifying a config by the keys it sets away from their defaults.

    Defaults are left out so that a key added to ExperimentConfig later keeps existing ids.
    """
    explicit = config.model_dump(mode="json", exclude_defaults=True)
    return hashlib.sha256(json.dumps(explicit, sort_keys=True).encode()).hexdigest()[:8]


# --------------------------------------------------------------------------------------------
# Running a sweep


def run_sweep(
    sweep: Sweep | str | Path,
    out: str | Path,
    *,
    executor: Executor = "local",
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_job_done: Callable[[Job, str | None], None] | None = None,
) -> dict[str, Any]:
    """Run every unfinished job of `sweep` into OUT/jobs/<id>/, then aggregate; returns the aggregate.

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
    if executor not in EXECUTORS:
        raise GifdError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise GifdError(f"--workers must be at least 1, got {workers}")
    if address is not None and executor != "ray":
        raise GifdError("--address is the address of a Ray cluster: pass it with --executor ray")
    if executor == "ray":
        if importlib.util.find_spec("ray") is None:
            raise GifdError("--executor ray needs Ray: pip install ray (or use --executor local)")
        if address:
            _check_reachable(address)
    say = log or _stderr
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
    failures: dict[str, dict[str, str]] = {}
    if todo:
        if executor == "local":
            workers = workers or 1
            runs = _run_here(todo, jobs_dir) if workers == 1 else _run_pool(todo, jobs_dir, workers)
            where = "this process" if workers == 1 else f"{workers} worker processes"
        else:
            runs = _run_ray(todo, jobs_dir, workers, address, say)
            where = f"Ray ({address or 'local runtime'})"
        say(f"running {len(todo)} jobs in {where}")
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
        "workers": workers,
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
    _write_json(out / "sweep.json", resolved)
    return jobs_dir


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


def _run_one(config: ExperimentConfig, job_dir: str) -> None:
    """Run one job into its directory (in a worker process, or in this one)."""
    run_experiment(config, job_dir, progress=False)


def _run_packed(config: ExperimentConfig) -> dict[str, bytes]:
    """Run one job into a temporary directory and return its files (path -> bytes).

    Used by Ray tasks: the worker may be on another machine, so the driver writes the files.
    """
    with tempfile.TemporaryDirectory(prefix="gifd-job-") as temp:
        run_dir = Path(temp) / "run"
        _run_one(config, str(run_dir))
        return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def _unpack(files: dict[str, bytes], job_dir: Path) -> None:
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


def _error(exc: BaseException) -> dict[str, str]:
    """A failed job's one-line message and full traceback."""
    cause = getattr(exc, "cause", None) or exc  # a RayTaskError wraps the job's own exception
    lines = str(cause).strip().splitlines()
    first = lines[0] if lines else ""
    message = first if isinstance(cause, GifdError) else f"{type(cause).__name__}: {first}"
    return {"message": message, "traceback": "".join(traceback.format_exception(exc))}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _run_here(todo: list[Job], jobs_dir: Path) -> Iterator[tuple[Job, dict[str, str] | None]]:
    """One job after another in this process."""
    for job in todo:
        try:
            _run_one(job.config, str(jobs_dir / job.id))
        except Exception as exc:
            yield job, _error(exc)
        else:
            yield job, None


def _run_pool(todo: list[Job], jobs_dir: Path, workers: int) -> Iterator[tuple[Job, dict[str, str] | None]]:
    """Jobs in `workers` spawned processes (each job sets its own torch threads, `threads`)."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(_run_one, job.config, str(jobs_dir / job.id)): job for job in todo}
        for future in as_completed(futures):
            exc = future.exception()
            yield futures[future], None if exc is None else _error(exc)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(
    todo: list[Job], jobs_dir: Path, workers: int | None, address: str | None, say: Callable[[str], None]
) -> Iterator[tuple[Job, dict[str, str] | None]]:
    """Jobs as Ray tasks (one GPU each on a GPU cluster); the driver writes their directories."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.perf_counter()
    connected_here = not ray.is_initialized()
    if connected_here:
        try:
            if address:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            else:
                ray.init(
                    address="local",  # a new runtime, never a cluster found via RAY_ADDRESS or /tmp/ray
                    num_cpus=workers or _cores(),
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                    object_store_memory=128 * 1024**2,
                )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if address:  # Ray >= 2.59 clusters started by `ray start` want a token from their drivers
                raise GifdError(
                    f"cannot connect to the Ray cluster at {address}: {reason}: check --address; a cluster "
                    "with token authentication needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN) here"
                ) from exc
            raise GifdError(f"cannot start a local Ray runtime: {reason}: use --executor local") from exc
    pending: dict[Any, Job] = {}
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        say(
            f"Ray ready in {time.perf_counter() - started:.1f} s: {ray.cluster_resources().get('CPU', 0):g} CPUs, {gpus:g} GPUs"
        )
        task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1)(_run_packed)
        limit = workers or len(todo)
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < limit:
                job = queue.pop(0)
                pending[task.options(num_cpus=job.config.threads or 1).remote(job.config)] = job
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    _unpack(ray.get(ref), jobs_dir / job.id)
                except Exception as exc:
                    yield job, _error(exc)
                else:
                    yield job, None
    finally:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        if connected_here:
            ray.shutdown()


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast when nothing listens at a HOST:PORT (or ray://HOST:PORT) address.

    ray.init waits for an unreachable cluster for minutes; "auto" (the cluster this machine
    started) is left to Ray.
    """
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise GifdError(
            f"nothing answers at --address {address} ({exc.strerror or exc}): pass the address of a running "
            "Ray cluster (the head's HOST:PORT, as `ray start --head` prints it)"
        ) from None


# --------------------------------------------------------------------------------------------
# Aggregating


def aggregate_sweep(
    sweep: Sweep, out: str | Path, failures: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """One row per finished job and attack, in job order, from the job directories' results.json."""
    out = Path(out)
    failures = failures or {}
    columns = [key for key in sweep.axes if key != "attacks"] + ["attack"]
    rows: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    for job in sweep.jobs:
        entry: dict[str, Any] = {"id": job.id, "dir": f"jobs/{job.id}", "axes": job.axes}
        results = _results(out / "jobs" / job.id) if job_is_finished(job, out / "jobs" / job.id) else None
        if results is None:
            error = failures.get(job.id, {"message": "not run", "traceback": ""})
            jobs.append(
                {**entry, "status": "failed", "error": error["message"], "traceback": error["traceback"]}
            )
            continue
        jobs.append({**entry, "status": "done"})
        for attack, summary in results["attacks"].items():
            row = {key: value for key, value in job.axes.items() if key != "attacks"}
            row["attack"] = attack
            for metric in METRIC_COLUMNS:
                row[metric] = summary.get(metric)
            row["label_accuracy"] = results.get("label_accuracy")
            cost = (results.get("defense") or {}).get("utility_cost")
            row["update_cosine"] = None if cost is None else cost["cosine"]
            row["seconds"] = summary.get("seconds")
            row["job"] = job.id
            rows.append(row)
    return {
        "sweep": sweep.source,
        "axes": {key: values for key, values in sweep.axes.items()},
        "columns": [*columns, *METRIC_COLUMNS, "label_accuracy", "update_cosine", "seconds", "job"],
        "rows": rows,
        "jobs": jobs,
    }


def _results(job_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((job_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None


def format_aggregate_table(aggregate: dict[str, Any]) -> str:
    """The aggregate rows as a markdown table with aligned columns (readable as plain text too)."""
    columns = aggregate["columns"]
    table = [columns] + [[_cell(row.get(column), column) for column in columns] for row in aggregate["rows"]]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    numeric = [column in (*METRIC_COLUMNS, "label_accuracy", "seconds") for column in columns]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    lines = [line(table[0]), rule, *(line(cells) for cells in table[1:])]
    failed = [job for job in aggregate["jobs"] if job["status"] != "done"]
    if failed:
        lines.append("")
        lines.extend(f"failed: {job['id']}: {job['error']}" for job in failed)
    return "\n".join(lines)


def _cell(value: Any, column: str) -> str:
    if value is None:
        return "-" if column in (*METRIC_COLUMNS, "label_accuracy", "seconds") else "none"
    if isinstance(value, list):
        return ",".join(_cell(v, column) for v in value)
    if isinstance(value, float):
        return f"{value:.2f}" if column in ("psnr", "seconds") else f"{value:.4f}"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def write_aggregate(out: str | Path, aggregate: dict[str, Any]) -> list[Path]:
    """Write OUT/aggregate.json, OUT/aggregate.md and OUT/plots/*.png (each atomically); their paths."""
    out = Path(out)
    written = [_write_json(out / "aggregate.json", aggregate)]
    table = f"# Sweep {aggregate['sweep']}\n\n{format_aggregate_table(aggregate)}\n"
    written.append(write_atomically(out / "aggregate.md", lambda handle: handle.write(table.encode())))
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    for name, png in plot_aggregate(aggregate).items():
        written.append(write_atomically(plots / name, lambda handle, png=png: handle.write(png)))
    return written


def _write_json(path: Path, data: Any) -> Path:
    text = json.dumps(data, indent=2, default=str)
    return write_atomically(path, lambda handle: handle.write(text.encode()))


def _hue_axis(aggregate: dict[str, Any]) -> str | None:
    """The axis that splits each attack's bars: the defense if varied, else another varied setting."""
    varied = [key for key, values in aggregate["axes"].items() if len(values) > 1 and key != "attacks"]
    if "defense" in varied:
        return "defense"
    for key in varied:
        if key not in ("indices", "seed"):
            return key
    return None


def plot_aggregate(aggregate: dict[str, Any]) -> dict[str, bytes]:
    """PNG files (name -> bytes): per metric, mean over jobs per attack, split by the hue axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = aggregate["rows"]
    if not rows:
        return {}
    hue = _hue_axis(aggregate)
    attacks = list(dict.fromkeys(row["attack"] for row in rows))
    hues = list(dict.fromkeys(json.dumps(row.get(hue), default=str) for row in rows)) if hue else ["null"]
    pngs: dict[str, bytes] = {}
    for metric in METRIC_COLUMNS:
        label, direction = METRIC_INFO[metric].name, METRIC_INFO[metric].direction
        figure = Figure(
            figsize=(max(4.5, 1.2 * len(attacks) * max(1, len(hues)) ** 0.5 + 2), 3.4),
            dpi=100,
            layout="constrained",
        )
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        width = 0.8 / len(hues)
        plotted = False
        for h, hue_value in enumerate(hues):
            means, errors = [], []
            for attack in attacks:
                values = [
                    row[metric]
                    for row in rows
                    if row["attack"] == attack
                    and (hue is None or json.dumps(row.get(hue), default=str) == hue_value)
                    and isinstance(row.get(metric), (int, float))
                ]
                means.append(sum(values) / len(values) if values else float("nan"))
                spread = (
                    (sum((v - means[-1]) ** 2 for v in values) / len(values)) ** 0.5
                    if len(values) > 1
                    else 0.0
                )
                errors.append(spread)
            positions = [i - 0.4 + width * (h + 0.5) for i in range(len(attacks))]
            name = _cell(json.loads(hue_value), hue or "") if hue else None
            spread = errors if any(errors) else None  # one job per bar: no error bar
            axes.bar(
                positions, means, width=width * 0.92, yerr=spread, capsize=3, label=name, color=f"C{h % 10}"
            )
            plotted = plotted or any(m == m for m in means)
        if not plotted:
            continue
        axes.set_xticks(range(len(attacks)), attacks)
        axes.set_ylabel(f"{label} ({direction})", fontsize=9)
        axes.set_title(
            f"mean {label} per attack" + (f", by {hue}" if hue else "") + " (bars: ±1 std over jobs)",
            fontsize=10,
        )
        axes.grid(True, axis="y", alpha=0.3)
        if hue:
            axes.legend(title=hue, fontsize=8, title_fontsize=8)
        pngs[f"{metric}.png"] = _png(figure)
    pngs.update(_defense_strength_plots(rows))
    return pngs


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _defense_strength(spec: Any) -> tuple[str, float] | None:
    """(kind, main parameter) of a single defense spec like "prune:0.5"; None for none or a chain."""
    if not isinstance(spec, str) or spec.strip().lower() in ("", "none"):
        return None
    try:
        from gifd.defenses import parse_defense

        defense = parse_defense(spec)
        strength = defense.strength
        if len(defense.members()) != 1 or strength is None:
            return None
        return str(defense.name), float(strength)
    except Exception:  # an unknown form or a version without defenses: no strength plot
        return None


def _defense_strength_plots(rows: list[dict[str, Any]]) -> dict[str, bytes]:
    """PSNR against the strength of each defense kind swept over two or more values, one line per attack.

    The undefended PSNR (defense none), when swept, is a dashed line of the same colour.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows or "defense" not in rows[0]:
        return {}
    attacks = list(dict.fromkeys(row["attack"] for row in rows))
    by_kind: dict[str, set[float]] = {}
    parsed_rows = [_defense_strength(row["defense"]) for row in rows]
    for parsed in parsed_rows:
        if parsed is not None:
            by_kind.setdefault(parsed[0], set()).add(parsed[1])
    pngs: dict[str, bytes] = {}
    for kind, strengths in by_kind.items():
        if len(strengths) < 2:
            continue
        figure = Figure(figsize=(5.0, 3.4), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        xs = sorted(strengths)
        for a, attack in enumerate(attacks):
            mine = [
                (parsed, row)
                for parsed, row in zip(parsed_rows, rows, strict=True)
                if row["attack"] == attack
            ]
            means = [_mean_of(row["psnr"] for parsed, row in mine if parsed == (kind, x)) for x in xs]
            axes.plot(xs, means, marker="o", color=f"C{a % 10}", label=attack)
            undefended = _mean_of(row["psnr"] for parsed, row in mine if _undefended(row["defense"]))
            if undefended == undefended:  # not NaN: "none" was swept too
                axes.plot(
                    xs[:: len(xs) - 1], [undefended] * 2, color=f"C{a % 10}", linestyle="--", linewidth=1.0
                )
        cosines = [
            _mean_of(
                row.get("update_cosine")
                for parsed, row in zip(parsed_rows, rows, strict=True)
                if parsed == (kind, x)
            )
            for x in xs
        ]
        if any(c == c for c in cosines):  # the defense's utility cost: how far the update moved
            utility = axes.twinx()
            utility.plot(xs, cosines, color="0.4", linestyle=":", marker="s", label="update cosine to clean")
            utility.set_ylabel("cosine of defended to clean update", fontsize=8, color="0.4")
            utility.set_ylim(0, 1.05)
        axes.set_xlabel(f"{kind} parameter")
        axes.set_ylabel(f"{METRIC_INFO['psnr'].name} ({METRIC_INFO['psnr'].direction})", fontsize=9)
        axes.set_title(f"mean PSNR against {kind} (dashed: no defense; dotted: utility)", fontsize=10)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
        pngs[f"psnr_vs_{re.sub(r'[^A-Za-z0-9]+', '-', kind)}.png"] = _png(figure)
    return pngs


def _undefended(spec: Any) -> bool:
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none"))


def _mean_of(values: Any) -> float:
    """Mean of the numbers among `values` (NaN when there are none)."""
    numbers = [v for v in values if isinstance(v, (int, float))]
    return sum(numbers) / len(numbers) if numbers else float("nan")
