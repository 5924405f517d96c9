"""`gifd demo`: the built-in default, end to end, with a report.

Out-of-distribution setting of the paper on what ships with the install: the face DCGAN prior
(trained on synthetic faces) attacked with real photos, an untrained ConvNet victim at 64 px,
labels inferred from the gradient, GIFD against the latent-only search and IG.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from gifd.cli import command_help
from gifd.cli.attack import format_table

if TYPE_CHECKING:
    from gifd.experiment import ExperimentConfig

DEMO = {
    "victim": "convnet",
    "resolution": 64,
    "images": "builtin:photos",
    "prior": "digiface-dcgan64",
    "attacks": ["gifd", "latent", "ig"],
    "batch_size": 1,
}
FULL = {"indices": [0, 1, 2, 6], "steps": 400, "restarts": 2}
QUICK = {"indices": [0], "steps": 100, "restarts": 1}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help=command_help("demo"))
    parser.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    parser.add_argument(
        "--quick", action="store_true", help="one image, 100 steps, one restart (about 15 s on 2 CPU cores)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def demo_config(quick: bool = False, device: str = "auto", seed: int = 0) -> ExperimentConfig:
    """The demo's experiment config."""
    from gifd.experiment import experiment_config

    return experiment_config({**DEMO, **(QUICK if quick else FULL), "device": device, "seed": seed}, "command line")


def run(args: argparse.Namespace) -> None:
    from gifd.experiment import run_experiment
    from gifd.report import write_report

    start = time.perf_counter()
    results = run_experiment(
        demo_config(args.quick, args.device, args.seed), args.out, progress=not args.quiet
    )
    report = write_report(args.out)
    print(format_table(results))
    print(f"report: {report}  ({time.perf_counter() - start:.0f} s)")
