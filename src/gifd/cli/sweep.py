"""`gifd sweep SWEEP.yaml`: run the product of settings, one run directory per job, resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from gifd import catalog
from gifd.cli import command_help
from gifd.errors import GifdError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sweep",
        help=command_help("sweep"),
        description=(
            "Run the jobs of SWEEP.yaml (base settings x grid axes) into OUT/jobs/<id>/, skip jobs "
            "finished by an earlier run, then write OUT/aggregate.json, OUT/aggregate.md and OUT/plots/."
        ),
    )
    parser.add_argument("sweep", metavar="SWEEP.yaml", help="sweep file: `base:` settings and `grid:` axes")
    parser.add_argument(
        "--executor",
        choices=catalog.EXECUTORS,
        default="local",
        help="local worker processes (default) or Ray tasks (one GPU each on a GPU cluster)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="jobs at a time (local default 1, in this process; ray default: all CPUs of the local runtime, "
        "or as many as the cluster schedules)",
    )
    parser.add_argument("--address", help="address of an existing Ray cluster (default: start a local one)")
    parser.add_argument("--out", help="output directory (default: runs/<sweep file name>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from gifd.sweep import format_aggregate_table, load_sweep, run_sweep

    sweep = load_sweep(args.sweep)
    out = Path(args.out) if args.out else Path("runs") / Path(args.sweep).stem
    aggregate = run_sweep(
        sweep,
        out,
        executor=args.executor,
        workers=args.workers,
        address=args.address,
        progress=not args.quiet,
    )
    print(format_aggregate_table(aggregate))
    facts = aggregate["run"]
    print(
        f"{facts['jobs']} jobs: {facts['ran']} run, {facts['skipped']} skipped (already finished), "
        f"{facts['failed']} failed, in {facts['seconds']:.0f} s"
    )
    print(f"aggregate written to {out}/aggregate.json, {out}/aggregate.md and {out}/plots/")
    if facts["failed"]:
        first = next(job for job in aggregate["jobs"] if job["status"] != "done")
        raise GifdError(
            f"{facts['failed']} of {facts['jobs']} jobs failed (first: {first['id']}: {first['error']}): "
            "fix the cause and run the same command again; finished jobs are kept"
        )
