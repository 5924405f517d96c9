"""The report of a Flower audit: one row per attacked client update and what it leaked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gifd.imageio import write_atomically
from gifd.report.html import (
    as_number,
    escape,
    format_value,
    html_page,
    img_tag,
    item_at,
    list_text,
    metric_column,
    metric_value,
    now_text,
)
from gifd.report.view import RunView
from gifd.rundir import REPORT_NAME


def write_audit_report(audit_dir: str | Path, audit: dict[str, Any]) -> Path:
    """Build `audit_dir`/report.html for a Flower audit (gifd.flower) from its audit.json document."""
    audit_dir = Path(audit_dir)
    page = render_audit_report(audit, audit_dir)
    return write_atomically(audit_dir / REPORT_NAME, lambda handle: handle.write(page.encode("utf-8")))


def render_audit_report(audit: dict[str, Any], audit_dir: str | Path) -> str:
    """The audit's HTML: one row per (round, client) with what leaked, and each client's images.

    Each attacked client is a gifd run below `audit_dir`; its own report is linked, and its
    reconstruction grids (beside the private images when the audit knew them) are embedded.
    """
    audit_dir = Path(audit_dir)
    config = audit.get("config") or {}
    clients = list(audit.get("clients") or [])
    attacks = list(config.get("attacks") or [])
    counts = {
        s: sum(1 for c in clients if c.get("status") == s)
        for s in ("attacked", "queued", "skipped", "failed")
    }
    keys = [
        k
        for k in ("psnr", "ssim", "lpips_st")
        if any(k in (c.get("attacks") or {}).get(a, {}) for c in clients for a in attacks)
    ]
    head = "".join(f"<th>{escape(a)}: {escape(metric_column(k)[0])}</th>" for a in attacks for k in keys)
    head += "".join(f"<th>{escape(a)}: gradient loss</th>" for a in attacks)
    rows = []
    for c in clients:
        training = c.get("local_training") or {}
        summaries = c.get("attacks") or {}
        cells = "".join(
            f'<td class="num">{format_value(metric_value(summaries.get(a) or {}, k), metric_column(k)[2], k)}</td>'
            for a in attacks
            for k in keys
        )
        cells += "".join(
            f'<td class="num">{format_value(as_number(item_at((summaries.get(a) or {}).get("gradient_loss"), 0)), "{:.4g}", "")}</td>'
            for a in attacks
        )
        labels = list_text(c.get("inferred_labels", "–"))
        if "true_labels" in c:
            labels += f" (true {list_text(c['true_labels'])})"
        notes = [*c.get("warnings", []), *([c["reason"]] if c.get("reason") else [])]
        link = (
            f'<a href="{escape(c["run"])}/{REPORT_NAME}">{escape(c["client"])}</a>'
            if c.get("run")
            else escape(c.get("client"))
        )
        status_class = "bad" if c.get("status") == "failed" else ""
        rows.append(
            f'<tr><td>{escape(c.get("round"))}</td><th>{link}</th><td class="{status_class}">{escape(c.get("status"))}</td>'
            f'<td class="num">{escape(c.get("num_examples", "–"))}</td>'
            f"<td>{escape(_training_words(training))}</td><td>{escape(labels)}</td>{cells}"
            f'<td class="note">{"<br>".join(escape(n) for n in notes)}</td></tr>'
        )
    table = (
        '<div class="scroll"><table class="metrics"><thead><tr><th>round</th><th>client</th><th>status</th>'
        f"<th>examples</th><th>local training</th><th>labels inferred</th>{head}<th>notes</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
    figures = []
    for c in clients:
        if not c.get("run"):
            continue
        run = RunView(None, audit_dir / c["run"])
        parts = [("private images", "originals.png")] * (run.png("originals.png") is not None)
        parts += [(a, f"{a}.png") for a in attacks]
        cells = "".join(
            f"<td>{img_tag(run, file, name)}<figcaption>{escape(name)}</figcaption></td>" for name, file in parts
        )
        figures.append(
            f'<tr><th class="row">round {escape(c["round"])}<br>client {escape(c["client"])}</th>{cells}</tr>'
        )
    scored = (
        "scored against the private images (known in a simulation)"
        if keys
        else "not scored (no ground truth)"
    )
    sections = [
        f'<h1>gifd audit of a Flower training</h1><p class="sub">victim {escape(audit.get("victim", "?"))}, '
        f"attacks {escape(', '.join(attacks))}; {counts['attacked']} client updates attacked, {counts['queued']} "
        f"in progress, {counts['skipped']} skipped, {counts['failed']} failed; made {now_text()}</p>",
        "<p>Each row is one client's update in one round: the server's global model and the client's reply "
        "give the weight delta it shared; gifd replays the client's reported local training and reconstructs its "
        f"private images from that delta. Reconstructions are {scored}.</p>",
        "<h2>Clients</h2>" + table,
        (
            '<h2>What each client leaked</h2><div class="scroll"><table class="grid">'
            + "".join(figures)
            + "</table></div>"
        )
        if figures
        else "",
        f'<footer><h2>Audit config</h2><pre class="config">{escape(json.dumps(config, indent=2))}</pre></footer>',
    ]
    return html_page("gifd audit", sections)


def _training_words(training: dict[str, Any]) -> str:
    if not training:
        return "–"
    words = f"{training.get('local_steps')} SGD steps, lr {training.get('local_lr')}, batch {training.get('local_batch_size')}"
    return words + (f" ({training['epochs']} epochs)" if training.get("epochs") else "")
