"""Which directories gifd wrote: the marker file of a run or sweep directory, and the check before
one is replaced.

gifd replaces an output directory only if it is one it wrote itself: the directory holds
`gifd-run.json` (format name and version, the kind of directory, and the files gifd put there),
and nothing else but those files. A directory without the marker, or with a file gifd did not
write (a user's notes, say), is refused with the fix, so no file of the user's is ever deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch

from gifd.errors import GifdError
from gifd.imageio import save_grid, save_image, write_atomically
from gifd.update import Update, save_update

#: The marker's file name inside a directory gifd wrote.
MARKER = "gifd-run.json"
#: File name of the HTML report inside a run directory (written by gifd.report).
REPORT_NAME = "report.html"
#: Format name and version of the marker (and of the directory layout it describes).
FORMAT = "gifd-run"
VERSION = 1

Kind = Literal["run", "sweep", "audit", "reproduce"]


def stage_image_name(attack: str, stage: int, index: int) -> str:
    """Path, relative to a run directory, of image `index`'s best reconstruction after `stage`."""
    return f"images/{attack}_stage{stage}_{index:03d}.png"


def marker_content(kind: Kind, files: Iterable[str]) -> dict[str, Any]:
    """The marker of a `kind` directory holding `files` (paths relative to it, `/`-separated)."""
    return {"format": FORMAT, "version": VERSION, "kind": kind, "files": sorted(set(files))}


def write_marker(directory: Path, kind: Kind, files: Iterable[str]) -> None:
    """Write (atomically) the marker of `directory`, listing `files` as gifd's."""
    data = json.dumps(marker_content(kind, files), indent=1).encode()
    write_atomically(directory / MARKER, lambda handle: handle.write(data))


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The marker of `directory`, or None if it has none (or not one gifd can read)."""
    try:
        data = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), list):
        return None
    return data


def record_files(directory: Path, files: Iterable[str]) -> None:
    """Add `files` (just written into `directory` by gifd, e.g. report.html) to its marker."""
    marker = read_marker(directory)
    if marker is not None:
        write_marker(directory, marker["kind"], [*marker["files"], *files])


def files_below(directory: Path) -> list[str]:
    """Every file (and symbolic link) below `directory`, relative, `/`-separated, sorted."""
    found = []
    for root, dirs, names in os.walk(directory):
        base = Path(root)
        found += [(base / name).relative_to(directory).as_posix() for name in names]
        found += [(base / d).relative_to(directory).as_posix() for d in dirs if (base / d).is_symlink()]
    return sorted(found)


def foreign_files(directory: Path, marker: dict[str, Any]) -> list[str]:
    """Files below `directory` that its marker does not list (the marker itself aside)."""
    own = {*marker["files"], MARKER}
    return [name for name in files_below(directory) if name not in own]


def check_replaceable(out: Path, kind: Kind, flag: str = "--out") -> None:
    """Refuse `out` unless it is new, an empty directory, or a `kind` directory gifd wrote that
    holds nothing else, and unless it can be created. Checked before any work."""
    what = {
        "run": "a gifd run",
        "sweep": "a gifd sweep",
        "audit": "a gifd Flower audit",
        "reproduce": "a gifd reproduction",
    }[kind]
    if out.exists() and not out.is_dir():
        raise GifdError(f"{flag} {out} is a file: pass a directory path")
    if out.is_dir() and any(out.iterdir()):
        marker = read_marker(out)
        if marker is None:
            raise GifdError(
                f"{flag} {out} exists and is not {what} (it has no {MARKER}): pass a new or empty directory"
            )
        if marker.get("version") != VERSION:
            raise GifdError(
                f"{flag} {out} was written by a gifd of another format version "
                f"({marker.get('version')!r}, this gifd writes {VERSION}): pass a new or empty directory"
            )
        if marker.get("kind") != kind:
            raise GifdError(f"{flag} {out} is a gifd {marker.get('kind')}, not {what}: pass another directory")
        foreign = foreign_files(out, marker)
        if foreign and kind == "run":
            shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
            raise GifdError(
                f"{flag} {out} holds files gifd did not write ({shown}): move them out, or pass another directory"
            )
    # Where the staging directory goes (beside `out`), or the nearest folder that exists above
    # it: a probe directory made and removed there, since permission bits do not tell (root, /proc).
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    try:
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".gifd-probe-"))
    except OSError as exc:
        raise GifdError(
            f"{flag} {out} cannot be created ({parent}: {exc.strerror}): pass another path"
        ) from None


def write_run(
    out: Path,
    results: dict[str, Any],
    originals: torch.Tensor | None,
    reconstructions: dict[str, torch.Tensor],
    stage_images: dict[str, dict[int, torch.Tensor]] | None = None,
    update: Update | None = None,
) -> None:
    """Write results.json and image grids into `out`, all or nothing.

    `originals` None (an audit without the private images) writes the reconstructions alone;
    `update` (an attacked update the server received) is saved as update.pt.

    `stage_images[attack][stage]` (staged attacks) are the best images after each stage, saved as
    images/<attack>_stage<S>_NNN.png for the report's stage progression.

    Everything goes into a staging directory beside `out`, which then replaces `out` (an earlier
    run there is moved aside first and deleted last, so there is always one complete run). `out`
    must be new, empty or a gifd run holding only gifd's files (`gifd.rundir`).
    """
    out = out.resolve()
    check_replaceable(out, "run")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as exc:
        raise GifdError(f"cannot write to --out {out}: {exc.strerror}") from exc
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        (staging / "images").mkdir()
        count = next(iter(reconstructions.values())).shape[0] if originals is None else originals.shape[0]
        nrow = min(8, count)
        if originals is not None:
            save_grid(originals, staging / "originals.png", nrow=nrow)
            for i, image in enumerate(originals):
                save_image(image, staging / "images" / f"original_{i:03d}.png")
        for name, images in reconstructions.items():
            save_grid(images, staging / f"{name}.png", nrow=nrow)
            for i, image in enumerate(images):
                save_image(image, staging / "images" / f"{name}_{i:03d}.png")
        for name, by_stage in (stage_images or {}).items():
            for stage, images in by_stage.items():
                for i, image in enumerate(images):
                    save_image(image, staging / stage_image_name(name, stage, i))
        if update is not None:
            save_update(update, staging / UPDATE_FILE)
        (staging / "results.json").write_text(json.dumps(results, indent=2))
        write_marker(staging, "run", files_below(staging))
        if out.exists():
            os.replace(out, old)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


#: File name, inside a run directory, of the attacked update when it was given (gifd format).
UPDATE_FILE = "update.pt"
