"""The one exception users see: a problem with their input, and how to fix it."""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class GifdError(ValueError):
    """Bad input or a missing resource. The message names the problem and the fix.

    The CLI prints it as a single line and exits with code 2; the library raises it instead of
    letting a shape or type error surface from deep inside torch.
    """


def list_some(keys: list[str], limit: int = 5) -> str:
    """`keys` for an error message: the first `limit` names and how many more, or "none"."""
    if not keys:
        return "none"
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_torch_file(
    path: str | os.PathLike[str],
    what: str,
    fix: str,
    *,
    mmap: bool = False,
    safe_globals: Sequence[Any] = (),
) -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)` of a user-supplied file.

    Every way that fails becomes one GifdError that names the file (`what`, e.g. "victim weights",
    then `path`), the problem and `fix`, instead of a torch traceback:

    * missing: "<what> <path> not found: <fix>"; a directory: "<what> <path> is a directory, not a
      file: <fix>";
    * any exception of torch.load (torch raises RuntimeError, UnpicklingError, EOFError, ... on a
      truncated or foreign file): "<what> <path> could not be read because it is corrupt or not a
      torch file (<exception class>: <its first sentence>): <fix>".

    `mmap` memory-maps the tensors of a zip-format file (large checkpoints; legacy files are read
    normally); `safe_globals` are extra classes the weights-only unpickler may build, for this load
    only. torch is imported here so that importing gifd.errors stays cheap.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise GifdError(f"{what} {path} not found: {fix}")
    if path.is_dir():
        raise GifdError(f"{what} {path} is a directory, not a file: {fix}")
    allowed = (
        torch.serialization.safe_globals(list(safe_globals)) if safe_globals else contextlib.nullcontext()
    )
    try:
        with allowed:
            return torch.load(
                path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path)
            )
    except Exception as exc:
        text = str(exc).strip()
        # The first sentence only: torch's long advice (e.g. "re-run with weights_only=False") is unsafe.
        reason = type(exc).__name__ + (": " + text.splitlines()[0].split(". ")[0][:150] if text else "")
        raise GifdError(
            f"{what} {path} could not be read because it is corrupt or not a torch file ({reason}): {fix}"
        ) from exc
