"""Image sources given as paths, and how every image is read and prepared.

A source is a catalogue (`_Catalog`): the images it offers as entries read lazily, so that the
chosen `indices` decide what is decoded. Here: a folder (its image files, sorted by name) and one or
more comma-separated image files; `gifd.data` adds the built-in sources and `load_images`.

Every image goes through the same preparation: EXIF orientation applied, converted to RGB (grey
replicated to three channels, transparency composited on white), centre-cropped to a square, and
resized to the victim's resolution with PIL's LANCZOS filter when shrinking (antialiased: the
filter support is scaled by the shrink factor) or BICUBIC when enlarging; an image already at the
resolution is left untouched. Pixels are 8-bit, so every value is a multiple of 1/255.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from gifd.errors import GifdError

#: File types read from an image folder (any other file in the folder is an error).
FOLDER_IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")


def _check_resolution(resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer) or resolution < 1:
        raise GifdError(f"resolution must be a positive integer number of pixels, got {resolution!r}")


# --------------------------------------------------------------------------------------------
# Reading and preparing one image


def _to_rgb(picture: Image.Image) -> Image.Image:
    """8-bit RGB: grey replicated, 16-bit grey scaled down, transparency composited on white."""
    mode = picture.mode
    if mode == "RGB":
        return picture
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(picture, dtype=np.float64)
        if mode.startswith("I;16"):
            values = values / 257.0
        elif mode == "I" and values.size and values.max() > 255:
            values = values / 257.0  # a 16-bit image stored as 32-bit integers
        elif mode == "F" and values.size and values.max() <= 1.0:
            values = values * 255.0  # floats in [0, 1]
        grey = np.clip(np.round(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "P":
        picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
    elif mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return picture.convert("RGB")
    if picture.mode == "RGB":
        return picture
    # Everything left carries alpha (RGBA, LA, La, RGBa, PA): composite on white.
    rgba = picture.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def prepare_image(picture: Image.Image, resolution: int) -> Tensor:
    """A 3 x R x R float32 tensor in [0, 1]: RGB, centre-cropped to a square, resized.

    Shrinking uses LANCZOS (antialiased), enlarging BICUBIC; a square image already at the
    resolution keeps its exact pixels.
    """
    _check_resolution(resolution)
    picture = _to_rgb(picture)
    width, height = picture.size
    side = min(width, height)
    if side == 0:
        raise GifdError("image has no pixels: pass a non-empty image")
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        picture = picture.crop((left, top, left + side, top + side))
    if side > resolution:
        picture = picture.resize((resolution, resolution), Image.Resampling.LANCZOS)
    elif side < resolution:
        picture = picture.resize((resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(picture, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


def _read_image_file(path: Path, fix: str) -> Image.Image:
    """Decode the whole file now (so truncation is caught here), with EXIF orientation applied."""
    try:
        with Image.open(path) as opened:
            opened.load()
            picture = ImageOps.exif_transpose(opened)
            picture.load()
            return picture
    except FileNotFoundError as exc:
        raise GifdError(f"image file {path} does not exist: check the path") from exc
    except IsADirectoryError as exc:
        raise GifdError(f"{path} is a folder, not an image file: {fix}") from exc
    except PermissionError as exc:
        raise GifdError(f"cannot read {path} (permission denied): make it readable or {fix}") from exc
    except UnidentifiedImageError as exc:
        raise GifdError(f"{path} is not an image (PIL cannot read it): {fix}") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        reason = str(exc) or type(exc).__name__
        raise GifdError(
            f"{path} is corrupt or truncated ({reason}): re-save it as PNG or JPEG, or {fix}"
        ) from exc


# --------------------------------------------------------------------------------------------
# Catalogues: the images a source offers, read lazily so that `indices` decides what is decoded


@dataclass(frozen=True)
class _Entry:
    name: str
    label: int | None
    read: Callable[[], Image.Image]


@dataclass(frozen=True)
class _Catalog:
    entries: list[_Entry]
    num_classes: int | None


# --------------------------------------------------------------------------------------------
# Folders and file lists

_SPEC_HELP = "pass an existing folder, comma-separated image files, or builtin:NAME"


def _file_entry(path: Path, fix: str) -> _Entry:
    return _Entry(path.name, None, lambda: _read_image_file(path, fix))


def _folder_catalog(folder: Path) -> _Catalog:
    """The images of a folder (not recursive), sorted by file name; hidden files are ignored."""
    fix = "remove it from the folder or pass files explicitly"
    try:
        children = sorted(folder.iterdir(), key=lambda child: child.name)
    except OSError as exc:
        raise GifdError(f"cannot list folder {folder} ({exc}): check its permissions") from exc
    entries = []
    for child in children:
        if child.name.startswith(".") or not child.is_file():
            continue
        if child.suffix.lower() not in FOLDER_IMAGE_EXTENSIONS:
            kinds = ", ".join(FOLDER_IMAGE_EXTENSIONS)
            try:
                with Image.open(child) as probe:
                    image_format = probe.format
            except Exception as exc:
                raise GifdError(f"{child} is not an image (PIL cannot read it): {fix}") from exc
            raise GifdError(
                f"{child} is a {image_format} image, but image folders are read for {kinds} files "
                f"only: convert it to PNG, or {fix}"
            )
        entries.append(_file_entry(child, fix))
    if not entries:
        raise GifdError(
            f"folder {folder} holds no images ({', '.join(FOLDER_IMAGE_EXTENSIONS)}): "
            f"add images to it, or {_SPEC_HELP}"
        )
    return _Catalog(entries, None)


def _paths_catalog(spec: str, builtin_names: Container[str] = ()) -> _Catalog:
    """A folder, one image file, or comma-separated image files (`builtin_names`: the built-in
    sources, named in the error for a missing path that is one of them)."""
    whole = Path(spec).expanduser()
    if whole.exists():
        if whole.is_dir():
            return _folder_catalog(whole)
        return _Catalog([_file_entry(whole, "pass a readable image file instead")], None)
    parts = [part.strip() for part in spec.split(",")] if "," in spec else [spec]
    if "," in spec and not all(parts):
        raise GifdError(f"empty file name in the list {spec!r}: separate image files with single commas")
    entries = []
    for part in parts:
        path = Path(part).expanduser()
        if not path.exists():
            hint = ""
            if part.lower().replace("-", "_") in builtin_names:
                hint = f" (did you mean builtin:{part.lower().replace('-', '_')}?)"
            raise GifdError(f"image path {part!r} does not exist{hint}: {_SPEC_HELP}")
        if path.is_dir():
            raise GifdError(
                f"{part!r} in the list {spec!r} is a folder: pass a folder on its own, or list image files"
            )
        entries.append(_file_entry(path, "remove it from the list"))
    return _Catalog(entries, None)


__all__ = ["FOLDER_IMAGE_EXTENSIONS", "prepare_image"]
