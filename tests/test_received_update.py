"""Attacking an update a server received (gifd.experiment.attack_received_update), with and without
the private images, and the inputs it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gifd.client import compute_update, load_update
from gifd.data import ImageSet, load_images
from gifd.errors import GifdError
from gifd.experiment import ExperimentConfig, attack_received_update
from gifd.victims import create_victim


@pytest.fixture
def received() -> tuple:
    victim = create_victim("lenet", resolution=16, seed=3)
    private = load_images("builtin:cifar10", 16, [0, 3])
    update = compute_update(victim, private.images, private.labels)
    config = ExperimentConfig(
        victim="lenet", resolution=16, attacks=["ig"], steps=3, restarts=1, device="cpu"
    )
    return victim, private, update, config


def test_with_the_private_images_the_run_is_scored(received: tuple, tmp_path: Path) -> None:
    victim, private, update, config = received
    results = attack_received_update(config, victim, update, tmp_path / "run", truth=private, progress=False)
    assert results["true_labels"] == private.labels.tolist()
    assert sorted(results["inferred_labels"]) == sorted(private.labels.tolist())
    assert results["label_accuracy"] == 1.0 and len(results["attacks"]["ig"]["per_image"]["psnr"]) == 2
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["images"]["names"] == private.names
    # The recorded batch size and labels are the update's, whatever the config said.
    assert written["config"]["batch_size"] == 2 and written["config"]["indices"] == [0, 1]
    saved = load_update(tmp_path / "run" / "update.pt")
    assert all(torch.equal(saved.tensors[k], v) for k, v in update.tensors.items())
    assert (tmp_path / "run" / "images" / "original_001.png").is_file()


def test_without_them_the_run_holds_the_reconstructions_alone(received: tuple, tmp_path: Path) -> None:
    victim, _, update, config = received
    results = attack_received_update(config, victim, update, tmp_path / "run", progress=False)
    assert "true_labels" not in results and results["images"] is None
    assert "metrics" not in results["batches"][0]["attacks"]["ig"]
    assert results["attacks"]["ig"]["per_image"] == {} and results["attacks"]["ig"]["steps"] == 3
    assert sorted(p.name for p in (tmp_path / "run" / "images").iterdir()) == ["ig_000.png", "ig_001.png"]
    assert not (tmp_path / "run" / "originals.png").exists()


def test_a_truth_that_does_not_fit_the_update_is_refused(received: tuple, tmp_path: Path) -> None:
    victim, private, update, config = received
    one = ImageSet(private.images[:1], private.labels[:1], private.names[:1], 10, "one image")
    with pytest.raises(
        GifdError, match="ground truth holds 1 images but the update is of a batch of 2: give exactly"
    ):
        attack_received_update(config, victim, update, tmp_path / "run", truth=one, progress=False)
    assert not (tmp_path / "run").exists()
    other = create_victim("convnet", resolution=16)
    with pytest.raises(GifdError, match="does not fit victim 'convnet'"):
        attack_received_update(config, other, update, progress=False)
    with pytest.raises(GifdError, match="unknown attack"):
        attack_received_update(
            config.model_copy(update={"attacks": ["nope"]}), victim, update, progress=False
        )


# ------------------------------------------------------------------ gifd attack --update FILE
def _saved(tmp_path: Path, **fedavg: int) -> Path:
    from gifd.client import save_update
    from gifd.fedavg import compute_fedavg_update

    victim = create_victim("lenet", resolution=16, seed=3, normalization="cifar10")
    private = load_images("builtin:cifar10", 16, [0, 3])
    if fedavg:
        update = compute_fedavg_update(victim, private.images, private.labels, local_lr=0.1, **fedavg)
    else:
        update = compute_update(victim, private.images, private.labels)
    return save_update(update, tmp_path / "update.pt")


def _attack(*args: str) -> int:
    from gifd.cli import main

    common = [
        "--attack",
        "ig",
        "--steps",
        "2",
        "--restarts",
        "1",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--quiet",
    ]
    return main(["attack", *args, *common])


def test_cli_attacks_a_saved_update_with_the_victim_its_metadata_names(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    assert _attack("--update", str(path), "--out", str(tmp_path / "run")) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    config = results["config"]
    assert (config["victim"], config["resolution"], config["normalization"]) == ("lenet", 16, "cifar10")
    assert config["batch_size"] == 2 and "true_labels" not in results
    assert sorted(results["inferred_labels"]) == [0, 3]  # cifar10 images 0 and 3: labels 3, 0
    # With the private images named, the same update is scored against them.
    assert (
        _attack(
            "--update",
            str(path),
            "--images",
            "builtin:cifar10",
            "--indices",
            "0,3",
            "--out",
            str(tmp_path / "s"),
        )
        == 0
    )
    scored = json.loads((tmp_path / "s" / "results.json").read_text())
    assert scored["true_labels"] == [3, 0] and scored["label_accuracy"] == 1.0
    assert len(scored["attacks"]["ig"]["per_image"]["psnr"]) == 2


def test_cli_replays_a_saved_fedavg_delta_as_its_metadata_says(tmp_path: Path) -> None:
    path = _saved(tmp_path, local_steps=3, local_batch_size=1)
    assert _attack("--update", str(path), "--out", str(tmp_path / "run")) == 0
    config = json.loads((tmp_path / "run" / "results.json").read_text())["config"]
    assert (config["local_steps"], config["local_lr"], config["local_batch_size"]) == (3, 0.1, 1)


def test_cli_refuses_client_settings_and_a_contradicting_normalisation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gifd.cli import main

    path = _saved(tmp_path)
    assert _attack("--update", str(path), "--defense", "prune:0.5", "--out", str(tmp_path / "a")) == 2
    assert "defense shape(s) an update gifd computes" in capsys.readouterr().err
    assert _attack("--update", str(path), "--normalization", "imagenet", "--out", str(tmp_path / "b")) == 2
    assert "normalised with mean [0.4914" in capsys.readouterr().err
    assert _attack("--update", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "c")) == 2
    assert "missing.pt not found" in capsys.readouterr().err
    # Another seed builds another model than the one the update was computed on: refused.
    assert (
        main(["attack", "--update", str(path), "--seed", "4", "--attack", "ig", "--out", str(tmp_path / "d")])
        == 2
    )
    assert "computed on other weights than this victim's: pass the model" in capsys.readouterr().err
    assert _attack("--update", str(path), "--indices", "0,3", "--out", str(tmp_path / "e")) == 2
    assert "indices describe(s) the update's private images: pass --images too" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abcde")
