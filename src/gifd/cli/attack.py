"""`gifd attack`: attack the update of a private batch with one or more methods."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gifd import catalog
from gifd.cli import command_help

if TYPE_CHECKING:
    from gifd.experiment import ExperimentConfig


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "attack",
        help=command_help("attack"),
        description="Compute a client's update of a private batch, attack it, write results.json and PNGs.",
    )
    add_experiment_arguments(parser)
    parser.add_argument("--out", default="runs/attack", help="output directory (default: runs/attack)")
    parser.add_argument(
        "--save-update",
        action="store_true",
        help="also save the client's update as OUT/update.pt (attack it again later with --update)",
    )
    parser.add_argument(
        "--checkpoint",
        help="save the finished batches to this file after every batch, and resume from it when a run of "
        "the same settings was cut; removed once OUT is written",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for every key of ExperimentConfig; None means 'not given' (the file or default wins)."""
    add = parser.add_argument
    add(
        "--config",
        help="YAML file of settings; flags override its keys. Relative paths in it (images, weights, "
        "update) are taken from the working directory, not from the file's folder",
    )
    add(
        "--victim",
        help=f"victim model: {', '.join(catalog.VICTIMS)}, or your own as MODULE:FACTORY, a callable "
        "(num_classes=, resolution=) -> nn.Module importable from the working directory (default convnet)",
    )
    add("--resolution", type=int, help="image side in pixels (default 32)")
    add("--num-classes", type=int, help="victim class count (default: the image source's, else 10)")
    add("--victim-weights", help="state-dict file of a trained victim (default: seeded random init)")
    add("--normalization", help=f"victim input normalisation: {', '.join(catalog.NORMALIZATIONS)} (default imagenet)")
    add(
        "--images",
        help=f"builtin:NAME ({', '.join(catalog.IMAGE_SOURCES)}), a folder, or comma-separated files "
        "(default builtin:cifar10)",
    )
    add(
        "--indices",
        type=_ints,
        help="which images of the source, e.g. 0,1,2,3 (default: the first --batch-size images)",
    )
    add("--batch-size", type=int, help="images per client update (default 1)")
    add("--labels", type=_ints, help="private labels, one per image (default: the source's own)")
    add("--attack", dest="attacks", type=_names, help=f"comma-separated: {', '.join(catalog.ATTACKS)}")
    add(
        "--prior",
        help="generative prior of the GAN-based attacks (see `gifd priors`; default digiface-dcgan64)",
    )
    add("--prior-weights", help="weights of the prior (a path; needed for biggan-*, stylegan2, dcgan)")
    add(
        "--steps",
        type=int,
        help="total step budget per restart of every attack; gifd, gifd-noball and latent split it over "
        "their stages (equal total compute; the latent stage of gifd and gifd-noball gets latent_fraction, 1/9)",
    )
    add(
        "--stage-steps",
        type=int,
        help="steps of every stage of gifd, gifd-noball and latent, as in the paper (1000); replaces --steps "
        "for them (--steps still sets the other attacks' budget)",
    )
    add("--restarts", type=int, help="restarts per attack")
    add(
        "--preset",
        choices=["paper", "fast"],
        help="settings of the GAN-based attacks: paper (full budget for every restart, the default) or "
        "fast (gifd, latent and gifd-noball prune the worse half of the restarts at a rung and after every stage; "
        "gias stops early on a plateau)",
    )
    add(
        "--defense",
        help="client defense: noise:STD, clip:BOUND, prune:RATIO, soteria:FRACTION, dpsgd:CLIP,SIGMA, joined with +",
    )
    add(
        "--defense-knowledge",
        help="attacker's knowledge of the defense: adaptive (default), estimated (from the update), oblivious",
    )
    add("--local-steps", type=int, help="multi-step FedAvg: local SGD steps (default: one FedSGD gradient)")
    add("--local-lr", type=float, help="FedAvg local learning rate (default 1e-4)")
    add("--local-batch-size", type=int, help="FedAvg local mini-batch size (default: the whole batch)")
    add("--label-inference", help=f"label inference rule: {', '.join(catalog.LABEL_RULES)} (default unique)")
    add(
        "--update",
        help="attack this saved update (e.g. a Flower audit's update.pt) instead of computing one; its "
        "metadata gives victim, resolution and normalisation; --images then only scores",
    )
    add(
        "--disclose-labels",
        action="store_const",
        const=True,
        help="threat model: the client sends its labels",
    )
    add("--seed", type=int, help="seed of everything random (default 0)")
    add("--threads", type=int, help="torch CPU threads for the run (default: torch's own choice)")
    add("--device", help="cpu, cuda, cuda:N or auto (default auto: CUDA if available)")


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The config file's keys, overridden by every flag that was given."""
    from gifd.config import read_yaml
    from gifd.experiment import ExperimentConfig, experiment_config

    values: dict[str, Any] = read_yaml(args.config) if args.config else {}
    source = args.config or "command line"
    for key in ExperimentConfig.model_fields:
        given = getattr(args, key, None)
        if given is not None:
            values[key] = given
    return experiment_config(values, source)


def run(args: argparse.Namespace) -> None:
    from gifd.defenses import parse_defense_sweep
    from gifd.errors import GifdError
    from gifd.experiment import run_experiment
    from gifd.report import write_report
    from gifd.sweep import format_aggregate_table, run_sweep, sweep_from_dict

    config = config_from_args(args)
    settings = [d.spec() for d in parse_defense_sweep(config.defense)] if config.defense else []
    if len(settings) > 1:
        if args.save_update or args.checkpoint:
            raise GifdError(
                "--save-update and --checkpoint serve one run, not a --defense sweep (a cut sweep resumes by "
                "itself): drop them"
            )
        # `--defense prune:0.1,0.3,0.5`: one run per setting, as a sweep over the defense axis, with
        # plots of reconstruction quality and the update's utility cost against the strength.
        base = config.model_dump(mode="json", exclude={"defense"}, exclude_defaults=True)
        sweep = sweep_from_dict({"base": base, "grid": {"defense": settings}}, source="--defense")
        aggregate = run_sweep(sweep, args.out, progress=not args.quiet)
        print(format_aggregate_table(aggregate))
        print(f"one results.json per setting under {args.out}/jobs; aggregate and plots in {args.out}")
        return
    results = run_experiment(
        config, args.out, progress=not args.quiet, save_update=args.save_update, checkpoint=args.checkpoint
    )
    if args.checkpoint:
        Path(args.checkpoint).unlink()  # the run's own checkpoint: its batches are in OUT now
    report = write_report(args.out)
    print(format_table(results))
    print(f"results written to {args.out}/results.json; report: {report}")


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of each attack's mean metrics."""
    columns = ["psnr", "ssim", "lpips_st", "mse", "seconds"]
    rows = [["attack", *columns]]
    for name, summary in results["attacks"].items():
        rows.append([name] + [_fmt(summary.get(c)) for c in columns])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    if "true_labels" in results:
        lines.append(
            f"label accuracy {results['label_accuracy']:.2f} (inferred {results['inferred_labels']}, true {results['true_labels']})"
        )
    else:
        lines.append(
            f"inferred labels {results['inferred_labels']} (no private images given: nothing scored)"
        )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
