"""Side by side: one GIFD step of gifd against the official GIFD code (Fang et al., ICCV 2023).

The paper's setting: BigGAN-deep-256 (random weights written in the published
pytorch-pretrained-biggan format), the CIFAR ResNet-18 victim at 64 px with 1000 classes, batch 1,
one FedSGD gradient of `builtin:imagenet` image 0. The loss on both sides is the global cosine
gradient distance + TV 1e-4 + image norm 1e-6 (each side's own regularisers), on the same victim
weights, the same target gradient and the same initial latent. Cases: stage 0 (the latent search,
the whole generator) and the last stage (the input of the last generator layer), R restarts.

The official side is the official code's own `GradientReconstructor.invert_biggan` (its Adam loop,
`gen_dummy_data`, `_gradient_closure`, `reconstruction_costs`, `SphericalOptimizer`,
`project_onto_l1_ball`) and its BigGAN (`inversefed/genmodels/imagenet_biggan_io/model.py`), with
the settings of its `configs_biggan.yml` except `restarts` (R) and `cost_fn` (`sim`, the plain
cosine distance; the published config's `sim_cmpr0` is the same value with a top-k over all entries
added, `--official-cost sim_cmpr0` measures that). As in its GIFD path, KLD is off and the
generator needs no gradient; its R restarts run one after another. gifd's side is
`GIFD.run_stage` with the paper preset (restarts batched).

Import shim (the official files are not edited): the official modules import packages that the
GIFD step never uses (nevergrad, torchvision, pandas, lpips, boto3 through `inversefed/__init__`,
`metrics.py`, `utils.py`, `file_utils.py`). The benchmark therefore parses the official files and
executes only the definitions the step needs, verbatim, in a namespace that provides their
imports (torch, math, numpy, deepcopy, the official `defense.py`, their BigGANConfig). Two names in
that namespace are the benchmark's: `tqdm` (the official loop's progress bar) is a timer that
notes the clocks at each step boundary, and `print` is silenced. The checkpoint is loaded as
`BigGAN.from_pretrained(directory)` does, with `load_state_dict` (strict here) instead of its
download helpers.

Timing: per step, process CPU time and wall time (and on CUDA the GPU time between
torch.cuda.Event marks, plus the peak allocated memory per run). The official code syncs with the
host at every step (`rec_loss.item()`); gifd's run here logs every step (`log_every: 1`) so that
its step boundaries are visible too. The first `--warmup` steps of every restart's loop (official)
and of the batched loop (gifd) are dropped; that is the same number of restart-steps on both
sides. "per restart-step" = time per step / R for gifd, time per step for the official (one
restart per step). Official and gifd runs alternate (the order flips every repeat) in one process
with one torch thread unless `--threads`.

Usage (from the repository root; DIR: an extracted checkout of
github.com/ffhibnese/GIFD_Gradient_Inversion_Attack, not part of gifd):

    .venv/bin/python bench/official.py --official DIR [--restarts 1,4,8] [--stages 0,last]
        [--steps K] [--warmup W] [--repeats M] [--threads 1] [--device cpu|cuda]
        [--weights DIR] [--official-cost sim|sim_cmpr0] [--profile PATH]
        [--out bench/results/official.json]
"""

from __future__ import annotations

import argparse
import ast
import copy
import itertools
import math
import os
import statistics
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SOURCE = "builtin:imagenet"
LABEL = 243  # builtin:imagenet image 0's class (any class works for speed)
RESOLUTION = 64
NUM_CLASSES = 1000
PRIOR_SIDE = 256

#: Files of the official checkout the benchmark reads, and what it takes from each.
OFFICIAL_PARTS: dict[str, list[str]] = {
    "inversefed/genmodels/imagenet_biggan_io/config.py": ["BigGANConfig"],
    "inversefed/genmodels/imagenet_biggan_io/model.py": [
        "snconv2d",
        "snlinear",
        "sn_embedding",
        "SelfAttn",
        "BigGANBatchNorm",
        "GenBlock",
        "Generator",
        "BigGAN",
    ],
    "inversefed/metrics.py": ["total_variation"],
    "inversefed/utils.py": ["project_onto_l1_ball"],
    "inversefed/reconstruction_algorithms.py": [
        "imsize_dict",
        "DEFAULT_CONFIG",
        "_validate_config",
        "SphericalOptimizer",
        "GradientReconstructor",
        "reconstruction_costs",
    ],
}
OFFICIAL_CONFIG = "configs_biggan.yml"


class OfficialCodeError(Exception):
    """The --official directory is missing or is not the official GIFD checkout."""


# ------------------------------------------------------------------------------------ clocks
class Clock:
    """Marks step boundaries: process CPU time, wall time, and a CUDA event on CUDA. `loops()`
    gives the step times of each loop marked (a loop ends with `end_loop()`)."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.marks: list[list[tuple[float, float, Any]]] = [[]]

    def mark(self) -> None:
        event = None
        if self.cuda:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
        self.marks[-1].append((time.process_time(), time.perf_counter(), event))

    def end_loop(self) -> None:
        self.marks.append([])

    def loops(self) -> list[list[dict[str, float]]]:
        """Per loop, per interval between consecutive marks: cpu_s, wall_s (and gpu_s on CUDA)."""
        if self.cuda:
            self.torch.cuda.synchronize()
        out = []
        for marks in [m for m in self.marks if m]:
            steps = []
            for (c0, w0, e0), (c1, w1, e1) in itertools.pairwise(marks):
                step = {"cpu_s": c1 - c0, "wall_s": w1 - w0}
                if e0 is not None:
                    step["gpu_s"] = e0.elapsed_time(e1) / 1000
                steps.append(step)
            out.append(steps)
        return out


class TimedProgress:
    """Stands in for `tqdm(range(steps))` in the official loop: marks the clock at every step
    boundary (before each step and after the last); `set_description` does nothing."""

    clocks: ClassVar[list[Clock]] = []

    def __init__(self, iterable: Any, *args: Any, **kwargs: Any) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        clock = self.clocks[-1]
        for item in self.iterable:
            clock.mark()
            yield item
        clock.mark()
        clock.end_loop()

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass


# ------------------------------------------------------------------------------------ official code
def _definitions(path: Path, names: list[str]) -> list[Any]:
    """The top-level definitions `names` of `path`, verbatim, compiled at their own line numbers
    (so tracebacks point into the official file), in file order."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    found: dict[str, Any] = {}
    lines = source.splitlines()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            name = node.name
        elif (
            isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        ):
            name = node.targets[0].id
        else:
            continue
        if name in names:
            start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            text = "\n" * (start - 1) + "\n".join(lines[start - 1 : node.end_lineno])
            found[name] = compile(text, str(path), "exec")
    missing = [n for n in names if n not in found]
    if missing:
        raise OfficialCodeError(f"{path} has no {', '.join(missing)}")
    return list(found.values())


def load_official(directory: Path) -> types.SimpleNamespace:
    """The official definitions the GIFD step needs, executed from `directory` (see the module doc)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    if not directory.is_dir():
        raise OfficialCodeError(f"--official {directory} is not a directory")
    for relative in [*OFFICIAL_PARTS, OFFICIAL_CONFIG, "defense.py"]:
        if not (directory / relative).is_file():
            raise OfficialCodeError(f"--official {directory} has no {relative}")
    defense = types.ModuleType("defense")  # the official defense.py imports only numpy and torch
    defense.__file__ = str(directory / "defense.py")
    exec(
        compile((directory / "defense.py").read_text(encoding="utf-8"), defense.__file__, "exec"),
        defense.__dict__,
    )
    namespace: dict[str, Any] = {
        "__name__": "gifd_official",
        "torch": torch,
        "nn": nn,
        "F": F,
        "np": np,
        "math": math,
        "time": time,
        "copy": copy,
        "deepcopy": copy.deepcopy,
        "json": __import__("json"),
        "os": os,
        "logging": __import__("logging"),
        "random": __import__("random"),
        "defense": defense,
        "tqdm": TimedProgress,
        "print": lambda *args, **kwargs: None,
    }
    namespace["logger"] = namespace["logging"].getLogger("gifd_official")
    for relative, names in OFFICIAL_PARTS.items():
        for code in _definitions(directory / relative, names):
            exec(code, namespace)
        if relative.endswith("metrics.py"):
            namespace["TV"] = namespace["total_variation"]
    import yaml

    config = yaml.safe_load((directory / OFFICIAL_CONFIG).read_text(encoding="utf-8"))
    return types.SimpleNamespace(namespace=namespace, config=config, directory=directory)


# ------------------------------------------------------------------------------------ setup
def random_biggan_checkpoint(directory: Path) -> Path:
    """BigGAN-deep-256 with random weights in the published format (tests' writer), cached in `directory`."""
    if (directory / "config.json").is_file() and (directory / "pytorch_model.bin").is_file():
        return directory
    sys.path.insert(0, str(ROOT / "tests"))
    from test_prior_biggan import package_config, random_checkpoint, write_checkpoint

    cfg = package_config(PRIOR_SIDE)
    print(f"writing random BigGAN-deep-{PRIOR_SIDE} weights to {directory} ...", file=sys.stderr, flush=True)
    return write_checkpoint(directory, cfg, random_checkpoint(cfg, seed=0))


class Setting:
    """Victim, target, gifd's prior and the official BigGAN on the same weights."""

    def __init__(self, args: argparse.Namespace, official: types.SimpleNamespace) -> None:
        import torch

        from gifd.attacks import Target
        from gifd.client import compute_update
        from gifd.data import load_images
        from gifd.device import resolve_device
        from gifd.priors import create_prior
        from gifd.victims import create_victim

        self.torch = torch
        self.device = resolve_device(args.device)
        weights = random_biggan_checkpoint(Path(args.weights))
        self.prior = create_prior(f"biggan-deep-{PRIOR_SIDE}", weights, self.device)  # as the CLI loads it
        self.victim = create_victim(
            "resnet18", resolution=RESOLUTION, num_classes=NUM_CLASSES, seed=0, device=self.device
        )
        images = load_images(IMAGE_SOURCE, RESOLUTION, indices=[0]).images.to(self.device)
        self.labels = torch.tensor([LABEL], device=self.device)
        self.target = Target(self.victim, compute_update(self.victim, images, self.labels), self.labels)
        ns = official.namespace
        config = ns["BigGANConfig"].from_json_file(str(weights / "config.json"))
        model = ns["BigGAN"](config)
        model.load_state_dict(torch.load(weights / "pytorch_model.bin", map_location="cpu"), strict=True)
        # As the official porting.load_decoder_biggan_io: the generator needs no gradient, eval mode.
        self.official_g = model.requires_grad_(False).eval().to(self.device)
        self.official = official
        self.official_cost = args.official_cost
        self.num_stages = self.prior.num_stages

    def latents(self, restarts: int, seed: int) -> Any:
        return self.prior.init_latent(restarts, None, self.torch.Generator().manual_seed(seed))["z"]

    def gifd_start(self, stage: int, z: Any, context: Any) -> dict[str, Any]:
        variables = {"z": z}
        with self.torch.no_grad():
            for s in range(stage):
                variables = self.prior.advance(s, variables, context)
        return variables

    def official_machine(self, restarts: int) -> Any:
        torch = self.torch
        # As rec_mult.py builds its config_m: the yml's keys that GradientReconstructor knows, except
        # `project` (rec_mult.py does not pass it, so the sphere step on z is off: DEFAULT_CONFIG).
        known = self.official.namespace["DEFAULT_CONFIG"]
        cfg = {k: v for k, v in self.official.config.items() if k in known and k != "project"}
        cfg.update(restarts=restarts, cost_fn=self.official_cost, KLD=-1, defense_method=None, optim="adam")
        mean = torch.tensor(self.victim.mean, device=self.device)[:, None, None]
        std = torch.tensor(self.victim.std, device=self.device)[:, None, None]
        machine = self.official.namespace["GradientReconstructor"](
            self.victim.model, self.device, (mean, std), cfg, num_images=1, G=self.official_g
        )
        machine.image_size = RESOLUTION
        machine.input_data = [[t.detach() for t in self.target.update.ordered(self.victim)]]
        return machine

    def official_start(self, machine: Any, stage: int, z: Any) -> list[Any]:
        """Set the official machine's state for `stage` (as its previous stages would leave it)."""
        torch = self.torch
        restarts = z.shape[0]
        machine.init_var(self.labels)
        dummy_z = [z[r : r + 1].detach().clone().requires_grad_(True) for r in range(restarts)]
        if stage > 0:
            g = machine.G_io
            g.start_layer, g.end_layer = 0, stage
            with torch.no_grad():
                for r in range(restarts):
                    h, cond = g(dummy_z[r], machine.ys[r].float(), 1)
                    machine.gen_outs[r] = [None, h]
                    machine.ys[r] = cond
            g.end_layer = machine.config["end_layer"]
        return dummy_z

    def check_same_images(self) -> dict[str, float]:
        """Max |difference| of the victim inputs both sides generate from the same latent, at
        stage 0 and the last stage (the two sides compute the same function)."""
        torch = self.torch
        from gifd.attacks.gifd import GIFD

        attack = GIFD({"restarts": 1}, prior=self.prior, progress=False)
        z = self.latents(1, seed=123)
        context = attack.prior_context(self.target, 1)
        machine = self.official_machine(1)
        out = {}
        for stage in (0, self.num_stages - 1):
            dummy_z = self.official_start(machine, stage, z)
            machine.G_io.start_layer = stage
            with torch.no_grad():
                theirs = machine.gen_dummy_data(
                    machine.G_io, "BigGAN", dummy_z[0], gen_outs=machine.gen_outs[0], ys=machine.ys[0],
                    start_layer=stage,
                )  # fmt: skip
                variables = self.gifd_start(stage, z, context)
                ours = attack.victim_inputs(self.prior(stage, variables, context), self.target)
            out[f"stage_{stage}"] = float((theirs - ours).abs().max())
        return out


# ------------------------------------------------------------------------------------ runs
def run_official(setting: Setting, stage: int, restarts: int, steps: int, seed: int) -> list[list[dict]]:
    """The official stage loop, R restarts one after another; per restart, its step times."""
    machine = setting.official_machine(restarts)
    dummy_z = setting.official_start(machine, stage, setting.latents(restarts, seed))
    clock = Clock(setting.device)
    TimedProgress.clocks.append(clock)
    try:
        machine.invert_biggan(dummy_z, setting.labels, stage, steps, stage, RESOLUTION)
    finally:
        TimedProgress.clocks.pop()
    return clock.loops()


def run_gifd(
    setting: Setting, stage: int, restarts: int, steps: int, seed: int, batched: bool = True
) -> list[dict]:
    """gifd's stage (`GIFD.run_stage`, paper preset), R restarts batched; its step times."""
    from gifd.attacks.base import GradientMatcher, LossLog
    from gifd.attacks.gifd import GIFD

    attack = GIFD(
        {"restarts": restarts, "log_every": 1, "batched": batched}, prior=setting.prior, progress=False
    )
    context = attack.prior_context(setting.target, restarts)
    start = setting.gifd_start(stage, setting.latents(restarts, seed), context)
    matcher = GradientMatcher(setting.target, attack.config.distance)
    clock = Clock(setting.device)
    clock.mark()
    attack.run_stage(
        stage,
        steps,
        start,
        context,
        setting.target,
        matcher,
        radius=attack.radii()[stage],
        log=LossLog(restarts),
        offset=0,
        advance=lambda *_: clock.mark(),
    )
    return clock.loops()[0]


def per_restart_step(loops: list[list[dict]], warmup: int, restarts_per_step: int) -> dict[str, float]:
    """Mean time per restart-step over the steps after the first `warmup` of every loop."""
    kept = [step for loop in loops for step in loop[warmup:]]
    if not kept:
        raise ValueError("no steps left after the warm-up: raise --steps")
    out = {"steps": len(kept)}
    for key in kept[0]:
        out[key] = statistics.fmean(s[key] for s in kept) / restarts_per_step
    return out


def measure_case(setting: Setting, stage: int, restarts: int, args: argparse.Namespace) -> dict[str, Any]:
    torch = setting.torch
    steps = args.warmup + args.steps
    runs: dict[str, list[dict[str, Any]]] = {"official": [], "gifd": []}
    for repeat in range(args.repeats):
        order = ["official", "gifd"] if repeat % 2 == 0 else ["gifd", "official"]
        for side in order:
            if setting.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(setting.device)
            if side == "official":
                loops = run_official(setting, stage, restarts, steps, seed=repeat)
                timing = per_restart_step(loops, args.warmup, 1)
            else:
                loops = [run_gifd(setting, stage, restarts, steps, seed=repeat)]
                timing = per_restart_step(loops, args.warmup, restarts)
            if setting.device.type == "cuda":
                timing["peak_mb"] = torch.cuda.max_memory_allocated(setting.device) / 2**20
            runs[side].append(timing)
            print(f"  stage {stage} R={restarts} {side:8s} repeat {repeat}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in timing.items()), file=sys.stderr, flush=True)  # fmt: skip
    case: dict[str, Any] = {"stage": stage, "restarts": restarts, "runs": runs}
    for key in [k for k in runs["gifd"][0] if k.endswith("_s")]:
        official = statistics.median(r[key] for r in runs["official"])
        ours = statistics.median(r[key] for r in runs["gifd"])
        case[key] = {"official": official, "gifd": ours, "speedup": official / ours}
    if setting.device.type == "cuda":
        case["peak_mb"] = {side: max(r["peak_mb"] for r in runs[side]) for side in runs}
    return case


def case_line(case: dict[str, Any]) -> str:
    parts = [f"stage {case['stage']:2d} R={case['restarts']}:"]
    for key in ("cpu_s", "wall_s", "gpu_s"):
        if key in case:
            c = case[key]
            parts.append(
                f"{key[:-2]} {c['official']:.3f} -> {c['gifd']:.3f} s/restart-step ({c['speedup']:.2f}x)"
            )
    if "peak_mb" in case:
        parts.append(f"peak {case['peak_mb']['official']:.0f} / {case['peak_mb']['gifd']:.0f} MB")
    return "  ".join(parts)


def profile_gifd(setting: Setting, stages: list[int], steps: int, path: Path) -> dict[str, str]:
    """torch.profiler over gifd's stage loop at R = 1 (after a one-step run as warm-up), per stage:
    the table by self CPU time, also written to `path`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setting.device.type == "cuda" else [])
    tables = {}
    for stage in stages:
        run_gifd(setting, stage, 1, 1, seed=0)
        with profile(activities=activities) as prof:
            run_gifd(setting, stage, 1, steps, seed=0)
        tables[f"stage_{stage}"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            f"gifd, stage {k[6:]}, R = 1, {steps} steps + the scoring pass\n{t}\n\n"
            for k, t in tables.items()
        ),
        encoding="utf-8",
    )
    return tables


# ------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--official", type=Path, required=True, help="extracted checkout of the official GIFD code"
    )
    p.add_argument("--restarts", default="1,4,8", help="comma-separated R values (default 1,4,8)")
    p.add_argument("--stages", default="0,last", help="comma-separated stages; 'last' = the last stage")
    p.add_argument("--steps", type=int, default=3, help="measured steps per loop after the warm-up")
    p.add_argument("--warmup", type=int, default=1, help="steps dropped at the start of every loop")
    p.add_argument("--repeats", type=int, default=2, help="official/gifd pairs per case (order alternates)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--weights",
        default="/tmp/gifd-bench-biggan-deep-256-random",
        help="where the random BigGAN-deep-256 checkpoint is written (reused when present)",
    )
    p.add_argument("--official-cost", choices=["sim", "sim_cmpr0"], default="sim")
    p.add_argument(
        "--profile", type=Path, help="also profile gifd's stages at R = 1 and write the tables here"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/official.json")
    args = p.parse_args(argv)
    for flag in ("steps", "warmup", "repeats", "threads"):
        if getattr(args, flag) < (0 if flag == "warmup" else 1):
            p.error(
                f"--{flag} {getattr(args, flag)} is invalid: pass a number >= {0 if flag == 'warmup' else 1}"
            )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        official = load_official(args.official.expanduser())
    except (OfficialCodeError, OSError, SyntaxError) as exc:
        print(f"error: {exc}: pass the directory of an extracted checkout of "
              "github.com/ffhibnese/GIFD_Gradient_Inversion_Attack with --official", file=sys.stderr)  # fmt: skip
        return 2
    sys.path.insert(0, str(ROOT / "bench"))
    import torch

    from common import Provenance, write_json
    from gifd.runtime import reuse_large_allocations

    reuse_large_allocations()  # as the gifd CLI does
    torch.set_num_threads(args.threads)
    provenance = Provenance()
    setting = Setting(args, official)
    last = setting.num_stages - 1
    stages = [last if s == "last" else int(s) for s in args.stages.split(",")]
    restarts = [int(r) for r in args.restarts.split(",")]
    same = setting.check_same_images()
    print(f"same images from the same latent (max |diff| of the victim inputs): {same}", file=sys.stderr)
    cases, lines = [], []
    for stage in stages:
        for r in restarts:
            cases.append(measure_case(setting, stage, r, args))
            lines.append(case_line(cases[-1]))
            print(lines[-1], flush=True)
    profile_table = None
    if args.profile:
        profile_table = profile_gifd(setting, stages, args.steps, args.profile)
    payload = {
        "benchmark": "official",
        **provenance.fields(torch.get_num_threads()),
        "settings": {
            "prior": f"biggan-deep-{PRIOR_SIDE}, random weights (tests/test_prior_biggan.py random_checkpoint, seed 0)",
            "victim": f"resnet18, {RESOLUTION} px, {NUM_CLASSES} classes, seed 0",
            "image": f"{IMAGE_SOURCE}[0], label {LABEL}, batch 1",
            "official_cost": args.official_cost,
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "device": str(setting.device),
            "seed": "latents of repeat k drawn from torch.Generator().manual_seed(k)",
        },
        "same_images_max_abs_diff": same,
        "lines": lines,
        "cases": cases,
        "profile": profile_table,
    }
    write_json(args.out, payload)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
