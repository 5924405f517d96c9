"""The HTML report of a run directory: one self-contained file a person opens in a browser.

`write_report(run_dir)` reads what `gifd attack --out DIR` wrote (results.json and the PNGs under
images/) and writes DIR/report.html: what was attacked and under which threat model, the metrics
of every attack (best value per column highlighted, per-image values on demand), the
reconstructions beside the originals, the stage progression of staged attacks (GIFD), the
gradient-loss curves, and the full config. Every image is embedded as a data URI and the styles
are inline, so the file works offline and can be mailed or archived alone.

The report only reads: it never re-runs an attack, so it can be rebuilt any time (`gifd report DIR`).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gifd.errors import GifdError
from gifd.imageio import image_to_data_uri, upscale_nearest, write_atomically
from gifd.metrics.info import METRIC_INFO
from gifd.rundir import read_marker, record_files, stage_image_name

__all__ = [
    "REPORT_NAME",
    "load_results",
    "render_audit_report",
    "render_report",
    "stage_image_name",
    "write_audit_report",
    "write_report",
]

#: File name of the report inside a run directory.
REPORT_NAME = "report.html"
#: Shorter side, in pixels, that images are enlarged to (nearest neighbour, integer factor).
MIN_IMAGE_SIDE = 96

#: How each label-inference rule works, in words (see gifd.attacks.labels).
LABEL_RULE_WORDS = {
    "unique": "linear-program test on the span of the last layer's weight gradient, Dang et al. 2021",
    "count": "label counts estimated from the last layer's bias gradient (allows repeated labels)",
    "paper": "the most negative row sums of the last layer's weight gradient (iDLG sign rule, as in the GIFD paper)",
}


# ----------------------------------------------------------------------------------------- public
def load_results(run_dir: str | Path) -> dict[str, Any]:
    """The parsed results.json of `run_dir`, checked to be a gifd run (GifdError naming the fix)."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if run_dir.is_file():
        raise GifdError(f"{run_dir} is a file, not a run directory: pass the --out directory of a `gifd attack` run")
    if not run_dir.is_dir():
        raise GifdError(
            f"run directory {run_dir} does not exist: pass the --out directory of a `gifd attack` run"
        )
    kind = (read_marker(run_dir) or {}).get("kind")
    if kind == "sweep" or (run_dir / "sweep.json").is_file():
        raise GifdError(
            f"{run_dir} is a sweep, whose summary is {run_dir}/aggregate.md and plots/: pass one of its "
            f"jobs, {run_dir}/jobs/<id>"
        )
    if kind == "audit":
        raise GifdError(
            f"{run_dir} is a Flower audit, whose report is {run_dir}/report.html: pass one of its runs, "
            f"{run_dir}/round_RRR/client_ID"
        )
    if not path.is_file():
        raise GifdError(
            f"no results.json in {run_dir}: pass the --out directory of a finished `gifd attack` run"
        )
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GifdError(
            f"cannot read {path}: {exc}: rerun `gifd attack --out {run_dir}` to rewrite it"
        ) from None
    missing = [
        key for key in ("config", "attacks", "batches") if not isinstance(results, dict) or key not in results
    ]
    if missing:
        raise GifdError(
            f"{path} is not a gifd results file (missing {', '.join(missing)}): "
            "pass the --out directory of a `gifd attack` run"
        )
    return results


def write_report(run_dir: str | Path) -> Path:
    """Build `run_dir`/report.html from its results.json and PNGs, atomically; return its path."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    page = render_report(results, run_dir)
    path = write_atomically(run_dir / REPORT_NAME, lambda handle: handle.write(page.encode("utf-8")))
    record_files(run_dir, [REPORT_NAME])
    return path


def render_report(results: dict[str, Any], run_dir: str | Path) -> str:
    """The report's HTML text; PNGs are read from `run_dir` (missing ones become placeholders)."""
    run = _Run(results, Path(run_dir))
    sections = [
        _header(run),
        _metrics_section(run),
        _grid_section(run),
        _stages_section(run),
        _curves_section(run),
        _footer(run),
    ]
    title = f"gifd report: {', '.join(run.attacks)} on {run.config.get('victim', '?')}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body>\n</html>\n"
    )


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
    head = "".join(f"<th>{_e(a)}: {_e(_column(k)[0])}</th>" for a in attacks for k in keys)
    head += "".join(f"<th>{_e(a)}: gradient loss</th>" for a in attacks)
    rows = []
    for c in clients:
        training = c.get("local_training") or {}
        summaries = c.get("attacks") or {}
        cells = "".join(
            f'<td class="num">{_fmt(_metric(summaries.get(a) or {}, k), _column(k)[2], k)}</td>'
            for a in attacks
            for k in keys
        )
        cells += "".join(
            f'<td class="num">{_fmt(_number(_at((summaries.get(a) or {}).get("gradient_loss"), 0)), "{:.4g}", "")}</td>'
            for a in attacks
        )
        labels = _list(c.get("inferred_labels", "–"))
        if "true_labels" in c:
            labels += f" (true {_list(c['true_labels'])})"
        notes = [*c.get("warnings", []), *([c["reason"]] if c.get("reason") else [])]
        link = (
            f'<a href="{_e(c["run"])}/{REPORT_NAME}">{_e(c["client"])}</a>'
            if c.get("run")
            else _e(c.get("client"))
        )
        status_class = "bad" if c.get("status") == "failed" else ""
        rows.append(
            f'<tr><td>{_e(c.get("round"))}</td><th>{link}</th><td class="{status_class}">{_e(c.get("status"))}</td>'
            f'<td class="num">{_e(c.get("num_examples", "–"))}</td>'
            f"<td>{_e(_training_words(training))}</td><td>{_e(labels)}</td>{cells}"
            f'<td class="note">{"<br>".join(_e(n) for n in notes)}</td></tr>'
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
        run = _Run({}, audit_dir / c["run"])
        parts = [("private images", "originals.png")] * (run.png("originals.png") is not None)
        parts += [(a, f"{a}.png") for a in attacks]
        cells = "".join(
            f"<td>{_img_tag(run, file, name)}<figcaption>{_e(name)}</figcaption></td>" for name, file in parts
        )
        figures.append(
            f'<tr><th class="row">round {_e(c["round"])}<br>client {_e(c["client"])}</th>{cells}</tr>'
        )
    scored = (
        "scored against the private images (known in a simulation)"
        if keys
        else "not scored (no ground truth)"
    )
    sections = [
        f'<h1>gifd audit of a Flower training</h1><p class="sub">victim {_e(audit.get("victim", "?"))}, '
        f"attacks {_e(', '.join(attacks))}; {counts['attacked']} client updates attacked, {counts['queued']} "
        f"in progress, {counts['skipped']} skipped, {counts['failed']} failed; made {_now()}</p>",
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
        f'<footer><h2>Audit config</h2><pre class="config">{_e(json.dumps(config, indent=2))}</pre></footer>',
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>gifd audit</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body>\n</html>\n"
    )


def _training_words(training: dict[str, Any]) -> str:
    if not training:
        return "–"
    words = f"{training.get('local_steps')} SGD steps, lr {training.get('local_lr')}, batch {training.get('local_batch_size')}"
    return words + (f" ({training['epochs']} epochs)" if training.get("epochs") else "")


# ------------------------------------------------------------------------------------ run access
class _Run:
    """A results dict with the lookups the report needs (tolerant of missing optional keys)."""

    def __init__(self, results: dict[str, Any], run_dir: Path):
        self.results = results
        self.dir = run_dir
        self.config: dict[str, Any] = results.get("config") or {}
        self.attacks: list[str] = list(results.get("attacks") or {})
        self.batches: list[dict[str, Any]] = list(results.get("batches") or [])
        self.true_labels: list[int] = list(results.get("true_labels") or [])
        self.inferred_labels: list[int] = list(results.get("inferred_labels") or [])
        names = (results.get("images") or {}).get("names") or []
        #: False for an audit of a received update: no private images, no true labels, no metrics.
        self.has_truth = bool(results.get("images")) or self._count_pngs("original") > 0
        reconstructed = max((self._count_pngs(a) for a in self.attacks), default=0)
        self.count = max(len(self.true_labels), len(names), self._count_pngs("original"), reconstructed)
        self.names = [names[i] if i < len(names) else f"image {i}" for i in range(self.count)]
        self.batch_size = int(self.config.get("batch_size") or 1)

    def _count_pngs(self, prefix: str) -> int:
        """How many images/<prefix>_NNN.png the run holds (stage images have another pattern)."""
        return len(list((self.dir / "images").glob(f"{prefix}_[0-9][0-9][0-9].png")))

    def summary(self, attack: str) -> dict[str, Any]:
        return (self.results.get("attacks") or {}).get(attack) or {}

    def per_batch(self, attack: str) -> list[dict[str, Any]]:
        """The attack's summary in every batch (empty dicts where it is missing)."""
        return [(b.get("attacks") or {}).get(attack) or {} for b in self.batches]

    def metric_keys(self) -> list[str]:
        """Metrics present for any attack: the known ones in display order, then any others."""
        present: list[str] = []
        for attack in self.attacks:
            for key in self.summary(attack).get("per_image") or {}:
                if key not in present:
                    present.append(key)
        return [k for k in METRIC_INFO if k in present] + [k for k in present if k not in METRIC_INFO]

    def notes(self) -> list[str]:
        """The evaluation's notes (omitted metrics, caveats), each once."""
        seen: list[str] = []
        for batch in self.batches:
            for run in (batch.get("attacks") or {}).values():
                for note in (run.get("metrics") or {}).get("notes") or []:
                    if note not in seen:
                        seen.append(note)
        return seen

    def staged(self, attack: str) -> bool:
        return any(run.get("stages") for run in self.per_batch(attack))

    def png(self, relative: str) -> Path | None:
        path = self.dir / relative
        return path if path.is_file() else None


# --------------------------------------------------------------------------------------- sections
def _header(run: _Run) -> str:
    config = run.config
    images = run.results.get("images") or {}
    source = images.get("source") or config.get("images", "?")
    indices = config.get("indices")
    weights = config.get("victim_weights")
    victim_weights = (
        f"trained weights from <code>{_e(weights)}</code>"
        if weights
        else f"untrained (seeded random initialisation, seed {_e(config.get('seed', '?'))})"
    )
    facts = [
        ("Victim", f"<b>{_e(config.get('victim', '?'))}</b>, {victim_weights}"),
        ("Resolution", f"{_e(config.get('resolution', '?'))} × {_e(config.get('resolution', '?'))} px"),
        ("Images", f"<code>{_e(source)}</code>" + (f", indices {_e(_list(indices))}" if indices else "")),
        ("Batch", f"{run.count} image(s) in {len(run.batches)} update(s) of batch size {run.batch_size}"),
        ("Attacks", ", ".join(f"<b>{_e(a)}</b>" for a in run.attacks)),
    ]
    prior = _prior_used(run)
    if prior:
        facts.append(("Generative prior", f"<code>{_e(prior)}</code>"))
    facts.append(("Threat model", _threat_model(run)))
    facts.append(("Defense", _defense(config)))
    facts.append(("Label inference", _label_line(run)))
    rows = "\n".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in facts)
    return (
        f'<header><h1>Gradient inversion report</h1>\n<p class="sub">{_e(run.dir.resolve().name)} · '
        f'{_e(_run_date(run))}</p></header>\n<section id="setup"><h2>What was attacked</h2>\n'
        f'<table class="facts">{rows}</table></section>'
    )


def _prior_used(run: _Run) -> str | None:
    """The prior's name when an attack of the run needs one."""
    from gifd.attacks import ATTACKS

    for name in run.attacks:
        try:
            if getattr(ATTACKS.get(name), "needs_prior", False):
                return str(run.config.get("prior"))
        except GifdError:  # an attack this version does not know: say nothing about priors
            continue
    return None


def _threat_model(run: _Run) -> str:
    config = run.config
    local_steps = int(config.get("local_steps") or 1)
    if local_steps > 1:
        update = f"a FedAvg weight update after {local_steps} local steps per batch"
    else:
        update = "one FedSGD gradient per batch (the mean over its images)"
    if config.get("disclose_labels"):
        labels = "the client <b>discloses</b> its labels with the update"
    else:
        rule = str(config.get("label_inference", "unique"))
        labels = f"labels are <b>inferred from the gradient</b> with rule <code>{_e(rule)}</code>" + (
            f" ({_e(LABEL_RULE_WORDS[rule])})" if rule in LABEL_RULE_WORDS else ""
        )
    return (
        "honest-but-curious server with <b>white-box</b> access to the victim (architecture and weights); "
        f"it receives {update}; {labels}; no batch-norm statistics are used."
    )


def _defense(config: dict[str, Any]) -> str:
    defense = config.get("defense")
    if defense in (None, "", "none", {}, []):
        return "none (the update is sent unchanged)"
    if isinstance(defense, str):
        return f"<code>{_e(defense)}</code>"
    return f"<code>{_e(json.dumps(defense, sort_keys=True))}</code>"


def _label_line(run: _Run) -> str:
    if not run.has_truth:
        return f"inferred {_e(_list(sorted(run.inferred_labels)))} (the private labels are unknown to this audit)"
    accuracy = run.results.get("label_accuracy")
    head = "n/a" if accuracy is None else f"<b>{100 * float(accuracy):.0f}%</b> of true labels recovered"
    pairs = []
    for i, batch in enumerate(run.batches):
        inferred, true = batch.get("inferred_labels", []), batch.get("true_labels", [])
        wrong = sorted(set(true) - set(inferred)) if set(true) != set(inferred) else []
        mark = f' <span class="bad">(missed {_e(_list(wrong))})</span>' if wrong else ""
        label = f"batch {i}: " if len(run.batches) > 1 else ""
        pairs.append(f"{label}inferred {_e(_list(sorted(inferred)))} vs true {_e(_list(sorted(true)))}{mark}")
    shown = pairs[:12] + ([f"… {len(pairs) - 12} more batches"] if len(pairs) > 12 else [])
    return head + (" — " + "; ".join(shown) if shown else "")


def _metrics_section(run: _Run) -> str:
    keys = run.metric_keys()
    columns = [(k, *_column(k)) for k in keys]
    columns += [("seconds", "seconds ↓", False, "{:.1f}"), ("steps", "steps", None, "{:d}")]
    header = "<tr><th>attack</th>" + "".join(f"<th>{_e(h)}</th>" for _, h, _, _ in columns) + "</tr>"
    values = {a: {k: _metric(run.summary(a), k) for k, *_ in columns} for a in run.attacks}
    best = {k: _best([values[a][k] for a in run.attacks], higher) for k, _, higher, _ in columns}
    rows = []
    for attack in run.attacks:
        cells = []
        for key, _, _, fmt in columns:
            value = values[attack][key]
            css = "num best" if value is not None and value in best[key] else "num"
            cells.append(f'<td class="{css}">{_fmt(value, fmt, key)}</td>')
        rows.append(f'<tr data-attack="{_e(attack)}"><th>{_e(attack)}</th>{"".join(cells)}</tr>')
    notes = [
        "Means over all images. Best value per column highlighted (↑ higher is better, ↓ lower is better)."
    ]
    if "lpips_st" in keys:
        notes.append(
            "LPIPS-ST is the <b>shift-tolerant</b> LPIPS (AlexNet, Ghildyal &amp; Liu 2022): its numbers are "
            "<b>not comparable</b> with published LPIPS values."
        )
    if "feature_mse" in keys:
        notes.append(
            "feature MSE: mean squared difference of the victim's outputs on reconstruction and original."
        )
    if any(values[a].get("psnr") == math.inf for a in run.attacks):
        notes.append("PSNR ∞: every image reconstructed exactly (zero error).")
    notes += [_e(n) for n in run.notes() if not n.startswith("lpips_st is shift-tolerant")]
    note_list = "".join(f"<li>{n}</li>" for n in notes)
    return (
        '<section id="metrics"><h2>Metrics</h2>\n'
        f'<table class="metrics">\n<thead>{header}</thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table>\n"
        f'<ul class="notes">{note_list}</ul>\n' + _per_image_table(run, keys) + "</section>"
    )


def _per_image_table(run: _Run, keys: list[str]) -> str:
    """Per-image values: one row per (image, attack), best per image highlighted."""
    if not keys or not run.attacks:
        return ""
    header = (
        "<tr><th>image</th><th>attack</th>"
        + "".join(f"<th>{_e(_column(k)[0])}</th>" for k in keys)
        + "</tr>"
    )
    rows = []
    for i in range(run.count):
        values = {
            a: {k: _metric(run.summary(a).get("per_image") or {}, k, i) for k in keys} for a in run.attacks
        }
        best = {k: _best([values[a][k] for a in run.attacks], _column(k)[1]) for k in keys}
        for j, attack in enumerate(run.attacks):
            first = (
                f'<th rowspan="{len(run.attacks)}" class="img">{i}: {_e(run.names[i])}'
                f"<br><small>label {_e(_at(run.true_labels, i, '?'))}</small></th>"
                if j == 0
                else ""
            )
            cells = "".join(
                f'<td class="{"num best" if values[attack][k] is not None and values[attack][k] in best[k] else "num"}">'
                f"{_fmt(values[attack][k], _column(k)[2], k)}</td>"
                for k in keys
            )
            group = ' class="group"' if j == 0 else ""
            rows.append(f"<tr{group}>{first}<td>{_e(attack)}</td>{cells}</tr>")
    return (
        f"<details><summary>Per-image values ({run.count} images)</summary>\n"
        f'<div class="scroll"><table class="metrics per-image">\n<thead>{header}</thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table></div></details>\n"
    )


def _grid_section(run: _Run) -> str:
    head = (
        "<tr><th></th>"
        + "".join(
            f"<th>{i}: {_e(run.names[i])}<br><small>label {_e(_at(run.true_labels, i, '?'))}</small></th>"
            if run.has_truth
            else f"<th>{i}</th>"
            for i in range(run.count)
        )
        + "</tr>"
    )
    originals = "".join(
        f"<td>{_img_tag(run, f'images/original_{i:03d}.png', f'original {i}')}</td>" for i in range(run.count)
    )
    rows = [f'<tr><th class="row">original</th>{originals}</tr>'] if run.has_truth else []
    for attack in run.attacks:
        psnr = (run.summary(attack).get("per_image") or {}).get("psnr")
        cells = []
        for i in range(run.count):
            value = _metric({"psnr": psnr}, "psnr", i)
            caption = f"<figcaption>{_fmt(value, '{:.2f}', 'psnr')} dB</figcaption>" if psnr else ""
            cells.append(
                f"<td>{_img_tag(run, f'images/{attack}_{i:03d}.png', f'{attack} {i}')}{caption}</td>"
            )
        rows.append(f'<tr><th class="row">{_e(attack)}</th>{"".join(cells)}</tr>')
    return (
        '<section id="images"><h2>Reconstructions</h2>\n'
        + (
            "<p>First row: the client's private images (only the evaluation sees them). Below: each attack's "
            "reconstruction, matched to its original, with its PSNR. "
            if run.has_truth
            else "<p>Each attack's reconstructions of the client's private images (not known to this audit, "
            "so nothing is scored). "
        )
        + "Images are enlarged with nearest-neighbour sampling, so every pixel shows as a square.</p>\n"
        f'<div class="scroll"><table class="grid">\n<thead>{head}</thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table></div></section>"
    )


def _stages_section(run: _Run) -> str:
    staged = [a for a in run.attacks if run.staged(a)]
    if not staged:
        return ""
    parts = [
        '<section id="stages"><h2>Stage progression</h2>\n'
        "<p>Staged attacks optimise the generator's latent first, then the outputs of successive "
        "generator layers. Each column is the best restart's image after that stage, with its "
        "gradient-matching loss; the outlined one is the attack's answer (lowest loss over all stages).</p>"
    ]
    for attack in staged:
        parts.append(_stage_table(run, attack))
    parts.append("</section>")
    return "\n".join(parts)


def _stage_table(run: _Run, attack: str) -> str:
    per_batch = run.per_batch(attack)
    stage_columns: list[tuple[int, str]] = []
    for summary in per_batch:
        for stage in summary.get("stages") or []:
            key = (int(stage.get("stage", len(stage_columns))), str(stage.get("name", "")))
            if key not in stage_columns:
                stage_columns.append(key)
    have_images = any(
        run.png(stage_image_name(attack, s, i)) for s, _ in stage_columns for i in range(run.count)
    )
    head = (
        "<tr><th>image</th>"
        + ("<th>original</th>" if have_images else "")
        + "".join(f"<th>stage {s}<br><small>{_e(name)}</small></th>" for s, name in stage_columns)
        + "</tr>"
    )
    rows = []
    for i in range(run.count):
        b = i // run.batch_size
        stages = {
            int(s.get("stage", -1)): s
            for s in (per_batch[b] if b < len(per_batch) else {}).get("stages") or []
        }
        losses = {s: _number(v.get("gradient_loss")) for s, v in stages.items()}
        finite = [v for v in losses.values() if v is not None]
        chosen = min(finite) if finite else None
        cells = [f"<th>{i}: {_e(run.names[i])}</th>"]
        if have_images:
            cells.append(f"<td>{_img_tag(run, f'images/original_{i:03d}.png', f'original {i}')}</td>")
        for s, _ in stage_columns:
            loss = losses.get(s)
            picture = (
                _img_tag(run, stage_image_name(attack, s, i), f"{attack} stage {s} image {i}")
                if have_images
                else ""
            )
            css = ' class="chosen"' if loss is not None and loss == chosen else ""
            cells.append(
                f"<td{css}>{picture}<figcaption>loss {_fmt(loss, '{:.4g}', 'loss')}</figcaption></td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    missing = (
        ""
        if have_images
        else f'<p class="note">Stage images of <b>{_e(attack)}</b> were not saved in this run '
        f"(expected <code>{_e(stage_image_name(attack, 0, 0))}</code> …): only the losses are shown.</p>"
    )
    loss_note = (
        " Losses are per update (batch), so images of one batch share them." if run.batch_size > 1 else ""
    )
    return (
        f'<h3>{_e(attack)}</h3>{missing}<p class="note">Gradient loss of the best restart after each stage.{loss_note}</p>\n'
        f'<div class="scroll"><table class="grid stages" data-attack="{_e(attack)}">\n<thead>{head}</thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table></div>"
    )


def _curves_section(run: _Run) -> str:
    figures = []
    for attack in run.attacks:
        uri, boundary_note = _loss_plot(run, attack)
        if uri is None:
            continue
        figures.append(
            f'<figure class="curve"><img src="{uri}" alt="gradient loss of {_e(attack)}">'
            + (f"<figcaption>{boundary_note}</figcaption>" if boundary_note else "")
            + "</figure>"
        )
    if not figures:
        return ""
    return (
        '<section id="curves"><h2>Gradient-matching loss</h2>\n'
        "<p>Loss of every restart at the logged steps (log scale); the restart whose result was kept is "
        "drawn solid, the others dashed. Dotted vertical lines mark stage boundaries.</p>\n"
        f'<div class="curves">{"".join(figures)}</div></section>'
    )


def _loss_plot(run: _Run, attack: str) -> tuple[str | None, str]:
    """A PNG data URI of the attack's loss curves and a note on its stage boundaries."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    per_batch = run.per_batch(attack)
    curves = []  # (batch, restart, steps, losses, kept)
    for b, summary in enumerate(per_batch):
        history = summary.get("loss_history") or {}
        steps = list(history.get("steps") or [])
        for r, losses in enumerate(history.get("losses") or []):
            n = min(len(steps), len(losses))
            if n:
                curves.append((b, r, steps[:n], losses[:n], r == summary.get("best_restart")))
    if not curves:
        return None, ""
    figure = Figure(figsize=(5.3, 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(per_batch))]
    positive = []
    for b, r, steps, losses, kept in curves:
        values = np.array([v if v is not None else np.nan for v in losses], dtype=float)
        values[~(values > 0)] = np.nan  # a log axis cannot show 0, negatives or NaN
        positive.extend(values[np.isfinite(values)].tolist())
        who = f"image {b}" if run.batch_size == 1 else f"batch {b}"
        axes.plot(
            steps,
            values,
            color=colors[b],
            linestyle="-" if kept else "--",
            linewidth=1.8 if kept else 1.0,
            alpha=1.0 if kept else 0.7,
            marker="o" if len(steps) <= 12 else None,
            markersize=3,
            label=f"{who}, restart {r}" + (" (kept)" if kept else ""),
        )
    if positive:
        axes.set_yscale("log")
        if math.log10(max(positive) / min(positive)) <= 1.0:  # under a decade: label the minor ticks too
            plain = FuncFormatter(lambda value, _: f"{value:.2g}")
            axes.yaxis.set_major_formatter(plain)
            axes.yaxis.set_minor_formatter(plain)
            axes.tick_params(axis="y", which="minor", labelsize=8)
    last_step = max(max(steps) for _, _, steps, _, _ in curves)
    axes.set_xlim(0, last_step * 1.03)
    boundaries, estimated = _stage_boundaries(run, attack)
    for step in boundaries:
        axes.axvline(step, color="0.45", linestyle=":", linewidth=1.0)
    axes.set_xlabel("step")
    axes.set_ylabel("gradient loss")
    axes.set_title(attack, fontsize=11)
    axes.grid(True, which="major", alpha=0.3)
    if len(curves) <= 10:
        axes.legend(fontsize=7, loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    notes = []
    if boundaries and estimated:
        notes.append("stage boundaries estimated: the step budget split evenly over the stages")
    if all(len(steps) == 1 for _, _, steps, _, _ in curves):
        notes.append("only the final loss was logged: lower log_every for a curve")
    note = "; ".join(notes)
    return _png_uri(buffer.getvalue()), _e(note)


def _stage_boundaries(run: _Run, attack: str) -> tuple[list[float], bool]:
    """Steps at which one stage ends and the next begins, and whether they are estimated.

    Recorded per stage as `end_step` (or `steps`) when the attack saves them; else from the
    attack's `stage_steps` setting; else GIFD's documented default, an even split of the budget
    over the stages (the first stages get the remainder), flagged as estimated.
    """
    summary = next((s for s in run.per_batch(attack) if s.get("stages")), None)
    if summary is None:
        return [], False
    stages = summary["stages"]
    if len(stages) < 2:
        return [], False
    if all(isinstance(s.get("end_step"), int | float) for s in stages):
        return [float(s["end_step"]) for s in stages[:-1]], False
    if all(isinstance(s.get("steps"), int | float) for s in stages):
        return list(np.cumsum([float(s["steps"]) for s in stages])[:-1]), False
    settings = (run.config.get("attack_settings") or {}).get(attack) or {}
    stage_steps = settings.get("stage_steps")
    if isinstance(stage_steps, list) and len(stage_steps) == len(stages):
        return list(np.cumsum([float(s) for s in stage_steps])[:-1]), False
    total = summary.get("steps")
    if not isinstance(total, int) or total < len(stages):
        return [], False
    base, extra = divmod(total, len(stages))
    budget = [base + (1 if i < extra else 0) for i in range(len(stages))]
    return list(np.cumsum(budget, dtype=float)[:-1]), True


def _footer(run: _Run) -> str:
    results = run.results
    versions = results.get("versions") or {}
    version_rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in versions.items())
    facts = (
        f"<tr><th>seed</th><td>{_e(results.get('seed', run.config.get('seed', '?')))}</td></tr>"
        f"<tr><th>device</th><td>{_e(results.get('device', '?'))}</td></tr>"
        f"<tr><th>run date</th><td>{_e(_run_date(run))}</td></tr>"
        f"<tr><th>report built</th><td>{_e(_now())}</td></tr>"
    )
    config_json = json.dumps(run.config, indent=2, sort_keys=False)
    return (
        '<footer id="provenance"><h2>Provenance</h2>\n'
        f'<table class="facts">{facts}{version_rows}</table>\n'
        f'<h3>Full config</h3>\n<pre class="config">{_e(config_json)}</pre>\n'
        f'<p class="note">Rebuild this page with <code>gifd report {_e(str(run.dir))}</code>.</p></footer>'
    )


# ---------------------------------------------------------------------------------------- helpers
def _img_tag(run: _Run, relative: str, alt: str) -> str:
    """An <img> with the PNG at `relative` enlarged and embedded, or a placeholder if it is absent."""
    path = run.png(relative)
    if path is None:
        return f'<span class="missing" title="{_e(relative)} not found">missing</span>'
    try:
        uri, width, height = _embedded_png(path)
    except GifdError as exc:
        return f'<span class="missing" title="{_e(str(exc))}">unreadable</span>'
    return f'<img class="px" src="{uri}" width="{width}" height="{height}" alt="{_e(alt)}">'


def _embedded_png(path: Path) -> tuple[str, int, int]:
    """The image at `path` enlarged to MIN_IMAGE_SIDE with nearest neighbour, as a data URI."""
    try:
        with Image.open(path) as picture:
            picture = picture.convert("L" if picture.mode in ("L", "I", "I;16", "1") else "RGB")
            array = np.asarray(picture, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise GifdError(f"cannot read {path}: {exc}") from None
    tensor = torch.from_numpy(array)
    tensor = tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)
    enlarged = upscale_nearest(tensor, MIN_IMAGE_SIDE)
    return image_to_data_uri(enlarged), int(enlarged.shape[-1]), int(enlarged.shape[-2])


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _number(value: Any) -> float | None:
    """A finite float, or None (missing, None or non-numeric)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _metric(values: dict[str, Any], key: str, index: int | None = None) -> float | None:
    """A metric from a summary (or item `index` of its list); a recorded PSNR of None is infinite.

    results.json stores non-finite numbers as null: for PSNR that is an exact reconstruction.
    """
    if key not in values:
        return None
    value = values[key] if index is None else _at(values[key], index, math.nan)
    if key == "psnr" and value is None:
        return math.inf
    return _number(value)


def _column(key: str) -> tuple[str, bool | None, str]:
    """Header, better direction and format of a metric column (an unknown key: its name, none)."""
    info = METRIC_INFO.get(key)
    return (info.header, info.higher_is_better, info.fmt) if info else (key, None, "{:.4g}")


def _best(values: Sequence[float | None], higher: bool | None) -> set[float]:
    """The best of `values` (as a set, ties included); empty when there is nothing to compare."""
    finite = [v for v in values if v is not None]
    if higher is None or len(values) < 2 or not finite:
        return set()
    return {max(finite) if higher else min(finite)}


def _fmt(value: float | None, fmt: str, key: str) -> str:
    if value is None:
        return "–"
    if value == math.inf:
        return "∞"
    if fmt == "{:d}":
        return str(int(value))
    return fmt.format(value)


def _at(values: Any, index: int, default: Any = None) -> Any:
    return values[index] if isinstance(values, list) and 0 <= index < len(values) else default


def _list(values: Any) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]" if isinstance(values, list | tuple) else str(values)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _run_date(run: _Run) -> str:
    """When the run was made: results' `date` if recorded, else results.json's modification time."""
    date = run.results.get("date")
    if date:
        try:
            return dt.datetime.fromisoformat(str(date)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
        except ValueError:
            return str(date)
    try:
        stamp = (run.dir / "results.json").stat().st_mtime
    except OSError:
        return "unknown date"
    return dt.datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _now() -> str:
    return dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
  max-width: 1180px; margin: 0 auto; padding: 1.2rem 1.5rem 3rem; line-height: 1.45; background: #fff; }
h1 { font-size: 1.6rem; margin: 0.2rem 0; }
h2 { font-size: 1.2rem; margin: 1.8rem 0 0.6rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
h3 { font-size: 1.02rem; margin: 1.2rem 0 0.4rem; }
.sub { color: #666; margin: 0; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.92em;
  background: #f3f3f5; padding: 0 0.25em; border-radius: 3px; }
table { border-collapse: collapse; }
table.facts th { text-align: left; vertical-align: top; padding: 0.2rem 1rem 0.2rem 0; color: #555;
  font-weight: 600; white-space: nowrap; }
table.facts td { padding: 0.2rem 0; }
table.metrics { font-size: 0.93rem; margin: 0.3rem 0; }
table.metrics th, table.metrics td { padding: 0.3rem 0.7rem; border-bottom: 1px solid #e4e4e8; }
table.metrics thead th { background: #f5f5f7; border-bottom: 2px solid #ccc; white-space: nowrap; }
table.metrics tbody th { text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { background: #dff3df; font-weight: 700; }
tr.group td, tr.group th { border-top: 2px solid #ccc; }
th.img { text-align: left; vertical-align: top; font-weight: 600; }
ul.notes { color: #555; font-size: 0.86rem; margin: 0.4rem 0 0.8rem; padding-left: 1.2rem; }
details { margin: 0.6rem 0; }
summary { cursor: pointer; font-weight: 600; color: #0a58ca; }
.scroll { overflow-x: auto; max-width: 100%; }
table.grid th, table.grid td { padding: 4px; text-align: center; vertical-align: top; }
table.grid thead th { font-size: 0.8rem; font-weight: 600; color: #444; max-width: 160px; }
table.grid th.row { text-align: right; padding-right: 0.6rem; vertical-align: middle; white-space: nowrap; }
table.grid figcaption { font-size: 0.76rem; color: #555; font-variant-numeric: tabular-nums; }
table.stages td.chosen img { outline: 3px solid #2a9d3f; outline-offset: 1px; }
table.stages td.chosen figcaption { color: #1e7a30; font-weight: 700; }
img.px { image-rendering: crisp-edges; image-rendering: pixelated; display: block; margin: 0 auto;
  background: #eee; }
.missing { display: inline-block; min-width: 96px; min-height: 96px; line-height: 96px; background: #f6f0f0;
  color: #a33; font-size: 0.8rem; }
.curves { display: flex; flex-wrap: wrap; gap: 1rem; }
figure.curve { margin: 0; }
figure.curve img { max-width: 100%; height: auto; border: 1px solid #eee; }
figure.curve figcaption { font-size: 0.82rem; color: #555; text-align: center; }
.note { color: #555; font-size: 0.88rem; }
.bad { color: #b00020; font-weight: 600; }
footer pre.config { background: #f6f6f8; border: 1px solid #e2e2e6; padding: 0.7rem 0.9rem; font-size: 0.82rem;
  overflow-x: auto; max-height: 32rem; }
"""
