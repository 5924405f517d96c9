"""`gifd priors`: list the generative priors and whether their weights are here."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from gifd.cli import command_help
from gifd.errors import GifdError

if TYPE_CHECKING:
    from gifd.priors import PriorEntry


def weights_status(entry: PriorEntry) -> tuple[str, Path | None]:
    """(status in words, default weights path or None) of a registered prior."""
    try:
        default = entry.default_weights()
    except GifdError as exc:
        return f"missing ({exc})", None
    if default is None:
        return "needs --prior-weights PATH", None
    if Path(default).exists():
        return "present", Path(default)
    return "missing (expected file not found)", Path(default)


def run_priors(args: argparse.Namespace) -> None:
    """Print every registered prior: name, weights status, description, weights source."""
    from gifd.priors import PRIORS

    if not PRIORS:
        print("no priors are registered")
        return
    width = max(len(name) for name in PRIORS)
    for name in sorted(PRIORS):
        entry = PRIORS[name]
        status, path = weights_status(entry)
        print(f"{name:<{width}}  [{status}]")
        print(f"{'':<{width}}  {entry.description}")
        print(f"{'':<{width}}  weights: {entry.weights_source}")
        if path is not None:
            print(f"{'':<{width}}  file: {path}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `priors` to the gifd command line."""
    listing = subparsers.add_parser(
        "priors",
        help=command_help("priors"),
        description=(
            "List every registered generative prior, where its weights come from and whether they are here."
        ),
    )
    listing.set_defaults(func=run_priors)
