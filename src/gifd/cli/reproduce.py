"""`gifd reproduce [SETTING.yaml]`: the paper's experiments for a setting, one HTML report plus JSON."""

from __future__ import annotations

import argparse

from gifd.cli import command_help


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "reproduce",
        help=command_help("reproduce"),
        description=(
            "Run the paper's tables for a setting (methods near the prior and out of distribution, the search-space "
            "ablation, batch sizes, defenses, label inference) and write OUT/report.html and OUT/reproduce.json. "
            "Runs finished by an earlier call with the same OUT are reused. Without a setting file: the built-in "
            "setting (face DCGAN prior, untrained ConvNet at 64 px, short budgets for 2 CPU cores); "
            "configs/reproduce-biggan.yaml and configs/reproduce-stylegan2.yaml hold the paper's budgets."
        ),
    )
    parser.add_argument(
        "config", nargs="?", metavar="SETTING.yaml", help="setting file (default: the built-in one)"
    )
    parser.add_argument("--out", default="runs/reproduce", help="output directory (default: runs/reproduce)")
    parser.add_argument(
        "--plan", action="store_true", help="list the attack runs of every table and their steps, run nothing"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from gifd.reproduce import load_reproduce_config, plan, run_reproduce

    config = load_reproduce_config(args.config)
    if args.plan:
        cells = plan(config)
        for table, table_cells in cells.cells.items():
            print(f"{table}: {len(table_cells)} runs")
            for cell in table_cells:
                settings = cell.config.settings_for(cell.attack)
                budget = settings.get("stage_steps") or settings.get("steps") or "default"
                print(f"  {cell.id}  {', '.join(f'{k} {v}' for k, v in cell.key.items())}  (steps {budget})")
        print(f"{len(cells.unique())} distinct attack runs (shared ones run once)")
        return
    document = run_reproduce(config, args.out)
    for claim in document["claims"].values():
        print(claim["text"])
    print(f"report: {args.out}/report.html; numbers: {args.out}/reproduce.json")
