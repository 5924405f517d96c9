"""Image tensors to pictures: PIL conversion, atomic saving, grids and data URIs for reports.

Images are float tensors in [0, 1], shaped C x H x W (C = 3, or 1 for grey) or N x C x H x W for
batches. torchvision is not available in this project, so the grid is written here.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gifd.errors import GifdError

__all__ = [
    "image_to_data_uri",
    "make_grid",
    "save_grid",
    "save_image",
    "to_pil",
    "upscale_nearest",
    "write_atomically",
]


def _check_single_image(image: Tensor, what: str = "image") -> Tensor:
    """`image` as C x H x W (C in {1, 3}); a H x W tensor is taken as one grey channel."""
    if not isinstance(image, Tensor):
        raise GifdError(f"{what} must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise GifdError(
            f"{what} must be shaped 3 x H x W (or 1 x H x W), got {tuple(image.shape)}: "
            "pass one image, or use make_grid/save_grid for a batch"
        )
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise GifdError(f"{what} is empty (shape {tuple(image.shape)}): pass an image with pixels")
    return image


def to_pil(image: Tensor) -> Image.Image:
    """A PIL image (RGB, or L for one channel) from a C x H x W tensor in [0, 1].

    Values are clamped to [0, 1] and rounded to 8 bits; NaN becomes 0 so that a diverged
    reconstruction is still shown instead of crashing the report.
    """
    image = _check_single_image(image)
    pixels = image.detach().to(device="cpu", dtype=torch.float32)
    pixels = torch.nan_to_num(pixels, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)
    array = (pixels * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(array[:, :, 0]), mode="L")
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


@functools.cache
def _file_mode() -> int:
    """Permission bits for a new file under the process umask (mkstemp alone would give 0600).

    Linux reports the umask in /proc without changing it; elsewhere it is read by setting and
    restoring it once (cached, so the brief window happens at most once per process).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Run `write` on a temporary file next to `path`, then rename it to `path`.

    A failure at any point leaves neither a partial `path` nor the temporary file behind; an
    existing `path` is replaced only when the new content is complete.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise GifdError(f"cannot write {path}: folder {folder} does not exist: create it first")
    fd, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(temp_name, _file_mode())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    return path


def _pil_format(path: Path) -> str:
    """PIL's format name for the extension of `path` (".png" -> "PNG")."""
    extension = path.suffix.lower()
    known = Image.registered_extensions()
    if extension not in known:
        raise GifdError(
            f"cannot save {path}: unknown image extension {extension or '(none)'!r}: "
            "end the file name with .png (lossless) or .jpg"
        )
    return known[extension]


def save_image(image: Tensor, path: str | os.PathLike[str]) -> Path:
    """Save a C x H x W image in [0, 1] to `path` (format from the extension), atomically."""
    path = Path(path)
    image_format = _pil_format(path)
    picture = to_pil(image)
    options: dict[str, object] = {"quality": 95} if image_format == "JPEG" else {}

    def write(handle: BinaryIO) -> None:
        picture.save(handle, format=image_format, **options)

    return write_atomically(path, write)


def make_grid(images: Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile N x C x H x W images into one C x H' x W' image, `nrow` images per row.

    Same layout as torchvision's make_grid: a border of `padding` pixels of `pad_value` around
    and between the cells, rows filled left to right, unused cells of the last row left as
    padding. A single C x H x W image is treated as a batch of one.
    """
    if not isinstance(images, Tensor):
        raise GifdError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[0] == 0:
        raise GifdError(
            f"images must be shaped N x C x H x W with N >= 1, got {tuple(images.shape)}: "
            "pass a non-empty batch"
        )
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise GifdError(f"nrow must be a positive integer, got {nrow!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise GifdError(f"padding must be a non-negative integer, got {padding!r}")
    count, channels, height, width = images.shape
    columns = min(nrow, count)
    rows = math.ceil(count / columns)
    cell_height, cell_width = height + padding, width + padding
    grid = images.new_full(
        (channels, rows * cell_height + padding, columns * cell_width + padding), float(pad_value)
    )
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * cell_height + padding, column * cell_width + padding
        grid[:, top : top + height, left : left + width] = images[index]
    return grid


def save_grid(
    images: Tensor,
    path: str | os.PathLike[str],
    nrow: int = 8,
    padding: int = 2,
    pad_value: float = 1.0,
) -> Path:
    """Save a batch of images as one grid picture (see make_grid), atomically."""
    return save_image(make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value), path)


def image_to_data_uri(image: Tensor) -> str:
    """A `data:image/png;base64,...` URI of the image, to embed in a self-contained HTML report."""
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def upscale_nearest(image: Tensor, min_side: int) -> Tensor:
    """Enlarge by the smallest integer factor that makes the shorter side at least `min_side`.

    Nearest-neighbour with an integer factor keeps every pixel a crisp square, so a 32 x 32
    reconstruction stays readable in a report. Works on C x H x W and N x C x H x W; an image
    already large enough is returned unchanged.
    """
    if not isinstance(image, Tensor) or image.dim() < 2:
        raise GifdError("image must be a tensor whose last two dimensions are height and width")
    if isinstance(min_side, bool) or not isinstance(min_side, int) or min_side < 1:
        raise GifdError(f"min_side must be a positive integer, got {min_side!r}")
    shorter = min(image.shape[-2], image.shape[-1])
    if shorter == 0:
        raise GifdError(f"image is empty (shape {tuple(image.shape)}): pass an image with pixels")
    factor = math.ceil(min_side / shorter)
    if factor <= 1:
        return image
    return image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
