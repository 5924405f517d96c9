"""What the benchmark scripts share: atomic result files. Scripts run as `python bench/NAME.py`,
so this module is imported by its plain name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gifd.imageio import write_atomically


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda handle: handle.write(text.encode()))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(payload, indent=2) + "\n")
