"""bench/methods.py --merge: runs of one setting with different methods join into one result."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from gifd.errors import GifdError

BENCH = Path(__file__).resolve().parents[1] / "bench"
RESULTS = BENCH / "results" / "methods_convnet.json"


@pytest.fixture
def methods(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCH))
    import methods as module

    yield module
    sys.modules.pop("methods", None)
    sys.modules.pop("common", None)


def _only(results: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The results as a run of just the attacks `names` would have written them."""
    part = copy.deepcopy(results)
    part["config"]["attacks"] = names
    part["config"]["attack_settings"] = {
        k: v for k, v in part["config"]["attack_settings"].items() if k in names
    }
    part["attacks"] = {k: v for k, v in part["attacks"].items() if k in names}
    for batch in part["batches"]:
        batch["attacks"] = {k: v for k, v in batch["attacks"].items() if k in names}
    return part


def test_merge_rebuilds_the_run_of_all_methods(methods: Any) -> None:
    whole = json.loads(RESULTS.read_text())
    names = whole["config"]["attacks"]
    gifd, others = _only(whole, names[:1]), _only(whole, names[1:])
    merged = methods.merge_results([gifd, others], ["gifd.json", "others.json"])
    assert (gifd, others) == (_only(whole, names[:1]), _only(whole, names[1:]))  # inputs left alone
    assert merged["config"] == whole["config"]
    assert merged["attacks"] == whole["attacks"]
    assert merged["batches"] == whole["batches"]
    assert merged["benchmark"]["merged_from"] == ["gifd.json", "others.json"]
    assert [run["attacks"] for run in merged["benchmark"]["runs"]] == [names[:1], names[1:]]
    assert merged["benchmark"]["wall_seconds"] == pytest.approx(2 * whole["benchmark"]["wall_seconds"])
    assert methods.markdown_table(merged).splitlines()[2].startswith("| gifd |")


def test_merge_refuses_other_settings_and_repeated_methods(methods: Any) -> None:
    whole = json.loads(RESULTS.read_text())
    names = whole["config"]["attacks"]
    gifd, others = _only(whole, names[:1]), _only(whole, names[1:])
    with pytest.raises(GifdError, match="repeats attack\\(s\\) gifd"):
        methods.merge_results([gifd, gifd], ["a.json", "b.json"])
    other_seed = copy.deepcopy(others)
    other_seed["config"]["seed"] = 1
    with pytest.raises(GifdError, match="b.json is another setting than a.json: config seed is 1, not 0"):
        methods.merge_results([gifd, other_seed], ["a.json", "b.json"])
    other_labels = copy.deepcopy(others)
    other_labels["inferred_labels"] = [0] * len(other_labels["inferred_labels"])
    with pytest.raises(GifdError, match="differ in inferred_labels"):
        methods.merge_results([gifd, other_labels], ["a.json", "b.json"])
    other_update = copy.deepcopy(others)
    other_update["batches"][3]["utility_cost"] = {"cosine": 0.5}
    with pytest.raises(GifdError, match="differ in the client's update"):
        methods.merge_results([gifd, other_update], ["a.json", "b.json"])
    fewer = copy.deepcopy(others)
    fewer["batches"] = fewer["batches"][:-1]
    with pytest.raises(GifdError, match="different batch counts"):
        methods.merge_results([gifd, fewer], ["a.json", "b.json"])
    with pytest.raises(GifdError, match="at least two"):
        methods.merge_results([gifd], ["a.json"])
    with pytest.raises(GifdError, match="defenses.json is not a gifd results file"):
        methods.merge_results([gifd, {"base": {}, "rows": []}], ["a.json", "defenses.json"])


def _images(results: dict[str, Any], lo: int, hi: int) -> dict[str, Any]:
    """The results as a run on images [lo, hi) of the same setting would have written them."""
    from gifd.results import attack_totals

    part = copy.deepcopy(results)
    part["config"]["indices"] = part["config"]["indices"][lo:hi]
    part["images"]["names"] = part["images"]["names"][lo:hi]
    for key in ("inferred_labels", "true_labels", "batches"):
        part[key] = part[key][lo:hi]
    part["attacks"] = {name: attack_totals(name, part["batches"]) for name in part["attacks"]}
    part["label_accuracy"] = sum(b["label_accuracy"] for b in part["batches"]) / len(part["batches"])
    return part


def test_merge_joins_runs_on_other_images(methods: Any) -> None:
    whole = json.loads(RESULTS.read_text())
    names = whole["config"]["attacks"]
    half = len(whole["batches"]) // 2
    front, back = _images(whole, 0, half), _images(whole, half, len(whole["batches"]))
    # the back half by method in the other order: method order within a group is free
    parts = [_only(front, names[:1]), _only(front, names[1:]), _only(back, names[3:]), _only(back, names[:3])]
    merged = methods.merge_results(parts, ["a.json", "b.json", "c.json", "d.json"])
    for key in ("config", "images", "inferred_labels", "true_labels", "batches", "label_accuracy", "defense"):
        assert merged[key] == whole[key], key
    assert merged["attacks"] == whole["attacks"]  # the per-image means of all 8 images, as the run wrote them
    assert [run["indices"] for run in merged["benchmark"]["runs"]] == [whole["config"]["indices"][:half]] * 2 + [
        whole["config"]["indices"][half:]
    ] * 2
    with pytest.raises(GifdError, match="c.json attacks images \\[0, 1\\] again: join runs on disjoint images"):
        methods.merge_results([front, back, _images(whole, 0, 2)], ["a.json", "b.json", "c.json"])
    with pytest.raises(GifdError, match="cover attacks gifd, .*join images only over the same methods"):
        methods.merge_results([front, _only(back, names[:1])], ["a.json", "b.json"])
    other_budget = copy.deepcopy(back)
    other_budget["config"]["steps"] = 7
    with pytest.raises(GifdError, match="b.json is another setting than a.json: config steps is 7"):
        methods.merge_results([front, other_budget], ["a.json", "b.json"])


def test_merge_needs_an_output_path(methods: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        methods.parse_args(["--merge", "a.json", "b.json"])
    assert "--merge needs --out" in capsys.readouterr().err


def _rerun(results: dict[str, Any], name: str) -> dict[str, Any]:
    """A rerun of attack `name` alone whose PSNR is 1 dB higher on every image (so it can be told apart)."""
    from gifd.results import attack_totals

    part = _only(results, [name])
    for batch in part["batches"]:
        batch["attacks"][name]["metrics"]["mean"]["psnr"] += 1.0
        batch["attacks"][name]["metrics"]["per_image"]["psnr"] = [
            v + 1.0 for v in batch["attacks"][name]["metrics"]["per_image"]["psnr"]
        ]
    part["attacks"] = {name: attack_totals(name, part["batches"])}
    return part


def test_merge_supersede_takes_an_attack_from_the_last_run_of_each_image_group(methods: Any) -> None:
    whole = json.loads(RESULTS.read_text())
    names = whole["config"]["attacks"]
    half = len(whole["config"]["indices"]) // 2
    front, back = _images(whole, 0, half), _images(whole, half, 2 * half)
    old_gifd = _only(front, ["gifd"])
    parts = [old_gifd, _only(front, names[1:]), _rerun(front, "gifd"), back, _rerun(back, "gifd")]
    sources = ["old_gifd.json", "front.json", "new_front.json", "back.json", "new_back.json"]
    merged = methods.merge_results(parts, sources, ("gifd",))
    psnr = merged["attacks"]["gifd"]["psnr"]
    assert psnr == pytest.approx(whole["attacks"]["gifd"]["psnr"] + 1.0)
    for name in names[1:]:
        assert merged["attacks"][name] == whole["attacks"][name]
    assert merged["config"]["attacks"] == [*names[1:], "gifd"]
    # The old gifd-only run is left out whole; back.json keeps its other attacks.
    assert merged["benchmark"]["merged_from"] == [
        "front.json",
        "new_front.json",
        "back.json",
        "new_back.json",
    ]
    assert merged["benchmark"]["superseded"] == [
        {"attack": "gifd", "from": "new_front.json", "left_out_of": ["old_gifd.json"]},
        {"attack": "gifd", "from": "new_back.json", "left_out_of": ["back.json"]},
    ]
    # Without --supersede the repeated method is refused, as before.
    with pytest.raises(GifdError, match="repeats attack"):
        methods.merge_results(parts, sources)
    with pytest.raises(
        GifdError, match=r"--supersede ig: on images \[.*\] it is only in front.json, so there is nothing"
    ):
        methods.merge_results(parts, sources, ("ig",))


def test_supersede_needs_merge(methods: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        methods.parse_args(["--supersede", "gifd"])
    assert "--supersede is a --merge option" in capsys.readouterr().err


def test_gifd_stage_steps_split_the_equal_compute_budget(methods: Any, capsys: pytest.CaptureFixture[str]) -> None:
    args = methods.parse_args(["--steps", "300", "--gifd-stage-steps", "33,33,33,33,168"])
    config = methods.experiment_config(args, num_stages=5)
    assert config.settings_for("gifd")["stage_steps"] == [33, 33, 33, 33, 168]
    assert "steps" not in config.settings_for("gifd")
    assert config.settings_for("latent")["steps"] == 300 and config.settings_for("gias")["steps"] == 300
    for argv, message in [
        (["--steps", "300", "--gifd-stage-steps", "33,33,33"], "sum to 99, not --steps 300"),
        (["--gifd-stage-steps", "300,x"], "expected comma-separated integers, got '300,x'"),
        (["--gifd-stage-steps", "0,300"], "give step counts >= 1"),
        (["--stage-steps", "60", "--gifd-stage-steps", "60,60,60,60,60"], "drop --stage-steps"),
    ]:
        with pytest.raises(SystemExit):
            methods.parse_args(argv)
        assert message in capsys.readouterr().err
