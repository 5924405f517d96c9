"""Baseline settings on public calibration images: IG's and GI's start and learning rate.

A baseline weaker than it needs to be makes GIFD's gain dishonest, so the pixel attacks' free
choices are picked the way GIFD's radii are: by attacking simulated clients on *public*
calibration images with known ground truth (`builtin:imagenet` here; never `builtin:photos`, the
evaluation set of the methods benchmark). Every variant attacks the same client updates (same
images, seed and victim), labels inferred from the gradient.

Usage (from the repository root):

    .venv/bin/python bench/baselines.py [--victim convnet] [--resolution 64] [--images 0,1,2,3]
        [--steps 1000] [--restarts 2] [--attacks ig,gi] [--inits randn,uniform] [--lrs 0.1]
        [--threads N] [--out bench/results/baselines.json]

Writes the JSON (per variant: mean PSNR / SSIM over the images, seconds, and the full
experiment results) and a markdown table next to it, and prints the table.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import torch

from common import write_json, write_text
from gifd.errors import GifdError
from gifd.experiment import ExperimentConfig, run_experiment
from gifd.runtime import reuse_large_allocations

#: The evaluation set of the benchmarks: never used to choose a setting.
EVALUATION_IMAGES = "builtin:photos"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="builtin:imagenet", help="public calibration images")
    parser.add_argument("--images", default="0,1,2,3", help="indices into --source")
    parser.add_argument("--victim", default="convnet")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--attacks", default="ig,gi")
    parser.add_argument("--inits", default="randn,uniform", help="PixelConfig.init values to compare")
    parser.add_argument("--lrs", default="0.1", help="Adam learning rates to compare")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="bench/results/baselines.json")
    return parser.parse_args(argv)


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> None:
    reuse_large_allocations()  # as the gifd CLI does (the library leaves malloc alone)
    args = parse_args(argv)
    if args.source == EVALUATION_IMAGES:
        raise SystemExit(f"{EVALUATION_IMAGES} is the evaluation set: choose settings on builtin:imagenet or cifar10")
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = list(itertools.product(_names(args.attacks), _names(args.inits), [float(v) for v in _names(args.lrs)]))
    rows: list[dict[str, Any]] = []
    for attack, init, lr in variants:
        try:
            config = ExperimentConfig(
                victim=args.victim,
                resolution=args.resolution,
                images=args.source,
                indices=[int(i) for i in _names(args.images)],
                batch_size=1,
                attacks=[attack],
                steps=args.steps,
                restarts=args.restarts,
                attack_settings={attack: {"init": init, "lr": lr}},
                seed=args.seed,
                device=args.device,
            )
        except GifdError as exc:
            raise SystemExit(str(exc)) from None
        start = time.process_time()
        results = run_experiment(config, None, progress=True)
        summary = results["attacks"][attack]
        rows.append(
            {
                "attack": attack,
                "init": init,
                "lr": lr,
                "psnr": summary["psnr"],
                "ssim": summary["ssim"],
                "cpu_seconds": round(time.process_time() - start, 1),
                "results": results,
            }
        )
        print(f"{attack} init={init} lr={lr}: {summary['psnr']:.2f} dB")
    header = (
        f"Calibration images {args.source} {args.images}, {args.victim} {args.resolution} px, batch 1, "
        f"{args.steps} steps x {args.restarts} restarts, labels inferred, seed {args.seed}.\n\n"
    )
    lines = ["| attack | init | lr | PSNR (dB) ↑ | SSIM ↑ | CPU s |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['attack']} | {r['init']} | {r['lr']:g} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['cpu_seconds']:.0f} |"
        for r in rows
    ]
    out = Path(args.out)
    write_json(out, {"benchmark": "baselines", "arguments": vars(args), "variants": rows})
    write_text(out.with_suffix(".md"), header + "\n".join(lines) + "\n")
    print(header + "\n".join(lines))


if __name__ == "__main__":
    main()
