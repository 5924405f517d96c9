"""The report's gradient-loss curves (matplotlib, embedded as PNG)."""

from __future__ import annotations

import io
import math

import numpy as np

from gifd.report.html import escape, png_uri
from gifd.report.view import RunView


def curves_section(run: RunView) -> str:
    figures = []
    for attack in run.attacks:
        uri, boundary_note = _loss_plot(run, attack)
        if uri is None:
            continue
        figures.append(
            f'<figure class="curve"><img src="{uri}" alt="gradient loss of {escape(attack)}">'
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


def _loss_plot(run: RunView, attack: str) -> tuple[str | None, str]:
    """A PNG data URI of the attack's loss curves and a note on its stage boundaries."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    per_batch = run.per_batch(attack)
    curves = []  # (batch, restart, steps, losses, kept)
    for b, record in enumerate(per_batch):
        if record is None:
            continue
        steps = record.loss_history.steps
        for r, losses in enumerate(record.loss_history.losses):
            n = min(len(steps), len(losses))
            if n:
                curves.append((b, r, steps[:n], losses[:n], r == record.best_restart))
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
    axes.set_xlim(0, max(last_step, 1) * 1.03)  # an attack logged only at step 0 still gets an axis
    boundaries, estimated = stage_boundaries(run, attack)
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
    return png_uri(buffer.getvalue()), escape(note)


def stage_boundaries(run: RunView, attack: str) -> tuple[list[float], bool]:
    """Steps at which one stage ends and the next begins, and whether they are estimated.

    Recorded per stage as `end_step` (or `steps`) when the attack saves them; else from the
    attack's `stage_steps` setting; else an even split of the budget over the stages (the first
    stages get the remainder: GIFD's split when its results did not yet record each stage's
    steps), flagged as estimated.
    """
    record = next((r for r in run.per_batch(attack) if r is not None and r.stages), None)
    if record is None:
        return [], False
    stages = record.stages
    if len(stages) < 2:
        return [], False
    if all(s.end_step is not None for s in stages):
        return [float(s.end_step) for s in stages[:-1]], False  # type: ignore[arg-type]
    if all(s.steps is not None for s in stages):
        return list(np.cumsum([float(s.steps) for s in stages])[:-1]), False  # type: ignore[arg-type]
    settings = (run.config.get("attack_settings") or {}).get(attack) or {}
    stage_steps = settings.get("stage_steps")
    if isinstance(stage_steps, list) and len(stage_steps) == len(stages):
        return list(np.cumsum([float(s) for s in stage_steps])[:-1]), False
    total = record.steps
    if not isinstance(total, int) or total < len(stages):
        return [], False
    from gifd.attacks.gifd import even_split

    return list(np.cumsum(even_split(total, len(stages)), dtype=float)[:-1]), True
