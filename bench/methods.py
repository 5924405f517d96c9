"""Methods benchmark: GIFD against its baselines on the built-in out-of-distribution setting.

The prior is the face DCGAN `digiface-dcgan64` (synthetic faces); the private data are real
photos (`builtin:photos`, the evaluation set: never used to choose a setting); the victim is the
untrained ConvNet or the paper's CIFAR ResNet-18 at 64 px; batch size 1; labels inferred from the
gradient. Every method attacks the same client updates with the same restarts and seed.

Two budget modes, both on the table:
- equal compute (`--steps N`): every method gets N steps per restart; GIFD splits them over its
  stages;
- paper style (`--stage-steps N`): every GIFD stage (and the latent search) gets N steps, as the
  paper gives each stage 1000; the other methods get N x (GIFD's stage count) steps, the same
  total as GIFD.

GIFD's l1 radii: `--radii FILE` (a `gifd calibrate` result made on public calibration images),
`auto`, or the prior's default when omitted; `gifd-noball` is GIFD with no ball.
`--gifd-stage-steps 33,33,33,33,168` gives GIFD's stages their own split of the equal-compute
budget (the counts must sum to `--steps`), e.g. one chosen on public calibration images.

Usage (from the repository root):

    .venv/bin/python bench/methods.py [--victim convnet] [--images 0,1,2,3,4,5,6,7] [--steps 300]
        [--stage-steps N] [--gifd-stage-steps N,N,...] [--restarts 2] [--radii FILE|auto]
        [--attacks gifd,latent,gifd-noball,gias,ggl,ig,gi] [--ggl-population 8] [--threads N]
        [--out bench/results/methods_convnet.json]
    .venv/bin/python bench/methods.py --merge A.json B.json [...] --out C.json

`--merge` joins runs of the same setting (victim, budget, seed) into one table and figure: runs
on the same images (the same client updates) that attacked with different methods, e.g. GIFD run
after its radii were calibrated beside the baselines run before, and runs of the same methods on
other images, e.g. two processes on two cores. `--supersede gifd,...` takes those attacks from
the last run of each group of images that has them (a rerun) and leaves out the earlier ones'
results for them. Each batch keeps the attacker's random streams of
the run that made it: they follow the batch's position in its run.

Writes the JSON (the full experiment results: config, versions, per-image metrics, loss curves),
a markdown table (`.md`) and the PSNR-against-seconds figure (`.png`) next to it, all
atomically, and prints the table. After every image the finished ones are saved to
OUT.checkpoint.pt: a run that is cut resumes there when started again with the same flags (the
results equal an uninterrupted run's); the checkpoint is removed once the JSON is written.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import write_json, write_text
from gifd.cli.attack import _ints
from gifd.errors import GifdError
from gifd.experiment import ExperimentConfig, run_experiment
from gifd.imageio import write_atomically
from gifd.metrics import METRIC_INFO
from gifd.results import attack_totals, mean_utility_cost, validate_results
from gifd.runtime import reuse_large_allocations

METRICS = ("psnr", "ssim", "lpips_st")
#: The attacks whose budget is per stage in the paper-style mode.
STAGED = ("gifd", "gifd-noball", "latent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--victim", default="convnet")
    parser.add_argument("--images", default="0,1,2,3,4,5,6,7", help="indices into builtin:photos")
    parser.add_argument("--attacks", default="gifd,latent,gifd-noball,gias,ggl,ig,gi")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=300, help="equal compute: steps per restart of every method")
    budget.add_argument("--stage-steps", type=int, help="paper style: steps of every GIFD stage")
    parser.add_argument(
        "--gifd-stage-steps",
        type=_ints,
        help="GIFD's steps per stage, comma-separated, summing to --steps (equal compute, another split)",
    )
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--radii", help="GIFD's radii: a gifd calibrate file or auto (default: the prior's)")
    parser.add_argument("--ggl-population", type=int, default=8, help="CMA-ES candidates per generation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="JSON path (default bench/results/methods_VICTIM[_paper].json)")
    parser.add_argument(
        "--merge", nargs="+", metavar="JSON", help="join these results of one setting (needs --out); run nothing"
    )
    parser.add_argument(
        "--supersede",
        default="",
        metavar="ATTACKS",
        help="with --merge: these attacks (comma-separated) come from the last run that has them, "
        "e.g. a rerun after a change to GIFD; the earlier runs' results for them are left out",
    )
    args = parser.parse_args(argv)
    if args.merge and not args.out:
        parser.error("--merge needs --out: the merged JSON's path")
    if args.supersede and not args.merge:
        parser.error("--supersede is a --merge option: pass the runs to join with --merge")
    if args.gifd_stage_steps is not None:
        if args.stage_steps is not None:
            parser.error("--gifd-stage-steps splits the equal-compute --steps: drop --stage-steps")
        counts = args.gifd_stage_steps
        if not counts or min(counts) < 1:
            parser.error(f"--gifd-stage-steps {counts}: give step counts >= 1, e.g. 33,33,33,33,168")
        if sum(counts) != args.steps:
            parser.error(
                f"--gifd-stage-steps sum to {sum(counts)}, not --steps {args.steps}: equal compute needs "
                "GIFD's stages to share the other methods' budget"
            )
    return args


def experiment_config(args: argparse.Namespace, num_stages: int) -> ExperimentConfig:
    """The benchmark's experiment; in paper style the non-staged methods get GIFD's total steps."""
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    settings: dict[str, dict[str, Any]] = {name: {} for name in attacks}
    if "ggl" in settings:
        settings["ggl"]["population"] = args.ggl_population
    if args.radii and "gifd" in settings:
        settings["gifd"]["radii"] = args.radii
    if args.gifd_stage_steps is not None and "gifd" in settings:
        settings["gifd"]["stage_steps"] = args.gifd_stage_steps
    shared: dict[str, Any] = {"steps": args.steps}
    if args.stage_steps is not None:
        shared = {"stage_steps": args.stage_steps}
        for name in attacks:
            if name not in STAGED:
                settings[name]["steps"] = args.stage_steps * num_stages
    return ExperimentConfig(
        victim=args.victim,
        resolution=64,
        images="builtin:photos",
        indices=[int(i) for i in args.images.split(",")],
        batch_size=1,
        prior="digiface-dcgan64",
        attacks=attacks,
        restarts=args.restarts,
        attack_settings={name: values for name, values in settings.items() if values},
        seed=args.seed,
        device=args.device,
        **shared,
    )


#: Config keys that may differ between runs that `--merge` joins by method (everything else must be equal).
PER_RUN_KEYS = ("attacks", "attack_settings")


def merge_results(
    parts: list[dict[str, Any]], sources: list[str], supersede: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One results dict from runs of one setting: by method and by image.

    Within each group of runs on the same images, each attack in `supersede` is taken from the last
    run that has it and left out of the earlier ones (a run left with no attack is left out);
    `benchmark.superseded` records what was left out.

    Runs on the same images that ran different attacks join by method: they must agree on
    everything but their attacks (config, images, labels, utility cost), and no attack may appear
    twice. The groups of runs on different, disjoint images (each group then covering the same
    attacks) join by image: every batch keeps the attacker's random streams of the run that made
    it (streams follow a batch's position within its run, so the joined file equals one run on all
    the images only where the positions agree). A GifdError names the first difference. The merged
    `wall_seconds` is the sum of the runs' own, superseded attacks included.
    """
    if len(parts) < 2:
        raise GifdError("--merge takes at least two results files")
    for part, source in zip(parts, sources, strict=True):
        if not isinstance(part, dict):
            raise GifdError(f"{source} is not a methods benchmark result: pass the JSON bench/methods.py wrote")
        validate_results({k: v for k, v in part.items() if k != "benchmark"}, source)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, part in enumerate(parts):
        groups.setdefault(tuple(part["config"]["indices"]), []).append(i)
    grouped = [
        _supersede([parts[i] for i in members], [sources[i] for i in members], supersede)
        for members in groups.values()
    ]
    superseded = [entry for _, _, record in grouped for entry in record]
    parts = [part for group_parts, _, _ in grouped for part in group_parts]
    sources = [source for _, group_sources, _ in grouped for source in group_sources]
    joined = [_merge_methods(group_parts, group_sources) for group_parts, group_sources, _ in grouped]
    merged = joined[0] if len(joined) == 1 else _join_images(joined, [s[0] for _, s, _ in grouped])
    walls = [part.get("benchmark", {}).get("wall_seconds") for part in parts]
    merged["benchmark"] = {
        **parts[0].get("benchmark", {}),
        "wall_seconds": None if None in walls else round(sum(walls), 1),
        "merged_from": sources,
        **({"superseded": superseded} if superseded else {}),
        # each run's own provenance (the top-level date, versions and device are the first run's)
        "runs": [
            {
                "source": source,
                "attacks": part["config"]["attacks"],
                "indices": part["config"]["indices"],
                "date": part["date"],
                "versions": part["versions"],
                "device": part["device"],
                "threads": part.get("benchmark", {}).get("threads"),
                "wall_seconds": part.get("benchmark", {}).get("wall_seconds"),
            }
            for part, source in zip(parts, sources, strict=True)
        ],
    }
    validate_results({k: v for k, v in merged.items() if k != "benchmark"}, "the merged results")
    return merged


def _supersede(
    parts: list[dict[str, Any]], sources: list[str], names: tuple[str, ...]
) -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]]]:
    """Runs on the same images with each attack of `names` only in the last run that has it, and a
    record of what was left out of which run."""
    drop: list[set[str]] = [set() for _ in parts]
    record = []
    for name in names:
        having = [i for i, part in enumerate(parts) if name in part["config"]["attacks"]]
        if len(having) < 2:
            images = parts[0]["config"]["indices"]
            found = f"only in {sources[having[0]]}" if having else "in none of the runs"
            raise GifdError(
                f"--supersede {name}: on images {images} it is {found}, so there is nothing to supersede"
            )
        for i in having[:-1]:
            drop[i].add(name)
        record.append(
            {"attack": name, "from": sources[having[-1]], "left_out_of": [sources[i] for i in having[:-1]]}
        )
    kept_parts, kept_sources = [], []
    for part, source, names_out in zip(parts, sources, drop, strict=True):
        if names_out:
            part = copy.deepcopy(part)
            part["config"]["attacks"] = [a for a in part["config"]["attacks"] if a not in names_out]
            part["config"]["attack_settings"] = {
                k: v for k, v in part["config"]["attack_settings"].items() if k not in names_out
            }
            part["attacks"] = {k: v for k, v in part["attacks"].items() if k not in names_out}
            for batch in part["batches"]:
                batch["attacks"] = {k: v for k, v in batch["attacks"].items() if k not in names_out}
        if part["config"]["attacks"]:
            kept_parts.append(part)
            kept_sources.append(source)
    return kept_parts, kept_sources, record


def _merge_methods(parts: list[dict[str, Any]], sources: list[str]) -> dict[str, Any]:
    """Runs on the same images and updates with different attacks, as one run of all of them."""
    first = parts[0]
    merged = {**first, "config": dict(first["config"]), "attacks": dict(first["attacks"])}
    merged["batches"] = [{**batch, "attacks": dict(batch["attacks"])} for batch in first["batches"]]
    shared = {key: value for key, value in first["config"].items() if key not in PER_RUN_KEYS}
    for part, source in zip(parts[1:], sources[1:], strict=True):
        _same_config(part["config"], shared, PER_RUN_KEYS, source, sources[0])
        for key in ("images", "inferred_labels", "true_labels", "seed"):
            if part.get(key) != first.get(key):
                raise GifdError(f"{source} and {sources[0]} differ in {key}: they did not attack the same updates")
        if len(part["batches"]) != len(first["batches"]):
            raise GifdError(f"{source} and {sources[0]} have different batch counts")
        twice = sorted(set(part["attacks"]) & set(merged["attacks"]))
        if twice:
            raise GifdError(f"{source} repeats attack(s) {', '.join(twice)}: each method may come from one run only")
        for batch, other in zip(merged["batches"], part["batches"], strict=True):
            if batch.get("utility_cost") != other.get("utility_cost"):
                raise GifdError(f"{source} and {sources[0]} differ in the client's update (utility cost)")
            batch["attacks"].update(other["attacks"])
        merged["attacks"].update(part["attacks"])
        merged["config"]["attacks"] = [*merged["config"]["attacks"], *part["config"]["attacks"]]
        merged["config"]["attack_settings"] = {
            **merged["config"]["attack_settings"],
            **part["config"]["attack_settings"],
        }
    return merged


def _join_images(parts: list[dict[str, Any]], sources: list[str]) -> dict[str, Any]:
    """Runs of one setting and the same attacks on disjoint images, as one run on all of them."""
    first = parts[0]
    names = first["config"]["attacks"]
    shared = {key: value for key, value in first["config"].items() if key not in ("indices", "attacks")}
    seen = set(first["config"]["indices"])
    for part, source in zip(parts[1:], sources[1:], strict=True):
        if sorted(part["config"]["attacks"]) != sorted(names):
            raise GifdError(
                f"the runs on images {part['config']['indices']} ({source}) cover attacks "
                f"{', '.join(sorted(part['config']['attacks']))}, those on {first['config']['indices']} "
                f"({sources[0]}) {', '.join(sorted(names))}: join images only over the same methods"
            )
        _same_config(part["config"], shared, ("indices", "attacks"), source, sources[0])
        overlap = sorted(seen & set(part["config"]["indices"]))
        if overlap:
            raise GifdError(f"{source} attacks images {overlap} again: join runs on disjoint images")
        seen |= set(part["config"]["indices"])
    batches = [batch for part in parts for batch in part["batches"]]
    merged = {
        **first,
        "config": {**first["config"], "indices": [i for part in parts for i in part["config"]["indices"]]},
        "images": {**first["images"], "names": [n for part in parts for n in part["images"]["names"]]},
        "inferred_labels": [label for part in parts for label in part["inferred_labels"]],
        "true_labels": [label for part in parts for label in part["true_labels"]],
        "label_accuracy": float(np.mean([batch["label_accuracy"] for batch in batches])),
        "batches": batches,
        "attacks": {name: attack_totals(name, batches) for name in names},
        "defense": {
            **first["defense"],
            "utility_cost": mean_utility_cost([batch.get("utility_cost") for batch in batches]),
        },
    }
    return merged


def _same_config(config: dict[str, Any], shared: dict[str, Any], free: tuple[str, ...], source: str, first: str) -> None:
    """Raise unless `config` has the `shared` values for every key not in `free`."""
    for key in sorted(set(shared) | (set(config) - set(free))):
        value = shared.get(key)
        if config.get(key) != value:
            raise GifdError(
                f"{source} is another setting than {first}: config {key} is "
                f"{config.get(key)!r}, not {value!r}: merge only runs of one setting"
            )


def describe(results: dict[str, Any], num_stages: int) -> tuple[str, str]:
    """(budget words, header paragraph) of a benchmark's results, read from its config."""
    config = results["config"]
    settings = config["attack_settings"]
    if config["stage_steps"] is not None:
        budget = f"{config['stage_steps']} steps per GIFD stage (others: {config['stage_steps'] * num_stages} steps)"
    else:
        gifd = next((b["attacks"]["gifd"] for b in results["batches"] if "gifd" in b["attacks"]), None)
        split = [s.get("budget") for s in gifd["stages"]] if gifd and gifd.get("stages") else []
        over = (
            f"{', '.join(str(b) for b in split)} over its stages"
            if split and None not in split
            else f"split over its {num_stages} stages"
        )
        budget = f"{config['steps']} steps per method (GIFD: {over})"
    radii = settings.get("gifd", {}).get("radii") or "the prior default"
    ggl = (
        f" (GGL: generations = steps, {settings['ggl']['population']} candidates)"
        if "ggl" in config["attacks"] and "population" in settings.get("ggl", {})
        else ""
    )
    merged = results.get("benchmark", {}).get("merged_from")
    header = (
        f"Built-in OOD setting: digiface-dcgan64 prior, real photos {config['indices']}, untrained "
        f"{config['victim']} 64 px, batch 1, labels inferred, {budget}, {config['restarts']} restarts, seed "
        f"{config['seed']}, GIFD radii {radii}{ggl}. "
        "Seconds: wall time of all images." + (f" Merged from {', '.join(merged)}." if merged else "") + "\n\n"
    )
    return budget, header


def markdown_table(results: dict[str, Any]) -> str:
    """Mean metrics and seconds per method as a markdown table."""
    headers = [METRIC_INFO[key].header for key in METRICS]
    lines = ["| method | " + " | ".join(headers) + " | steps | seconds |", "|---" * (len(METRICS) + 3) + "|"]
    for name, summary in results["attacks"].items():
        cells = [
            "-" if summary.get(key) is None else METRIC_INFO[key].fmt.format(summary[key]) for key in METRICS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {summary.get('steps', '-')} | {summary['seconds']:.0f} |")
    return "\n".join(lines)


def psnr_seconds_figure(results: dict[str, Any], title: str) -> bytes:
    """PNG: mean PSNR (bars: ±1 std over images) against mean seconds per image, one point per
    method, named in the legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for i, (name, summary) in enumerate(results["attacks"].items()):
        values = torch.tensor([v for v in summary["per_image"]["psnr"] if v is not None], dtype=torch.float64)
        seconds = summary["seconds"] / max(1, len(results["config"]["indices"]))
        spread = float(values.std()) if len(values) > 1 else 0.0
        axes.errorbar(seconds, float(values.mean()), yerr=spread, fmt="o", capsize=3, color=f"C{i % 10}", label=name)
    # A legend, not labels beside the points: methods of equal cost sit at one x and their labels overlapped.
    axes.legend(fontsize=8, loc="best")
    axes.set_xlabel("seconds per image (all restarts)")
    axes.set_ylabel(f"{METRIC_INFO['psnr'].name} ({METRIC_INFO['psnr'].direction})")
    axes.set_title(title, fontsize=9)
    axes.margins(x=0.15)
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    reuse_large_allocations()  # as the gifd CLI does (the library leaves malloc alone)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from gifd.priors import create_prior

    num_stages = create_prior("digiface-dcgan64").num_stages
    try:
        if args.merge:
            parts = [json.loads(Path(path).read_text(encoding="utf-8")) for path in args.merge]
            supersede = tuple(dict.fromkeys(a.strip() for a in args.supersede.split(",") if a.strip()))
            results = merge_results(parts, args.merge, supersede)
        else:
            config = experiment_config(args, num_stages)
    except (GifdError, OSError, json.JSONDecodeError) as exc:
        raise SystemExit(str(exc)) from None
    mode = "_paper" if args.stage_steps is not None else ""
    out = Path(args.out or f"bench/results/methods_{args.victim}{mode}.json")
    checkpoint = out.with_suffix(".checkpoint.pt")
    if not args.merge:
        start = time.perf_counter()
        try:
            results = run_experiment(config, None, progress=True, checkpoint=checkpoint)
        except GifdError as exc:
            raise SystemExit(str(exc)) from None
        results["benchmark"] = {
            "name": "methods",
            "mode": "paper" if args.stage_steps is not None else "equal",
            # of this process only: a resumed run's earlier batches keep their seconds in the table
            "wall_seconds": round(time.perf_counter() - start, 1),
            "threads": torch.get_num_threads(),
        }
    budget, header = describe(results, num_stages)
    table = markdown_table(results)
    figure = psnr_seconds_figure(results, f"{results['config']['victim']}, {budget}")
    write_json(out, results)
    write_text(out.with_suffix(".md"), header + table + "\n")
    write_atomically(out.with_suffix(".png"), lambda handle: handle.write(figure))
    if not args.merge:
        checkpoint.unlink(missing_ok=True)  # its batches are in the JSON now
    print(header + table)


if __name__ == "__main__":
    main()
