"""Attacking an update a server received (gifd.experiment.attack_received_update), with and without
the private images, and the inputs it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gifd.client import compute_update
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
        GifdError, match="ground truth holds 1 images with labels but the update is of a batch of 2"
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
    assert torch.isfinite(update.tensors["fc.weight"]).all()
