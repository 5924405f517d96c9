"""A new sweep executor is one class and one registration line, here in a test module: this file
adds one (jobs one after another in this process, last job first) and runs a sweep through
`run_sweep` with no other change to gifd.

Jobs are tiny (LeNet, 32 px, IG, 2 steps) and run on one torch thread, as in test_sweep.py.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest
import torch

from gifd.errors import GifdError
from gifd.sweep import (
    EXECUTORS,
    Job,
    JobOutcome,
    refuse_address,
    run_here,
    run_sweep,
    sweep_from_dict,
)

TINY_BASE = {"victim": "lenet", "resolution": 32, "attacks": ["ig"], "steps": 2, "restarts": 1}


@EXECUTORS.register("reverse")
class ReverseExecutor:
    """The jobs one after another in this process, last job first (e.g. to see that results do
    not depend on the order jobs run in)."""

    def __init__(self, *, workers: int | None, address: str | None, log: Callable[[str], None]) -> None:
        refuse_address(address)
        if workers not in (None, 1):
            raise GifdError(f"the reverse executor runs one job at a time, not {workers}: drop --workers")
        self.workers = 1

    def describe(self) -> str:
        return "this process, last job first"

    def run(self, todo: list[Job], jobs_dir: Path) -> Generator[JobOutcome, None, None]:
        return run_here(reversed(todo), jobs_dir)


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def without_seconds(aggregate: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in aggregate["rows"]]


def test_a_registered_executor_runs_a_sweep_last_job_first(tmp_path: Path) -> None:
    sweep = sweep_from_dict({"base": TINY_BASE, "grid": {"images_each": [0, 1]}}, "two")
    order: list[str] = []
    messages: list[str] = []
    reverse = run_sweep(
        sweep,
        tmp_path / "reverse",
        executor="reverse",
        progress=False,
        log=messages.append,
        on_job_done=lambda job, error: order.append(job.id),
    )
    assert order == [job.id for job in reversed(sweep.jobs)]
    assert "running 2 jobs in this process, last job first" in messages
    assert reverse["run"]["executor"] == "reverse" and reverse["run"]["workers"] == 1
    assert reverse["run"]["ran"] == 2 and reverse["run"]["failed"] == 0
    assert all((tmp_path / "reverse" / "jobs" / job.id / "results.json").is_file() for job in sweep.jobs)
    # the aggregate keeps the sweep's order, and each job's numbers are the built-in executor's
    local = run_sweep(sweep, tmp_path / "local", progress=False, log=lambda _: None)
    assert [row["job"] for row in reverse["rows"]] == [job.id for job in sweep.jobs]
    assert without_seconds(reverse) == without_seconds(local)
    # a second run finds both jobs finished and gives the executor nothing to do
    again = run_sweep(sweep, tmp_path / "reverse", executor="reverse", progress=False, log=lambda _: None)
    assert again["run"]["skipped"] == 2 and again["run"]["ran"] == 0


def test_a_registered_executor_checks_its_settings_before_anything_is_written(tmp_path: Path) -> None:
    sweep = sweep_from_dict({"base": TINY_BASE}, "one")
    with pytest.raises(GifdError, match="one job at a time, not 2"):
        run_sweep(sweep, tmp_path / "out", executor="reverse", workers=2, progress=False)
    with pytest.raises(GifdError, match="--address is the address of a Ray cluster"):
        run_sweep(sweep, tmp_path / "out", executor="reverse", address="127.0.0.1:1", progress=False)
    with pytest.raises(GifdError, match=r"unknown executor 'revers'\. Did you mean 'reverse'\?"):
        run_sweep(sweep, tmp_path / "out", executor="revers", progress=False)
    assert not (tmp_path / "out").exists()
