"""What the benchmark scripts share: atomic result files. Scripts run as `python bench/NAME.py`,
so this module is imported by its plain name."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
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


class Provenance:
    """What a benchmark records beside its numbers: its command, start time, versions, threads,
    CPU count and the load average when it started and ended. Create it when the benchmark starts."""

    def __init__(self) -> None:
        self.started = datetime.now(timezone.utc)
        self.load_before = os.getloadavg()

    def fields(self, threads: int) -> dict[str, Any]:
        """The provenance entries of the result JSON (the end load is read now)."""
        from gifd.results import versions

        return {
            "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
            "started_utc": self.started.isoformat(timespec="seconds"),
            "versions": versions(),
            "threads": threads,
            "cpu_count": os.cpu_count(),
            "load_average_before_after": [list(self.load_before), list(os.getloadavg())],
        }
