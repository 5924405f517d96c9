"""Throughput of GIFD's restarts: the sequential loop vs one batched computation, and successive halving.

Part 1, one line per case: GIFD attack steps per second with the restarts' gradient losses computed
one restart after another (`batched: false`) and as one vmapped computation (`batched: true`), on
the same victim, prior (the pretrained 64-px face DCGAN) and private image (batch 1), for LeNet,
ConvNet and ResNet-18 victims at 32 and 64 px with R = 4 and 8 restarts. A run covers all five
stages (`--steps` steps each, more for a cheap case so that a run lasts `--min-seconds`; stage
transitions and the scoring pass of each stage included) after a one-step warm-up. It prints

    convnet-64px R=4 speedup 1.13x  (gifd 13 -> 14.7 steps/s, CPU time 1.13x; 1.20x over one
    restart at a time; victim only 1.16x (CPU time 1.16x); peak RSS 526 -> 512 MB)

(on one line). "speedup" is batched over sequential steps/s; sequential (`batched: false`) loops
the victim's part over the restarts while the generator still runs all restarts in one batch.
"CPU time" is the same ratio of steps per second of process CPU time, which other processes on
the machine disturb less (with one thread it is the compute cost). "over one restart at a time"
compares with R separate single-restart runs, the official code's way (generator and victim at
batch N), one attack step counting as one step of every restart. "victim only" is the ratio for
the victim's part alone (restart losses + their gradient w.r.t. the inputs, no generator), the
part batching changes.

Part 2: time to reach the paper preset's final gradient loss. GIFD with the "paper" preset (full
budget for every restart), the same with the sequential loop, and the "fast" preset (a rung in the
middle of the first stage, successive halving), same seed and budget (`--halving-steps` per stage, far below the paper's
13,000 steps in all). Reported: each run's time, and when its best gradient loss so far first came
within 5 % of the paper run's final loss, and the fast run's own end (final loss and CPU time
against the paper run's: the target is <= 1.05x the loss in <= 0.5x the time); for several seeds (`--halving-seeds`), since whether
halving keeps the restart the paper preset ends with varies with the restarts' starting points.
Each paper run is also replayed (`halving_oracle`): which restarts every pruning rule (the rung,
halving from stage k) would have kept, its final loss and its estimated time, from that one run.
`--halving-runs` picks the runs made per seed (paper, paper-sequential, fast, fast-early-stop:
the fast preset with early stop on a plateau added, as it was until 2026-12-01); `--halving-reference FILE` takes the paper runs from an earlier
result of the same setting instead of running them again.

Every measurement runs in a fresh child process, so its peak memory is its own: peak resident set
size on the CPU (`resource.getrusage`), `torch.cuda.max_memory_allocated` on CUDA. Other processes
on the machine disturb absolute numbers; ratios come from runs made in one go, alternating the
order of the two modes when `--repeats` > 1 (best of the repeats counts).

Usage (from the repository root):

    .venv/bin/python bench/throughput.py [--quick] [--threads N] [--steps K] [--repeats M]
        [--min-seconds S] [--victims lenet,convnet,resnet18] [--sides 32,64] [--restarts 4,8]
        [--halving-steps K] [--halving-victim convnet-32] [--halving-seeds 0,1,2]
        [--halving-runs paper,paper-sequential,fast,fast-early-stop] [--halving-reference FILE]
        [--no-halving | --halving-only] [--device cpu]
        [--out bench/results/throughput.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PRIOR = "digiface-dcgan64"
#: (source, index) of the private image; the halving runs take `--halving-image` instead.
DEFAULT_IMAGE = ("builtin:cifar10", 0)
LABEL = 3  # the label of builtin:cifar10 image 0 is irrelevant to speed; any class works
#: A run "reaches" the paper's final loss when its best loss so far is within this factor of it.
TARGET_SLACK = 1.05
#: Second repeat of a case only if its first pair of runs took less than this (seconds).
REPEAT_BUDGET = 90.0
#: Cap on the steps per stage chosen to make a cheap case's run last `--min-seconds`.
MAX_STEPS_PER_STAGE = 40


# ------------------------------------------------------------------------------------ child side
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _setup(spec: dict[str, Any]):  # type: ignore[no-untyped-def]
    import torch

    from gifd.attacks import Target
    from gifd.client import compute_update
    from gifd.data import load_images
    from gifd.device import resolve_device
    from gifd.priors import create_prior
    from gifd.runtime import reuse_large_allocations
    from gifd.victims import create_victim

    reuse_large_allocations()  # as the gifd CLI does (the library leaves malloc alone)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = resolve_device(spec.get("device"))
    victim = create_victim(spec["victim"], resolution=spec["side"], num_classes=10, seed=0, device=device)
    source, index = spec.get("image", DEFAULT_IMAGE)
    images = load_images(source, spec["side"], indices=[index]).images
    labels = torch.tensor([LABEL])
    target = Target(victim, compute_update(victim, images, labels), labels)
    return torch, device, victim, target, create_prior


def child_gifd(spec: dict[str, Any]) -> dict[str, Any]:
    """One GIFD run (after a warm-up step) with the settings in `spec`; timings and peak memory."""
    torch, device, _, target, create_prior = _setup(spec)
    import gifd.attacks.gifd as gifd_module
    from gifd.attacks import ATTACKS

    prior = create_prior(PRIOR, device=device)
    times: list[float] = []

    class TimedLossLog(gifd_module.LossLog):  # type: ignore[name-defined, misc]
        """LossLog that also notes when each record was made (bench instrumentation only)."""

        def record(self, step: int, per_restart):  # type: ignore[no-untyped-def]
            values = super().record(step, per_restart)
            times.append(time.perf_counter())
            return values

    gifd_module.LossLog = TimedLossLog  # type: ignore[misc]
    separate = spec.get("separate", False)  # the official code's way: one whole run per restart
    base = {
        "restarts": 1 if separate else spec["restarts"],
        "preset": spec.get("preset", "paper"),
        "log_every": spec.get("log_every", 10**6),
        **{key: spec[key] for key in ("batched", "halving", "rung", "early_stop") if key in spec},
    }

    def run(settings: dict[str, Any], seed: int = spec.get("seed", 0)):  # type: ignore[no-untyped-def]
        attack = ATTACKS.get("gifd")({**base, **settings}, prior=prior, progress=False)
        return attack.run(target, torch.Generator().manual_seed(seed))

    baseline_rss = _peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Warm-up: one step of the last stage (cheap generator part, full victim part).
    last = prior.num_stages - 1
    run({"steps": 1, "stage_start": last, "stage_end": last})
    times.clear()
    stage_steps = [spec["steps_per_stage"]] * prior.num_stages
    start, cpu_start = time.perf_counter(), time.process_time()
    settings = {"stage_steps": stage_steps}
    if separate:
        results = [run(settings, seed=r) for r in range(spec["restarts"])]
        result = min(results, key=lambda r: r.loss)
        result.seconds = sum(r.seconds for r in results)
    else:
        result = run(settings)
    cpu_seconds = time.process_time() - cpu_start
    out: dict[str, Any] = {
        "seconds": result.seconds,
        "cpu_seconds": cpu_seconds,
        "steps": result.steps,
        "steps_per_second": result.steps / result.seconds,
        "steps_per_cpu_second": result.steps / cpu_seconds,
        "loss": result.loss,
        "stage_losses": [s.restart_losses for s in result.stages],
        "baseline_rss_mb": round(baseline_rss, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    if spec.get("log_every"):
        best, curve = math.inf, []
        for losses in zip(*result.loss_history, strict=True):
            finite = [v for v in losses if v == v]
            best = min([best, *finite])
            curve.append(best)
        out["log_seconds"] = [round(t - start, 4) for t in times]
        out["log_steps"] = result.log_steps
        out["best_so_far"] = curve
        # each restart's loss at every log step (NaN once pruned): what `halving_oracle` replays
        out["restart_history"] = [[round(v, 8) for v in losses] for losses in result.loss_history]
    return out


def child_victim(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds per call of the victim part alone: restart losses + their input gradient, both modes."""
    torch, device, _, target, _ = _setup(spec)
    from gifd.attacks import GradientMatcher

    restarts, side = spec["restarts"], spec["side"]
    matcher = GradientMatcher(target)
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(restarts, 3, side, side, generator=gen).to(device).requires_grad_(True)

    def call(batched: bool) -> tuple[float, float]:
        start, cpu_start = time.perf_counter(), time.process_time()
        losses = (matcher.restart_losses if batched else matcher.sequential_losses)(inputs, restarts)
        torch.autograd.grad(losses.sum(), [inputs])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, time.process_time() - cpu_start

    warm = call(False)[0] + call(True)[0]
    reps = max(2, min(50, int(spec.get("budget", 4.0) / max(warm, 1e-6))))
    wall: dict[str, list[float]] = {"sequential": [], "batched": []}
    cpu: dict[str, list[float]] = {"sequential": [], "batched": []}
    for rep in range(reps):
        order = (False, True) if rep % 2 == 0 else (True, False)
        for batched in order:
            mode = "batched" if batched else "sequential"
            seconds, cpu_seconds = call(batched)
            wall[mode].append(seconds)
            cpu[mode].append(cpu_seconds)
    best = {k: min(v) for k, v in wall.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    return {
        "seconds_per_call": best,
        "cpu_seconds_per_call": best_cpu,
        "speedup": best["sequential"] / best["batched"],
        "cpu_speedup": best_cpu["sequential"] / best_cpu["batched"],
        "reps": reps,
        "fallback": matcher.batched_failure,
    }


CHILDREN = {"gifd": child_gifd, "victim": child_victim}


# ----------------------------------------------------------------------------------- parent side
def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh Python process; its result (or the error) as a dict."""
    env = dict(os.environ)
    if spec.get("threads"):
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def measure_case(victim: str, side: int, restarts: int, args: argparse.Namespace) -> dict[str, Any]:
    """Sequential vs batched GIFD steps/s (alternating order over repeats) and the victim-only ratio.

    Steps per stage start at `--steps`; if a sequential run is shorter than `--min-seconds`, the
    case is measured with proportionally more steps (same number for both modes), so that cheap
    victims are not timed on a fraction of a second.
    """
    common = {"victim": victim, "side": side, "restarts": restarts, "threads": args.threads}
    common["device"] = args.device

    def gifd_run(mode: str, steps: int) -> dict[str, Any]:
        spec = {**common, "kind": "gifd", "batched": mode == "batched", "steps_per_stage": steps}
        return run_child(spec)

    steps = args.steps
    calibration = gifd_run("sequential", steps)
    if "error" not in calibration and calibration["seconds"] < args.min_seconds:
        steps = min(MAX_STEPS_PER_STAGE, math.ceil(steps * args.min_seconds / calibration["seconds"]))
    runs: dict[str, list[dict[str, Any]]] = {"sequential": [], "batched": []}
    if steps == args.steps:
        runs["sequential"].append(calibration)
    for rep in range(args.repeats):
        started = time.perf_counter()
        order = ("batched", "sequential") if rep % 2 == 0 else ("sequential", "batched")
        for mode in order:
            if rep == 0 and mode == "sequential" and runs["sequential"]:
                continue  # the calibration run is this repeat's sequential run
            runs[mode].append(gifd_run(mode, steps))
        if time.perf_counter() - started > REPEAT_BUDGET:
            break
    separate = run_child(
        {**common, "kind": "gifd", "batched": False, "separate": True, "steps_per_stage": steps}
    )
    victim_only = run_child({**common, "kind": "victim", "budget": args.min_seconds})
    case: dict[str, Any] = {
        "victim": victim,
        "side": side,
        "restarts": restarts,
        "steps_per_stage": steps,
        "victim_only": victim_only,
        "one_restart_at_a_time": separate,
    }
    for mode, results in runs.items():
        good = [r for r in results if "error" not in r]
        case[mode] = max(good, key=lambda r: r["steps_per_second"]) if good else results[0]
        case[f"{mode}_all_steps_per_second"] = [r.get("steps_per_second") for r in results]
    if "error" not in case["sequential"] and "error" not in case["batched"]:
        case["speedup"] = case["batched"]["steps_per_second"] / case["sequential"]["steps_per_second"]
        cpu = {
            mode: max(r["steps_per_cpu_second"] for r in results if "error" not in r)
            for mode, results in runs.items()
        }
        case["cpu_speedup"] = cpu["batched"] / cpu["sequential"]
        if "error" not in separate:
            case["speedup_over_one_at_a_time"] = (
                case["batched"]["steps_per_second"] / separate["steps_per_second"]
            )
    return case


def case_line(case: dict[str, Any]) -> str:
    name = f"{case['victim']}-{case['side']}px R={case['restarts']}"
    seq, bat = case["sequential"], case["batched"]
    if "speedup" not in case:
        return f"{name} failed: {seq.get('error') or bat.get('error')}"
    victim_only = case["victim_only"]
    victim_text = (
        f"victim only {victim_only['speedup']:.2f}x (CPU time {victim_only['cpu_speedup']:.2f}x)"
        if "speedup" in victim_only
        else "victim only failed"
    )
    memory = f"peak RSS {seq['peak_rss_mb']:.0f} -> {bat['peak_rss_mb']:.0f} MB"
    if "cuda_peak_mb" in bat:
        memory = f"CUDA peak {seq['cuda_peak_mb']:.0f} -> {bat['cuda_peak_mb']:.0f} MB"
    separate = case.get("speedup_over_one_at_a_time")
    separate_text = f"; {separate:.2f}x over one restart at a time" if separate else ""
    return (
        f"{name} speedup {case['speedup']:.2f}x  (gifd {seq['steps_per_second']:.3g} -> "
        f"{bat['steps_per_second']:.3g} steps/s, CPU time {case['cpu_speedup']:.2f}x{separate_text}; "
        f"{victim_text}; {memory})"
    )


#: A child run's per-step records (large at the paper's budget).
PER_STEP_KEYS = ("log_seconds", "log_steps", "best_so_far", "restart_history")

#: The runs part 2 can make per seed, with the GIFD settings of each.
HALVING_VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"preset": "paper"},
    "paper-sequential": {"preset": "paper", "batched": False},
    "fast": {"preset": "fast"},
    "fast-early-stop": {"preset": "fast", "early_stop": True},  # the fast preset until 2026-12-01
}
HALVING_RUNS = tuple(HALVING_VARIANTS)


def time_to_reach(run: dict[str, Any], target: float) -> float | None:
    """When the run's best loss so far first came within TARGET_SLACK of `target` (None: never)."""
    for seconds, best in zip(run["log_seconds"], run["best_so_far"], strict=True):
        if best <= TARGET_SLACK * target:
            return seconds
    return run["seconds"] if run["loss"] <= TARGET_SLACK * target else None


def reference_paper_run(args: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
    """The paper run of this seed from `--halving-reference` (an earlier result of this setting)."""
    try:
        reference = json.loads(Path(args.halving_reference).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: --halving-reference {args.halving_reference}: {exc}") from None
    if (reference.get("settings") or {}).get("halving_steps_per_stage") != common["steps_per_stage"]:
        raise SystemExit(f"error: --halving-reference {args.halving_reference} ran another --halving-steps")
    def setting(run: dict[str, Any]) -> tuple[Any, ...]:  # results before --halving-image: the default image
        return run["victim"], run["side"], run["seed"], tuple(run.get("image", DEFAULT_IMAGE))

    for result in (reference.get("halving") or {}).get("runs", []):
        if setting(result) == setting(common) and "paper" in result["runs"]:
            return {**result["runs"]["paper"], "reference": args.halving_reference}
    raise SystemExit(
        f"error: --halving-reference {args.halving_reference} has no paper run of "
        f"{args.halving_victim} seed {common['seed']} on {':'.join(map(str, common['image']))}: run it with "
        "--halving-runs paper first"
    )


def measure_halving(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Paper preset (batched and sequential) vs the fast preset: time to the paper's final loss.

    `seed` draws the restarts' starting points: whether halving keeps the restart that the paper
    preset ends with varies from seed to seed, so the benchmark runs several.
    """
    victim, side = args.halving_victim.rsplit("-", 1)
    common = {
        "kind": "gifd",
        "seed": seed,
        "victim": victim,
        "side": int(side),
        "restarts": 4,
        "threads": args.threads,
        "device": args.device,
        "steps_per_stage": args.halving_steps,
        "log_every": 1,
        "image": list(args.halving_image),
    }
    runs = {name: run_child({**common, **HALVING_VARIANTS[name]}) for name in args.halving_runs}
    if "paper" not in runs and args.halving_reference:
        runs = {"paper": reference_paper_run(args, common), **runs}
    out: dict[str, Any] = {
        "victim": victim,
        "side": int(side),
        "image": common["image"],
        "restarts": 4,
        "seed": seed,
        "runs": runs,
    }
    if any("error" in r for r in runs.values()) or "paper" not in runs:
        return out
    target = runs["paper"]["loss"]
    out["paper_final_loss"] = target
    out["halving_oracle"] = halving_oracle(runs["paper"], args.halving_steps)
    for run in runs.values():
        run["reached_seconds"] = time_to_reach(run, target)
    if "fast" not in runs:
        return out
    fast, paper = runs["fast"], runs["paper"]
    if fast["reached_seconds"] is not None:
        out["fast_time_fraction_of_paper"] = fast["reached_seconds"] / paper["seconds"]
        if "paper-sequential" in runs:
            out["fast_time_fraction_of_paper_sequential"] = (
                fast["reached_seconds"] / runs["paper-sequential"]["seconds"]
            )
    out["fast_loss_ratio"] = fast["loss"] / target
    # The test: the fast run, as it ends, within 5 % of the paper
    # preset's final loss in at most half its time.
    out["fast_total_fraction_of_paper"] = fast["seconds"] / paper["seconds"]
    out["fast_cpu_fraction_of_paper"] = fast["cpu_seconds"] / paper["cpu_seconds"]
    out["fast_meets_target"] = bool(
        out["fast_loss_ratio"] <= TARGET_SLACK and out["fast_cpu_fraction_of_paper"] <= 0.5
    )
    if "reference" in paper:  # its per-step curves are in the reference file: keep the totals only
        runs["paper"] = {key: value for key, value in paper.items() if key not in PER_STEP_KEYS}
    return out


def halving_oracle(paper: dict[str, Any], steps_per_stage: int) -> list[dict[str, Any]]:
    """What each pruning rule would have ended with, replayed from one paper-preset run.

    A restart that halving keeps follows the same chain as in the paper run, so the restarts a
    rule runs in each stage follow from the run's `stage_losses` (the rung's ranking at the middle
    of stage 0 from its `restart_history`), and its final loss is the best stage loss among them.
    That loss is the paper run's: a pruned run, batched over fewer restarts, rounds differently,
    and Adam grows the difference over a stage as it does between the batched and the sequential
    paper run. The time is each stage's paper time scaled by the share of restarts still running:
    a lower bound, since fewer restarts batch less efficiently. Early stop is not replayed (a
    stage cut short changes where the next one starts).
    """
    import torch

    from gifd.attacks.gifd import halving_survivors

    stage_losses = paper["stage_losses"]
    stages, restarts = len(stage_losses), len(stage_losses[0])
    # a stage's time: its median step (logged every step) x its steps, so a pause of the machine
    # inside one stage does not shift the shares
    clock = [0.0, *paper["log_seconds"]]
    stage_seconds = [
        statistics.median(b - a for a, b in itertools.pairwise(chunk)) * steps_per_stage
        for chunk in (clock[s * steps_per_stage : (s + 1) * steps_per_stage + 1] for s in range(stages))
    ]
    target = min(min(losses) for losses in stage_losses)
    rules: list[tuple[str, bool, int]] = [("rung + halving from stage 1", True, 1)]
    rules += [(f"halving from stage {k}", False, k) for k in range(1, stages)]
    rows = []
    for name, rung, first_halved in rules:
        active, share, best, survivors = list(range(restarts)), 0.0, math.inf, []
        for stage in range(stages):
            if stage == 0 and rung and restarts > 1:
                history = paper["restart_history"]
                half = steps_per_stage // 2
                early = torch.tensor([min(history[r][:half]) for r in active])
                kept = [active[k] for k in halving_survivors(early)]
                share += stage_seconds[0] * (len(active) + len(kept)) / 2 / restarts
                active = kept
            else:
                share += stage_seconds[stage] * len(active) / restarts
            survivors.append(active)
            losses = [stage_losses[stage][r] for r in active]
            best = min(best, *losses)
            if stage + 1 >= first_halved and stage < stages - 1 and len(active) > 1:
                active = [active[k] for k in halving_survivors(torch.tensor(losses))]
        fraction = share / sum(stage_seconds)
        rows.append(
            {
                "rule": name,
                "restarts_per_stage": survivors,  # the restarts each stage runs (after the rung for stage 0)
                "final_loss_ratio": best / target,
                "estimated_time_fraction": fraction,
                "meets_target": bool(best / target <= TARGET_SLACK and fraction <= 0.5),
            }
        )
    return rows


def halving_lines(result: dict[str, Any]) -> list[str]:
    source, index = result.get("image", DEFAULT_IMAGE)
    name = f"{result['victim']}-{result['side']}px R={result['restarts']} {source}[{index}] seed {result['seed']}"
    runs = result["runs"]
    errors = [f"{k}: {r['error']}" for k, r in runs.items() if "error" in r]
    if errors:
        return [f"halving {name} failed: {'; '.join(errors)}"]
    target = result["paper_final_loss"]
    lines = [f"halving {name}: paper preset final gradient loss {target:.4g}"]
    for key, run in runs.items():
        reached = run["reached_seconds"]
        reached_text = f"within 5% at {reached:.1f} s" if reached is not None else "never within 5%"
        lines.append(
            f"  {key:<16} {run['seconds']:7.1f} s, final loss {run['loss']:.4g} "
            f"({run['loss'] / target - 1:+.1%}), {reached_text}, peak RSS {run['peak_rss_mb']:.0f} MB"
        )
    for row in result.get("halving_oracle", []):
        lines.append(
            f"  replayed {row['rule']:<28} final loss {row['final_loss_ratio']:.3f}x in about "
            f"{row['estimated_time_fraction']:.2f}x the time"
        )
    if "fast_time_fraction_of_paper" in result:
        lines.append(
            f"  fast reaches the paper's loss in {result['fast_time_fraction_of_paper']:.2f}x the paper preset's "
            f"time"
            + (
                f" ({result['fast_time_fraction_of_paper_sequential']:.2f}x of the sequential loop's)"
                if "fast_time_fraction_of_paper_sequential" in result
                else ""
            )
        )
    if "fast_meets_target" in result:
        lines.append(
            f"  fast as it ends: {result['fast_cpu_fraction_of_paper']:.2f}x the paper preset's CPU time "
            f"({result['fast_total_fraction_of_paper']:.2f}x wall), final loss {result['fast_loss_ratio']:.3f}x: "
            f"target (<= 1.05x loss in <= 0.5x time) {'met' if result['fast_meets_target'] else 'not met'}"
        )
    return lines


def halving_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the seeds: how often the fast preset came within 5 % of the paper's final loss, and the
    fraction of the paper preset's time it needed (median over the seeds where it did)."""
    fractions = [r["fast_time_fraction_of_paper"] for r in results if "fast_time_fraction_of_paper" in r]
    ratios = [r["fast_loss_ratio"] for r in results if "fast_loss_ratio" in r]
    return {
        "seeds": [r["seed"] for r in results],
        "reached": len(fractions),
        "time_fractions": fractions,
        "median_time_fraction": statistics.median(fractions) if fractions else None,
        "final_loss_ratios": ratios,
        "cpu_fractions": [r["fast_cpu_fraction_of_paper"] for r in results if "fast_cpu_fraction_of_paper" in r],
        "met_target": sum(bool(r.get("fast_meets_target")) for r in results),
    }


def summary_line(summary: dict[str, Any]) -> str:
    median = summary["median_time_fraction"]
    reached = f"median {median:.2f}x the paper preset's time" if median is not None else "no seed"
    ratios = ", ".join(f"{r:.3f}" for r in summary["final_loss_ratios"])
    return (
        f"halving over seeds {summary['seeds']}: fast came within 5% of the paper's final loss for "
        f"{summary['reached']} of {len(summary['seeds'])} seeds ({reached}); fast/paper final loss {ratios}; "
        f"the fast run as it ends met the target (<= 1.05x loss in <= 0.5x CPU time) for {summary['met_target']} "
        f"of {len(summary['seeds'])}"
    )


def parse_list(text: str, flag: str, cast=str) -> list:  # type: ignore[no-untyped-def, type-arg]
    try:
        values = [cast(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"error: {flag} {text!r} is not a comma-separated list") from None
    if not values:
        raise SystemExit(f"error: {flag} is empty")
    return values


def parse_image(text: str) -> tuple[str, int]:
    """(source, index) of `--halving-image SOURCE:INDEX`; the evaluation set is refused."""
    source, _, index = text.rpartition(":")
    if not source or not index.isdigit():
        raise SystemExit(f"error: --halving-image {text!r}: give SOURCE:INDEX, e.g. builtin:imagenet:0")
    if source == "builtin:photos":
        raise SystemExit(
            "error: --halving-image: builtin:photos is the evaluation set of the methods benchmark and the fast "
            "preset's rules are judged here: take a calibration image (builtin:cifar10, builtin:imagenet)"
        )
    return source, int(index)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="32 px, R=4, 1 step per stage, short halving run"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=None, help="GIFD steps per stage (default 2, quick 1)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per mode, order alternating (default 2)"
    )
    parser.add_argument(
        "--min-seconds", type=float, default=None, help="shortest timed run (default 8, quick 4)"
    )
    parser.add_argument("--victims", default="lenet,convnet,resnet18")
    parser.add_argument("--sides", default=None, help="victim resolutions (default 32,64; quick 32)")
    parser.add_argument("--restarts", default=None, help="restart counts (default 4,8; quick 4)")
    parser.add_argument(
        "--halving-steps", type=int, default=None, help="steps per stage (default 100, quick 6)"
    )
    parser.add_argument("--halving-victim", default="convnet-32", help="victim-side of the halving run")
    parser.add_argument(
        "--halving-image",
        default="{}:{}".format(*DEFAULT_IMAGE),
        help="SOURCE:INDEX, the private image of the halving runs (default {}:{})".format(*DEFAULT_IMAGE),
    )
    parser.add_argument(
        "--halving-seeds", default=None, help="seeds of the halving runs (default 0,1,2; quick 0)"
    )
    parser.add_argument(
        "--halving-runs",
        default="paper,paper-sequential,fast",
        help="which runs part 2 makes per seed (paper is needed for every comparison)",
    )
    parser.add_argument(
        "--halving-reference",
        help="take the paper runs from this earlier result of the same setting (with --halving-runs not naming paper)",
    )
    parser.add_argument("--no-halving", action="store_true", help="skip part 2")
    parser.add_argument("--halving-only", action="store_true", help="skip part 1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench/results/throughput.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    args.steps = args.steps or (1 if args.quick else 2)
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.halving_steps = args.halving_steps or (6 if args.quick else 100)
    args.min_seconds = args.min_seconds or (4.0 if args.quick else 8.0)
    args.victims = parse_list(args.victims, "--victims")
    args.sides = parse_list(args.sides or ("32" if args.quick else "32,64"), "--sides", int)
    args.restarts = parse_list(args.restarts or ("4" if args.quick else "4,8"), "--restarts", int)
    args.halving_seeds = parse_list(
        args.halving_seeds or ("0" if args.quick else "0,1,2"), "--halving-seeds", int
    )
    args.halving_runs = parse_list(args.halving_runs, "--halving-runs")
    args.halving_image = parse_image(args.halving_image)
    unknown = sorted(set(args.halving_runs) - set(HALVING_RUNS))
    if unknown:
        raise SystemExit(f"error: --halving-runs {', '.join(unknown)} unknown: choose from {', '.join(HALVING_RUNS)}")
    for flag, value in (
        ("--steps", args.steps),
        ("--repeats", args.repeats),
        ("--halving-steps", args.halving_steps),
    ):
        if value < 1:
            raise SystemExit(f"error: {flag} must be at least 1, got {value}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"error: --threads must be at least 1, got {args.threads}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)))
        return 0
    import torch

    from common import Provenance, write_json

    provenance = Provenance()
    cases, lines = [], []
    for victim in [] if args.halving_only else args.victims:
        for side in args.sides:
            for restarts in args.restarts:
                print(f"measuring {victim}-{side}px R={restarts} ...", file=sys.stderr, flush=True)
                case = measure_case(victim, side, restarts, args)
                cases.append(case)
                lines.append(case_line(case))
                print(lines[-1], flush=True)
    halving: dict[str, Any] | None = None
    if not args.no_halving:
        runs = []
        for seed in args.halving_seeds:
            print(f"measuring halving on {args.halving_victim}, seed {seed} ...", file=sys.stderr, flush=True)
            runs.append(measure_halving(args, seed))
            for line in halving_lines(runs[-1]):
                lines.append(line)
                print(line, flush=True)
        halving = {"summary": halving_summary(runs), "runs": runs}
        lines.append(summary_line(halving["summary"]))
        print(lines[-1], flush=True)
    payload = {
        "benchmark": "throughput",
        **provenance.fields(args.threads or torch.get_num_threads()),
        "settings": {
            "prior": PRIOR,
            "image": "{}[{}], batch 1".format(*DEFAULT_IMAGE),
            "halving_image": f"{args.halving_image[0]}[{args.halving_image[1]}], batch 1",
            "steps_per_stage": args.steps,
            "repeats": args.repeats,
            "halving_steps_per_stage": args.halving_steps,
            "min_seconds": args.min_seconds,
            "device": args.device,
        },
        "lines": lines,
        "cases": cases,
        "halving": halving,
    }
    write_json(Path(args.out), payload)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
