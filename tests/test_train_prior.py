"""`gifd train-prior` and the trained `dcgan` prior; `gifd priors`; DiffAugment."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gifd.cli
from gifd.errors import GifdError
from gifd.priors import create_prior
from gifd.priors import dcgan as dcgan_module
from gifd.priors.training import (
    TrainPriorConfig,
    augment_color,
    augment_cutout,
    augment_translation,
    batch_indices,
    diff_augment,
    discriminator_loss,
    generator_loss,
    read_checkpoint,
    train_prior,
)

TINY = {"resolution": 32, "nz": 16, "ngf": 8, "ndf": 8, "batch_size": 4}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Eight 32x32 PNGs: coloured rectangles on noisy backgrounds."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(8):
        array = (rng.random((32, 32, 3)) * 60).astype(np.uint8)
        y, x = rng.integers(0, 16, size=2)
        array[y : y + 14, x : x + 14] = rng.integers(80, 255, size=3)
        Image.fromarray(array).save(folder / f"img_{i}.png")
    return folder


def tiny_config(data: Path, out: Path, iterations: int) -> TrainPriorConfig:
    return TrainPriorConfig(
        data=str(data), out=out, iterations=iterations, checkpoint_every=2, sample_every=2, seed=7,
        device="cpu", **TINY,
    )  # fmt: skip


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tree(a, b, where="") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{where}/{i}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where  # NaN == NaN for unset losses


@pytest.fixture(scope="module")
def runs(image_folder, tmp_path_factory):
    """An uninterrupted 4-iteration run, and a 2-iteration run resumed to 4 iterations."""
    straight = tmp_path_factory.mktemp("straight")
    result = train_prior(tiny_config(image_folder, straight, 4), progress=False)
    resumed = tmp_path_factory.mktemp("resumed")
    train_prior(tiny_config(image_folder, resumed, 2), progress=False)
    first_half = load(resumed / "checkpoint.pt")
    train_prior(tiny_config(image_folder, resumed, 4), resume=True, progress=False)
    return straight, resumed, result, first_half


def test_run_writes_checkpoint_samples_generator(runs):
    straight, _, result, first_half = runs
    assert result.iteration == 4 and result.generator_path == straight / "generator.pt"
    assert np.isfinite(result.d_loss) and np.isfinite(result.g_loss)
    checkpoint = read_checkpoint(straight / "checkpoint.pt")
    assert checkpoint["iteration"] == 4 and first_half["iteration"] == 2
    assert checkpoint["arch"] == {"nz": 16, "ngf": 8, "resolution": 32, "nc": 3}
    assert checkpoint["config"]["seed"] == 7
    assert {"generator", "discriminator", "optim_g", "optim_d", "rng"} <= set(checkpoint)
    grids = sorted(p.name for p in (straight / "samples").iterdir())
    assert grids == ["iter_000002.png", "iter_000004.png"]
    with Image.open(straight / "samples" / "iter_000004.png") as grid:
        assert grid.size == (8 * 34 + 2, 8 * 34 + 2)
    assert not [p for p in straight.iterdir() if p.name.startswith(".")]  # no temporary files left
    # training changed the generator
    assert not torch.equal(first_half["generator"]["main.0.weight"], checkpoint["generator"]["main.0.weight"])


def test_resume_equals_uninterrupted_run(runs):
    straight, resumed, _, _ = runs
    a, b = load(straight / "checkpoint.pt"), load(resumed / "checkpoint.pt")
    for key in ("generator", "discriminator", "optim_g", "optim_d", "rng", "iteration", "losses"):
        assert_same_tree(a[key], b[key], key)
    assert_same_tree(
        load(straight / "generator.pt")["generator"], load(resumed / "generator.pt")["generator"]
    )


def test_trained_prior_loads_by_path_with_consistent_stages(runs):
    straight, _, _, _ = runs
    generator_file = load(straight / "generator.pt")
    for path in (straight / "generator.pt", straight / "checkpoint.pt", straight):
        prior = create_prior("dcgan", path)
        assert prior.resolution == 32 and prior.latent_dim == 16 and prior.num_stages == 4
        assert torch.equal(prior.net.main[0].weight, generator_file["generator"]["main.0.weight"])
        variables = prior.init_latent(3, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            image = prior(0, variables, {})
            assert image.shape == (3, 3, 32, 32) and image.abs().max() <= 1
            for stage in range(1, prior.num_stages):
                variables = prior.advance(stage - 1, variables, {})
                assert (prior(stage, variables, {}) - image).abs().max() < 1e-5
        assert len(prior.default_radii()) == 4


def test_trained_prior_errors(tmp_path, runs):
    with pytest.raises(GifdError, match="--prior-weights"):
        create_prior("dcgan")
    with pytest.raises(GifdError, match="not found"):
        create_prior("dcgan", tmp_path / "missing.pt")
    with pytest.raises(GifdError, match=r"neither generator\.pt nor checkpoint\.pt"):
        create_prior("dcgan", tmp_path)
    other = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, other)
    with pytest.raises(GifdError, match="not a gifd DCGAN checkpoint"):
        create_prior("dcgan", other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(GifdError, match="could not be read"):
        create_prior("dcgan", junk)
    damaged = load(runs[0] / "generator.pt")
    del damaged["generator"]["main.1.running_mean"]
    torch.save(damaged, tmp_path / "damaged.pt")
    with pytest.raises(GifdError, match=r"missing keys: main\.1\.running_mean"):
        create_prior("dcgan", tmp_path / "damaged.pt")


def test_bad_resume_and_overwrite_are_refused(image_folder, tmp_path, runs):
    straight = runs[0]
    with pytest.raises(GifdError, match="already holds a training checkpoint"):
        train_prior(tiny_config(image_folder, straight, 6), progress=False)
    changed = dataclasses.replace(tiny_config(image_folder, straight, 6), ngf=16)
    with pytest.raises(GifdError, match="--ngf 16 differs"):
        train_prior(changed, resume=True, progress=False)
    with pytest.raises(GifdError, match="no training checkpoint"):
        train_prior(tiny_config(image_folder, tmp_path / "fresh", 2), resume=True, progress=False)
    with pytest.raises(GifdError, match="--resolution must be one of"):
        dataclasses.replace(tiny_config(image_folder, tmp_path, 2), resolution=48).validate()
    with pytest.raises(GifdError, match="unknown augmentation 'flip'"):
        dataclasses.replace(tiny_config(image_folder, tmp_path, 2), augment="color,flip").validate()


def test_cli_train_prior_and_resume(image_folder, tmp_path, capsys):
    out = tmp_path / "cli"
    common = ["--no-progress", "--checkpoint-every", "1", "--sample-every", "5"]
    argv = ["train-prior", "--data", str(image_folder), "--out", str(out), "--iterations", "1"]
    argv += ["--resolution", "32", "--nz", "16", "--ngf", "8", "--ndf", "8", "--batch-size", "4", *common]
    assert gifd.cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"--prior dcgan --prior-weights {out / 'generator.pt'}" in printed
    assert gifd.cli.main(["train-prior", "--out", str(out), "--resume", "--iterations", "2", *common]) == 0
    assert read_checkpoint(out / "checkpoint.pt")["iteration"] == 2
    assert read_checkpoint(out / "checkpoint.pt")["config"]["ngf"] == 8
    capsys.readouterr()
    assert gifd.cli.main(["train-prior", "--out", str(out), "--resume", "--ngf", "16", *common]) == 2
    assert "--ngf 16 differs" in capsys.readouterr().err
    assert gifd.cli.main(["train-prior", "--out", str(tmp_path / "x"), *common]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_cli_priors_listing(capsys, monkeypatch):
    assert "priors" in gifd.cli.COMMANDS
    assert gifd.cli.main(["priors"]) == 0
    listing = capsys.readouterr().out
    lines = listing.splitlines()
    face = next(i for i, line in enumerate(lines) if line.startswith("digiface-dcgan64 "))
    trained = next(i for i, line in enumerate(lines) if line.startswith("dcgan "))
    if importlib.util.find_spec("gan_face_generate") is not None:
        assert "[present]" in lines[face]
    assert "gan-face-generate==1.1.1" in listing
    assert "[needs --prior-weights PATH]" in lines[trained]
    monkeypatch.setattr(dcgan_module.importlib.util, "find_spec", lambda name, package=None: None)
    assert gifd.cli.main(["priors"]) == 0
    face_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("digiface"))
    assert "missing" in face_line and "pip install --no-deps gan-face-generate==1.1.1" in face_line


# --- pieces -------------------------------------------------------------------------------------


def test_batch_indices_cover_each_epoch_once():
    first = torch.cat([batch_indices(10, 5, it, seed=3) for it in range(2)])
    assert sorted(first.tolist()) == list(range(10))
    assert torch.equal(batch_indices(10, 5, 1, 3), batch_indices(10, 5, 1, 3))
    straddling = batch_indices(3, 4, 0, seed=1)  # batch larger than the data: epochs 0 and 1
    assert sorted(straddling[:3].tolist()) == [0, 1, 2]


def test_losses_known_values():
    zero = torch.zeros(4)
    assert discriminator_loss(zero, zero).item() == pytest.approx(2 * np.log(2))
    assert generator_loss(zero).item() == pytest.approx(np.log(2))
    assert discriminator_loss(zero + 2, zero - 2, "hinge").item() == 0
    assert generator_loss(zero + 1.5, "hinge").item() == -1.5


def test_translation_is_a_zero_filled_shift():
    x = torch.rand(6, 3, 32, 32) + 0.1
    out = augment_translation(x, torch.Generator().manual_seed(0))
    for i in range(6):
        matches = []
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                ref = torch.zeros_like(x[i])
                ys, xs = slice(max(dy, 0), 32 + min(dy, 0)), slice(max(dx, 0), 32 + min(dx, 0))
                yt, xt = slice(max(-dy, 0), 32 + min(-dy, 0)), slice(max(-dx, 0), 32 + min(-dx, 0))
                ref[:, ys, xs] = x[i][:, yt, xt]
                matches.append(torch.equal(out[i], ref))
        assert sum(matches) == 1, i


def test_cutout_zeros_one_rectangle():
    x = torch.ones(8, 3, 32, 32)
    out = augment_cutout(x, torch.Generator().manual_seed(1))
    for i in range(8):
        zero = out[i, 0] == 0
        assert torch.equal(zero, (out[i] == 0).all(0))  # same mask in every channel
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16
        assert zero.sum() == len(rows) * len(cols)  # a full rectangle
        assert (rows.diff() == 1).all() and (cols.diff() == 1).all()


def test_color_is_per_image_affine_and_differentiable():
    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    out = augment_color(x, torch.Generator().manual_seed(2))
    again = augment_color(x, torch.Generator().manual_seed(2))
    assert torch.equal(out, again) and not torch.equal(out, x)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    full = diff_augment(x, ["color", "translation", "cutout"], torch.Generator().manual_seed(3))
    assert full.shape == x.shape and full.requires_grad


def test_trains_on_a_builtin_source(tmp_path):
    config = TrainPriorConfig(
        data="builtin:cifar10",
        out=str(tmp_path / "prior"),
        iterations=2,
        batch_size=8,
        resolution=32,
        ngf=8,
        ndf=8,
        checkpoint_every=1,
        sample_every=1,
        device="cpu",
    )
    result = train_prior(config, progress=False)
    prior = create_prior("dcgan", result.generator_path)
    image = prior(0, prior.init_latent(2, None, torch.Generator().manual_seed(0)), {})
    assert image.shape == (2, 3, 32, 32)
