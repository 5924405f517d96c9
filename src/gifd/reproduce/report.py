"""The HTML report of a reproduction: one self-contained page with every table, its budget, the
figures (matplotlib, embedded PNG), the reconstructions and the paper's claim tested."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gifd.imageio import write_atomically
from gifd.report.html import (
    best_values,
    embedded_png,
    escape,
    format_value,
    html_page,
    metric_column,
    now_text,
    png_uri,
)
from gifd.reproduce.tables import METRICS
from gifd.rundir import REPORT_NAME

#: The data sets' words in the tables.
DATA_WORDS = {"near": "near the prior", "far": "out of distribution"}


def write_reproduce_report(out: str | Path, document: dict[str, Any]) -> Path:
    """Write OUT/report.html from a reproduction's JSON document (atomically); return its path."""
    out = Path(out)
    page = render_reproduce_report(document, out)
    return write_atomically(out / REPORT_NAME, lambda handle: handle.write(page.encode("utf-8")))


def render_reproduce_report(document: dict[str, Any], out: Path) -> str:
    """The page's HTML; reconstruction PNGs are read from the cells under `out`."""
    config, tables = document["config"], document["tables"]
    sections = [_header(document)]
    if "methods" in tables:
        sections.append(_methods(tables["methods"], config, out))
    if "ablation" in tables:
        sections.append(_ablation(tables["ablation"], document))
    if "batch" in tables:
        sections.append(_batch(tables["batch"]))
    if "defenses" in tables:
        sections.append(_defenses(tables["defenses"]))
    if "labels" in tables:
        sections.append(_labels(tables["labels"]))
    sections.append(
        f'<footer><h2>Setting</h2><pre class="config">{escape(json.dumps(config, indent=2))}</pre></footer>'
    )
    return html_page(f"gifd reproduce: {config['name']}", sections)


def _header(document: dict[str, Any]) -> str:
    config, run = document["config"], document["run"]
    claims = "".join(f"<p><b>{escape(c['text'])}</b></p>" for c in document.get("claims", {}).values())
    short = (
        '<p class="bad">Short budgets: every attack ran far fewer steps than the paper\'s (1000 per GIFD stage, '
        "4 restarts); the numbers are short-budget numbers, for comparing methods under one budget, not the "
        "paper's values.</p>"
        if config.get("short_budget")
        else ""
    )
    return (
        f'<h1>gifd reproduce: the paper\'s experiments</h1><p class="sub">{escape(config["name"])}; made {now_text()}</p>'
        f"<p>Prior <code>{escape(config['prior'])}</code>, victim <code>{escape(config['victim'])}</code> "
        f"({'weights ' + escape(config['victim_weights']) if config.get('victim_weights') else 'untrained, seeded'}) at "
        f"{config['resolution']} px with {config['num_classes']} classes, labels inferred "
        f"(<code>{escape(config['label_inference'])}</code>) unless a table says otherwise, seed {config['seed']}. "
        f"{run['cells']} attack runs ({run['ran']} run now, {run['reused']} reused from an earlier run) in "
        f"{run['seconds']:.0f} s.</p>{short}{claims}"
    )


def _budget_note(table: dict[str, Any]) -> str:
    short = " These are short-budget numbers." if table.get("short_budget") else ""
    return f'<p class="note">Budget: {escape(table["budget"])}.{short} Attack time of the table: {table["seconds"]:.0f} s.</p>'


def _metric_keys(rows: list[dict[str, Any]]) -> list[str]:
    return [m for m in METRICS if any(m in r for r in rows)]


def _value(row: dict[str, Any], key: str) -> float | None:
    """A row's metric; a PSNR stored as null was infinite (an exact reconstruction)."""
    if key not in row:
        return None
    value = row[key]
    if key == "psnr" and value is None:
        return float("inf")
    return value if isinstance(value, int | float) else None


def _table(
    rows: list[dict[str, Any]],
    label_keys: list[tuple[str, str]],
    extra: Sequence[tuple[str, str]] = (),
    group: str | None = None,
) -> str:
    """An HTML table: label columns, then the metrics, then extras. The best value of each metric
    column is highlighted among the rows of the same `group` value (all rows: None)."""
    keys = _metric_keys(rows)
    head = "".join(f"<th>{escape(words)}</th>" for _, words in label_keys)
    head += "".join(f"<th>{escape(metric_column(k)[0])}</th>" for k in keys)
    head += "".join(f"<th>{escape(words)}</th>" for _, words in extra)
    groups = {row.get(group) if group else None for row in rows}
    best = {
        (g, k): best_values(
            [_value(r, k) for r in rows if (r.get(group) if group else None) == g], metric_column(k)[1]
        )
        for g in groups
        for k in keys
    }
    body = []
    for row in rows:
        cells = "".join(f"<td>{escape(row.get(k, '–'))}</td>" for k, _ in label_keys)
        for k in keys:
            value = _value(row, k)
            mark = (
                " best" if value is not None and value in best[(row.get(group) if group else None, k)] else ""
            )
            cells += f'<td class="num{mark}">{format_value(value, metric_column(k)[2], k)}</td>'
        for k, _ in extra:
            value = row.get(k)
            text = (
                format_value(value, "{:.3g}", k)
                if isinstance(value, int | float)
                else escape(value if value is not None else "–")
            )
            kind = "num" if isinstance(value, int | float) or value is None else "note"
            cells += f'<td class="{kind}">{text}</td>'
        body.append(f"<tr>{cells}</tr>")
    return f'<div class="scroll"><table class="metrics"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _figure(figure: Any, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return f'<figure class="curve"><img src="{png_uri(buffer.getvalue())}" alt="{escape(alt)}"></figure>'


def _new_figure(width: float = 5.6, height: float = 3.4) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _finite(value: Any) -> float:
    return (
        float(value)
        if isinstance(value, int | float) and value == value and abs(value) != float("inf")
        else float("nan")
    )


def _bars(groups: list[str], series: dict[str, list[float | None]], ylabel: str, title: str) -> str:
    """Grouped bars: one group per entry of `groups`, one bar per series."""
    import numpy as np

    figure = _new_figure(max(5.6, 0.9 * len(groups) + 2.5))
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        axes.bar(x + (i - (len(series) - 1) / 2) * width, [_finite(v) for v in values], width, label=name)
    tilt = len(groups) > 5 or max(len(g) for g in groups) > 10
    axes.set_xticks(x, groups, rotation=20 if tilt else 0, ha="right" if tilt else "center")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=11)
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return _figure(figure, title)


def _methods(table: dict[str, Any], config: dict[str, Any], out: Path) -> str:
    rows = table["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sets = list(dict.fromkeys(r["data"] for r in rows))
    by = {(r["data"], r["method"]): r for r in rows}
    words = {"near": config["near"], "far": config["far"]}
    figure = _bars(
        methods,
        {
            f"{DATA_WORDS[d]}: {words[d].get('label') or words[d]['images']}": [
                _value(by[(d, m)], "psnr") for m in methods
            ]
            for d in sets
        },
        "PSNR (dB)",
        "PSNR per method, near the prior and out of distribution",
    )
    shown = [dict(r, data=f"{DATA_WORDS[r['data']]}: {words[r['data']]['images']}") for r in rows]
    grid = _grid(rows, out, sets, methods, words)
    return (
        '<section id="methods"><h2>Methods on data near the prior and out of distribution</h2>'
        "<p>Each method attacks the same client updates (batch size 1) with the same restarts and seed. "
        "PSNR, SSIM: higher is better; LPIPS: lower is better.</p>"
        + _budget_note(table)
        + _table(
            shown,
            [("data", "data"), ("method", "method")],
            [("seconds", "seconds"), ("label_accuracy", "label accuracy")],
            "data",
        )
        + f'<div class="curves">{figure}</div>'
        + grid
        + "</section>"
    )


def _grid(
    rows: list[dict[str, Any]], out: Path, sets: list[str], methods: list[str], words: dict[str, Any]
) -> str:
    """The originals and every method's reconstructions, one row each, one column per data set."""
    by = {(r["data"], r["method"]): r for r in rows}
    head = "<th></th>" + "".join(
        f"<th>{escape(DATA_WORDS[d])}: {escape(words[d].get('label') or words[d]['images'])}</th>"
        for d in sets
    )
    lines = []
    for name in ["originals", *methods]:
        cells = []
        for d in sets:
            row = by[(d, methods[0] if name == "originals" else name)]
            file = "originals.png" if name == "originals" else f"{row['attack']}.png"
            cells.append(f"<td>{_img(out / 'cells' / row['cell'] / file, f'{name}, {d}')}</td>")
        lines.append(f'<tr><th class="row">{escape(name)}</th>{"".join(cells)}</tr>')
    return (
        "<h3>Reconstructions</h3>"
        f'<div class="scroll"><table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table></div>'
    )


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f'<span class="missing" title="{escape(path.name)} not found">missing</span>'
    uri, width, height = embedded_png(path)
    return f'<img class="px" src="{uri}" width="{width}" height="{height}" alt="{escape(alt)}">'


def _ablation(table: dict[str, Any], document: dict[str, Any]) -> str:
    rows = table["rows"]
    names = document.get("stage_names") or []
    shown = [
        dict(
            r,
            data=DATA_WORDS[r["data"]],
            variant=r["variant"]
            + (f" ({names[r['stage']]})" if "stage" in r and r["stage"] < len(names) else ""),
        )
        for r in rows
    ]
    sets = list(dict.fromkeys(r["data"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["data"], r["variant"]): r for r in rows}
    figure = _bars(
        variants,
        {
            DATA_WORDS[d]: [_value(by[(d, v)], "psnr") if (d, v) in by else None for v in variants]
            for d in sets
        },
        "PSNR (dB)",
        "Ablation of the search spaces",
    )
    claims = "".join(f"<p><b>{escape(c['text'])}</b></p>" for c in document.get("claims", {}).values())
    return (
        '<section id="ablation"><h2>Ablation: which search space</h2>'
        "<p>Latent only (GIFD's first stage alone); one intermediate layer searched alone (the search starts at that "
        "layer's feature of a random latent, with the l1 ball around it); GIFD without the l1 ball; GIFD. "
        "The paper's claim: GIFD's gain over the latent search is larger on out-of-distribution data than that of "
        "any single fixed layer.</p>"
        + _budget_note(table)
        + _table(shown, [("data", "data"), ("variant", "search space")], [("seconds", "seconds")], "data")
        + claims
        + f'<div class="curves">{figure}</div></section>'
    )


def _lines(
    xs: list[Any],
    series: dict[str, list[float | None]],
    xlabel: str,
    ylabel: str,
    title: str,
    log_x: bool = False,
) -> str:
    figure = _new_figure()
    axes = figure.add_subplot()
    for name, values in series.items():
        axes.plot(xs, [_finite(v) for v in values], marker="o", label=name)
    if log_x:
        axes.set_xscale("log", base=2)
        axes.set_xticks(xs, [str(x) for x in xs])
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=11)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return _figure(figure, title)


def _batch(table: dict[str, Any]) -> str:
    rows = table["rows"]
    sizes = sorted({r["batch_size"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["batch_size"], r["method"]): r for r in rows}
    psnr = _lines(
        sizes,
        {m: [_value(by[(b, m)], "psnr") for b in sizes] for m in methods},
        "batch size",
        "PSNR (dB)",
        "PSNR against batch size",
        True,
    )
    accuracy = _lines(
        sizes,
        {"inferred labels": [by[(b, methods[0])].get("label_accuracy") for b in sizes]},
        "batch size",
        "label accuracy",
        "Label accuracy of the inferred labels",
        True,
    )
    return (
        '<section id="batch"><h2>Batch sizes</h2>'
        "<p>One client batch per size; labels inferred from the update, then every attack reconstructs the whole batch "
        "(metrics per image, reconstructions paired with the originals).</p>"
        + _budget_note(table)
        + _table(
            rows,
            [("batch_size", "batch size"), ("method", "method")],
            [("label_accuracy", "label accuracy"), ("seconds", "seconds")],
            "batch_size",
        )
        + f'<div class="curves">{psnr}{accuracy}</div></section>'
    )


def _defenses(table: dict[str, Any]) -> str:
    from gifd.defenses import parse_defense

    rows = table["rows"]
    shown = []
    for r in rows:
        cost = r.get("utility_cost") or {}
        shown.append(dict(r, cosine=cost.get("cosine"), relative_l2_error=cost.get("relative_l2_error")))
    kinds = list(dict.fromkeys(r["defense"].split(":")[0] for r in rows if r["defense"] != "none"))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    knowledge = list(dict.fromkeys(r["knowledge"] for r in rows if r["knowledge"] != "-"))
    undefended = {r["method"]: _value(r, "psnr") for r in rows if r["defense"] == "none"}
    figure = _new_figure(min(3.0 * max(1, len(kinds)), 15.0), 3.3)
    panels = figure.subplots(1, max(1, len(kinds)), sharey=True, squeeze=False)[0]
    for axes, kind in zip(panels, kinds, strict=False):
        specs = list(dict.fromkeys(r["defense"] for r in rows if r["defense"].split(":")[0] == kind))
        for m in methods:
            for k in knowledge:
                values = [undefended.get(m)]
                for spec in specs:
                    match = [
                        r for r in rows if r["defense"] == spec and r["method"] == m and r["knowledge"] == k
                    ]
                    values.append(_value(match[0], "psnr") if match else None)
                axes.plot(range(len(values)), [_finite(v) for v in values], marker="o", label=f"{m}, {k}")
        axes.set_xticks(
            range(len(specs) + 1), ["none", *[parse_defense(s).spec().split(":", 1)[1] for s in specs]]
        )
        axes.set_title(kind, fontsize=10)
        axes.set_xlabel("strength")
        axes.grid(True, alpha=0.3)
    panels[0].set_ylabel("PSNR (dB)")
    panels[0].legend(fontsize=7)
    return (
        '<section id="defenses"><h2>Defenses</h2>'
        "<p>Each defense at two strengths (weaker first). The adaptive attacker models the defense with its parameters; "
        "the oblivious one ignores it (for noise there is nothing to model: both rows are the oblivious run). Utility cost: how far the defended update is from the clean one "
        "(cosine similarity, relative l2 error; 1 and 0 are no cost).</p>"
        + _budget_note(table)
        + _table(
            shown,
            [("defense", "defense"), ("knowledge", "attacker"), ("method", "method")],
            [
                ("cosine", "utility: cosine"),
                ("relative_l2_error", "utility: rel. l2 error"),
                ("seconds", "seconds"),
                ("note", "note"),
            ],
        )
        + '<div class="curves">'
        + _figure(figure, "PSNR against defense strength")
        + "</div></section>"
    )


def _labels(table: dict[str, Any]) -> str:
    rows = table["rows"]
    figure = _new_figure(11.0, 3.3)
    combos = list(dict.fromkeys((r["protocol"], r["labels"]) for r in rows))
    panels = figure.subplots(1, max(1, len(combos)), sharey=True, squeeze=False)[0]
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    for axes, (protocol, kind) in zip(panels, combos, strict=False):
        for index, rule in enumerate(rules):
            mine = sorted(
                (r for r in rows if (r["protocol"], r["labels"], r["rule"]) == (protocol, kind, rule)),
                key=lambda r: r["batch_size"],
            )
            axes.plot(
                [r["batch_size"] for r in mine],
                [_finite(r["accuracy"]) for r in mine],
                marker="os^"[index % 3],
                linestyle=("-", "--", ":")[index % 3],
                label=rule,
            )
        axes.set_title(f"{protocol}, {kind} labels", fontsize=10)
        axes.set_xlabel("batch size")
        axes.set_xscale("log", base=2)
        sizes = sorted({r["batch_size"] for r in rows})
        axes.set_xticks(sizes, [str(b) for b in sizes])
        axes.set_ylim(-0.05, 1.05)
        axes.grid(True, alpha=0.3)
    panels[0].set_ylabel("label accuracy")
    panels[0].legend(fontsize=8)
    groups = list(dict.fromkeys((r["protocol"], r["labels"], r["batch_size"]) for r in rows))
    accuracy = {(r["protocol"], r["labels"], r["batch_size"], r["rule"]): r for r in rows}
    head = (
        "<th>protocol</th><th>labels</th><th>batch size</th>"
        + "".join(f"<th>rule {escape(rule)}</th>" for rule in rules)
        + "<th>batches</th>"
    )
    lines = []
    for group in groups:
        found = [accuracy.get((*group, rule)) for rule in rules]
        values = [r["accuracy"] if r else None for r in found]
        best = best_values(values, True)
        cells = "".join(
            f'<td class="num{" best" if v is not None and v in best else ""}">{format_value(v, "{:.2f}", "accuracy")}</td>'
            for v in values
        )
        trials = max((r["trials"] for r in found if r), default=0)
        lines.append(
            f'<tr><td>{escape(group[0])}</td><td>{escape(group[1])}</td><td class="num">{group[2]}</td>'
            f'{cells}<td class="num">{trials}</td></tr>'
        )
    body = "".join(lines)
    return (
        '<section id="labels"><h2>Label inference</h2>'
        "<p>Only label inference runs here (no attack): every rule on client updates of random batches, with distinct "
        "labels and with repeated ones, as FedSGD gradients and as FedAvg weight deltas. Accuracy: the fraction of the "
        "true labels recovered (as a multiset). A rule that assumes distinct labels cannot run on a batch larger than "
        "the classes.</p>"
        + f'<p class="note">Budget: {escape(table["budget"])}. Time: {table["seconds"]:.0f} s.</p>'
        + f'<div class="scroll"><table class="metrics"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
        + '<div class="curves">'
        + _figure(figure, "label accuracy against batch size")
        + "</div></section>"
    )
