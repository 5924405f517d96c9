"""`gifd report DIR`: rebuild DIR/report.html from DIR/results.json and the PNGs beside it."""

from __future__ import annotations

import argparse

from gifd.cli import command_help


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "report",
        help=command_help("report"),
        description=(
            "Read DIR/results.json and the PNGs of a `gifd attack --out DIR` run and write DIR/report.html: "
            "one self-contained page (images embedded) that opens offline in any browser."
        ),
    )
    parser.add_argument("run_dir", metavar="DIR", help="a directory written by `gifd attack --out DIR`")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from gifd.report import write_report  # matplotlib loads only when a report is built

    path = write_report(args.run_dir)
    print(f"report written to {path}")
