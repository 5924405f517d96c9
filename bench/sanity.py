"""DLG-style sanity benchmark: IG must invert the easy LeNet victim, and the ResNet-18 much less well.

IG (Geiping et al. 2020) with its paper schedule (15,000 steps, Adam 0.1, step decay x0.1 at 3/8,
5/8 and 7/8, global cosine distance + total variation 1e-4) attacks one FedSGD gradient per image
(batch 1, labels inferred from the gradient) of:

- DLG's LeNet (sigmoid, uniform init in [-0.5, 0.5]) at 32 px: expected mean PSNR > 25 dB;
- the untrained CIFAR ResNet-18 at 32 px, for contrast: expected much lower. It is ~10-20x slower
  per step on a CPU, so by default it gets a smaller budget (1,000 steps, 2 images); the table
  says so. LeNet is also run with ResNet-18's budget, so the contrast is made at equal budget too.

Usage (from the repository root):

    .venv/bin/python bench/sanity.py [--images 0,1,2] [--steps 15000] [--resnet-steps 1000]
        [--restarts 1] [--threads N] [--save DIR] [--out bench/results/sanity.json]

Prints a markdown table and writes a JSON file (config, versions, per-image values, timings,
the full results of each run) atomically.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from common import Provenance, write_json
from gifd.errors import GifdError
from gifd.experiment import ExperimentConfig, run_experiment
from gifd.runtime import reuse_large_allocations

#: The check this benchmark exists for: IG on LeNet (full schedule) must beat this mean PSNR.
LENET_PSNR_THRESHOLD = 25.0
IMAGE_SOURCE = "builtin:cifar10"
RESOLUTION = 32
NORMALIZATION = "cifar10"
TABLE_METRICS = ("psnr", "ssim", "lpips_st")
#: LeNet rerun with ResNet-18's steps and images, so the contrast is also made at equal budget.
EQUAL_BUDGET_RUN = "lenet_at_resnet_budget"


def parse_indices(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (one-line error otherwise)."""
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise GifdError(f"--images {text!r} is not a list of integers: pass e.g. --images 0,1,2") from None
    if not indices:
        raise GifdError("--images is empty: pass at least one image index, e.g. --images 0")
    return indices


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="0,1,2", help="indices into builtin:cifar10 (default 0,1,2)")
    parser.add_argument("--steps", type=int, default=15000, help="IG steps on LeNet (default 15000)")
    parser.add_argument(
        "--resnet-steps", type=int, default=1000, help="IG steps on ResNet-18 (default 1000; 0 skips it)"
    )
    parser.add_argument(
        "--resnet-images", type=int, default=2, help="how many of --images ResNet-18 attacks (default 2)"
    )
    parser.add_argument("--restarts", type=int, default=1, help="IG restarts on both victims (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="bench/results/sanity.json", help="JSON output path")
    parser.add_argument("--progress", action="store_true", help="show progress bars on stderr")
    parser.add_argument(
        "--save", default=None, help="also write each run's images and results.json to SAVE/<victim>"
    )
    return parser.parse_args(argv)


def ig_config(
    victim: str, indices: list[int], steps: int, restarts: int, args: argparse.Namespace
) -> ExperimentConfig:
    """IG with its paper schedule on one victim, one image per FedSGD update."""
    return ExperimentConfig(
        victim=victim,
        resolution=RESOLUTION,
        normalization=NORMALIZATION,
        images=IMAGE_SOURCE,
        indices=indices,
        batch_size=1,
        attacks=["ig"],
        steps=steps,
        restarts=restarts,
        # IG's paper settings, spelled out so the benchmark does not drift with library defaults.
        attack_settings={
            "ig": {"lr": 0.1, "distance": "cosine", "tv": 1e-4, "decay_at": [3 / 8, 5 / 8, 7 / 8]}
        },
        label_inference="unique",
        seed=args.seed,
        device=args.device,
    )


def run_victim(
    name: str, config: ExperimentConfig, progress: bool, save: Path | None = None
) -> dict[str, Any]:
    """Run one experiment (row `name`); return its table row, per-image values and full results.

    With `save`, the run's results.json and image grids (originals.png, ig.png) go to save/name.
    """
    start = time.perf_counter()
    results = run_experiment(config, None if save is None else save / name, progress=progress)
    wall = time.perf_counter() - start
    summary = results["attacks"]["ig"]
    per_batch = [batch["attacks"]["ig"] for batch in results["batches"]]
    attack_seconds = [run["seconds"] for run in per_batch]
    per_image = [
        {
            "index": index,
            "name": results["images"]["names"][i],
            "true_label": results["true_labels"][i],
            "inferred_label": results["inferred_labels"][i],
            **{metric: values[i] for metric, values in summary["per_image"].items()},
            "gradient_loss": per_batch[i]["gradient_loss"],
            "seconds": attack_seconds[i],
            "steps_per_second": config.steps / attack_seconds[i],
            "loss_curve": per_batch[i]["loss_history"],
        }
        for i, index in enumerate(config.indices)
    ]
    row = {
        "run": name,
        "victim": config.victim,
        "images": len(config.indices),
        "steps": config.steps,
        "restarts": config.restarts,
        **{metric: summary.get(metric) for metric in TABLE_METRICS},
        "seconds": sum(attack_seconds),
        "steps_per_second": config.steps * len(attack_seconds) / sum(attack_seconds),
        "label_accuracy": results["label_accuracy"],
    }
    return {"row": row, "per_image": per_image, "wall_seconds": wall, "results": results}


def format_number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = "| victim | images | steps | restarts | mean PSNR (dB) | SSIM | lpips_st | seconds | steps/s |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        budget = " (ResNet-18's budget)" if row["run"] == EQUAL_BUDGET_RUN else ""
        lines.append(
            f"| {row['victim']}{budget} | {row['images']} | {row['steps']} | {row['restarts']} "
            f"| {format_number(row['psnr'], 2)} | {format_number(row['ssim'], 3)} "
            f"| {format_number(row['lpips_st'], 3)} | {row['seconds']:.0f} | {row['steps_per_second']:.1f} |"
        )
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]], paper_steps: bool) -> list[str]:
    """One line per check: LeNet above the threshold; ResNet-18 against LeNet at the same budget."""
    by_run = {row["run"]: row for row in rows}
    lenet = by_run["lenet"]
    passed = lenet["psnr"] is None or lenet["psnr"] > LENET_PSNR_THRESHOLD  # None: infinite PSNR
    schedule = "paper schedule" if paper_steps else f"{lenet['steps']} steps, not the paper's 15000"
    lines = [
        f"LeNet mean PSNR {format_number(lenet['psnr'], 2)} dB > {LENET_PSNR_THRESHOLD:g} dB "
        f"({schedule}): {'PASS' if passed else 'FAIL'}"
    ]
    resnet, same_budget = by_run.get("resnet18"), by_run.get(EQUAL_BUDGET_RUN)
    for lenet_row in (lenet, same_budget):
        if resnet is None or lenet_row is None or None in (resnet["psnr"], lenet_row["psnr"]):
            continue
        lines.append(
            f"ResNet-18 ({resnet['steps']} steps, {resnet['images']} images) {resnet['psnr']:.2f} dB vs "
            f"LeNet ({lenet_row['steps']} steps, {lenet_row['images']} images) {lenet_row['psnr']:.2f} dB: "
            f"LeNet {lenet_row['psnr'] - resnet['psnr']:+.2f} dB"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    reuse_large_allocations()  # as the gifd CLI does (the library leaves malloc alone)
    args = parse_args(argv)
    indices = parse_indices(args.images)
    for flag, value, low in [
        ("--steps", args.steps, 1),
        ("--resnet-steps", args.resnet_steps, 0),
        ("--restarts", args.restarts, 1),
        ("--resnet-images", args.resnet_images, 1),
    ]:
        if value < low:
            raise GifdError(f"{flag} must be at least {low}, got {value}")
    if args.threads is not None:
        if args.threads < 1:
            raise GifdError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    configs = {"lenet": ig_config("lenet", indices, args.steps, args.restarts, args)}
    if args.resnet_steps:
        resnet_indices = indices[: args.resnet_images]
        configs[EQUAL_BUDGET_RUN] = ig_config("lenet", resnet_indices, args.resnet_steps, args.restarts, args)
        configs["resnet18"] = ig_config("resnet18", resnet_indices, args.resnet_steps, args.restarts, args)
    provenance = Provenance()
    runs = {}
    for name, config in configs.items():
        print(
            f"running IG on {config.victim}: {len(config.indices)} images x {config.steps} steps ...",
            file=sys.stderr,
        )
        runs[name] = run_victim(name, config, args.progress, None if args.save is None else Path(args.save))
        row = runs[name]["row"]
        print(
            f"  {config.victim}: mean PSNR {format_number(row['psnr'], 2)} dB in {row['seconds']:.0f} s",
            file=sys.stderr,
        )
    rows = [run["row"] for run in runs.values()]
    table = markdown_table(rows)
    checks = verdict(rows, paper_steps=args.steps == 15000)
    print(table)
    print()
    for line in checks:
        print(line)
    payload = {
        "benchmark": "sanity",
        **provenance.fields(torch.get_num_threads()),
        "lenet_psnr_threshold": LENET_PSNR_THRESHOLD,
        "configs": {name: config.model_dump(mode="json") for name, config in configs.items()},
        "table": rows,
        "checks": checks,
        "per_image": {name: run["per_image"] for name, run in runs.items()},
        "wall_seconds": {name: round(run["wall_seconds"], 3) for name, run in runs.items()},
        "runs": {name: run["results"] for name, run in runs.items()},
    }
    write_json(Path(args.out), payload)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GifdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
