"""Image sources for the client's private batch: built-in real photos, a folder, a list of files.

Nothing is ever downloaded. The built-in sets are files that installed packages ship:

- foolbox 3.3.4's `foolbox/data/` folder (read as files; foolbox is never imported): 20 images
  each from CIFAR-10, CIFAR-100, ImageNet, MNIST and Fashion-MNIST, the label being the last
  number in the file name (`cifar10_03_0.png` is image 3, class 0);
- scikit-image's bundled photos (those that load without pooch) and matplotlib's
  `grace_hopper.jpg`, without labels;
- scikit-image's `lfw_subset` faces (25 x 25 grey), without labels.

Every image goes through the same preparation (`prepare_image`); reading one image, folders and
file lists are in `gifd.image_paths`.

`load_images("builtin:cifar10", 32, indices=[0, 1])`, `load_images("~/photos", 64)` and
`load_images("a.png,b.jpg", 64)` all return an `ImageSet`.
"""

from __future__ import annotations

import importlib.util
import operator
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gifd.errors import GifdError
from gifd.image_paths import (
    _SPEC_HELP,
    FOLDER_IMAGE_EXTENSIONS,
    _Catalog,
    _check_resolution,
    _Entry,
    _paths_catalog,
    _read_image_file,
    prepare_image,
)
from gifd.registry import Registry

__all__ = [
    "FOLDER_IMAGE_EXTENSIONS",
    "FOOLBOX_INSTALL_COMMAND",
    "ImageSet",
    "builtin_sources",
    "load_images",
    "prepare_image",
]

#: The one command that installs the foolbox sample images (its code and dependencies are unused).
FOOLBOX_INSTALL_COMMAND = "pip install --no-deps foolbox==3.3.4"


@dataclass
class ImageSet:
    """A batch of images with what is known about them.

    images: N x 3 x R x R float32 in [0, 1]; labels: N class indices (long) in the source's own
    label space, or None when the source has no labels; names: one per image (file or photo
    name); num_classes: size of the label space, or None; source: the spec it was loaded from.
    """

    images: Tensor
    labels: Tensor | None
    names: list[str]
    num_classes: int | None
    source: str

    def __post_init__(self) -> None:
        images = self.images
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise GifdError(f"ImageSet images must be N x 3 x H x W, got {shape}: pass RGB images")
        if not images.is_floating_point():
            raise GifdError(
                f"ImageSet images must be floating point in [0, 1], got {images.dtype}: divide by 255"
            )
        count = images.shape[0]
        if len(self.names) != count:
            raise GifdError(f"ImageSet has {count} images but {len(self.names)} names: give one name each")
        if self.labels is not None:
            if self.labels.shape != (count,) or self.labels.dtype != torch.long:
                raise GifdError(
                    f"ImageSet labels must be a long tensor of shape ({count},), got "
                    f"{self.labels.dtype} {tuple(self.labels.shape)}"
                )
            in_range = count == 0 or (
                int(self.labels.min()) >= 0
                and (self.num_classes is None or int(self.labels.max()) < self.num_classes)
            )
            if not in_range:
                allowed = "non-negative" if self.num_classes is None else f"in 0..{self.num_classes - 1}"
                raise GifdError(
                    f"ImageSet labels must be {allowed}, got {self.labels.tolist()}: "
                    "check the labels or num_classes"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def resolution(self) -> int:
        """Side length of the (square) images in pixels."""
        return int(self.images.shape[-1])


# --------------------------------------------------------------------------------------------
# Built-in sources: catalogues (see gifd.image_paths) of the files that installed packages ship


_BUILTINS: Registry[_Catalog] = Registry("built-in image source")
_DESCRIPTIONS: dict[str, str] = {}


def _builtin(name: str, description: str) -> Callable[[Callable[[], _Catalog]], Callable[[], _Catalog]]:
    """Register a catalogue factory under `builtin:<name>` with a one-line description."""

    def decorate(factory: Callable[[], _Catalog]) -> Callable[[], _Catalog]:
        _DESCRIPTIONS[name] = description
        return _BUILTINS.register(name)(factory)

    return decorate


def builtin_sources() -> dict[str, str]:
    """Name -> one-line description of every built-in source (use as `builtin:NAME`)."""
    return {name: _DESCRIPTIONS[name] for name in _BUILTINS.names()}


def _foolbox_data_dir() -> Path:
    """foolbox's `data/` folder, found without importing foolbox."""
    missing = GifdError(
        "the built-in CIFAR/ImageNet/MNIST images come from foolbox's data files, which are not "
        f"installed: run `{FOOLBOX_INSTALL_COMMAND}` (only its image files are read)"
    )
    try:
        spec = importlib.util.find_spec("foolbox")
    except (ImportError, ValueError) as exc:
        raise missing from exc
    if spec is None:
        raise missing
    roots = list(spec.submodule_search_locations or [])
    if spec.origin:
        roots.append(str(Path(spec.origin).parent))
    for root in roots:
        folder = Path(root) / "data"
        if folder.is_dir():
            return folder
    raise missing


def _foolbox_catalog(prefix: str, num_classes: int) -> _Catalog:
    """foolbox's `<prefix>_<index>_<label>.<ext>` files, ordered by index."""
    folder = _foolbox_data_dir()
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)_(\d+)\.(png|jpg|jpeg)$")
    found: list[tuple[int, str, int]] = []
    for file_name in os.listdir(folder):
        match = pattern.match(file_name)
        if match:
            found.append((int(match.group(1)), file_name, int(match.group(2))))
    if not found:
        raise GifdError(
            f"no {prefix}_*.png/jpg images in {folder}: reinstall them with `{FOOLBOX_INSTALL_COMMAND}`"
        )
    found.sort()
    entries = []
    for _, file_name, label in found:
        if label >= num_classes:
            raise GifdError(
                f"{folder / file_name} has label {label} outside 0..{num_classes - 1}: "
                f"reinstall the files with `{FOOLBOX_INSTALL_COMMAND}`"
            )
        path = folder / file_name
        entries.append(
            _Entry(
                file_name,
                label,
                lambda path=path: _read_image_file(path, f"reinstall with `{FOOLBOX_INSTALL_COMMAND}`"),
            )
        )
    return _Catalog(entries, num_classes)


@_builtin("cifar10", "20 CIFAR-10 test images (32x32, labels 0-9), shipped with foolbox 3.3.4")
def _cifar10() -> _Catalog:
    return _foolbox_catalog("cifar10", 10)


@_builtin("cifar100", "20 CIFAR-100 test images (32x32, labels 0-99), shipped with foolbox 3.3.4")
def _cifar100() -> _Catalog:
    return _foolbox_catalog("cifar100", 100)


@_builtin(
    "imagenet", "20 ImageNet photos (mostly 512x512, ImageNet class index 0-999), shipped with foolbox 3.3.4"
)
def _imagenet() -> _Catalog:
    return _foolbox_catalog("imagenet", 1000)


@_builtin("mnist", "20 MNIST digits (28x28 grey -> RGB, labels 0-9), shipped with foolbox 3.3.4")
def _mnist() -> _Catalog:
    return _foolbox_catalog("mnist", 10)


@_builtin(
    "fashion_mnist", "20 Fashion-MNIST items (28x28 grey -> RGB, labels 0-9), shipped with foolbox 3.3.4"
)
def _fashion_mnist() -> _Catalog:
    return _foolbox_catalog("fashionMNIST", 10)


def _skimage_array(function_name: str, part: int | None = None) -> np.ndarray:
    """An image that scikit-image bundles in its wheel (no pooch, no download)."""
    try:
        import skimage.data as skimage_data

        array = getattr(skimage_data, function_name)()
    except Exception as exc:  # ImportError, or pooch missing for a file not in the wheel
        raise GifdError(
            f"scikit-image's bundled image {function_name!r} cannot be loaded offline ({exc}): "
            "reinstall scikit-image (`pip install --force-reinstall scikit-image`)"
        ) from exc
    return array[part] if part is not None else array


def _skimage_photo(function_name: str, part: int | None = None) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(_skimage_array(function_name, part)))


def _grace_hopper() -> Image.Image:
    try:
        import matplotlib.cbook

        path = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except Exception as exc:
        raise GifdError(
            f"matplotlib's sample image grace_hopper.jpg is missing ({exc}): reinstall matplotlib"
        ) from exc
    return _read_image_file(path, "reinstall matplotlib")


#: Real photographs bundled with scikit-image (checked to load without pooch) and matplotlib.
_PHOTOS: list[tuple[str, Callable[[], Image.Image]]] = [
    ("astronaut", lambda: _skimage_photo("astronaut")),
    ("camera", lambda: _skimage_photo("camera")),
    ("chelsea", lambda: _skimage_photo("chelsea")),
    ("coffee", lambda: _skimage_photo("coffee")),
    ("rocket", lambda: _skimage_photo("rocket")),
    ("motorcycle", lambda: _skimage_photo("stereo_motorcycle", part=0)),
    ("hubble_deep_field", lambda: _skimage_photo("hubble_deep_field")),
    ("immunohistochemistry", lambda: _skimage_photo("immunohistochemistry")),
    ("retina", lambda: _skimage_photo("retina")),
    ("grace_hopper", _grace_hopper),
]


@_builtin(
    "photos",
    f"{len(_PHOTOS)} real photos bundled with scikit-image and matplotlib (astronaut, cat, coffee, "
    "Grace Hopper, ...), no labels",
)
def _photos() -> _Catalog:
    return _Catalog([_Entry(name, None, read) for name, read in _PHOTOS], None)


_LFW_FACE_COUNT = 100  # scikit-image's lfw_subset: 100 faces, then 100 non-faces


def _lfw_face(index: int) -> Image.Image:
    faces = _skimage_array("lfw_subset")
    grey = np.clip(np.round(faces[index] * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L")


@_builtin(
    "lfw_faces",
    f"{_LFW_FACE_COUNT} face crops from Labeled Faces in the Wild (25x25 grey -> RGB, scikit-image), "
    "no labels",
)
def _lfw_faces() -> _Catalog:
    entries = [
        _Entry(f"lfw_face_{index:03d}", None, lambda index=index: _lfw_face(index))
        for index in range(_LFW_FACE_COUNT)
    ]
    return _Catalog(entries, None)


# --------------------------------------------------------------------------------------------
# The entry point


def _select(catalog: _Catalog, indices: Sequence[int] | None, source: str) -> list[_Entry]:
    entries = catalog.entries
    if indices is None:
        return list(entries)
    if isinstance(indices, str | bytes) or not isinstance(indices, Sequence | np.ndarray | Tensor):
        raise GifdError(f"indices must be a list of integers, got {indices!r}")
    chosen = []
    for raw in list(indices):
        try:
            index = operator.index(raw.item() if isinstance(raw, Tensor | np.generic) else raw)
        except TypeError as exc:
            raise GifdError(f"image index {raw!r} is not an integer: pass whole numbers") from exc
        if isinstance(raw, bool) or not 0 <= index < len(entries):
            raise GifdError(
                f"image index {raw!r} is out of range: {source} has {len(entries)} images "
                f"(valid indices 0..{len(entries) - 1})"
            )
        chosen.append(entries[index])
    if not chosen:
        raise GifdError(f"no images selected from {source}: pass at least one index, or none for all")
    return chosen


def load_images(spec: str, resolution: int, indices: Sequence[int] | None = None) -> ImageSet:
    """Load images from `spec` at `resolution` x `resolution`.

    spec: `builtin:NAME` (see builtin_sources()), a folder (its png/jpg/jpeg/bmp/webp files,
    sorted by name), or one or more comma-separated image files. indices: which images of the
    source to take, in that order (None = all). Labels are the source's own (None for folders,
    files and the unlabelled built-ins).
    """
    _check_resolution(resolution)
    resolution = int(resolution)
    if not isinstance(spec, str | os.PathLike):
        raise GifdError(f"image source must be a string, got {type(spec).__name__}: {_SPEC_HELP}")
    spec = os.fspath(spec).strip()
    if not spec:
        raise GifdError(f"empty image source: {_SPEC_HELP}")
    if spec.lower().startswith("builtin:"):
        name = spec.split(":", 1)[1].strip().lower().replace("-", "_")
        catalog = _BUILTINS.create(name)
        source = f"builtin:{name}"
    else:
        catalog = _paths_catalog(spec, _BUILTINS)
        source = spec
    chosen = _select(catalog, indices, source)
    images = torch.stack([prepare_image(entry.read(), resolution) for entry in chosen])
    labels = None
    if all(entry.label is not None for entry in chosen):
        labels = torch.tensor([entry.label for entry in chosen], dtype=torch.long)
    return ImageSet(
        images=images,
        labels=labels,
        names=[entry.name for entry in chosen],
        num_classes=catalog.num_classes,
        source=source,
    )
