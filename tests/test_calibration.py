"""GIFD's radius calibration: the choice against a brute force, files, cache, `radii: auto`, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

import gifd.calibration as calibration_module
from gifd.attacks import Target, infer_labels
from gifd.attacks.gifd import GIFD
from gifd.calibration import (
    Schedule,
    cache_dir,
    calibrate,
    calibration_settings,
    format_table,
    load_radii,
    write_radii_file,
)
from gifd.cli import main
from gifd.client import compute_update
from gifd.data import load_images
from gifd.errors import GifdError
from gifd.experiment import experiment_config, run_experiment
from gifd.imageio import save_image
from gifd.metrics.image import psnr
from gifd.priors import create_prior
from gifd.priors.dcgan import GENERATOR_FORMAT, DCGANGenerator, init_dcgan_weights, radii_from_feature_norms
from gifd.victims import create_victim

GIFD_BUDGET = {"steps": 4, "restarts": 1}


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory) -> str:
    """A tiny 32-px DCGAN (nz 8, ngf 4) in `gifd train-prior`'s generator.pt format, its
    BatchNorm statistics those of its own random features (so every stage has unit scale)."""
    net = DCGANGenerator(nz=8, ngf=4, resolution=32)
    init_dcgan_weights(net, torch.Generator().manual_seed(0))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative: the statistics of the one batch below
    net.train()
    with torch.no_grad():
        net(torch.randn(256, 8, 1, 1, generator=torch.Generator().manual_seed(1)))
    path = tmp_path_factory.mktemp("prior") / "generator.pt"
    torch.save(
        {"format": GENERATOR_FORMAT, "version": 1, "arch": net.arch, "generator": net.state_dict()}, path
    )
    return str(path)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the GIFD runs here are tiny, and threads only contend on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GIFD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "calibration"


def settings(generator_file: str, **values):
    base = {
        "prior": "dcgan",
        "prior_weights": generator_file,
        "victim": "lenet",
        "resolution": 32,
        "images": ["builtin:cifar10"],
        "count": 2,
        "schedules": ["none", "fraction:0.1", "linear:0.5"],
        "cuts": ["relu", "batchnorm"],
        "gifd": GIFD_BUDGET,
        "device": "cpu",
    }
    return calibration_settings({**base, **values})


def brute_force(generator_file: str, cuts, schedules, count: int) -> dict[tuple[str, str], list[float]]:
    """Every (cut, schedule) run by hand: the client's update, labels inferred, GIFD from seed + k."""
    victim = create_victim("lenet", resolution=32, num_classes=10, seed=0)
    images = load_images("builtin:cifar10", 32, list(range(count)))
    table = {}
    for cut in cuts:
        prior = create_prior("dcgan", generator_file, settings={"cut": cut})
        norms = radii_from_feature_norms(prior, fraction=1.0)
        for spec in schedules:
            radii = Schedule.parse(spec).radii(norms, prior.default_radii()[0])
            values = []
            for k in range(count):
                image, label = images.images[k : k + 1], images.labels[k : k + 1]
                update = compute_update(victim, image, label)
                target = Target(victim, update, infer_labels(update, victim, "unique"))
                result = GIFD({**GIFD_BUDGET, "radii": radii}, prior=prior, progress=False).run(
                    target, torch.Generator().manual_seed(k)
                )
                values.append(float(psnr(result.images.double(), image.double()).mean()))
            table[(cut, spec)] = values
    return table



def gifd_runs(monkeypatch: pytest.MonkeyPatch) -> list:
    """The radii of every GIFD run from here on (GIFD.run still runs)."""
    calls: list = []
    original = GIFD.run

    def counted(self, target, generator):  # type: ignore[no-untyped-def]
        calls.append(self.config.radii)
        return original(self, target, generator)

    monkeypatch.setattr(GIFD, "run", counted)
    return calls

def test_schedules_follow_the_feature_norms() -> None:
    norms = [10.0, 100.0, 300.0, 900.0]
    assert Schedule.parse("linear:0.5").radii(norms, 1.0) == [1.0, 50.0, 100.0, 150.0]
    assert Schedule.parse("fraction:0.1").radii(norms, 1.0) == pytest.approx([1.0, 10.0, 30.0, 90.0])
    assert Schedule.parse("none").radii(norms, 1.0) == [1.0, math.inf, math.inf, math.inf]
    for bad in ("linear", "fraction:-1", "linear:inf", "ball:1", "none:2"):
        with pytest.raises(GifdError, match="unknown radius schedule"):
            Schedule.parse(bad)


def test_calibration_picks_the_best_of_a_brute_force_over_the_grid(generator_file) -> None:
    chosen = settings(generator_file)
    calibration = calibrate(chosen, progress=False)
    expected = brute_force(generator_file, chosen.cuts, chosen.schedules, 2)
    rows = {(row["cut"], row["schedule"]): row for row in calibration["table"]}
    assert set(rows) == set(expected)
    for key, values in expected.items():
        assert list(rows[key]["psnr"].values()) == pytest.approx(values, rel=1e-9)
    means = {key: sum(v) / len(v) for key, v in expected.items()}
    best = max(means, key=means.get)
    assert (calibration["cut"], calibration["schedule"]) == best
    assert calibration["radii"] == rows[best]["radii"]
    assert calibration["mean_psnr"] == pytest.approx(means[best])
    table = format_table(calibration)
    assert table.count("\n") == len(expected) and "* " in table


def test_calibration_picks_no_ball_when_only_a_free_feature_reaches_the_image(generator_file, tmp_path) -> None:
    # The private image is the generator's image of a last-stage feature far from any feature
    # the latent gives: the free last stage can walk there, a tight ball (1/1000 of a typical
    # feature's l1 norm) cannot leave the start. Only the last stage runs.
    prior = create_prior("dcgan", generator_file)
    far = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(7)).relu() * 3
    with torch.no_grad():
        image = (prior(3, {"h": far}, {}) + 1) / 2
    path = tmp_path / "truth.png"
    save_image(image[0], path)
    calibration = calibrate(
        settings(
            generator_file,
            images=[str(path)],
            count=1,
            cuts=None,
            schedules=["fraction:0.001", "none"],
            gifd={"steps": 40, "restarts": 1, "stage_start": 3, "lr": 0.3},
        ),
        progress=False,
    )
    means = {row["schedule"]: row["mean_psnr"] for row in calibration["table"]}
    assert calibration["schedule"] == "none" and calibration["cut"] == "relu"
    assert means["none"] > means["fraction:0.001"] + 2  # measured: 26.9 against 22.9 dB


def test_pruning_keeps_the_better_half_after_each_image(generator_file) -> None:
    full = calibrate(
        settings(
            generator_file, cuts=["relu"], schedules=["none", "fraction:0.01", "fraction:0.1", "linear:1"]
        ),
        progress=False,
    )
    pruned = calibrate(
        settings(
            generator_file,
            cuts=["relu"],
            schedules=["none", "fraction:0.01", "fraction:0.1", "linear:1"],
            prune=True,
        ),
        progress=False,
    )
    first = full["images"][0]
    ranked = sorted(full["table"], key=lambda row: -row["psnr"][first])
    kept = {row["schedule"] for row in ranked[:2]}
    assert {row["schedule"] for row in pruned["table"] if row["complete"]} == kept
    assert all(len(row["psnr"]) == 1 for row in pruned["table"] if not row["complete"])
    best = max((row for row in full["table"] if row["schedule"] in kept), key=lambda row: row["mean_psnr"])
    assert pruned["schedule"] == best["schedule"]


def test_the_evaluation_set_is_refused() -> None:
    with pytest.raises(GifdError, match="builtin:photos is the evaluation set"):
        calibration_settings({"images": ["builtin:cifar10", "builtin:photos"]})


def test_radii_file_is_checked_before_any_compute(generator_file, tmp_path) -> None:
    prior = create_prior("dcgan", generator_file)
    missing = tmp_path / "missing.json"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"radii": [1, 2]}))
    for path, message in ((missing, "not found"), (bad, "is not JSON"), (foreign, "not a gifd radii file")):
        with pytest.raises(GifdError, match=message) as info:
            GIFD({"radii": str(path)}, prior=prior, progress=False).check()
        assert "\n" not in str(info.value)
    good = tmp_path / "good.json"
    write_radii_file(
        {"format": "gifd-radii", "version": 1, "cut": "batchnorm", "radii": [1.0, None, 2.0, 3.0]}, good
    )
    with pytest.raises(GifdError, match="stage cut 'batchnorm'"):
        GIFD({"radii": str(good)}, prior=prior, progress=False).check()
    batchnorm = create_prior("dcgan", generator_file, settings={"cut": "batchnorm"})
    assert load_radii(good, batchnorm) == [1.0, math.inf, 2.0, 3.0]
    assert GIFD({"radii": str(good)}, prior=batchnorm, progress=False).radii() == [1.0, math.inf, 2.0, 3.0]


def auto_run(generator_file: str, seed: int = 0):
    config = experiment_config(
        {
            "victim": "lenet",
            "resolution": 32,
            "images": "builtin:cifar10",
            "indices": [5],
            "attacks": ["gifd"],
            "prior": "dcgan",
            "prior_weights": generator_file,
            "attack_settings": {"gifd": {"radii": "auto", **GIFD_BUDGET}},
            "seed": seed,
            "device": "cpu",
        }
    )
    return run_experiment(config, progress=False)


def test_radii_auto_is_reproducible_and_cached(generator_file, cache, monkeypatch) -> None:
    # A smaller default grid, to keep the test fast: `radii: auto` takes the defaults as they are.
    monkeypatch.setattr(calibration_module, "DEFAULT_SCHEDULES", ("none", "fraction:0.1"))
    monkeypatch.setattr(calibration_module, "CALIBRATION_IMAGES", ("builtin:cifar10",))
    calls = gifd_runs(monkeypatch)
    first = auto_run(generator_file)
    assert len(calls) == 1 + 2 * 2  # the attack + 2 calibration images x 2 default schedules
    files = list(cache.iterdir())
    assert len(files) == 1 and cache_dir() == cache
    stored = json.loads(files[0].read_text())
    radii = first["config"]["attack_settings"]["gifd"]["radii"]  # JSON: no ball is null
    assert radii == stored["radii"]
    assert calls[-1] == [math.inf if r is None else r for r in radii]  # the attack ran with them
    rerun = experiment_config(first["config"])  # results.json's config runs again as it is
    assert GIFD.Config(**rerun.settings_for("gifd")).radii == calls[-1]

    calls.clear()
    again = auto_run(generator_file)  # the cached calibration: only the attack runs
    assert len(calls) == 1
    assert again["config"]["attack_settings"]["gifd"]["radii"] == radii

    files[0].unlink()  # computed again from the seed: the same table
    auto_run(generator_file)
    recomputed = json.loads(next(cache.iterdir()).read_text())
    assert recomputed["table"] == stored["table"] and recomputed["radii"] == stored["radii"]

    auto_run(generator_file, seed=1)  # another seed is another key (and another victim)
    assert len(list(cache.iterdir())) == 2


def test_radii_auto_unresolved_is_refused(generator_file) -> None:
    prior = create_prior("dcgan", generator_file)
    attack = GIFD({"radii": "auto"}, prior=prior, progress=False)
    attack.check()  # resolved later, with the victim
    with pytest.raises(GifdError, match="resolve_auto_radii"):
        attack.radii()


def test_cli_calibrate_writes_a_radii_file_that_attack_takes(generator_file, tmp_path, capsys) -> None:
    out = tmp_path / "radii.json"
    code = main(
        [
            "calibrate", "--prior", "dcgan", "--prior-weights", generator_file, "--victim", "lenet",
            "--resolution", "32", "--images", "builtin:cifar10", "--count", "1",
            "--schedules", "none,fraction:0.1", "--steps", "4", "--restarts", "1", "--device", "cpu",
            "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["format"] == "gifd-radii" and data["victim"] == "lenet" and data["resolution"] == 32
    assert {(row["cut"], row["schedule"]) for row in data["table"]} == {
        (cut, spec) for cut in ("relu", "batchnorm") for spec in ("none", "fraction:0.1")
    }
    assert data["budget"]["steps"] == 4 and data["seed"] == 0 and "gifd" in data["versions"]
    assert f"radii file: {out}" in printed and data["schedule"] in printed

    config = tmp_path / "attack.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "prior": "dcgan",
                "prior_weights": generator_file,
                "prior_settings": {"cut": data["cut"]},
                "attack_settings": {"gifd": {"radii": str(out)}},
            }
        )
    )
    run_dir = tmp_path / "run"
    code = main(
        [
            "attack", "--config", str(config), "--victim", "lenet", "--resolution", "32", "--attack", "gifd",
            "--steps", "4", "--restarts", "1", "--device", "cpu", "--out", str(run_dir), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["attack_settings"]["gifd"]["radii"] == str(out)


def test_cli_calibrate_refuses_the_evaluation_set(capsys) -> None:
    assert main(["calibrate", "--images", "builtin:photos", "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert "builtin:photos is the evaluation set" in error and "\n" not in error


def test_radii_auto_leaves_attacks_without_a_ball_on_the_defaults(generator_file, cache, monkeypatch) -> None:
    calls = gifd_runs(monkeypatch)
    config = experiment_config(
        {
            "victim": "lenet",
            "resolution": 32,
            "attacks": ["gifd-noball", "latent"],
            "prior": "dcgan",
            "prior_weights": generator_file,
            "attack_settings": {"gifd-noball": {"radii": "auto"}, "latent": {"radii": "auto"}},
            "steps": 2,
            "restarts": 1,
            "device": "cpu",
        }
    )
    results = run_experiment(config, progress=False)
    assert calls == [None, None]  # no calibration ran
    assert not cache.exists()
    assert results["config"]["attack_settings"]["latent"]["radii"] is None


def test_prior_settings_are_checked_with_the_run_config() -> None:
    with pytest.raises(GifdError, match="prior_settings of digiface-dcgan64.*cut"):
        experiment_config({"prior_settings": {"cut": "tanh"}})
    assert experiment_config({"prior_settings": {"cut": "batchnorm"}}).prior_settings == {"cut": "batchnorm"}
