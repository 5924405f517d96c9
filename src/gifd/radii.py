"""Radius schedules and radii files: what a calibration chooses among and what it writes.

Candidate schedules (`Schedule`), all scaled by the prior's own feature norms F_i (the mean
per-sample l1 norm of stage i, `radii_from_feature_norms` with fraction 1), so a schedule means the
same for any prior and stage cut:
- "linear:C": r_i = C x F_1 x i (the official GIFD shape: the absolute radius grows by a constant
  per stage, so the room relative to the feature shrinks where the features grow faster);
- "fraction:F": r_i = F x F_i (the rule of `DCGANPrior.default_radii`, F = 0.1);
- "none": no ball in the feature stages.
Stage 0 keeps the prior's default radius in every candidate (ignored for a sphere-constrained z).

A radii file (JSON, format "gifd-radii", written by `gifd calibrate`, see `gifd.calibration`) holds the
chosen radii and cut, the whole table (schedule -> PSNR per image, mean), the budget, seed and
versions. GIFD takes it as `radii: PATH` (`load_radii`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gifd.errors import GifdError
from gifd.priors.base import linear_radii

if TYPE_CHECKING:
    from gifd.priors import StagedGenerator

RADII_FORMAT = "gifd-radii"
RADII_VERSION = 1


@dataclass(frozen=True)
class Schedule:
    """One candidate radius schedule: kind "none", "fraction" or "linear" with its value."""

    kind: str
    value: float | None = None

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """`none`, `fraction:F` or `linear:C` (F, C > 0)."""
        kind, _, value = text.strip().partition(":")
        if kind == "none" and not value:
            return cls("none")
        if kind in ("fraction", "linear"):
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if math.isfinite(number) and number > 0:
                return cls(kind, number)
        raise GifdError(f"unknown radius schedule {text!r}: use none, fraction:F or linear:C with F, C > 0")

    def spec(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"

    def radii(self, norms: list[float], stage0: float) -> list[float]:
        """The radius per stage for a prior whose stages have mean l1 norms `norms`."""
        if self.kind == "none":
            return [stage0] + [math.inf] * (len(norms) - 1)
        assert self.value is not None
        if self.kind == "fraction":
            return [stage0] + [self.value * n for n in norms[1:]]
        return linear_radii(norms, self.value, stage0)


def _json_radii(radii: list[float]) -> list[float | None]:
    """Radii for JSON: no ball (inf) is null."""
    return [None if math.isinf(r) else float(r) for r in radii]


def format_table(calibration: dict[str, Any]) -> str:
    """The calibration table: cut, schedule, radii, mean PSNR (the chosen one marked)."""
    rows = [["", "cut", "schedule", "mean PSNR", "images", "radii"]]
    for row in sorted(calibration["table"], key=lambda r: (not r["complete"], -r["mean_psnr"])):
        chosen = row["cut"] == calibration["cut"] and row["schedule"] == calibration["schedule"]
        radii = ", ".join("-" if r is None else f"{r:.4g}" for r in row["radii"][1:])
        rows.append(
            [
                "*" if chosen else "",
                str(row["cut"]),
                row["schedule"],
                f"{row['mean_psnr']:.2f}",
                str(len(row["psnr"])),
                f"[-, {radii}]",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def write_radii_file(calibration: dict[str, Any], path: str | Path) -> Path:
    """Write a calibration (see `calibrate`) as a radii file, atomically."""
    from gifd.imageio import write_atomically

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GifdError(f"cannot write the radii file {path}: {exc.strerror}") from exc
    text = json.dumps(calibration, indent=2) + "\n"
    return write_atomically(path, lambda handle: handle.write(text.encode()))


def read_radii_file(path: str | Path) -> dict[str, Any]:
    """A radii file's content, checked (format, radii); one-line errors."""
    path = Path(path).expanduser()
    fix = "pass a file written by `gifd calibrate`"
    if not path.is_file():
        raise GifdError(f"radii file {path} not found: {fix}, or radii: auto")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise GifdError(f"radii file {path} is not JSON: {fix}") from None
    radii = data.get("radii") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("format") != RADII_FORMAT
        or not isinstance(radii, list)
        or not all(r is None or (isinstance(r, (int, float)) and r >= 0) for r in radii)
    ):
        raise GifdError(f"radii file {path} is not a gifd radii file (format {RADII_FORMAT!r}): {fix}")
    if int(data.get("version", -1)) > RADII_VERSION:
        raise GifdError(f"radii file {path} was written by a newer gifd: upgrade gifd")
    return data


def load_radii(path: str | Path, prior: StagedGenerator) -> list[float]:
    """The radii of a radii file for `prior`, checked against it (stage count, stage cut)."""
    data = read_radii_file(path)
    radii = [math.inf if r is None else float(r) for r in data["radii"]]
    if len(radii) != prior.num_stages:
        raise GifdError(
            f"radii file {path} holds {len(radii)} radii but the prior has {prior.num_stages} stages: "
            "calibrate for this prior with `gifd calibrate`"
        )
    cut = getattr(prior, "cut", None)
    if data.get("cut") != cut:
        raise GifdError(
            f"radii file {path} was calibrated for the stage cut {data.get('cut')!r}, the prior is cut at "
            f"{cut!r}: set prior_settings: {{cut: {data.get('cut')}}} or calibrate for this cut"
        )
    return radii


__all__ = [
    "RADII_FORMAT",
    "RADII_VERSION",
    "Schedule",
    "format_table",
    "load_radii",
    "read_radii_file",
    "write_radii_file",
]
