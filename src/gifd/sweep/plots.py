"""The aggregate's plots: mean metrics per attack (split by the defense or another varied axis),
and PSNR against each swept defense's strength."""

from __future__ import annotations

import io
import json
import re
from typing import Any

from gifd.metrics.info import METRIC_INFO
from gifd.sweep.table import METRIC_COLUMNS, cell_text


def _hue_axis(aggregate: dict[str, Any]) -> str | None:
    """The axis that splits each attack's bars: the defense if varied, else another varied setting."""
    varied = [key for key, values in aggregate["axes"].items() if len(values) > 1 and key != "attacks"]
    if "defense" in varied:
        return "defense"
    for key in varied:
        if key not in ("indices", "seed"):
            return key
    return None


def plot_aggregate(aggregate: dict[str, Any]) -> dict[str, bytes]:
    """PNG files (name -> bytes): per metric, mean over jobs per attack, split by the hue axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = aggregate["rows"]
    if not rows:
        return {}
    hue = _hue_axis(aggregate)
    attacks = list(dict.fromkeys(row["attack"] for row in rows))
    hues = list(dict.fromkeys(json.dumps(row.get(hue), default=str) for row in rows)) if hue else ["null"]
    pngs: dict[str, bytes] = {}
    for metric in METRIC_COLUMNS:
        label, direction = METRIC_INFO[metric].name, METRIC_INFO[metric].direction
        figure = Figure(
            figsize=(max(4.5, 1.2 * len(attacks) * max(1, len(hues)) ** 0.5 + 2), 3.4),
            dpi=100,
            layout="constrained",
        )
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        width = 0.8 / len(hues)
        plotted = False
        for h, hue_value in enumerate(hues):
            means, errors = [], []
            for attack in attacks:
                values = [
                    row[metric]
                    for row in rows
                    if row["attack"] == attack
                    and (hue is None or json.dumps(row.get(hue), default=str) == hue_value)
                    and isinstance(row.get(metric), (int, float))
                ]
                means.append(sum(values) / len(values) if values else float("nan"))
                spread = (
                    (sum((v - means[-1]) ** 2 for v in values) / len(values)) ** 0.5
                    if len(values) > 1
                    else 0.0
                )
                errors.append(spread)
            positions = [i - 0.4 + width * (h + 0.5) for i in range(len(attacks))]
            name = cell_text(json.loads(hue_value), hue or "") if hue else None
            spread = errors if any(errors) else None  # one job per bar: no error bar
            axes.bar(
                positions, means, width=width * 0.92, yerr=spread, capsize=3, label=name, color=f"C{h % 10}"
            )
            plotted = plotted or any(m == m for m in means)
        if not plotted:
            continue
        axes.set_xticks(range(len(attacks)), attacks)
        axes.set_ylabel(f"{label} ({direction})", fontsize=9)
        axes.set_title(
            f"mean {label} per attack" + (f", by {hue}" if hue else "") + " (bars: ±1 std over jobs)",
            fontsize=10,
        )
        axes.grid(True, axis="y", alpha=0.3)
        if hue:
            axes.legend(title=hue, fontsize=8, title_fontsize=8)
        pngs[f"{metric}.png"] = _png(figure)
    pngs.update(_defense_strength_plots(rows))
    return pngs


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _defense_strength(spec: Any) -> tuple[str, float] | None:
    """(kind, main parameter) of a single defense spec like "prune:0.5"; None for none or a chain."""
    if not isinstance(spec, str) or spec.strip().lower() in ("", "none"):
        return None
    try:
        from gifd.defenses import parse_defense

        defense = parse_defense(spec)
        strength = defense.strength
        if len(defense.members()) != 1 or strength is None:
            return None
        return str(defense.name), float(strength)
    except Exception:  # an unknown form or a version without defenses: no strength plot
        return None


def _defense_strength_plots(rows: list[dict[str, Any]]) -> dict[str, bytes]:
    """PSNR against the strength of each defense kind swept over two or more values, one line per attack.

    The undefended PSNR (defense none), when swept, is a dashed line of the same colour.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows or "defense" not in rows[0]:
        return {}
    attacks = list(dict.fromkeys(row["attack"] for row in rows))
    by_kind: dict[str, set[float]] = {}
    parsed_rows = [_defense_strength(row["defense"]) for row in rows]
    for parsed in parsed_rows:
        if parsed is not None:
            by_kind.setdefault(parsed[0], set()).add(parsed[1])
    pngs: dict[str, bytes] = {}
    for kind, strengths in by_kind.items():
        if len(strengths) < 2:
            continue
        figure = Figure(figsize=(5.0, 3.4), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        xs = sorted(strengths)
        for a, attack in enumerate(attacks):
            mine = [
                (parsed, row)
                for parsed, row in zip(parsed_rows, rows, strict=True)
                if row["attack"] == attack
            ]
            means = [_mean_of(row["psnr"] for parsed, row in mine if parsed == (kind, x)) for x in xs]
            axes.plot(xs, means, marker="o", color=f"C{a % 10}", label=attack)
            undefended = _mean_of(row["psnr"] for parsed, row in mine if _undefended(row["defense"]))
            if undefended == undefended:  # not NaN: "none" was swept too
                axes.plot(
                    xs[:: len(xs) - 1], [undefended] * 2, color=f"C{a % 10}", linestyle="--", linewidth=1.0
                )
        cosines = [
            _mean_of(
                row.get("update_cosine")
                for parsed, row in zip(parsed_rows, rows, strict=True)
                if parsed == (kind, x)
            )
            for x in xs
        ]
        if any(c == c for c in cosines):  # the defense's utility cost: how far the update moved
            utility = axes.twinx()
            utility.plot(xs, cosines, color="0.4", linestyle=":", marker="s", label="update cosine to clean")
            utility.set_ylabel("cosine of defended to clean update", fontsize=8, color="0.4")
            utility.set_ylim(0, 1.05)
        axes.set_xlabel(f"{kind} parameter")
        axes.set_ylabel(f"{METRIC_INFO['psnr'].name} ({METRIC_INFO['psnr'].direction})", fontsize=9)
        axes.set_title(f"mean PSNR against {kind} (dashed: no defense; dotted: utility)", fontsize=10)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
        pngs[f"psnr_vs_{re.sub(r'[^A-Za-z0-9]+', '-', kind)}.png"] = _png(figure)
    return pngs


def _undefended(spec: Any) -> bool:
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none"))


def _mean_of(values: Any) -> float:
    """Mean of the numbers among `values` (NaN when there are none)."""
    numbers = [v for v in values if isinstance(v, (int, float))]
    return sum(numbers) / len(numbers) if numbers else float("nan")
