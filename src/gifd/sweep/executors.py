"""Where a sweep's jobs run: the `Executor` protocol and the registry of executors.

An executor is one class registered under its `--executor` name:

    @EXECUTORS.register("mine")
    class MyExecutor:
        def __init__(self, *, workers: int | None, address: str | None, log: Callable[[str], None]):
            refuse_address(address)     # unless it connects somewhere
            self.workers = workers or 1
        def describe(self) -> str:
            return "my way"
        def run(self, todo: list[Job], jobs_dir: Path) -> Generator[JobOutcome, None, None]:
            for job in todo:            # each job into jobs_dir / job.id, with run_job (or
                ...                     # run_job_packed + unpack_job where the files travel)
                yield job, None         # or job_error(exc); run_here(todo, jobs_dir) does all this

`run_sweep` builds it before writing anything (so its settings fail first, as GifdErrors),
then consumes `run`; the command line lists the built-in names (gifd.catalog.EXECUTORS).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Protocol

from gifd.errors import GifdError
from gifd.registry import Registry
from gifd.sweep.grid import Job
from gifd.sweep.jobs import JobError, job_error, run_job, run_job_packed, unpack_job

#: What an executor yields per job: the job and its error record (None: finished).
JobOutcome = tuple[Job, JobError | None]


class Executor(Protocol):
    """Runs a sweep's unfinished jobs into their directories, reporting each as it ends.

    Built as `factory(workers=..., address=..., log=...)`: `workers` jobs at a time (None: the
    executor's default), `address` of a cluster (None: none), `log` takes one-line messages.
    """

    #: Jobs at a time, as resolved (the aggregate's run facts record it).
    workers: int | None

    def describe(self) -> str:
        """Where the jobs run, for the log line "running N jobs in ..."."""
        ...

    def run(self, todo: list[Job], jobs_dir: Path) -> Generator[JobOutcome, None, None]:
        """Run `todo` into `jobs_dir / job.id`, yielding each job with its error record (None: done).

        A generator: `run_sweep` closes it when it stops early, so it can cancel what is pending.
        A failing job is yielded with `job_error(exc)`, never raised, so the sweep goes on.
        """
        ...


#: Executor name -> factory (`run_sweep(executor=NAME)`, `gifd sweep --executor NAME`).
EXECUTORS: Registry[Executor] = Registry("executor")


def refuse_address(address: str | None) -> None:
    """For executors that connect nowhere: an address is a mistake the user should hear of."""
    if address is not None:
        raise GifdError("--address is the address of a Ray cluster: pass it with --executor ray")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_here(jobs: Iterable[Job], jobs_dir: Path) -> Generator[JobOutcome, None, None]:
    """`jobs` one after another in this process, in the order given."""
    for job in jobs:
        try:
            run_job(job.config, str(jobs_dir / job.id))
        except Exception as exc:
            yield job, job_error(exc)
        else:
            yield job, None


@EXECUTORS.register("local")
class LocalExecutor:
    """One job after another in this process (`workers` 1, the default), or a pool of `workers`
    spawned processes (each job sets its own torch threads, `threads`)."""

    def __init__(self, *, workers: int | None, address: str | None, log: Callable[[str], None]) -> None:
        refuse_address(address)
        self.workers = workers or 1

    def describe(self) -> str:
        return "this process" if self.workers == 1 else f"{self.workers} worker processes"

    def run(self, todo: list[Job], jobs_dir: Path) -> Generator[JobOutcome, None, None]:
        yield from (run_here(todo, jobs_dir) if self.workers == 1 else self._pool(todo, jobs_dir))

    def _pool(self, todo: list[Job], jobs_dir: Path) -> Generator[JobOutcome, None, None]:
        pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = {pool.submit(run_job, job.config, str(jobs_dir / job.id)): job for job in todo}
            for future in as_completed(futures):
                exc = future.exception()
                yield futures[future], None if exc is None else job_error(exc)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@EXECUTORS.register("ray")
class RayExecutor:
    """Jobs as Ray tasks (one GPU each on a GPU cluster) on the cluster at `address`, else on a new
    local runtime; each task returns its files and the driver writes the job directory, so OUT
    needs no shared filesystem. `workers`: tasks at a time (default: as many as Ray schedules)."""

    def __init__(self, *, workers: int | None, address: str | None, log: Callable[[str], None]) -> None:
        if importlib.util.find_spec("ray") is None:
            raise GifdError("--executor ray needs Ray: pip install ray (or use --executor local)")
        if address:
            _check_reachable(address)
        self.workers = workers
        self.address = address
        self.log = log

    def describe(self) -> str:
        return f"Ray ({self.address or 'local runtime'})"

    def run(self, todo: list[Job], jobs_dir: Path) -> Generator[JobOutcome, None, None]:
        import ray

        workers, address = self.workers, self.address
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
            self.log(
                f"Ray ready in {time.perf_counter() - started:.1f} s: {ray.cluster_resources().get('CPU', 0):g} CPUs, {gpus:g} GPUs"
            )
            task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1)(run_job_packed)
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
                        unpack_job(ray.get(ref), jobs_dir / job.id)
                    except Exception as exc:
                        yield job, job_error(exc)
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
