"""Methods benchmark: GIFD against its baselines on the built-in out-of-distribution setting.

The prior is the face DCGAN `digiface-dcgan64` (synthetic faces); the private data are real
photos (`builtin:photos`); the victim is the untrained ConvNet at 64 px; batch size 1; labels
inferred from the gradient. Every method gets the same step budget per restart, the same
restarts and the same seed, on the same client updates. The paper's claim to check: GIFD beats
the latent-only search and GIAS/GGL on out-of-distribution images.

Usage (from the repository root):

    .venv/bin/python bench/methods.py [--images 0,1,2,3,4,5,6,7] [--steps 400] [--restarts 2]
        [--attacks gifd,gias,ggl,latent,ig] [--ggl-population 16] [--threads N]
        [--out bench/results/methods.json]

Writes the JSON (the full experiment results: config, versions, per-image metrics, loss curves)
and a markdown table next to it (`.md`), both atomically, and prints the table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from common import write_json, write_text
from gifd.experiment import ExperimentConfig, run_experiment
from gifd.runtime import reuse_large_allocations

COLUMNS = (("psnr", "PSNR (dB) ↑"), ("ssim", "SSIM ↑"), ("lpips_st", "LPIPS-ST ↓"), ("seconds", "seconds"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="0,1,2,3,4,5,6,7", help="indices into builtin:photos")
    parser.add_argument("--attacks", default="gifd,gias,ggl,latent,ig")
    parser.add_argument("--steps", type=int, default=400, help="step budget per restart of every method")
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--ggl-population", type=int, default=16, help="CMA-ES candidates per generation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="bench/results/methods.json")
    return parser.parse_args(argv)


def markdown_table(results: dict[str, Any]) -> str:
    """Mean metrics per method as a markdown table."""
    lines = [
        "| method | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for name, summary in results["attacks"].items():
        cells = []
        for key, _ in COLUMNS:
            value = summary.get(key)
            cells.append("-" if value is None else f"{value:.3f}" if key != "seconds" else f"{value:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    reuse_large_allocations()  # as the gifd CLI does (the library leaves malloc alone)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    config = ExperimentConfig(
        victim="convnet",
        resolution=64,
        images="builtin:photos",
        indices=[int(i) for i in args.images.split(",")],
        batch_size=1,
        prior="digiface-dcgan64",
        attacks=attacks,
        steps=args.steps,
        restarts=args.restarts,
        attack_settings={"ggl": {"population": args.ggl_population}} if "ggl" in attacks else {},
        seed=args.seed,
        device=args.device,
    )
    start = time.perf_counter()
    results = run_experiment(config, None, progress=True)
    results["benchmark"] = {
        "name": "methods",
        "wall_seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
    }
    table = markdown_table(results)
    out = Path(args.out)
    write_json(out, results)
    header = (
        f"Built-in OOD setting: digiface-dcgan64 prior, real photos {config.indices}, untrained ConvNet 64 px, "
        f"batch 1, {args.steps} steps x {args.restarts} restarts per method, seed {args.seed} "
        f"(GGL: {args.steps} generations x {args.ggl_population} candidates).\n\n"
    )
    write_text(out.with_suffix(".md"), header + table + "\n")
    print(header + table)


if __name__ == "__main__":
    main()
