"""The `gifd` command line: a thin layer over the library's public functions.

Each command lives in a module of gifd.cli with `register(subparsers)`, which adds its parser(s)
and sets `func` to the function that runs it. Only the module of the command being run is
imported (`gifd --help` imports none), and command modules import torch only inside the
functions that run, so help and bad-input errors come fast. A GifdError becomes one line on
stderr and exit code 2; Ctrl-C, at any point, one line and exit code 130.
The CLI owns its process, so it opts into the process-wide allocator tuning of
`gifd.runtime.reuse_large_allocations` (the library itself never applies it).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gifd import __version__
from gifd.errors import GifdError
from gifd.runtime import reuse_large_allocations

#: Every command, in the order `gifd --help` lists them: name -> (module of gifd.cli that
#: registers it, the one-line help it has in `gifd --help`).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the built-in default attack and write an HTML report"),
    "attack": ("attack", "reconstruct a private batch from its update and score the reconstruction"),
    "report": ("report", "rebuild the HTML report of a run directory"),
    "priors": ("priors", "list the generative priors and whether their weights are available"),
    "train-prior": ("train_prior", "train a DCGAN prior (DiffAugment) on a folder of images or a built-in set"),
    "calibrate": ("calibrate", "choose GIFD's l1-ball radii (and a DCGAN's stage cut) on public calibration images"),
    "sweep": ("sweep", "run every combination of a sweep file's settings (resumable; local processes or Ray)"),
    "reproduce": ("reproduce", "run the paper's experiments for a setting and write one HTML report (resumable)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; `command`'s module registers its full parser(s), the other commands get a
    stub that only shows their help line (None: stubs for all, enough for `gifd --help`)."""
    parser = argparse.ArgumentParser(
        prog="gifd",
        description="Measure how much private data leaks from federated-learning updates (gradient inversion).",
    )
    parser.add_argument("--version", action="version", version=f"gifd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = COMMANDS[command][0] if command in COMMANDS else None
    registered = False
    for name, (module, text) in COMMANDS.items():
        if module != chosen:
            sub.add_parser(name, help=text)
        elif not registered:
            importlib.import_module(f"gifd.cli.{module}").register(sub)
            registered = True
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(argv)
        reuse_large_allocations()  # the CLI's process is its own: reuse freed large blocks (gifd.runtime)
        args.func(args)
    except GifdError as exc:
        print(f"gifd {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gifd {command or ''}: interrupted".replace("  ", " "), file=sys.stderr)
        return 130
    return 0


def command_help(name: str) -> str:
    """The one-line help of command `name` (for its module's parser)."""
    return COMMANDS[name][1]


if __name__ == "__main__":
    sys.exit(main())
