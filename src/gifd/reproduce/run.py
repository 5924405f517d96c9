"""`run_reproduce`: plan, run (resumably) and report every table of a setting."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gifd.errors import GifdError
from gifd.imageio import write_atomically
from gifd.reproduce.config import ReproduceConfig
from gifd.reproduce.tables import ablation_claim, label_table, plan, run_cells, table_rows
from gifd.rundir import REPORT_NAME, check_replaceable, read_marker, write_marker

#: The JSON document of a reproduction, beside its report.
RESULTS_NAME = "reproduce.json"


def run_reproduce(
    config: ReproduceConfig, out: str | Path, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the tables of `config` into OUT (cells under OUT/cells/, reused when finished), write
    OUT/reproduce.json and OUT/report.html; return the JSON document.

    Everything is checked first (the output directory, every cell's config, the prior's stages,
    the data's indices), so a bad setting fails before any compute.
    """
    from gifd.reproduce.report import write_reproduce_report

    out = Path(out)
    check_replaceable(out, "reproduce")
    cells = plan(config)
    try:
        (out / "cells").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GifdError(f"cannot create --out {out}: {exc.strerror}: pass another path") from exc
    if read_marker(out) is None:
        write_marker(out, "reproduce", [RESULTS_NAME, REPORT_NAME])
    total = len(cells.unique())
    log(f"reproduce {config.name}: {total} attack runs over tables {', '.join(config.tables)}")
    start = time.perf_counter()
    results, counts = run_cells(cells, out, log=log)
    if counts["reused"]:
        log(f"reused {counts['reused']} finished runs from {out / 'cells'}")
    tables: dict[str, Any] = {}
    for name, table_cells in cells.cells.items():
        rows = table_rows(table_cells, results)
        tables[name] = {
            "rows": rows,
            "budget": _budget(config, name),
            "short_budget": config.short_budget,
            "seconds": round(sum(r["seconds"] or 0 for r in rows), 1),
        }
    if "labels" in config.tables:
        label_start = time.perf_counter()
        tables["labels"] = {
            "rows": label_table(config),
            "budget": (
                f"no attack: {config.label_trials} batches per cell from {config.label_images}; FedAvg "
                f"{config.label_local_steps} local SGD steps at lr {config.label_local_lr}"
            ),
            "short_budget": False,
            "seconds": round(time.perf_counter() - label_start, 1),
        }
    claims = {}
    if "ablation" in tables:
        words = {"near": config.near.describe(), "far": config.far.describe()}
        for data in config.ablation_data:
            claim = ablation_claim(tables["ablation"]["rows"], data, words[data])
            claims[data] = {
                "holds": claim.holds,
                "gifd_gain": claim.gifd_gain,
                "fixed_gain": claim.fixed_gain,
                "best_stage": claim.best_stage,
                "text": claim.text,
            }
    document = {
        "config": config.model_dump(mode="json"),
        "stage_names": cells.stage_names,
        "tables": tables,
        "claims": claims,
        "run": {
            **counts,
            "cells": total,
            "seconds": round(time.perf_counter() - start, 1),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }
    data = json.dumps(document, indent=2).encode()
    write_atomically(out / RESULTS_NAME, lambda handle: handle.write(data))
    write_reproduce_report(out, document)
    return document


def _budget(config: ReproduceConfig, table: str) -> str:
    """Words for the budget of an attack table."""
    if table in ("methods", "ablation"):
        attacks = config.methods if table == "methods" else ["latent", "gifd", "gifd-noball"]
        text = config.describe_budget(None, attacks)
        if table == "ablation":
            text += "; a layer searched alone gets " + (
                f"{config.stage_steps} steps (one stage)"
                if config.stage_steps
                else "GIFD's whole budget in its one stage"
            )
        return text
    if table == "batch":
        return config.describe_budget(config.batch_steps, config.batch_attacks)
    return config.describe_budget(config.defense_steps, config.defense_attacks)
