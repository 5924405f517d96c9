"""`gifd calibrate`: choose GIFD's l1-ball radii (and a DCGAN's stage cut) on public images."""

from __future__ import annotations

import argparse
from typing import Any

from gifd import catalog
from gifd.cli import command_help
from gifd.cli.attack import _ints, _names


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "calibrate",
        help=command_help("calibrate"),
        description="Simulate clients on public calibration images, run GIFD with each candidate radius "
        "schedule (and stage cut), score by mean PSNR, and write the radii file that `gifd attack` takes "
        "as attack_settings gifd radii: FILE.",
    )
    add = parser.add_argument
    add(
        "--prior",
        default="digiface-dcgan64",
        help="generative prior (see `gifd priors`; default digiface-dcgan64)",
    )
    add("--prior-weights", help="weights of the prior (a path; needed for biggan-*, stylegan2, dcgan)")
    add(
        "--victim",
        default="convnet",
        help=f"victim model: {', '.join(catalog.VICTIMS)}, or MODULE:FACTORY (default convnet)",
    )
    add("--victim-weights", help="state-dict file of a trained victim (default: seeded random init)")
    add("--resolution", type=int, default=64, help="image side in pixels (default 64)")
    add("--num-classes", type=int, default=10, help="victim class count (default 10)")
    add(
        "--normalization",
        default="imagenet",
        help=f"victim input normalisation: {', '.join(catalog.NORMALIZATIONS)}",
    )
    add(
        "--images",
        action="append",
        help="a calibration image source (repeat for several): builtin:NAME, a folder or comma-separated files "
        "(default builtin:imagenet and builtin:cifar10; builtin:photos, the evaluation set, is refused)",
    )
    add("--indices", type=_ints, help="which images of each source, e.g. 0,1 (default: the first --count)")
    add("--count", type=int, default=2, help="images per source when --indices is not given (default 2)")
    add(
        "--schedules",
        type=_names,
        help="candidate radius schedules, comma-separated: none, fraction:F (r_i = F x stage i's mean l1 norm), "
        "linear:C (r_i = C x stage 1's mean l1 norm x i) (default: none, three fractions, five linear)",
    )
    add(
        "--cuts",
        type=_names,
        help="DCGAN stage cuts to measure, comma-separated: relu, batchnorm, conv (default: relu,batchnorm "
        "for a DCGAN prior)",
    )
    add("--steps", type=int, help="GIFD's total step budget per restart (use the attack's own)")
    add("--stage-steps", type=_ints, help="steps per GIFD stage, comma-separated (instead of --steps)")
    add("--restarts", type=int, help="GIFD restarts")
    add("--preset", choices=["paper", "fast"], help="GIFD's preset (default paper)")
    add("--label-inference", default="unique", help=f"label inference rule: {', '.join(catalog.LABEL_RULES)}")
    add(
        "--prune",
        action="store_true",
        help="after each image but the last keep only the better half of the candidates (faster; the table "
        "then has partial rows)",
    )
    add("--seed", type=int, default=0, help="seed of the victim's init and of every GIFD start (default 0)")
    add("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    add("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    add("--out", default="radii.json", help="the radii file to write (default radii.json)")
    add("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Any:
    """The CalibrationSettings of the flags."""
    from gifd.calibration import calibration_settings
    from gifd.priors import PRIORS

    gifd = {
        key: value
        for key, value in (
            ("steps", args.steps),
            ("stage_steps", args.stage_steps),
            ("restarts", args.restarts),
            ("preset", args.preset),
        )
        if value is not None
    }
    values: dict[str, Any] = {
        "prior": args.prior,
        "prior_weights": args.prior_weights,
        "victim": args.victim,
        "victim_weights": args.victim_weights,
        "resolution": args.resolution,
        "num_classes": args.num_classes,
        "normalization": args.normalization,
        "indices": args.indices,
        "count": args.count,
        "gifd": gifd,
        "label_inference": args.label_inference,
        "prune": args.prune,
        "seed": args.seed,
        "device": args.device,
        "threads": args.threads,
    }
    if args.images:
        values["images"] = args.images
    if args.schedules:
        values["schedules"] = args.schedules
    if args.cuts:
        values["cuts"] = args.cuts
    elif (
        args.prior in PRIORS
        and PRIORS[args.prior].settings is not None
        and "cut" in PRIORS[args.prior].settings.model_fields
    ):
        values["cuts"] = ["relu", "batchnorm"]
    return calibration_settings(values, "command line")


def run(args: argparse.Namespace) -> None:
    from gifd.calibration import calibrate, format_table, write_radii_file
    from gifd.device import seed_everything

    settings = settings_from_args(args)
    seed_everything(settings.seed)  # the CLI owns its process (cuDNN and other global draws)
    calibration = calibrate(settings, progress=not args.quiet)
    path = write_radii_file(calibration, args.out)
    print(format_table(calibration))
    print(
        f"chosen: cut={calibration['cut']} {calibration['schedule']} ({calibration['mean_psnr']:.2f} dB mean PSNR "
        f"on {len(calibration['images'])} image(s), {calibration['seconds']:.0f} s); radii file: {path}"
    )
