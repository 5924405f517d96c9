"""Sweeps: job expansion and ids, bad sweep files, resume after a real kill, process pool and Ray.

Every job is tiny (LeNet, 32 px, IG, 2 steps, 1 restart). Torch runs on one thread here and in
the subprocesses, so runs of the same job in different processes give identical numbers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from gifd.cli import main
from gifd.errors import GifdError
from gifd.sweep import Job, format_aggregate_table, load_sweep, plot_aggregate, run_sweep, sweep_from_dict

TINY_BASE = {"victim": "lenet", "resolution": 32, "attacks": ["ig"], "steps": 2, "restarts": 1}
#: The sweep of the resume test: three jobs, one per image.
THREE_JOBS = {"base": TINY_BASE, "grid": {"images_each": [0, 1, 2]}}


def write_sweep(path: Path, sweep: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def finished_jobs(out: Path) -> list[Path]:
    """results.json of the complete job directories (not of a job's staging directory, .ID.tmp-*)."""
    return [p for p in out.glob("jobs/*/results.json") if not p.parent.name.startswith(".")]


def rows_without_seconds(aggregate: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in aggregate["rows"]]


def assert_rows_close(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> None:
    """Same jobs and attacks, and the same metrics to the bit: every job runs on the sweep's fixed
    thread count, wherever it runs."""
    assert [r["job"] for r in rows] == [r["job"] for r in reference]
    for row, ref in zip(rows, reference, strict=True):
        for key, value in ref.items():
            assert row[key] == value, key


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output directory of the three-job sweep run without interruption, in this process."""
    folder = tmp_path_factory.mktemp("reference")
    sweep_file = write_sweep(folder / "three.yaml", THREE_JOBS)
    run_sweep(sweep_file, folder / "out", progress=False, log=lambda _: None)
    return folder / "out"


@pytest.fixture(scope="module")
def reference(reference_out: Path) -> dict[str, Any]:
    """The aggregate of the uninterrupted three-job sweep."""
    return json.loads((reference_out / "aggregate.json").read_text())


# ---------------------------------------------------------------------------------------------
# Expansion and ids


def test_jobs_are_the_product_of_the_axes_with_stable_ids() -> None:
    spec = {
        "base": TINY_BASE,
        "grid": {"images_each": [0, 1, 2], "attacks": ["ig", "gi"], "batch_size": [1], "seed": [0, 7]},
    }
    sweep = sweep_from_dict(spec, "s.yaml")
    assert len(sweep.jobs) == 3 * 2 * 1 * 2
    assert list(sweep.axes) == ["indices", "attacks", "batch_size", "seed"]
    # every combination exactly once, in product order (last axis fastest)
    combos = [(j.config.indices, j.config.attacks, j.config.seed) for j in sweep.jobs]
    assert combos[:3] == [([0], ["ig"], 0), ([0], ["ig"], 7), ([0], ["gi"], 0)]
    assert len({json.dumps(c) for c in combos}) == 12
    ids = [job.id for job in sweep.jobs]
    assert len(set(ids)) == 12
    assert ids[1].startswith("img0_ig_b1_seed7-")
    assert all(re.fullmatch(r"[A-Za-z0-9._+=-]+-[0-9a-f]{8}", i) for i in ids)
    # the same sweep again, or with defaults spelled out, gives the same ids; other settings do not
    assert [j.id for j in sweep_from_dict(spec, "s.yaml").jobs] == ids
    explicit = {"base": {**TINY_BASE, "device": "auto", "seed": 0, "defense": None}, "grid": spec["grid"]}
    assert [j.id for j in sweep_from_dict(explicit, "s.yaml").jobs] == ids
    longer = {"base": {**TINY_BASE, "steps": 3}, "grid": spec["grid"]}
    assert not set(j.id for j in sweep_from_dict(longer, "s.yaml").jobs) & set(ids)
    # list axes: a single value is a one-element list; a list value is one job
    pairs = sweep_from_dict({"base": TINY_BASE, "grid": {"indices": [[0, 1], 2], "attacks": [["ig", "gi"]]}})
    assert [(j.config.indices, j.config.attacks) for j in pairs.jobs] == [
        ([0, 1], ["ig", "gi"]),
        ([2], ["ig", "gi"]),
    ]
    # no grid: one job with the base settings
    assert len(sweep_from_dict({"base": TINY_BASE}).jobs) == 1


def test_base_may_be_a_config_file_beside_the_sweep(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    sweep = load_sweep(write_sweep(tmp_path / "s.yaml", {"base": "base.yaml", "grid": {"seed": [1, 2]}}))
    assert [(j.config.victim, j.config.steps, j.config.seed) for j in sweep.jobs] == [
        ("lenet", 2, 1),
        ("lenet", 2, 2),
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"base": TINY_BASE, "grids": {"seed": [0]}}, "unknown key 'grids': did you mean 'grid'?"),
        (
            {"base": TINY_BASE, "grid": {"atacks": ["ig"]}},
            "unknown grid key 'atacks': did you mean 'attacks'?",
        ),
        ({"base": TINY_BASE, "grid": {"attacks": []}}, "grid axis 'attacks' is empty"),
        ({"base": TINY_BASE, "grid": {"seed": 3}}, "grid axis 'seed' must be a list of values"),
        ({"base": TINY_BASE, "grid": {"seed": [1, 1]}}, "grid axis 'seed' repeats the value 1"),
        (
            {"base": {**TINY_BASE, "victm": "lenet"}, "grid": {}},
            "base: unknown key 'victm': did you mean 'victim'?",
        ),
        ({"base": TINY_BASE, "grid": {"seed": ["x"]}}, "seed = 'x' is invalid"),
        ({"base": TINY_BASE, "grid": {"attacks": ["ig", "igg"]}}, "unknown attack 'igg'"),
        (
            {"base": TINY_BASE, "grid": {"images_each": [0], "batch_size": [2]}},
            "do not split into batches of 2",
        ),
        (
            {"base": TINY_BASE, "grid": {"images_each": [0], "indices": [[1]]}},
            "both 'images_each' and 'indices'",
        ),
    ],
)
def test_invalid_sweep_files_are_one_line_errors(spec: dict[str, Any], message: str, tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "bad.yaml", spec)
    with pytest.raises(GifdError) as caught:
        load_sweep(path)
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(path))
    # through the command line: exit code 2 and one line, before anything is written
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["sweep", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    assert len(err.getvalue().strip().splitlines()) == 1
    assert message in err.getvalue()
    assert not (tmp_path / "out").exists()


def test_out_must_be_a_sweep_directory(tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "s.yaml", {"base": TINY_BASE})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(GifdError, match="exists and is not a gifd sweep"):
        run_sweep(path, tmp_path / "other", progress=False, log=lambda _: None)
    with pytest.raises(GifdError, match="--address is the address of a Ray cluster"):
        run_sweep(path, tmp_path / "new", address="auto", progress=False)


def test_plots_of_a_defense_sweep_split_bars_by_defense() -> None:
    rows = []
    for defense, strength in [("none", 0.0), ("prune:0.1", 0.1), ("prune:0.5", 0.5)]:
        for attack, psnr in [("ig", 12.0), ("gifd", 18.0)]:
            for image in (0, 1):
                row = {"indices": [image], "defense": defense, "attack": attack, "psnr": psnr - 5 * strength}
                rows.append(
                    {**row, "ssim": 0.5, "lpips_st": None, "label_accuracy": 1.0, "seconds": 1.0, "job": "j"}
                )
    axes = {
        "indices": [[0], [1]],
        "defense": ["none", "prune:0.1", "prune:0.5"],
        "attacks": [["ig"], ["gifd"]],
    }
    pngs = plot_aggregate({"sweep": "s", "axes": axes, "columns": [], "rows": rows, "jobs": []})
    assert {"psnr.png", "ssim.png"} <= set(pngs)
    assert "lpips_st.png" not in pngs  # no value to plot
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in pngs.values())
    from gifd.defenses import parse_defense

    if parse_defense("prune:0.5").strength == 0.5:  # defenses name their strength: a line plot
        assert "psnr_vs_prune.png" in pngs


# ---------------------------------------------------------------------------------------------
# Running, resuming, aggregating


def test_uninterrupted_sweep_writes_jobs_aggregate_and_plots(
    reference: dict[str, Any], reference_out: Path
) -> None:
    out = reference_out
    assert [job["status"] for job in reference["jobs"]] == ["done"] * 3
    assert [row["indices"] for row in reference["rows"]] == [[0], [1], [2]]
    assert all(row["attack"] == "ig" and 0 < row["psnr"] < 60 for row in reference["rows"])
    assert reference["run"]["skipped"] == 0 and reference["run"]["ran"] == 3
    for job in reference["jobs"]:
        results = json.loads((out / job["dir"] / "results.json").read_text())
        assert results["config"]["indices"] == job["axes"]["indices"]
        assert (out / job["dir"] / "images" / "ig_000.png").is_file()
    assert (out / "aggregate.md").read_text().count("| ig ") == 3
    for metric in ("psnr", "ssim", "lpips_st"):
        assert (out / "plots" / f"{metric}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "sweep.json").read_text())["axes"] == {"indices": [[0], [1], [2]]}
    table = format_aggregate_table(reference)
    assert table.splitlines()[0].split("|")[1].strip() == "indices"
    assert len(table.splitlines()) == 2 + 3


def test_sweep_killed_midway_resumes_without_redoing_jobs(reference: dict[str, Any], tmp_path: Path) -> None:
    sweep_file = write_sweep(tmp_path / "three.yaml", THREE_JOBS)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gifd.cli", "sweep", str(sweep_file), "--out", str(out), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    try:
        while not finished_jobs(out):  # kill it once the first job is complete
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "the sweep never finished a job"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (out / "aggregate.json").exists()
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in finished_jobs(out)}
    assert 1 <= len(done_before) < 3, "killed too late to test resuming"

    messages: list[str] = []
    ran: list[Job] = []
    aggregate = run_sweep(
        sweep_file, out, progress=False, log=messages.append, on_job_done=lambda job, error: ran.append(job)
    )
    assert f"skipping {len(done_before)} of 3 jobs already finished in {out / 'jobs'}" in messages
    assert len(ran) == 3 - len(done_before)
    assert not {job.id for job in ran} & set(done_before)
    for name, mtime in done_before.items():  # finished jobs were not written again
        assert (out / "jobs" / name / "results.json").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (out / "jobs").iterdir()) == sorted(j["id"] for j in reference["jobs"])
    assert aggregate["run"]["skipped"] == len(done_before)
    assert rows_without_seconds(aggregate) == rows_without_seconds(reference)
    assert format_aggregate_table(aggregate).count("|") == format_aggregate_table(reference).count("|")


def test_failed_job_is_recorded_and_the_others_finish(tmp_path: Path) -> None:
    spec = {
        "base": {**TINY_BASE, "indices": [0]},
        "grid": {"images": ["builtin:cifar10", str(tmp_path / "nowhere")]},
    }
    sweep_file = write_sweep(tmp_path / "s.yaml", spec)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["sweep", str(sweep_file), "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    last = err.getvalue().strip().splitlines()[-1]
    assert last.startswith("gifd sweep: error: 1 of 2 jobs failed")
    assert "run the same command again" in last
    aggregate = json.loads((tmp_path / "out" / "aggregate.json").read_text())
    assert [job["status"] for job in aggregate["jobs"]] == ["done", "failed"]
    assert "nowhere" in aggregate["jobs"][1]["error"]
    assert len(aggregate["rows"]) == 1
    assert len(list((tmp_path / "out" / "jobs").iterdir())) == 1  # no directory for the failed job


def test_process_pool_matches_in_process_results(reference: dict[str, Any], tmp_path: Path) -> None:
    sweep_file = write_sweep(tmp_path / "two.yaml", {"base": TINY_BASE, "grid": {"images_each": [0, 1]}})
    aggregate = run_sweep(sweep_file, tmp_path / "out", workers=2, progress=False, log=lambda _: None)
    assert aggregate["run"]["ran"] == 2
    assert_rows_close(rows_without_seconds(aggregate), rows_without_seconds(reference)[:2])


def test_results_do_not_depend_on_this_process_thread_count(tmp_path: Path) -> None:
    """A sweep fixes each job's torch threads (default 1), so the numbers are the same in this
    process whatever its own thread count, and equal those of worker processes."""
    spec = {"base": {**TINY_BASE, "steps": 20}, "grid": {"images_each": [0, 1]}}
    sweep_file = write_sweep(tmp_path / "two.yaml", spec)
    assert all(job.config.threads == 1 for job in load_sweep(sweep_file).jobs)
    torch.set_num_threads(2)
    try:
        here = run_sweep(sweep_file, tmp_path / "here", progress=False, log=lambda _: None)
        assert torch.get_num_threads() == 2  # restored after each job
    finally:
        torch.set_num_threads(1)
    pool = run_sweep(sweep_file, tmp_path / "pool", workers=2, progress=False, log=lambda _: None)
    assert_rows_close(rows_without_seconds(here), rows_without_seconds(pool))


def test_a_job_whose_results_were_deleted_runs_again(tmp_path: Path) -> None:
    sweep_file = write_sweep(tmp_path / "one.yaml", {"base": TINY_BASE})
    out = tmp_path / "out"
    run_sweep(sweep_file, out, progress=False, log=lambda _: None)
    (job_dir,) = [p.parent for p in finished_jobs(out)]
    (job_dir / "results.json").unlink()
    aggregate = run_sweep(sweep_file, out, progress=False, log=lambda _: None)
    assert aggregate["run"]["ran"] == 1 and aggregate["run"]["failed"] == 0
    assert (job_dir / "results.json").is_file()
    (job_dir / "mine.txt").write_text("a user's file in a job directory")
    (job_dir / "results.json").unlink()
    aggregate = run_sweep(sweep_file, out, progress=False, log=lambda _: None)
    assert aggregate["run"]["failed"] == 1 and "mine.txt" in aggregate["jobs"][0]["error"]
    assert (job_dir / "mine.txt").is_file()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_executor_on_a_local_ray_runtime(reference: dict[str, Any], tmp_path: Path) -> None:
    import ray

    sweep_file = write_sweep(tmp_path / "two.yaml", {"base": TINY_BASE, "grid": {"images_each": [0, 1]}})
    out = tmp_path / "out"
    messages: list[str] = []
    aggregate = run_sweep(sweep_file, out, executor="ray", workers=2, progress=False, log=messages.append)
    assert any(m.startswith("Ray ready in") and "0 GPUs" in m for m in messages)
    assert not ray.is_initialized()  # the local runtime it started is shut down
    assert aggregate["run"]["executor"] == "ray" and aggregate["run"]["ran"] == 2
    assert_rows_close(rows_without_seconds(aggregate), rows_without_seconds(reference)[:2])
    for job in aggregate["jobs"]:  # the driver wrote each job's files it got back from the task
        results = json.loads((out / job["dir"] / "results.json").read_text())
        assert results["config"]["indices"] == job["axes"]["indices"]
        assert (out / job["dir"] / "images" / "ig_000.png").is_file()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_unreachable_ray_address_fails_fast(tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "s.yaml", {"base": TINY_BASE})
    start = time.monotonic()
    with pytest.raises(GifdError, match=r"nothing answers at --address 127\.0\.0\.1:1 .*running Ray cluster"):
        run_sweep(path, tmp_path / "out", executor="ray", address="127.0.0.1:1", progress=False)
    assert time.monotonic() - start < 15  # ray.init alone would wait for minutes
    assert not (tmp_path / "out").exists()
