"""`run_experiment(checkpoint=...)`: a run cut after some batches resumes from its checkpoint and
gives the results and images of an uninterrupted run; a file that is not its checkpoint is refused
before any work and left as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import gifd.experiment
from gifd.errors import GifdError
from gifd.experiment import CHECKPOINT_FORMAT, experiment_config, run_experiment
from gifd.results import versions

#: Three batches of one real CIFAR-10 image each; GIFD (staged, so stage images too) and IG.
BASE: dict[str, Any] = {
    "victim": "lenet",
    "resolution": 32,
    "images": "builtin:cifar10",
    "indices": [0, 1, 2],
    "batch_size": 1,
    "attacks": ["gifd", "ig"],
    "prior": "digiface-dcgan64",
    "restarts": 1,
    "steps": 10,
    "device": "cpu",
    "seed": 3,
}


class CutError(Exception):
    """The interruption the test simulates."""


def _without_seconds(value: Any) -> Any:
    """`value` without its timings and date, the only entries a resumed run may change."""
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k not in ("seconds", "date")}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def _attacked_batches(monkeypatch: pytest.MonkeyPatch, cut_at: int | None = None) -> list[int]:
    """Spy on the attacker: the batch indices it is called for; raise `CutError` at batch `cut_at`."""
    seen: list[int] = []
    original = gifd.experiment.attack_update

    def spy(config, label_inference, seed, index, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(index)
        if index == cut_at:
            raise CutError
        return original(config, label_inference, seed, index, *args, **kwargs)

    monkeypatch.setattr(gifd.experiment, "attack_update", spy)
    return seen


def test_a_cut_run_resumes_to_the_results_and_images_of_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = experiment_config(BASE)
    whole = run_experiment(config, tmp_path / "whole", progress=False)

    checkpoint = tmp_path / "run.checkpoint.pt"
    attacked = _attacked_batches(monkeypatch, cut_at=2)
    with pytest.raises(CutError):
        run_experiment(config, tmp_path / "resumed", progress=False, checkpoint=checkpoint)
    assert attacked == [0, 1, 2]
    assert not (tmp_path / "resumed").exists()  # nothing written as if complete
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["format"] == CHECKPOINT_FORMAT and len(saved["batches"]) == 2
    assert sorted(saved["stages"]["gifd"]) == list(range(5)) and len(saved["images"]["ig"]) == 2

    monkeypatch.undo()  # the run is cut no more
    attacked = _attacked_batches(monkeypatch)
    resumed = run_experiment(config, tmp_path / "resumed", progress=False, checkpoint=checkpoint)
    assert attacked == [2]  # the finished batches are not attacked again
    assert _without_seconds(resumed) == _without_seconds(whole)
    pictures = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*.png"))
    assert len(pictures) >= 2
    for picture in pictures:  # every batch's reconstructions and stage images, byte for byte
        assert (tmp_path / "resumed" / picture).read_bytes() == (tmp_path / "whole" / picture).read_bytes()
    assert checkpoint.exists()  # the run's own file stays until the caller has its results


def test_files_that_are_not_this_runs_checkpoint_are_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attacked = _attacked_batches(monkeypatch)
    notes = tmp_path / "notes.pt"
    notes.write_text("the user's own file")
    with pytest.raises(GifdError, match="notes.pt exists and is not a gifd experiment checkpoint"):
        run_experiment(experiment_config(BASE), progress=False, checkpoint=notes)
    assert notes.read_text() == "the user's own file"

    other = tmp_path / "other.pt"
    saved = {"format": CHECKPOINT_FORMAT, "config": experiment_config({**BASE, "steps": 20}).model_dump(mode="json"),
             "versions": versions(), "batches": [], "images": {}, "stages": {}}  # fmt: skip
    torch.save(saved, other)
    with pytest.raises(GifdError, match=r"another config \(it differs in steps\)"):
        run_experiment(experiment_config(BASE), progress=False, checkpoint=other)
    older = tmp_path / "older.pt"
    torch.save({**saved, "config": experiment_config(BASE).model_dump(mode="json"),
                "versions": {**saved["versions"], "torch": "2.0.0"}}, older)  # fmt: skip
    with pytest.raises(GifdError, match=r"saved by other software \(torch differ\)"):
        run_experiment(experiment_config(BASE), progress=False, checkpoint=older)
    with pytest.raises(GifdError, match="folder .*missing does not exist"):
        run_experiment(experiment_config(BASE), progress=False, checkpoint=tmp_path / "missing" / "c.pt")
    with pytest.raises(GifdError, match="drop the checkpoint"):
        run_experiment(
            experiment_config({**BASE, "indices": [0]}), tmp_path / "one", save_update=True, checkpoint=other
        )
    assert attacked == []
