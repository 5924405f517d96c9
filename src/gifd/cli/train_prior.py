"""`gifd train-prior`: train the project's DCGAN prior on a folder of images or a built-in set."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from gifd import catalog
from gifd.cli import command_help
from gifd.errors import GifdError

#: train-prior options that define the run (argparse default None = "not given", so a resumed run
#: can tell an explicit value, which must match the checkpoint, from an omitted one).
_TRAINING_OPTIONS = (
    "data", "resolution", "nz", "ngf", "ndf", "batch_size", "lr", "beta1", "beta2", "loss", "augment", "seed",
)  # fmt: skip
_RUN_OPTIONS = ("iterations", "checkpoint_every", "sample_every", "device")


def run_train_prior(args: argparse.Namespace) -> None:
    """Train (or resume) a DCGAN prior and say how to use the result."""
    from gifd.priors.training import TrainPriorConfig, load_checkpoint_config, train_prior

    given: dict[str, Any] = {
        name: getattr(args, name)
        for name in (*_TRAINING_OPTIONS, *_RUN_OPTIONS)
        if getattr(args, name) is not None
    }
    if args.resume:
        config = dataclasses.replace(load_checkpoint_config(args.out), **given)
    else:
        if "data" not in given:
            raise GifdError("--data is required: a folder of images, image files, or builtin:NAME")
        config = TrainPriorConfig(out=Path(args.out), **given)
    result = train_prior(config, resume=args.resume, progress=not args.quiet)
    print(f"trained {result.iteration} iterations (D loss {result.d_loss:.3f}, G loss {result.g_loss:.3f})")
    print(f"checkpoint: {result.checkpoint_path}  (continue with --resume --out {config.out})")
    print(f"samples:    {Path(config.out) / 'samples'}")
    print(f"generator:  {result.generator_path}")
    print(f"use it with: --prior dcgan --prior-weights {result.generator_path}")




def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train-prior` to the gifd command line (its help shows TrainPriorConfig's defaults, read
    from gifd.catalog so that help does not import torch)."""
    train = subparsers.add_parser(
        "train-prior",
        help=command_help("train-prior"),
        description=(
            "Train a DCGAN with DiffAugment. Writes OUT/checkpoint.pt (periodically; --resume continues "
            "it exactly), sample grids in OUT/samples/ and OUT/generator.pt, usable as "
            "--prior dcgan --prior-weights OUT/generator.pt."
        ),
    )
    defaults = catalog.TRAIN_PRIOR_DEFAULTS
    train.add_argument("--data", help="folder of images, comma-separated image files, or builtin:NAME")
    train.add_argument("--out", required=True, help="output directory (checkpoint, samples, generator)")
    train.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    train.add_argument("--iterations", type=int, help=f"total iterations (default {defaults['iterations']})")
    train.add_argument("--batch-size", type=int, help=f"images per batch (default {defaults['batch_size']})")
    train.add_argument(
        "--resolution", type=int, choices=(32, 64), help=f"image side (default {defaults['resolution']})"
    )
    train.add_argument("--nz", type=int, help=f"latent size (default {defaults['nz']})")
    train.add_argument("--ngf", type=int, help=f"generator width (default {defaults['ngf']})")
    train.add_argument("--ndf", type=int, help=f"discriminator width (default {defaults['ndf']})")
    train.add_argument("--lr", type=float, help=f"Adam learning rate (default {defaults['lr']})")
    train.add_argument("--beta1", type=float, help=f"Adam beta1 (default {defaults['beta1']})")
    train.add_argument("--beta2", type=float, help=f"Adam beta2 (default {defaults['beta2']})")
    train.add_argument(
        "--loss", choices=catalog.TRAIN_PRIOR_LOSSES, help=f"GAN loss (default {defaults['loss']})"
    )
    train.add_argument(
        "--augment",
        help=f"DiffAugment policy, comma-separated subset of color,translation,cutout, '' for none "
        f"(default {defaults['augment']})",
    )
    train.add_argument("--seed", type=int, help=f"random seed (default {defaults['seed']})")
    train.add_argument(
        "--checkpoint-every",
        type=int,
        help=f"iterations between checkpoints (default {defaults['checkpoint_every']})",
    )
    train.add_argument(
        "--sample-every",
        type=int,
        help=f"iterations between sample grids (default {defaults['sample_every']})",
    )
    train.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: CUDA if available)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)
    train.set_defaults(func=run_train_prior)
