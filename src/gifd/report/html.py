"""Page-building helpers of the reports: escaping, number formats, embedded images, styles."""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gifd.errors import GifdError
from gifd.imageio import image_to_data_uri, upscale_nearest
from gifd.metrics.info import METRIC_INFO

if TYPE_CHECKING:
    from gifd.report.view import RunView


#: Shorter side, in pixels, that images are enlarged to (nearest neighbour, integer factor).
MIN_IMAGE_SIDE = 96


CSS = """
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


def img_tag(run: RunView, relative: str, alt: str) -> str:
    """An <img> with the PNG at `relative` enlarged and embedded, or a placeholder if it is absent."""
    path = run.png(relative)
    if path is None:
        return f'<span class="missing" title="{escape(relative)} not found">missing</span>'
    try:
        uri, width, height = embedded_png(path)
    except GifdError as exc:
        return f'<span class="missing" title="{escape(str(exc))}">unreadable</span>'
    return f'<img class="px" src="{uri}" width="{width}" height="{height}" alt="{escape(alt)}">'


def embedded_png(path: Path) -> tuple[str, int, int]:
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


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def as_number(value: Any) -> float | None:
    """A finite float, or None (missing, None or non-numeric)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def metric_value(values: dict[str, Any], key: str, index: int | None = None) -> float | None:
    """A metric from a summary (or item `index` of its list); a recorded PSNR of None is infinite.

    results.json stores non-finite numbers as null: for PSNR that is an exact reconstruction.
    """
    if key not in values:
        return None
    value = values[key] if index is None else item_at(values[key], index, math.nan)
    if key == "psnr" and value is None:
        return math.inf
    return as_number(value)


def metric_column(key: str) -> tuple[str, bool | None, str]:
    """Header, better direction and format of a metric column (an unknown key: its name, none)."""
    info = METRIC_INFO.get(key)
    return (info.header, info.higher_is_better, info.fmt) if info else (key, None, "{:.4g}")


def best_values(values: Sequence[float | None], higher: bool | None) -> set[float]:
    """The best of `values` (as a set, ties included); empty when there is nothing to compare."""
    finite = [v for v in values if v is not None]
    if higher is None or len(values) < 2 or not finite:
        return set()
    return {max(finite) if higher else min(finite)}


def format_value(value: float | None, fmt: str, key: str) -> str:
    if value is None:
        return "–"
    if value == math.inf:
        return "∞"
    if fmt == "{:d}":
        return str(int(value))
    return fmt.format(value)


def item_at(values: Any, index: int, default: Any = None) -> Any:
    return values[index] if isinstance(values, list) and 0 <= index < len(values) else default


def list_text(values: Any) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]" if isinstance(values, list | tuple) else str(values)


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def now_text() -> str:
    return dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def html_page(title: str, sections: Sequence[str]) -> str:
    """A whole self-contained HTML document: the title, the inline styles, the non-empty sections."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body>\n</html>\n"
    )
