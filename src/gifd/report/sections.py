"""The sections of a run's report: what was attacked and how, metrics, image grids, stages."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from gifd.errors import GifdError
from gifd.report.html import (
    as_number,
    best_values,
    escape,
    format_value,
    img_tag,
    item_at,
    list_text,
    metric_column,
    metric_value,
    now_text,
)
from gifd.report.view import RunView
from gifd.results import RESULTS_NAME
from gifd.rundir import stage_image_name

#: How each label-inference rule works, in words (see gifd.attacks.labels).
LABEL_RULE_WORDS = {
    "unique": "linear-program test on the span of the last layer's weight gradient, Dang et al. 2021",
    "count": "label counts estimated from the last layer's bias gradient (allows repeated labels)",
    "paper": "the most negative row sums of the last layer's weight gradient (iDLG sign rule, as in the GIFD paper)",
}


def header_section(run: RunView) -> str:
    config = run.config
    images = run.results.images if run.results else None
    source = images.source if images else config.get("images", "?")
    indices = config.get("indices")
    weights = config.get("victim_weights")
    victim_weights = (
        f"trained weights from <code>{escape(weights)}</code>"
        if weights
        else f"untrained (seeded random initialisation, seed {escape(config.get('seed', '?'))})"
    )
    facts = [
        ("Victim", f"<b>{escape(config.get('victim', '?'))}</b>, {victim_weights}"),
        ("Resolution", f"{escape(config.get('resolution', '?'))} × {escape(config.get('resolution', '?'))} px"),
        ("Images", f"<code>{escape(source)}</code>" + (f", indices {escape(list_text(indices))}" if indices else "")),
        ("Batch", f"{run.count} image(s) in {len(run.batches)} update(s) of batch size {run.batch_size}"),
        ("Attacks", ", ".join(f"<b>{escape(a)}</b>" for a in run.attacks)),
    ]
    prior = _prior_used(run)
    if prior:
        facts.append(("Generative prior", f"<code>{escape(prior)}</code>"))
    facts.append(("Threat model", _threat_model(run)))
    facts.append(("Defense", _defense(config)))
    facts.append(("Label inference", _label_line(run)))
    rows = "\n".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in facts)
    return (
        f'<header><h1>Gradient inversion report</h1>\n<p class="sub">{escape(run.dir.resolve().name)} · '
        f'{escape(_run_date(run))}</p></header>\n<section id="setup"><h2>What was attacked</h2>\n'
        f'<table class="facts">{rows}</table></section>'
    )


def _prior_used(run: RunView) -> str | None:
    """The prior's name when an attack of the run needs one."""
    from gifd.attacks import ATTACKS

    for name in run.attacks:
        try:
            if getattr(ATTACKS.get(name), "needs_prior", False):
                return str(run.config.get("prior"))
        except GifdError:  # an attack this version does not know: say nothing about priors
            continue
    return None


def _threat_model(run: RunView) -> str:
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
        labels = f"labels are <b>inferred from the gradient</b> with rule <code>{escape(rule)}</code>" + (
            f" ({escape(LABEL_RULE_WORDS[rule])})" if rule in LABEL_RULE_WORDS else ""
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
        return f"<code>{escape(defense)}</code>"
    return f"<code>{escape(json.dumps(defense, sort_keys=True))}</code>"


def _label_line(run: RunView) -> str:
    if not run.has_truth:
        return f"inferred {escape(list_text(sorted(run.inferred_labels)))} (the private labels are unknown to this audit)"
    accuracy = run.results.label_accuracy if run.results else None
    head = "n/a" if accuracy is None else f"<b>{100 * float(accuracy):.0f}%</b> of true labels recovered"
    pairs = []
    for i, batch in enumerate(run.batches):
        inferred, true = batch.inferred_labels, batch.true_labels or []
        wrong = sorted(set(true) - set(inferred)) if set(true) != set(inferred) else []
        mark = f' <span class="bad">(missed {escape(list_text(wrong))})</span>' if wrong else ""
        label = f"batch {i}: " if len(run.batches) > 1 else ""
        pairs.append(f"{label}inferred {escape(list_text(sorted(inferred)))} vs true {escape(list_text(sorted(true)))}{mark}")
    shown = pairs[:12] + ([f"… {len(pairs) - 12} more batches"] if len(pairs) > 12 else [])
    return head + (" — " + "; ".join(shown) if shown else "")


def metrics_section(run: RunView) -> str:
    keys = run.metric_keys()
    columns = [(k, *metric_column(k)) for k in keys]
    columns += [("seconds", "seconds ↓", False, "{:.1f}"), ("steps", "steps", None, "{:d}")]
    header = "<tr><th>attack</th>" + "".join(f"<th>{escape(h)}</th>" for _, h, _, _ in columns) + "</tr>"
    values = {a: {k: metric_value(run.means(a), k) for k, *_ in columns} for a in run.attacks}
    best = {k: best_values([values[a][k] for a in run.attacks], higher) for k, _, higher, _ in columns}
    rows = []
    for attack in run.attacks:
        cells = []
        for key, _, _, fmt in columns:
            value = values[attack][key]
            css = "num best" if value is not None and value in best[key] else "num"
            cells.append(f'<td class="{css}">{format_value(value, fmt, key)}</td>')
        rows.append(f'<tr data-attack="{escape(attack)}"><th>{escape(attack)}</th>{"".join(cells)}</tr>')
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
    notes += [escape(n) for n in run.notes() if not n.startswith("lpips_st is shift-tolerant")]
    note_list = "".join(f"<li>{n}</li>" for n in notes)
    return (
        '<section id="metrics"><h2>Metrics</h2>\n'
        f'<table class="metrics">\n<thead>{header}</thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table>\n"
        f'<ul class="notes">{note_list}</ul>\n' + _per_image_table(run, keys) + "</section>"
    )


def _per_image_table(run: RunView, keys: list[str]) -> str:
    """Per-image values: one row per (image, attack), best per image highlighted."""
    if not keys or not run.attacks:
        return ""
    header = (
        "<tr><th>image</th><th>attack</th>"
        + "".join(f"<th>{escape(metric_column(k)[0])}</th>" for k in keys)
        + "</tr>"
    )
    rows = []
    for i in range(run.count):
        values = {
            a: {k: metric_value(run.per_image(a), k, i) for k in keys} for a in run.attacks
        }
        best = {k: best_values([values[a][k] for a in run.attacks], metric_column(k)[1]) for k in keys}
        for j, attack in enumerate(run.attacks):
            first = (
                f'<th rowspan="{len(run.attacks)}" class="img">{i}: {escape(run.names[i])}'
                f"<br><small>label {escape(item_at(run.true_labels, i, '?'))}</small></th>"
                if j == 0
                else ""
            )
            cells = "".join(
                f'<td class="{"num best" if values[attack][k] is not None and values[attack][k] in best[k] else "num"}">'
                f"{format_value(values[attack][k], metric_column(k)[2], k)}</td>"
                for k in keys
            )
            group = ' class="group"' if j == 0 else ""
            rows.append(f"<tr{group}>{first}<td>{escape(attack)}</td>{cells}</tr>")
    return (
        f"<details><summary>Per-image values ({run.count} images)</summary>\n"
        f'<div class="scroll"><table class="metrics per-image">\n<thead>{header}</thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table></div></details>\n"
    )


def grid_section(run: RunView) -> str:
    head = (
        "<tr><th></th>"
        + "".join(
            f"<th>{i}: {escape(run.names[i])}<br><small>label {escape(item_at(run.true_labels, i, '?'))}</small></th>"
            if run.has_truth
            else f"<th>{i}</th>"
            for i in range(run.count)
        )
        + "</tr>"
    )
    originals = "".join(
        f"<td>{img_tag(run, f'images/original_{i:03d}.png', f'original {i}')}</td>" for i in range(run.count)
    )
    rows = [f'<tr><th class="row">original</th>{originals}</tr>'] if run.has_truth else []
    for attack in run.attacks:
        psnr = run.per_image(attack).get("psnr")
        cells = []
        for i in range(run.count):
            value = metric_value({"psnr": psnr}, "psnr", i)
            caption = f"<figcaption>{format_value(value, '{:.2f}', 'psnr')} dB</figcaption>" if psnr else ""
            cells.append(
                f"<td>{img_tag(run, f'images/{attack}_{i:03d}.png', f'{attack} {i}')}{caption}</td>"
            )
        rows.append(f'<tr><th class="row">{escape(attack)}</th>{"".join(cells)}</tr>')
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


def stages_section(run: RunView) -> str:
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


def _stage_table(run: RunView, attack: str) -> str:
    per_batch = run.per_batch(attack)
    stage_columns: list[tuple[int, str]] = []
    for record in per_batch:
        for stage in record.stages if record else []:
            key = (stage.stage, stage.name)
            if key not in stage_columns:
                stage_columns.append(key)
    have_images = any(
        run.png(stage_image_name(attack, s, i)) for s, _ in stage_columns for i in range(run.count)
    )
    head = (
        "<tr><th>image</th>"
        + ("<th>original</th>" if have_images else "")
        + "".join(f"<th>stage {s}<br><small>{escape(name)}</small></th>" for s, name in stage_columns)
        + "</tr>"
    )
    rows = []
    for i in range(run.count):
        b = i // run.batch_size
        record = per_batch[b] if b < len(per_batch) else None
        losses = {s.stage: as_number(s.gradient_loss) for s in (record.stages if record else [])}
        finite = [v for v in losses.values() if v is not None]
        chosen = min(finite) if finite else None
        cells = [f"<th>{i}: {escape(run.names[i])}</th>"]
        if have_images:
            cells.append(f"<td>{img_tag(run, f'images/original_{i:03d}.png', f'original {i}')}</td>")
        for s, _ in stage_columns:
            loss = losses.get(s)
            picture = (
                img_tag(run, stage_image_name(attack, s, i), f"{attack} stage {s} image {i}")
                if have_images
                else ""
            )
            css = ' class="chosen"' if loss is not None and loss == chosen else ""
            cells.append(
                f"<td{css}>{picture}<figcaption>loss {format_value(loss, '{:.4g}', 'loss')}</figcaption></td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    missing = (
        ""
        if have_images
        else f'<p class="note">Stage images of <b>{escape(attack)}</b> were not saved in this run '
        f"(expected <code>{escape(stage_image_name(attack, 0, 0))}</code> …): only the losses are shown.</p>"
    )
    loss_note = (
        " Losses are per update (batch), so images of one batch share them." if run.batch_size > 1 else ""
    )
    return (
        f'<h3>{escape(attack)}</h3>{missing}<p class="note">Gradient loss of the best restart after each stage.{loss_note}</p>\n'
        f'<div class="scroll"><table class="grid stages" data-attack="{escape(attack)}">\n<thead>{head}</thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table></div>"
    )


def footer_section(run: RunView) -> str:
    results = run.results
    assert results is not None  # a run's report is rendered from its results
    versions = results.versions
    version_rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in versions.items())
    facts = (
        f"<tr><th>seed</th><td>{escape(results.seed)}</td></tr>"
        f"<tr><th>device</th><td>{escape(results.device)}</td></tr>"
        f"<tr><th>run date</th><td>{escape(_run_date(run))}</td></tr>"
        f"<tr><th>report built</th><td>{escape(now_text())}</td></tr>"
    )
    config_json = json.dumps(run.config, indent=2, sort_keys=False)
    return (
        '<footer id="provenance"><h2>Provenance</h2>\n'
        f'<table class="facts">{facts}{version_rows}</table>\n'
        f'<h3>Full config</h3>\n<pre class="config">{escape(config_json)}</pre>\n'
        f'<p class="note">Rebuild this page with <code>gifd report {escape(str(run.dir))}</code>.</p></footer>'
    )


def _run_date(run: RunView) -> str:
    """When the run was made: results' `date` if recorded, else results.json's modification time."""
    date = run.results.date if run.results else None
    if date:
        try:
            return dt.datetime.fromisoformat(str(date)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
        except ValueError:
            return str(date)
    try:
        stamp = (run.dir / RESULTS_NAME).stat().st_mtime
    except OSError:
        return "unknown date"
    return dt.datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M %Z")
