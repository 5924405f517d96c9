"""The HTML report of a run directory: one self-contained file a person opens in a browser.

`write_report(run_dir)` reads what `gifd attack --out DIR` wrote (results.json and the PNGs under
images/) and writes DIR/report.html: what was attacked and under which threat model, the metrics
of every attack (best value per column highlighted, per-image values on demand), the
reconstructions beside the originals, the stage progression of staged attacks (GIFD), the
gradient-loss curves, and the full config. Every image is embedded as a data URI and the styles
are inline, so the file works offline and can be mailed or archived alone.

The report only reads: it never re-runs an attack, so it can be rebuilt any time (`gifd report DIR`).

Modules: `view` reads and checks a run directory, `sections` and `plots` render the parts of a
run's report, `audit` the report of a Flower audit, `html` the shared page helpers. A new section
is a function of a `RunView` returning HTML, listed in `SECTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gifd.imageio import write_atomically
from gifd.report.audit import render_audit_report, write_audit_report
from gifd.report.html import MIN_IMAGE_SIDE, html_page
from gifd.report.plots import curves_section
from gifd.report.sections import footer_section, grid_section, header_section, metrics_section, stages_section
from gifd.report.view import RunView, load_results
from gifd.results import RunResults
from gifd.rundir import REPORT_NAME, record_files, stage_image_name

__all__ = [
    "MIN_IMAGE_SIDE",
    "REPORT_NAME",
    "SECTIONS",
    "RunView",
    "load_results",
    "render_audit_report",
    "render_report",
    "stage_image_name",
    "write_audit_report",
    "write_report",
]


#: The sections of a run's report, in page order: each a function of a `RunView` returning HTML
#: ("" to leave itself out). A new section is a function here (or appended by a plug-in).
SECTIONS: list[Callable[[RunView], str]] = [
    header_section,
    metrics_section,
    grid_section,
    stages_section,
    curves_section,
    footer_section,
]


def write_report(run_dir: str | Path) -> Path:
    """Build `run_dir`/report.html from its results.json and PNGs, atomically; return its path."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    page = render_report(results, run_dir)
    path = write_atomically(run_dir / REPORT_NAME, lambda handle: handle.write(page.encode("utf-8")))
    record_files(run_dir, [REPORT_NAME])
    return path


def render_report(results: RunResults | dict[str, Any], run_dir: str | Path) -> str:
    """The report's HTML text; PNGs are read from `run_dir` (missing ones become placeholders)."""
    run = RunView(results, Path(run_dir))
    sections = [section(run) for section in SECTIONS]
    title = f"gifd report: {', '.join(run.attacks)} on {run.config.get('victim', '?')}"
    return html_page(title, sections)
