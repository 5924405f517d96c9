"""Defenses benchmark: GIFD and IG under each defense at two strengths, adaptive vs oblivious.

The built-in setting (face DCGAN prior `digiface-dcgan64`, real photos, untrained ConvNet at 64 px,
batch 1, labels inferred). For every defense setting the client defends its update; the attacker
models the defense (adaptive: applies the defense's own transform to its dummy gradient) or not
(oblivious). GIFD and IG run adaptive on every setting; GIFD also runs oblivious on pruning,
Soteria and DP-SGD, the defenses whose adaptive model changes the attack (noise has none; clipping's
scale is undone by the cosine distance).

Usage (from the repository root):

    .venv/bin/python bench/defenses.py [--images 0,1] [--steps 200] [--restarts 1] [--threads N]
        [--out bench/results/defenses.json]

Writes the JSON (per setting: the defense, the utility cost, each method's metrics) and a markdown
table next to it (`.md`), atomically, and prints the table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from common import write_json, write_text
from gifd.defenses import default_strengths
from gifd.experiment import ExperimentConfig, run_experiment
from gifd.runtime import reuse_large_allocations

#: No defense, then every defense at its two strengths (weaker, stronger).
SETTINGS = ["none", *default_strengths()]
#: Defenses on which GIFD also runs oblivious of the defense.
OBLIVIOUS = ("prune", "soteria", "dpsgd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="0,1", help="indices into builtin:photos")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="bench/results/defenses.json")
    return parser.parse_args(argv)


def run_setting(base: dict[str, Any], defense: str, attacks: list[str], knowledge: str) -> dict[str, Any]:
    config = ExperimentConfig(**base, defense=defense, attacks=attacks, defense_knowledge=knowledge)
    results = run_experiment(config, None, progress=False)
    return {
        "defense": defense,
        "knowledge": knowledge,
        "utility_cost": results["defense"]["utility_cost"],
        "attacks": {
            name: {k: summary.get(k) for k in ("psnr", "ssim", "lpips_st", "seconds")}
            for name, summary in results["attacks"].items()
        },
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| defense | attacker | update cosine to clean | GIFD PSNR | IG PSNR | GIFD LPIPS-ST | IG LPIPS-ST |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cost = row["utility_cost"]
        cosine = "-" if cost is None else f"{cost['cosine']:.3f}"
        cells = []
        for metric in ("psnr", "lpips_st"):
            for name in ("gifd", "ig"):
                value = row["attacks"].get(name, {}).get(metric)
                cells.append("-" if value is None else f"{value:.2f}" if metric == "psnr" else f"{value:.3f}")
        lines.append(
            f"| {row['defense']} | {row['knowledge']} | {cosine} | "
            + " | ".join(cells[:2] + cells[2:])
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    reuse_large_allocations()  # as the gifd CLI does (the library leaves malloc alone)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = {
        "victim": "convnet",
        "resolution": 64,
        "images": "builtin:photos",
        "indices": [int(i) for i in args.images.split(",")],
        "prior": "digiface-dcgan64",
        "steps": args.steps,
        "restarts": args.restarts,
        "seed": args.seed,
        "device": args.device,
    }
    start, rows = time.perf_counter(), []
    for defense in SETTINGS:
        rows.append(run_setting(base, defense, ["gifd", "ig"], "adaptive"))
        print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
        if defense.split(":")[0] in OBLIVIOUS:
            rows.append(run_setting(base, defense, ["gifd"], "oblivious"))
            print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
    table = markdown_table(rows)
    header = (
        f"Built-in setting (digiface-dcgan64, photos {base['indices']}, ConvNet 64 px, batch 1), "
        f"{args.steps} steps x {args.restarts} restarts, seed {args.seed}.\n\n"
    )
    out = Path(args.out)
    payload = {
        "benchmark": "defenses",
        "base": base,
        "rows": rows,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out, payload)
    write_text(out.with_suffix(".md"), header + table + "\n")
    print(header + table)


if __name__ == "__main__":
    main()
