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
node; results travel back to the driver, so OUT needs no shared filesystem. Another way of running
jobs is one class registered in `EXECUTORS` (see gifd.sweep.executors).

The modules: `grid` (the sweep file, its axes and jobs), `jobs` (a job's directory), `executors`
(where jobs run), `table`, `plots` and `aggregate` (the aggregate and its files), `run`
(`run_sweep`).
"""

from __future__ import annotations

from gifd.sweep.aggregate import aggregate_sweep, write_aggregate
from gifd.sweep.executors import (
    EXECUTORS,
    Executor,
    JobOutcome,
    LocalExecutor,
    RayExecutor,
    refuse_address,
    run_here,
)
from gifd.sweep.grid import (
    DEFAULT_JOB_THREADS,
    IMAGES_EACH,
    Job,
    Sweep,
    SweepFile,
    config_hash,
    load_sweep,
    sweep_from_dict,
)
from gifd.sweep.jobs import JobError, job_error, job_is_finished, run_job, run_job_packed, unpack_job
from gifd.sweep.plots import plot_aggregate
from gifd.sweep.run import run_sweep
from gifd.sweep.table import METRIC_COLUMNS, format_aggregate_table

__all__ = [
    "DEFAULT_JOB_THREADS",
    "EXECUTORS",
    "IMAGES_EACH",
    "METRIC_COLUMNS",
    "Executor",
    "Job",
    "JobError",
    "JobOutcome",
    "LocalExecutor",
    "RayExecutor",
    "Sweep",
    "SweepFile",
    "aggregate_sweep",
    "config_hash",
    "format_aggregate_table",
    "job_error",
    "job_is_finished",
    "load_sweep",
    "plot_aggregate",
    "refuse_address",
    "run_here",
    "run_job",
    "run_job_packed",
    "run_sweep",
    "sweep_from_dict",
    "unpack_job",
    "write_aggregate",
]
