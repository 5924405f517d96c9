"""Image sources (gifd.data) and image files (gifd.imageio)."""

from __future__ import annotations

import importlib.util
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gifd import data as data_module
from gifd.data import FOOLBOX_INSTALL_COMMAND, ImageSet, builtin_sources, load_images, prepare_image
from gifd.errors import GifdError
from gifd.imageio import (
    image_to_data_uri,
    make_grid,
    save_grid,
    save_image,
    to_pil,
    upscale_nearest,
    write_atomically,
)

FOOLBOX_DATA = Path(next(iter(importlib.util.find_spec("foolbox").submodule_search_locations))) / "data"

# (source, count, num_classes, first three labels as printed in the shipped file names)
LABELLED_SOURCES = [
    ("cifar10", 20, 10, [3, 8, 8]),  # cifar10_00_3.png, cifar10_01_8.png, cifar10_02_8.png
    ("cifar100", 20, 100, [49, 33, 72]),
    ("imagenet", 20, 1000, [243, 559, 438]),
    ("mnist", 20, 10, [7, 2, 1]),
    ("fashion_mnist", 20, 10, [9, 2, 1]),
]


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path)
    return path


def as_unit(array: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x H x W float in [0, 1], independently of gifd."""
    return torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1)


# ------------------------------------------------------------------------------ built-in sources


def test_builtin_sources_lists_every_source_with_a_description() -> None:
    sources = builtin_sources()
    assert set(sources) == {
        "cifar10",
        "cifar100",
        "imagenet",
        "mnist",
        "fashion_mnist",
        "photos",
        "lfw_faces",
    }
    assert all(isinstance(text, str) and text and "\n" not in text for text in sources.values())


@pytest.mark.parametrize(("name", "count", "num_classes", "first_labels"), LABELLED_SOURCES)
def test_labelled_builtin_loads_with_labels_from_file_names(
    name: str, count: int, num_classes: int, first_labels: list[int]
) -> None:
    image_set = load_images(f"builtin:{name}", 32)
    assert image_set.images.shape == (count, 3, 32, 32)
    assert image_set.images.dtype == torch.float32
    assert float(image_set.images.min()) >= 0.0 and float(image_set.images.max()) <= 1.0
    assert float(image_set.images.std()) > 0.05  # real pictures, not blanks
    assert image_set.labels is not None and image_set.labels.dtype == torch.long
    assert image_set.labels.shape == (count,)
    assert image_set.labels[:3].tolist() == first_labels
    assert image_set.num_classes == num_classes
    assert image_set.source == f"builtin:{name}"
    assert len(image_set.names) == count and len(image_set) == count
    # Files are ordered by their index, and each label is the file name's last number.
    for position, (file_name, label) in enumerate(
        zip(image_set.names, image_set.labels.tolist(), strict=True)
    ):
        stem = file_name.rsplit(".", 1)[0]
        assert int(stem.split("_")[-2]) == position
        assert int(stem.split("_")[-1]) == label
        assert (FOOLBOX_DATA / file_name).is_file()


def test_cifar10_at_native_resolution_keeps_exact_pixels() -> None:
    image_set = load_images("builtin:cifar10", 32, indices=[5])
    reference = np.asarray(Image.open(FOOLBOX_DATA / image_set.names[0]).convert("RGB"))
    assert torch.equal(image_set.images[0], as_unit(reference))


def test_mnist_grey_becomes_three_equal_channels() -> None:
    image_set = load_images("builtin:mnist", 28, indices=[0])
    image = image_set.images[0]
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    reference = np.asarray(Image.open(FOOLBOX_DATA / "mnist_00_7.png"))
    assert reference.ndim == 2
    assert torch.equal(image[0], torch.from_numpy(reference.astype(np.float32) / 255.0))


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("name", ["cifar10", "imagenet", "photos", "lfw_faces"])
def test_builtin_resizes_to_resolution(name: str, resolution: int) -> None:
    image_set = load_images(f"builtin:{name}", resolution, indices=[0, 1])
    assert image_set.images.shape == (2, 3, resolution, resolution)
    assert float(image_set.images.min()) >= 0.0 and float(image_set.images.max()) <= 1.0


def test_unlabelled_builtins_have_no_labels() -> None:
    photos = load_images("builtin:photos", 32)
    assert photos.labels is None and photos.num_classes is None
    assert len(photos) >= 10
    assert {"astronaut", "chelsea", "coffee", "grace_hopper"} <= set(photos.names)
    faces = load_images("builtin:lfw_faces", 32, indices=[0])
    assert faces.labels is None and faces.num_classes is None


def test_indices_select_in_the_given_order() -> None:
    everything = load_images("builtin:cifar10", 32)
    chosen = load_images("builtin:cifar10", 32, indices=[7, 0, 7])
    assert chosen.names == [everything.names[7], everything.names[0], everything.names[7]]
    assert torch.equal(chosen.images, everything.images[[7, 0, 7]])
    assert chosen.labels.tolist() == everything.labels[[7, 0, 7]].tolist()
    numpy_indices = load_images("builtin:cifar10", 32, indices=np.array([3]))
    assert numpy_indices.names == [everything.names[3]]


def test_builtin_name_is_case_and_dash_tolerant() -> None:
    assert load_images("builtin:Fashion-MNIST", 32, indices=[0]).source == "builtin:fashion_mnist"


@pytest.mark.parametrize("indices", [[20], [-1], [0, 25]])
def test_index_out_of_range_says_how_many_images(indices: list[int]) -> None:
    with pytest.raises(GifdError, match=r"has 20 images \(valid indices 0\.\.19\)"):
        load_images("builtin:cifar10", 32, indices=indices)


def test_bad_indices_and_resolution_are_user_errors() -> None:
    with pytest.raises(GifdError, match="no images selected"):
        load_images("builtin:cifar10", 32, indices=[])
    with pytest.raises(GifdError, match="not an integer"):
        load_images("builtin:cifar10", 32, indices=[1.5])
    for resolution in (0, -3, 2.5, True):
        with pytest.raises(GifdError, match="resolution must be a positive integer"):
            load_images("builtin:cifar10", resolution)


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(GifdError) as caught:
        load_images("builtin:cifar11", 32)
    message = str(caught.value)
    assert "cifar11" in message
    for name in builtin_sources():
        assert name in message


def test_builtin_name_without_prefix_gets_a_hint() -> None:
    with pytest.raises(GifdError, match=r"did you mean builtin:cifar10\?"):
        load_images("cifar10", 32)


def test_missing_foolbox_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec_without_foolbox(name: str, *args: object, **kwargs: object) -> object:
        return None if name == "foolbox" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(data_module.importlib.util, "find_spec", find_spec_without_foolbox)
    with pytest.raises(GifdError) as caught:
        load_images("builtin:mnist", 32)
    assert f"`{FOOLBOX_INSTALL_COMMAND}`" in str(caught.value)
    assert FOOLBOX_INSTALL_COMMAND == "pip install --no-deps foolbox==3.3.4"


def test_builtins_never_import_foolbox() -> None:
    import sys

    load_images("builtin:imagenet", 32, indices=[0])
    assert "foolbox" not in sys.modules


# ------------------------------------------------------------------------------ folders and files


def test_folder_loads_images_sorted_by_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {name: rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for name in ("b.png", "a.png", "c.bmp")}
    for name, array in arrays.items():
        Image.fromarray(array).save(tmp_path / name)  # format from the extension (PNG or BMP)
    (tmp_path / ".hidden").write_text("ignored")
    (tmp_path / "subfolder").mkdir()
    image_set = load_images(str(tmp_path), 16)
    assert image_set.names == ["a.png", "b.png", "c.bmp"]
    assert image_set.labels is None and image_set.num_classes is None
    for position, name in enumerate(image_set.names):
        assert torch.equal(image_set.images[position], as_unit(arrays[name]))
    assert load_images(str(tmp_path), 16, indices=[2]).names == ["c.bmp"]


def test_comma_separated_files_keep_their_order(tmp_path: Path) -> None:
    first = write_png(tmp_path / "one.png", np.full((8, 8, 3), 10, dtype=np.uint8))
    second = write_png(tmp_path / "two.png", np.full((8, 8, 3), 200, dtype=np.uint8))
    image_set = load_images(f"{second}, {first}", 8)
    assert image_set.names == ["two.png", "one.png"]
    assert torch.allclose(image_set.images[0], torch.full((3, 8, 8), 200 / 255))
    assert torch.allclose(image_set.images[1], torch.full((3, 8, 8), 10 / 255))
    single = load_images(str(first), 4)
    assert single.images.shape == (1, 3, 4, 4)


def test_centre_crop_then_resize(tmp_path: Path) -> None:
    # 128 wide x 64 high: blue side strips of 32 px around a red 64 x 64 centre.
    array = np.zeros((64, 128, 3), dtype=np.uint8)
    array[:, :, 2] = 255
    array[:, 32:96] = (255, 0, 0)
    path = write_png(tmp_path / "wide.png", array)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    exact = load_images(str(path), 64).images[0]
    assert torch.equal(exact, red.expand(3, 64, 64))
    smaller = load_images(str(path), 32).images[0]
    assert torch.allclose(smaller, red.expand(3, 32, 32), atol=1 / 255)
    # Tall image: crop keeps the vertical centre.
    tall = np.zeros((90, 30, 3), dtype=np.uint8)
    tall[30:60] = 255
    assert torch.equal(
        load_images(str(write_png(tmp_path / "tall.png", tall)), 30).images[0], torch.ones(3, 30, 30)
    )


def test_downscale_is_antialiased(tmp_path: Path) -> None:
    # A one-pixel checkerboard shrunk 4x must become a flat mid grey, not aliased stripes.
    board = ((np.indices((64, 64)).sum(axis=0) % 2) * 255).astype(np.uint8)
    image = load_images(str(write_png(tmp_path / "board.png", board)), 16).images[0]
    assert torch.allclose(image, torch.full_like(image, 0.5), atol=0.03)


def test_grey_and_rgba_become_rgb(tmp_path: Path) -> None:
    grey = write_png(tmp_path / "grey.png", np.array([[0, 128], [255, 64]], dtype=np.uint8), mode="L")
    image = load_images(str(grey), 2).images[0]
    expected = torch.tensor([[0, 128], [255, 64]], dtype=torch.float32) / 255
    assert torch.equal(image, expected.expand(3, 2, 2))

    rgba = np.array([[[255, 0, 0, 255], [0, 0, 255, 0]], [[0, 255, 0, 128], [0, 0, 0, 255]]], dtype=np.uint8)
    image = load_images(str(write_png(tmp_path / "rgba.png", rgba, mode="RGBA")), 2).images[0]
    assert torch.equal(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # opaque red stays red
    assert torch.equal(image[:, 0, 1], torch.ones(3))  # fully transparent -> white
    half = 127 / 255  # 128/255 green over white: green 1, red and blue (255 * 127 / 255) / 255
    assert torch.allclose(image[:, 1, 0], torch.tensor([half, 1.0, half]), atol=1.5 / 255)
    assert torch.equal(image[:, 1, 1], torch.zeros(3))

    grey_alpha = np.array([[[0, 0], [0, 255]]], dtype=np.uint8).reshape(1, 2, 2)
    image = load_images(str(write_png(tmp_path / "la.png", grey_alpha, mode="LA")), 1).images[0]
    assert image.shape == (3, 1, 1)

    deep = Image.fromarray(np.array([[0, 65535], [32896, 257]], dtype=np.uint16))
    deep.save(tmp_path / "deep.png")
    image = load_images(str(tmp_path / "deep.png"), 2).images[0]
    assert torch.allclose(image[0], torch.tensor([[0.0, 1.0], [128 / 255, 1 / 255]]), atol=1e-6)


def test_prepare_image_upscales_small_images() -> None:
    picture = Image.fromarray(np.full((5, 7, 3), 90, dtype=np.uint8))
    tensor = prepare_image(picture, 12)
    assert tensor.shape == (3, 12, 12)
    assert torch.allclose(tensor, torch.full((3, 12, 12), 90 / 255), atol=1 / 255)


def test_non_image_file_in_folder_names_file_and_fix(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    with pytest.raises(GifdError) as caught:
        load_images(str(tmp_path), 4)
    message = str(caught.value)
    assert str(notes) in message
    assert "is not an image (PIL cannot read it)" in message
    assert "remove it from the folder or pass files explicitly" in message


def test_other_image_format_in_folder_is_refused_with_a_fix(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "x.gif")
    with pytest.raises(GifdError, match=r"x\.gif is a GIF image.*convert it to PNG"):
        load_images(str(tmp_path), 4)


def corrupt_pngs(folder: Path) -> dict[str, Path]:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    truncated = folder / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    garbage = folder / "garbage.png"
    garbage.write_bytes(b"\x00\x01 definitely not a PNG file" * 10)
    return {"truncated": truncated, "garbage": garbage}


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_corrupt_png_names_the_file(tmp_path: Path, kind: str) -> None:
    path = corrupt_pngs(tmp_path)[kind]
    problem = "is corrupt or truncated" if kind == "truncated" else r"is not an image \(PIL cannot read it\)"
    with pytest.raises(
        GifdError, match=rf"^{re.escape(str(path))} {problem}.*pass a readable image file instead"
    ):
        load_images(str(path), 32)
    good = write_png(tmp_path / "good.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(GifdError, match=rf"{re.escape(path.name)} {problem}.*remove it from the list"):
        load_images(f"{good},{path}", 32)


def test_truncated_png_in_folder_names_the_file(tmp_path: Path) -> None:
    path = corrupt_pngs(tmp_path)["truncated"]
    (tmp_path / "garbage.png").unlink()
    with pytest.raises(GifdError, match=rf"{path.name} is corrupt or truncated.*remove it from the folder"):
        load_images(str(tmp_path), 32)


def test_empty_folder_missing_path_and_bad_lists(tmp_path: Path) -> None:
    with pytest.raises(GifdError, match=rf"folder {tmp_path} holds no images"):
        load_images(str(tmp_path), 32)
    missing = tmp_path / "nowhere"
    with pytest.raises(GifdError, match=r"does not exist.*builtin:NAME"):
        load_images(str(missing), 32)
    image = write_png(tmp_path / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(GifdError, match=r"'.*nowhere.png' does not exist"):
        load_images(f"{image},{tmp_path / 'nowhere.png'}", 4)
    with pytest.raises(GifdError, match="is a folder"):
        load_images(f"{image},{tmp_path}", 4)
    with pytest.raises(GifdError, match="empty file name"):
        load_images(f"{image},,{image}", 4)
    with pytest.raises(GifdError, match="empty image source"):
        load_images("  ", 4)


def test_image_set_validates_its_fields() -> None:
    with pytest.raises(GifdError, match="N x 3 x H x W"):
        ImageSet(torch.zeros(2, 1, 4, 4), None, ["a", "b"], None, "tensor")
    with pytest.raises(GifdError, match="names"):
        ImageSet(torch.zeros(2, 3, 4, 4), None, ["a"], None, "tensor")
    with pytest.raises(GifdError, match=r"in 0\.\.9"):
        ImageSet(torch.zeros(1, 3, 4, 4), torch.tensor([10]), ["a"], 10, "tensor")
    ok = ImageSet(torch.zeros(1, 3, 4, 4), torch.tensor([9]), ["a"], 10, "tensor")
    assert len(ok) == 1 and ok.resolution == 4


# ------------------------------------------------------------------------------ imageio


def test_make_grid_layout_is_pixel_exact() -> None:
    base = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    images = torch.stack([base, base + 10, base + 20]).unsqueeze(1)  # 3 x 1 x 2 x 3
    grid = make_grid(images, nrow=2, padding=1, pad_value=-1.0)
    p = -1.0
    expected = torch.tensor(
        [
            [p, p, p, p, p, p, p, p, p],
            [p, 1, 2, 3, p, 11, 12, 13, p],
            [p, 4, 5, 6, p, 14, 15, 16, p],
            [p, p, p, p, p, p, p, p, p],
            [p, 21, 22, 23, p, p, p, p, p],
            [p, 24, 25, 26, p, p, p, p, p],
            [p, p, p, p, p, p, p, p, p],
        ]
    ).unsqueeze(0)
    assert torch.equal(grid, expected)


def test_make_grid_without_padding_concatenates() -> None:
    images = torch.rand(4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    one_row = make_grid(images, nrow=4, padding=0)
    assert torch.equal(one_row, torch.cat(list(images), dim=2))
    column = make_grid(images, nrow=1, padding=0)
    assert torch.equal(column, torch.cat(list(images), dim=1))
    wide = make_grid(images, nrow=10, padding=0)  # nrow larger than the batch: one row
    assert torch.equal(wide, one_row)
    assert make_grid(images[0], nrow=3, padding=2).shape == (3, 6, 6)


def test_make_grid_rejects_bad_arguments() -> None:
    with pytest.raises(GifdError):
        make_grid(torch.zeros(0, 3, 2, 2), nrow=2)
    with pytest.raises(GifdError):
        make_grid(torch.zeros(1, 3, 2, 2), nrow=0)
    with pytest.raises(GifdError):
        make_grid(torch.zeros(1, 3, 2, 2), nrow=1, padding=-1)


def test_to_pil_clamps_and_rounds() -> None:
    image = torch.tensor([[[0.0, 1.0, 2.0, -1.0, float("nan"), 0.5]]]).expand(3, 1, 6)
    array = np.asarray(to_pil(image))
    assert array.shape == (1, 6, 3)
    assert array[0, :, 0].tolist() == [0, 255, 255, 0, 0, 128]
    assert to_pil(torch.zeros(1, 2, 2)).mode == "L"
    with pytest.raises(GifdError, match="3 x H x W"):
        to_pil(torch.zeros(2, 3, 4, 4))


@pytest.mark.parametrize("suffix", [".png", ".bmp"])
def test_save_image_round_trip(tmp_path: Path, suffix: str) -> None:
    image = torch.rand(3, 7, 5, generator=torch.Generator().manual_seed(3))
    path = tmp_path / f"image{suffix}"
    assert save_image(image, path) == path
    read_back = as_unit(np.asarray(Image.open(path).convert("RGB")))
    assert read_back.shape == image.shape
    assert float((read_back - image).abs().max()) <= 1 / 255
    assert sorted(os.listdir(tmp_path)) == [path.name]
    assert (path.stat().st_mode & 0o777) != 0o600  # not left with mkstemp's private mode


def test_save_image_jpeg_and_grid(tmp_path: Path) -> None:
    images = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    save_image(images[0], tmp_path / "one.jpg")
    assert Image.open(tmp_path / "one.jpg").size == (4, 4)
    save_grid(images, tmp_path / "grid.png", nrow=3)
    saved = as_unit(np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")))
    assert torch.allclose(saved, make_grid(images, nrow=3), atol=1 / 255)


def test_save_into_missing_folder_fails_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "image.png"
    with pytest.raises(GifdError, match="does not exist: create it first"):
        save_image(torch.zeros(3, 2, 2), target)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(GifdError, match="unknown image extension"):
        save_image(torch.zeros(3, 2, 2), tmp_path / "image.xyz")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "result.png"
    save_image(torch.zeros(3, 4, 4), target)
    before = target.read_bytes()

    def broken_save(self: Image.Image, handle: io.BufferedWriter, *args: object, **kwargs: object) -> None:
        handle.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(torch.ones(3, 4, 4), target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["result.png"]


def test_write_atomically_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    write_atomically(target, lambda handle: handle.write(b"first"))
    write_atomically(target, lambda handle: handle.write(b"second"))
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_image_to_data_uri_decodes_to_the_image() -> None:
    import base64

    image = torch.rand(3, 3, 4, generator=torch.Generator().manual_seed(5))
    uri = image_to_data_uri(image)
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    decoded = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))
    assert decoded.format == "PNG"
    assert np.array_equal(np.asarray(decoded), np.asarray(to_pil(image)))


def test_upscale_nearest_uses_integer_blocks() -> None:
    image = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # 1 x 2 x 2
    big = upscale_nearest(image, 5)  # factor ceil(5 / 2) = 3
    assert big.shape == (1, 6, 6)
    assert torch.equal(big[0, :3, :3], torch.ones(3, 3))
    assert torch.equal(big[0, 3:, 3:], torch.full((3, 3), 4.0))
    batch = upscale_nearest(torch.zeros(2, 3, 4, 8), 10)  # shorter side 4 -> factor 3
    assert batch.shape == (2, 3, 12, 24)
    assert upscale_nearest(image, 2) is image
    with pytest.raises(GifdError):
        upscale_nearest(image, 0)
