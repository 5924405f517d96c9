"""The aggregate's rows as a markdown table (readable as plain text too), and its cell format."""

from __future__ import annotations

import json
from typing import Any

#: Metric columns of the aggregate (their names and directions: gifd.metrics.METRIC_INFO).
METRIC_COLUMNS = ("psnr", "ssim", "lpips_st")
#: Columns whose cells are numbers (right-aligned; "-" when missing).
_NUMERIC = (*METRIC_COLUMNS, "label_accuracy", "seconds")


def format_aggregate_table(aggregate: dict[str, Any]) -> str:
    """The aggregate rows as a markdown table with aligned columns (readable as plain text too)."""
    columns = aggregate["columns"]
    table = [columns] + [
        [cell_text(row.get(column), column) for column in columns] for row in aggregate["rows"]
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    numeric = [column in _NUMERIC for column in columns]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    lines = [line(table[0]), rule, *(line(cells) for cells in table[1:])]
    failed = [job for job in aggregate["jobs"] if job["status"] != "done"]
    if failed:
        lines.append("")
        lines.extend(f"failed: {job['id']}: {job['error']}" for job in failed)
    return "\n".join(lines)


def cell_text(value: Any, column: str) -> str:
    """A value as the table (and the plots' legends) show it in `column`."""
    if value is None:
        return "-" if column in _NUMERIC else "none"
    if isinstance(value, list):
        return ",".join(cell_text(v, column) for v in value)
    if isinstance(value, float):
        return f"{value:.2f}" if column in ("psnr", "seconds") else f"{value:.4f}"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)
