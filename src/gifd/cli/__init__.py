"""The `gifd` command line: a thin layer over the library's public functions.

Each command lives in its own module with `register(subparsers)`, which adds its parser and sets
`func` to the function that runs it. A GifdError becomes one line on stderr and exit code 2.
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

#: Modules of gifd.cli that define commands, in the order `gifd --help` lists them.
COMMAND_MODULES = ["demo", "attack", "report", "priors", "sweep"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gifd",
        description="Measure how much private data leaks from federated-learning updates (gradient inversion).",
    )
    parser.add_argument("--version", action="version", version=f"gifd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"gifd.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    reuse_large_allocations()  # the CLI's process is its own: reuse freed large blocks (see gifd.runtime)
    try:
        args.func(args)
    except GifdError as exc:
        print(f"gifd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gifd {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
