"""End-to-end tests of `gifd attack` through `gifd.cli.main`, with tiny budgets (LeNet, 32 px, few steps)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import gifd
from gifd.cli import main
from gifd.data import load_images
from gifd.experiment import ExperimentConfig, experiment_config
from gifd.victims import create_victim

#: Smallest useful run: the cheap victim, few steps, one restart, no progress bars.
TINY = ["--victim", "lenet", "--resolution", "32", "--steps", "3", "--restarts", "1", "--quiet"]

#: The example command of the issue (progress bars on, as a user would run it).
EXAMPLE = [
    "attack",
    "--victim",
    "lenet",
    "--resolution",
    "32",
    "--images",
    "builtin:cifar10",
    "--indices",
    "0,1",
    "--batch-size",
    "1",
    "--attack",
    "ig,gi",
    "--steps",
    "3",
    "--restarts",
    "2",
    "--seed",
    "0",
]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `gifd ARGV` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help, or a malformed flag
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def read_results(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())


def without_timings(value: Any) -> Any:
    """`value` with every wall-clock entry ("seconds", "date", the platform string) removed, recursively."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in ("seconds", "platform", "date")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def png_pixels(path: Path) -> np.ndarray:
    """An RGB PNG as floats in [0, 1], H x W x 3."""
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.float64) / 255.0


def assert_clean_failure(code: int, err: str, parent: Path, *needles: str) -> None:
    """Exit code 2, one line on stderr naming the problem, no traceback, nothing left in `parent`."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gifd attack: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert sorted(p.name for p in parent.iterdir()) == [], "a failed run left files behind"


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The issue's example command, run once for the tests that inspect its output."""
    out = tmp_path_factory.mktemp("example") / "run"
    code, stdout, stderr = run_cli([*EXAMPLE, "--out", str(out)])
    assert code == 0, stderr
    return out, stdout, stderr


# ------------------------------------------------------------------------------------- the example
def test_example_command_writes_full_results(example_run: tuple[Path, str, str]) -> None:
    out, _, _ = example_run
    results = read_results(out)

    config = results["config"]
    assert set(config) == set(ExperimentConfig.model_fields), "results.json must hold every config key"
    assert config["victim"] == "lenet" and config["attacks"] == ["ig", "gi"]
    assert config["steps"] == 3 and config["restarts"] == 2 and config["indices"] == [0, 1]
    # The saved config is enough to repeat the run.
    assert experiment_config(config).model_dump(mode="json") == config

    assert results["seed"] == 0
    assert results["versions"]["torch"] == torch.__version__
    assert results["versions"]["python"] == platform.python_version()
    assert results["versions"]["gifd"] == gifd.__version__

    # foolbox's CIFAR-10 files end in their label: cifar10_II_LABEL.png.
    names = results["images"]["names"]
    assert results["true_labels"] == [int(re.search(r"_(\d+)\.\w+$", n).group(1)) for n in names]
    inferred, true = results["inferred_labels"], results["true_labels"]
    assert len(inferred) == 2
    assert results["label_accuracy"] == pytest.approx(
        np.mean([a == b for a, b in zip(inferred, true, strict=True)])
    )

    for name in ("ig", "gi"):
        summary = results["attacks"][name]
        assert summary["steps"] == 3
        assert isinstance(summary["seconds"], float) and summary["seconds"] >= 0
        per_image = summary["per_image"]
        for metric in ("psnr", "ssim", "lpips_st", "mse"):
            assert len(per_image[metric]) == 2, metric
            assert summary[metric] == pytest.approx(np.mean(per_image[metric])), metric
        for psnr, mse in zip(per_image["psnr"], per_image["mse"], strict=True):
            assert psnr == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)  # images in [0, 1]
        assert all(-1 <= s <= 1 for s in per_image["ssim"])
        assert all(d >= 0 for d in per_image["lpips_st"])


def test_example_command_writes_pngs_matching_the_metrics(example_run: tuple[Path, str, str]) -> None:
    out, _, _ = example_run
    results = read_results(out)
    for grid in ("originals.png", "ig.png", "gi.png"):
        with Image.open(out / grid) as picture:
            assert picture.width >= 64 and picture.height >= 32, grid  # two 32 px images side by side
    expected = {f"{kind}_{i:03d}.png" for kind in ("original", "ig", "gi") for i in range(2)}
    assert {p.name for p in (out / "images").glob("*.png")} == expected

    truth = load_images("builtin:cifar10", 32, [0, 1]).images.permute(0, 2, 3, 1).double().numpy()
    for i in range(2):
        original = png_pixels(out / "images" / f"original_{i:03d}.png")
        assert original.shape == (32, 32, 3)
        assert np.abs(original - truth[i]).max() <= 0.5 / 255 + 1e-6
        for name in ("ig", "gi"):
            reconstruction = png_pixels(out / "images" / f"{name}_{i:03d}.png")
            # The saved reconstruction is the one scored: its MSE (up to 8-bit rounding) is the reported one.
            mse = float(np.mean((reconstruction - original) ** 2))
            assert mse == pytest.approx(results["attacks"][name]["per_image"]["mse"][i], abs=2e-3)


def test_example_command_prints_a_table(example_run: tuple[Path, str, str]) -> None:
    out, stdout, stderr = example_run
    lines = stdout.splitlines()
    header = next(line for line in lines if line.split()[:1] == ["attack"])
    assert {"psnr", "ssim", "lpips_st", "mse"} <= set(header.split())
    rows = {line.split()[0] for line in lines if line.split()}
    assert {"ig", "gi"} <= rows
    assert "label accuracy" in stdout
    assert str(out / "results.json") in stdout
    assert "Traceback" not in stderr


# --------------------------------------------------------------------------------- reproducibility
def test_same_seed_reproduces_and_another_seed_differs(
    example_run: tuple[Path, str, str], tmp_path: Path
) -> None:
    first, _, _ = example_run
    again, other = tmp_path / "again", tmp_path / "other"
    assert run_cli([*EXAMPLE, "--quiet", "--out", str(again)])[0] == 0
    seed1 = [*EXAMPLE[: EXAMPLE.index("--seed")], "--seed", "1"]
    assert run_cli([*seed1, "--quiet", "--out", str(other)])[0] == 0

    a, b, c = read_results(first), read_results(again), read_results(other)
    assert without_timings(a) == without_timings(b)
    for name in ("ig", "gi"):
        assert (first / f"{name}.png").read_bytes() == (again / f"{name}.png").read_bytes()
        assert a["attacks"][name]["per_image"]["mse"] != c["attacks"][name]["per_image"]["mse"]
    assert c["seed"] == 1 and c["config"]["seed"] == 1


# -------------------------------------------------------------------------------------- config file
def test_config_file_is_read_and_flags_override_it(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "victim": "lenet",
                "resolution": 32,
                "indices": [1],
                "attacks": ["ig"],
                "steps": 7,
                "restarts": 1,
                "seed": 5,
                "attack_settings": {"ig": {"restarts": 2}},
            }
        )
    )
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["attack", "--config", str(config_file), "--steps", "2", "--seed", "4", "--quiet", "--out", str(out)]
    )
    assert code == 0, err
    results = read_results(out)
    config = results["config"]
    assert config["steps"] == 2 and config["seed"] == 4 and results["seed"] == 4  # flags win
    assert config["victim"] == "lenet" and config["indices"] == [1]  # from the file
    assert results["attacks"]["ig"]["steps"] == 2
    assert results["images"]["names"] == [load_images("builtin:cifar10", 32, [1]).names[0]]
    # Per-attack settings from the file override the shared restarts.
    assert len(results["batches"][0]["attacks"]["ig"]["restart_losses"]) == 2


def test_unknown_config_key_suggests_the_closest(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text("victim: lenet\nstepz: 3\n")
    parent = tmp_path / "outputs"
    parent.mkdir()
    code, _, err = run_cli(["attack", "--config", str(config_file), "--quiet", "--out", str(parent / "o")])
    assert_clean_failure(code, err, parent, "stepz", "'steps'", str(config_file))


# -------------------------------------------------------------------------------------- bad inputs
def _folder_with_a_text_file(tmp_path: Path) -> list[str]:
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(folder / "red.png")
    (folder / "notes.txt").write_text("not a picture")
    return ["--images", str(folder)]


def _other_architecture_weights(tmp_path: Path) -> list[str]:
    path = tmp_path / "convnet.pt"
    torch.save(create_victim("convnet", resolution=32, num_classes=10, seed=0).model.state_dict(), path)
    return ["--victim-weights", str(path)]


BAD_INPUTS = {
    "non-image file in folder": (_folder_with_a_text_file, ["notes.txt", "remove it"]),
    "unknown victim": (lambda _: ["--victim", "lenett"], ["'lenett'", "'lenet'"]),
    "label beyond class count": (
        lambda _: ["--labels", "12", "--num-classes", "10"],
        ["--num-classes", "13"],
    ),
    "unique labels impossible": (
        lambda _: ["--num-classes", "2", "--batch-size", "3", "--indices", "0,1,2", "--labels", "0,1,0"],
        ["batch size 3", "2 classes", "count"],
    ),
    "indices not divisible": (lambda _: ["--indices", "0,1,2", "--batch-size", "2"], ["--batch-size"]),
    "missing victim weights": (
        lambda tmp: ["--victim-weights", str(tmp / "nowhere.pt")],
        ["nowhere.pt", "not found"],
    ),
    "weights of another architecture": (_other_architecture_weights, ["convnet.pt", "'lenet'", "--victim"]),
    # Numbers are checked by the config models before anything is loaded or computed.
    "negative steps (gifd)": (lambda _: ["--attack", "gifd", "--steps", "-1"], ["--steps -1", ">= 1"]),
    "negative steps (ig)": (lambda _: ["--attack", "ig", "--steps", "-1"], ["--steps -1", ">= 1"]),
    "zero steps": (lambda _: ["--attack", "ig", "--steps", "0"], ["--steps 0", ">= 1"]),
    "zero stage steps": (lambda _: ["--attack", "gifd", "--stage-steps", "0"], ["--stage-steps 0", ">= 1"]),
    "negative stage steps": (
        lambda _: ["--attack", "latent", "--stage-steps", "-1"],
        ["--stage-steps -1", ">= 1"],
    ),
    "steps and stage steps for gifd": (
        lambda tmp: ["--attack", "gifd", *_config(tmp, "attack_settings: {gifd: {steps: 4, stage_steps: 2}}")],
        ["gifd settings", "steps and stage_steps both set the budget", "not both"],
    ),
    "negative restarts": (lambda _: ["--restarts", "-1"], ["--restarts -1", ">= 1"]),
    "zero restarts": (lambda _: ["--restarts", "0"], ["--restarts 0", ">= 1"]),
    "unsupported device": (lambda _: ["--device", "mps"], ["--device mps", "cpu, cuda"]),
    "seed out of range": (
        lambda _: ["--seed", "100000000000000000000000"],
        ["--seed", "< 9223372036854775808"],
    ),
    "negative learning rate": (
        lambda tmp: _config(tmp, "attack_settings: {ig: {lr: -1}}\n"),
        ["ig settings", "lr = -1", "> 0"],
    ),
    "zero log interval": (
        lambda tmp: _config(tmp, "attack_settings: {ig: {log_every: 0}}\n"),
        ["ig settings", "log_every = 0", ">= 1"],
    ),
    "negative radius": (
        lambda tmp: ["--attack", "gifd", *_config(tmp, "attack_settings: {gifd: {radii: [1, -5]}}\n")],
        ["gifd settings", "radii.1 = -5", ">= 0"],
    ),
    "too few radii for the prior": (
        lambda tmp: ["--attack", "gifd", *_config(tmp, "attack_settings: {gifd: {radii: [1, 5]}}\n")],
        ["2 radii", "5 stages"],
    ),
    "attack named twice": (lambda _: ["--attack", "ig,ig"], ["ig is named twice", "once"]),
    "unknown prior, no generative attack": (
        lambda _: ["--attack", "ig", "--prior", "nosuch"],
        ["'nosuch'", "gifd priors"],
    ),
    "negative label": (lambda _: ["--labels", "-1"], ["--labels -1", ">= 0"]),
    "huge resolution": (lambda _: ["--resolution", "100000"], ["--resolution 100000", "<= 1024"]),
    "index twice": (lambda _: ["--indices", "0,0"], ["[0, 0]", "twice"]),
    "config is a directory": (lambda tmp: ["--config", str(tmp)], ["is a directory", "YAML file"]),
    "config with a YAML syntax error": (
        lambda tmp: _config(tmp, "victim: lenet\nsteps: [1,\n"),
        ["not valid YAML at line 3", "fix the file"],
    ),
    "save-update with two batches": (lambda _: ["--indices", "0,1", "--save-update"], ["one batch"]),
    "output cannot be created": (lambda _: ["--out", "/proc/gifd-test/x"], ["cannot be created", "/proc"]),
}


def _config(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return ["--config", str(path)]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_cleanly_and_writes_nothing(case: str, tmp_path: Path) -> None:
    make_flags, needles = BAD_INPUTS[case]
    flags = make_flags(tmp_path)
    parent = tmp_path / "outputs"
    parent.mkdir()
    code, stdout, err = run_cli(["attack", *TINY, "--out", str(parent / "run"), *flags])
    assert_clean_failure(code, err, parent, *needles)
    assert "results written" not in stdout


def test_bad_numbers_fail_before_any_image_is_loaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--resolution 100000 once loaded and resized images until the kernel killed the process."""
    import gifd.experiment

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("images were loaded before the settings were checked")

    monkeypatch.setattr(gifd.experiment, "load_images", refuse)
    for flags in (["--resolution", "100000"], ["--steps", "-1"], ["--device", "mps"], ["--attack", "ig,ig"]):
        code, _, err = run_cli(["attack", *TINY, *flags, "--out", str(tmp_path / "o")])
        assert code == 2 and "Traceback" not in err, (flags, err)


def test_interrupt_during_start_up_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the command's modules are still importing: exit 130 and one line."""
    import gifd.cli

    def interrupted(name: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(gifd.cli.importlib, "import_module", interrupted)
    code, _, err = run_cli(["attack", "--steps", "3"])
    assert code == 130 and err.strip() == "gifd attack: interrupted"


def test_a_users_directory_with_a_results_json_is_never_replaced(tmp_path: Path) -> None:
    """Only a directory with gifd's marker, holding only gifd's files, is replaced."""
    mine = tmp_path / "d"
    mine.mkdir()
    (mine / "results.json").write_text('{"mine": 1}')
    (mine / "notes.txt").write_text("x")
    code, _, err = run_cli(["attack", *TINY, "--attack", "ig", "--steps", "2", "--out", str(mine)])
    assert code == 2 and "is not a gifd run" in err and "gifd-run.json" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "results.json"]
    assert (mine / "results.json").read_text() == '{"mine": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_a_gifd_run_holding_a_users_file_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_cli(["attack", *TINY, "--out", str(out)])[0] == 0
    assert (out / "gifd-run.json").is_file() and (out / "report.html").is_file()
    (out / "images" / "my_notes.txt").write_text("keep me")
    code, _, err = run_cli(["attack", *TINY, "--seed", "1", "--out", str(out)])
    assert code == 2 and "images/my_notes.txt" in err and "move them out" in err
    assert (out / "images" / "my_notes.txt").read_text() == "keep me"
    assert read_results(out)["seed"] == 0
    (out / "images" / "my_notes.txt").unlink()
    assert run_cli(["attack", *TINY, "--seed", "1", "--out", str(out)])[0] == 0
    assert read_results(out)["seed"] == 1


def test_report_refuses_a_file_and_a_sweep_with_the_right_fix(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(["report", str(tmp_path / "file")])
    assert code == 2 and "is a file, not a run directory" in err
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    code, _, err = run_cli(["report", str(sweep)])
    assert code == 2 and "is a sweep" in err and "jobs/<id>" in err and "gifd attack --out" not in err


def test_several_image_files_default_to_the_first_batch(tmp_path: Path) -> None:
    files = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        files.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 40), colour).save(files[-1])
    out = tmp_path / "run"
    code, _, err = run_cli(
        [
            "attack",
            *TINY,
            "--images",
            ",".join(map(str, files)),
            "--batch-size",
            "2",
            "--labels",
            "0,1",
            "--out",
            str(out),
        ]
    )
    assert code == 0, err
    results = read_results(out)
    assert results["config"]["indices"] == [0, 1] and results["images"]["names"] == ["0.png", "1.png"]


def test_save_update_writes_an_update_that_attacks_again(tmp_path: Path) -> None:
    first = tmp_path / "first"
    code, _, err = run_cli(["attack", *TINY, "--attack", "ig", "--save-update", "--out", str(first)])
    assert code == 0, err
    assert (first / "update.pt").is_file()
    again = tmp_path / "again"
    code, _, err = run_cli(["attack", "--update", str(first / "update.pt"), "--attack", "ig", "--steps", "3",
                            "--restarts", "1", "--quiet", "--out", str(again)])  # fmt: skip
    assert code == 0, err
    assert read_results(again)["inferred_labels"] == read_results(first)["inferred_labels"]


def test_checkpoint_flag_resumes_a_run_and_is_removed_once_the_run_is_written(tmp_path: Path) -> None:
    checkpoint = tmp_path / "run.checkpoint.pt"
    notes = tmp_path / "notes.pt"
    notes.write_text("the user's own file")
    argv = ["attack", *TINY, "--attack", "ig", "--indices", "0,1", "--batch-size", "1"]
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "refused"), "--checkpoint", str(notes)])
    assert code == 2 and "is not a gifd experiment checkpoint" in err and notes.read_text() == "the user's own file"
    assert not (tmp_path / "refused").exists()
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "whole")])
    assert code == 0, err
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "checked"), "--checkpoint", str(checkpoint)])
    assert code == 0, err
    assert not checkpoint.exists()
    whole, checked = read_results(tmp_path / "whole"), read_results(tmp_path / "checked")
    assert checked["attacks"]["ig"]["per_image"] == whole["attacks"]["ig"]["per_image"]


def test_stage_steps_gives_every_stage_of_the_staged_attacks_that_many_steps(tmp_path: Path) -> None:
    from gifd.cli import build_parser
    from gifd.cli.attack import config_from_args

    args = build_parser("attack").parse_args(
        ["attack", "--attack", "ig,gifd,gifd-noball,latent", "--steps", "3", "--stage-steps", "2"]
    )
    config = config_from_args(args)
    assert {name: config.settings_for(name) for name in config.attacks} == {
        "ig": {"steps": 3},
        "gifd": {"stage_steps": 2},
        "gifd-noball": {"stage_steps": 2},
        "latent": {"stage_steps": 2},
    }
    # An attack's own budget replaces both shared ones.
    own = ExperimentConfig(attacks=["gifd"], stage_steps=2, attack_settings={"gifd": {"steps": 9}})
    assert own.settings_for("gifd") == {"steps": 9}
    out = tmp_path / "run"
    flags = ["--attack", "ig,latent,gifd", "--stage-steps", "2", "--out", str(out)]
    code, _, err = run_cli(["attack", *TINY, *flags])
    assert code == 0, err
    results = read_results(out)
    attacks = results["batches"][0]["attacks"]
    assert results["config"]["stage_steps"] == 2 and attacks["ig"]["steps"] == 3
    assert [(s["budget"], s["steps"]) for s in attacks["latent"]["stages"]] == [(2, 2)]
    assert [(s["budget"], s["steps"]) for s in attacks["gifd"]["stages"]] == [(2, 2)] * 5
    assert attacks["gifd"]["steps"] == 10


def test_existing_output_is_replaced_only_by_a_successful_run(tmp_path: Path) -> None:
    parent = tmp_path / "outputs"
    out = parent / "run"
    assert run_cli(["attack", *TINY, "--seed", "0", "--out", str(out)])[0] == 0
    first = (out / "results.json").read_bytes()

    code, _, err = run_cli(["attack", *TINY, "--victim", "lenett", "--out", str(out)])
    assert code == 2 and "Traceback" not in err
    assert (out / "results.json").read_bytes() == first, "a failed run must leave the old results alone"
    assert sorted(p.name for p in parent.iterdir()) == ["run"], "no temporary directories left behind"

    code, _, err = run_cli(["attack", *TINY, "--seed", "1", "--out", str(out)])
    assert code == 0, err
    assert read_results(out)["seed"] == 1
    assert sorted(p.name for p in parent.iterdir()) == ["run"]


def test_output_directory_that_is_not_a_run_is_never_deleted(tmp_path: Path) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("months of work")
    code, _, err = run_cli(["attack", *TINY, "--out", str(precious)])
    assert (precious / "chapter1.tex").read_text() == "months of work"
    assert code == 2 and "exists and is not a gifd run" in err


def test_output_path_that_is_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(["attack", *TINY, "--out", str(tmp_path / "file")])
    assert code == 2 and "is a file" in err


# -------------------------------------------------------------------------------------------- help
def test_help_lists_commands_and_flags() -> None:
    code, stdout, _ = run_cli(["--help"])
    assert code == 0
    assert "attack" in stdout and "priors" in stdout
    code, stdout, _ = run_cli(["attack", "--help"])
    assert code == 0
    for flag in (
        "--victim",
        "--resolution",
        "--images",
        "--indices",
        "--batch-size",
        "--labels",
        "--attack",
        "--steps",
        "--restarts",
        "--seed",
        "--config",
        "--out",
        "--victim-weights",
        "--num-classes",
        "--quiet",
    ):
        assert flag in stdout, flag


# ------------------------------------------------------------------------------------- subprocess
def test_python_dash_m_runs_and_exits_with_the_right_codes(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "gifd.cli", "attack", *TINY, "--indices", "0"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "ok")], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\s*ig\s", done.stdout, re.MULTILINE)
    assert read_results(tmp_path / "ok")["attacks"]["ig"]["steps"] == 3

    done = subprocess.run(
        [*command, "--victim", "lenett", "--out", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
