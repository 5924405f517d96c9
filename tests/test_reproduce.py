"""`gifd reproduce`: the setting is checked before any compute, a tiny setting writes the report and
the JSON with every table, a second run reuses every finished cell, and the paper's claim is
decided right from the numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from gifd.cli import main
from gifd.config import read_yaml
from gifd.errors import GifdError
from gifd.reproduce import TABLES, gain_claim, load_reproduce_config, plan, reproduce_config
from gifd.reproduce.tables import ablation_claim, trial_labels

CONFIGS = Path(__file__).parents[1] / "configs"

#: A setting of every table with the fewest cells: 16 px, one step, one image per data set.
TINY = {
    "name": "tiny",
    "resolution": 16,
    "near": {"images": "builtin:lfw_faces", "indices": [0]},
    "far": {"images": "builtin:photos", "indices": [2]},
    "methods": ["gifd", "ig"],
    "steps": {"gifd": 2, "latent": 1, "gifd-noball": 1, "ig": 1},
    "restarts": 1,
    "threads": 1,
    "ablation_stages": [1],
    "batch_sizes": [1, 2],
    "batch_attacks": ["ig"],
    "batch_data": {"images": "builtin:photos", "indices": [2, 3]},
    "batch_steps": 1,
    "defenses": ["prune:0.5"],
    "defense_knowledge": ["adaptive"],
    "defense_steps": 2,
    "label_trials": 1,
    "label_batch_sizes": [1, 2],
    "label_local_steps": 2,
}


def _write(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / "setting.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_gain_claim_decided_from_the_numbers() -> None:
    holds = gain_claim(10.0, 13.5, {1: 11.0, 2: 12.25, 3: 9.0}, "photos")
    assert holds.holds is True and holds.best_stage == 2
    assert holds.gifd_gain == pytest.approx(3.5) and holds.fixed_gain == pytest.approx(2.25)
    assert "holds on photos" in holds.text and "+3.50 dB" in holds.text and "+2.25 dB" in holds.text
    fails = gain_claim(10.0, 12.0, {1: 12.5, 2: 11.0}, "photos")
    assert fails.holds is False and fails.best_stage == 1 and fails.fixed_gain == pytest.approx(2.5)
    assert "does not hold" in fails.text and "12.50 dB" in fails.text
    tie = gain_claim(10.0, 12.0, {1: 12.0}, "photos")  # equal gains: not larger
    assert tie.holds is False
    for missing in (gain_claim(None, 12.0, {1: 11.0}, "x"), gain_claim(10.0, math.inf, {1: 11.0}, "x")):
        assert missing.holds is None and "Not decidable" in missing.text
    assert gain_claim(10.0, 12.0, {}, "x").holds is None


def test_ablation_claim_reads_the_rows_of_one_data_set() -> None:
    rows = [
        {"data": "far", "variant": "latent only", "psnr": 10.0},
        {"data": "far", "variant": "layer 1 alone", "stage": 1, "psnr": 11.0},
        {"data": "far", "variant": "GIFD", "psnr": 12.0},
        {"data": "near", "variant": "layer 1 alone", "stage": 1, "psnr": 30.0},
        {"data": "near", "variant": "latent only", "psnr": 1.0},
        {"data": "near", "variant": "GIFD", "psnr": 2.0},
    ]
    claim = ablation_claim(rows, "far", "photos")
    assert (
        claim.holds is True
        and claim.gifd_gain == pytest.approx(2.0)
        and claim.fixed_gain == pytest.approx(1.0)
    )
    assert ablation_claim(rows, "near", "faces").holds is False


def test_trial_labels_unique_and_repeated() -> None:
    for b in (1, 2, 5, 8):
        unique = trial_labels("unique", b, 10, torch.Generator().manual_seed(b))
        assert len(unique) == b and len(set(unique.tolist())) == b
    for b in (2, 3, 8):
        repeated = trial_labels("repeated", b, 10, torch.Generator().manual_seed(b))
        assert len(repeated) == b and len(set(repeated.tolist())) < b


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": ["gifd", "nope"]}, "unknown attack 'nope'"),
        ({"prior": "nope"}, "unknown prior 'nope'"),
        ({"defenses": ["prune:0.5", "none"]}, "adds the undefended run itself"),
        ({"defenses": ["blur:1"]}, "unknown defense 'blur'"),
        ({"batch_sizes": [1, 4]}, "batch size 4 needs 4 images"),
        ({"restarts": 0}, "restarts"),
        ({"stepz": 3}, "unknown key 'stepz'"),
        ({"far": {"images": "builtin:photos", "indices": [1, 1]}}, "name an image twice"),
        ({"label_local_steps": 1}, "label_local_steps"),
        ({"attack_settings": {"gifd": {"radii": "big"}}}, "radii"),
    ],
)
def test_bad_setting_is_one_line_before_any_compute(
    tmp_path: Path, capsys, change: dict, message: str
) -> None:
    path = _write(tmp_path, {**TINY, **change})
    out = tmp_path / "out"
    assert main(["reproduce", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_plan_checks_stages_and_indices_against_prior_and_data() -> None:
    with pytest.raises(GifdError, match=r"ablation_stages \[9\] go beyond the last stage 4"):
        plan(reproduce_config({**TINY, "ablation_stages": [9]}))
    with pytest.raises(GifdError, match="index"):
        plan(reproduce_config({**TINY, "far": {"images": "builtin:photos", "indices": [99]}}))


def test_shared_cells_run_once_and_the_paper_configs_validate() -> None:
    cells = plan(reproduce_config(TINY))
    ids = [c.id for table in cells.cells.values() for c in table]
    # the ablation's GIFD is the methods table's GIFD on the far data, the defense table's
    # undefended GIFD too; the batch table's IG at batch 1 is the methods table's far IG
    assert len(cells.unique()) == len(set(ids)) < len(ids)
    assert len(cells.unique()) == 9
    layer = next(c for c in cells.cells["ablation"] if c.key.get("stage") == 1)
    assert (
        layer.config.settings_for("gifd")["stage_start"]
        == 1
        == layer.config.settings_for("gifd")["stage_end"]
    )
    noball = next(c for c in cells.cells["ablation"] if c.attack == "gifd-noball")
    assert noball.config.settings_for("gifd-noball")["steps"] == TINY["steps"]["gifd-noball"]
    assert reproduce_config({**TINY, "steps": {"gifd": 7}}).steps_for("gifd-noball") == 7  # GIFD's
    for name in ("reproduce-biggan.yaml", "reproduce-stylegan2.yaml"):
        config = reproduce_config(read_yaml(CONFIGS / name), name)
        assert config.stage_steps == 1000 and config.restarts == 4 and not config.short_budget
    default = load_reproduce_config(None)
    assert default.tables == list(TABLES) and default.short_budget


def test_reproduce_writes_every_table_and_reuses_finished_cells(tmp_path: Path, capsys) -> None:
    path, out = _write(tmp_path, TINY), tmp_path / "out"
    assert main(["reproduce", str(path), "--out", str(out)]) == 0
    document = json.loads((out / "reproduce.json").read_text())
    assert set(document["tables"]) == set(TABLES)
    assert document["run"] == {**document["run"], "cells": 9, "ran": 9, "reused": 0}
    methods = document["tables"]["methods"]["rows"]
    assert {(r["data"], r["method"]) for r in methods} == {
        (d, m) for d in ("near", "far") for m in ("gifd", "ig")
    }
    assert all(isinstance(r["psnr"], float) for r in methods)
    defended = next(r for r in document["tables"]["defenses"]["rows"] if r["defense"] == "prune:0.5")
    assert defended["utility_cost"]["zero_fraction"] > 0.4
    labels = document["tables"]["labels"]["rows"]
    assert {(r["protocol"], r["labels"]) for r in labels} == {
        (p, k) for p in ("FedSGD", "FedAvg") for k in ("unique", "repeated")
    }
    assert all(0 <= r["accuracy"] <= 1 for r in labels)
    claim = document["claims"]["far"]
    assert claim["holds"] in (True, False)
    page = (out / "report.html").read_text()
    for section in TABLES:
        assert f'id="{section}"' in page
    assert claim["text"].split("(")[0].strip() in page.replace("&#x27;", "'")
    assert "short-budget numbers" in page and page.count("<img") >= 5
    cell_files = sorted((out / "cells").glob("*/results.json"))
    stamps = [p.stat().st_mtime_ns for p in cell_files]
    capsys.readouterr()
    assert main(["reproduce", str(path), "--out", str(out)]) == 0
    again = json.loads((out / "reproduce.json").read_text())
    assert again["run"]["ran"] == 0 and again["run"]["reused"] == 9
    assert [p.stat().st_mtime_ns for p in cell_files] == stamps
    assert again["tables"]["methods"] == document["tables"]["methods"]
    assert "reused 9 finished runs" in capsys.readouterr().out


def test_an_attacker_without_a_model_of_the_defense_runs_once_as_oblivious() -> None:
    setting = {
        **TINY,
        "defenses": ["noise:0.01", "prune:0.5"],
        "defense_knowledge": ["adaptive", "oblivious"],
    }
    cells = plan(reproduce_config(setting)).cells["defenses"]
    by = {(c.key["defense"], c.key["knowledge"]): c for c in cells}
    assert by[("noise:0.01", "adaptive")].id == by[("noise:0.01", "oblivious")].id
    assert by[("noise:0.01", "adaptive")].config.defense_knowledge == "oblivious"
    assert "note" in by[("noise:0.01", "adaptive")].key
    assert by[("prune:0.5", "adaptive")].id != by[("prune:0.5", "oblivious")].id
    assert by[("prune:0.5", "adaptive")].config.defense_knowledge == "adaptive"
