"""The user's own victim, `--victim MODULE:FACTORY`: built, checked and attacked like a built-in.

Each test writes a small package of victim factories into its own temporary working directory
(which is not on sys.path: gifd must find it there itself) and runs from that directory.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from flower_replies import fedavg_reply
from gifd.client import compute_update, load_update
from gifd.data import load_images
from gifd.defenses import SoteriaDefense, aimed_at, parse_defense
from gifd.errors import GifdError
from gifd.victims import create_victim, victim_factory
from test_cli import assert_clean_failure, run_cli

#: The factories module: a small CNN whose classifier is not called "fc", one that ends in a
#: convolution (no linear classifier), and one factory for each way a factory can be wrong.
FACTORIES = """
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes, resolution):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Sigmoid(), nn.AdaptiveAvgPool2d(4)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 16, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def small_cnn(num_classes, resolution):
    return SmallCNN(num_classes, resolution)


def all_conv(num_classes, resolution):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Sigmoid(), nn.Conv2d(8, num_classes, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


NOT_CALLABLE = 3


def broken(num_classes, resolution):
    raise RuntimeError("no such layer size")


def not_a_module(num_classes, resolution):
    return {"num_classes": num_classes}


def wrong_classes(num_classes, resolution):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * resolution * resolution, num_classes + 1))


def no_keywords():
    return nn.Linear(2, 2)
"""


@dataclass
class Factories:
    """The package written for one test: its name and the directory it lives in (the cwd)."""

    package: str
    root: Path

    def spec(self, factory: str, module: str = "models") -> str:
        return f"{self.package}.{module}:{factory}"


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Factories]:
    """A fresh package of victim factories in a fresh working directory; sys.path and
    sys.modules are restored afterwards."""
    package = f"user_victims_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "models.py").write_text(textwrap.dedent(FACTORIES))
    (tmp_path / package / "needs_missing.py").write_text("import gifd_no_such_dependency_xyz\n")
    (tmp_path / package / "raises.py").write_text("raise ValueError('config file missing')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    importlib.invalidate_caches()
    yield Factories(package, tmp_path)
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


# ----------------------------------------------------------------------------------- the library
def test_a_factory_victim_is_seeded_checked_and_finds_its_classifier(factories: Factories) -> None:
    spec = factories.spec("small_cnn")
    assert str(factories.root) not in sys.path
    before = torch.get_rng_state()
    victim = create_victim(spec, resolution=16, num_classes=7, seed=3)
    assert torch.equal(torch.get_rng_state(), before), "building a victim must not move the global stream"
    assert str(factories.root) in sys.path  # the working directory was searched
    assert victim.name == spec and victim.classifier == "head.1"
    assert victim.classifier_tensor("weight") == "head.1.weight" and not victim.model.training
    # The init is the factory's own under torch.manual_seed(seed), independently of gifd.
    module = importlib.import_module(f"{factories.package}.models")
    torch.manual_seed(3)
    reference = module.SmallCNN(7, 16).state_dict()
    torch.set_rng_state(before)
    state = victim.model.state_dict()
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)
    other = create_victim(spec, resolution=16, num_classes=7, seed=4).model.state_dict()
    assert not torch.equal(other["head.1.weight"], state["head.1.weight"])
    # A model whose output is not a linear layer's has no classifier; the built-ins keep "fc".
    assert create_victim(factories.spec("all_conv"), resolution=16).classifier is None
    assert create_victim("lenet", resolution=16).classifier == "fc"


def test_factory_weights_load_strictly(factories: Factories, tmp_path: Path) -> None:
    spec = factories.spec("small_cnn")
    trained = create_victim(spec, resolution=16, seed=8).model.state_dict()
    torch.save(trained, tmp_path / "trained.pt")
    loaded = create_victim(spec, resolution=16, seed=0, weights=tmp_path / "trained.pt").model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())
    with pytest.raises(GifdError, match=r"head\.1\.weight has shape \(10, 128\).* expects \(5, 128\)"):
        create_victim(spec, resolution=16, num_classes=5, weights=tmp_path / "trained.pt")


def test_labels_are_inferred_from_a_classifier_not_named_fc(factories: Factories) -> None:
    from gifd.attacks import infer_labels

    victim = create_victim(factories.spec("small_cnn"), resolution=16, num_classes=10, seed=0)
    private = load_images("builtin:cifar10", 16, [0, 1, 3, 4])
    update = compute_update(victim, private.images, private.labels)
    assert infer_labels(update, victim).tolist() == sorted(private.labels.tolist())


def test_soteria_is_aimed_at_the_factory_victims_classifier(factories: Factories) -> None:
    victim = create_victim(factories.spec("small_cnn"), resolution=16, seed=0)
    aimed = aimed_at(parse_defense("clip:4+soteria:0.5"), victim)
    assert [type(d).__name__ for d in aimed.members()] == ["ClipDefense", "SoteriaDefense"]
    assert aimed.members()[1] == SoteriaDefense(0.5, "head.1")
    with pytest.raises(GifdError, match="does not end in one"):
        aimed_at(parse_defense("soteria:0.5"), create_victim(factories.spec("all_conv"), resolution=16))


def test_a_sweep_checks_every_jobs_factory_before_any_runs(factories: Factories) -> None:
    from gifd.sweep import sweep_from_dict

    base = {"resolution": 16, "attacks": ["ig"], "steps": 2, "restarts": 1}
    grid = {"victim": [factories.spec("small_cnn"), factories.spec("missing")]}
    with pytest.raises(GifdError, match=r"sweep job \S*models-missing: victim .* has no attribute 'missing'"):
        sweep_from_dict({"base": base, "grid": grid})
    victim_factory(factories.spec("small_cnn"))  # the good one resolves


# --------------------------------------------------------------------------------------- the CLI
TINY = ["--attack", "ig", "--steps", "2", "--restarts", "1", "--resolution", "16", "--quiet"]


def test_gifd_attack_attacks_a_factory_victim(factories: Factories) -> None:
    spec, out = factories.spec("small_cnn"), factories.root / "runs" / "attack"
    code, stdout, stderr = run_cli(
        [
            "attack",
            "--victim",
            spec,
            *TINY,
            "--images",
            "builtin:cifar10",
            "--indices",
            "0,1",
            "--out",
            str(out),
        ]
    )
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["victim"] == spec and results["config"]["num_classes"] == 10
    assert results["true_labels"] == [3, 8] and results["inferred_labels"] == [3, 8]
    assert results["label_accuracy"] == 1.0 and "label accuracy 1.00" in stdout
    assert results["attacks"]["ig"]["steps"] == 2 and len(results["attacks"]["ig"]["per_image"]["psnr"]) == 2
    assert sorted(p.name for p in (out / "images").iterdir() if p.name.startswith("ig_")) == [
        "ig_000.png",
        "ig_001.png",
    ]


def test_gifd_attack_of_a_victim_without_a_linear_classifier(factories: Factories) -> None:
    spec, parent = factories.spec("all_conv"), factories.root / "runs"
    parent.mkdir()
    argv = ["attack", "--victim", spec, *TINY, "--out", str(parent / "run")]
    code, _, stderr = run_cli(argv)
    assert_clean_failure(
        code,
        stderr,
        parent,
        "does not end in a linear classifier",
        "final nn.Linear with out_features = num_classes",
        "--disclose-labels",
    )
    code, _, stderr = run_cli([*argv, "--disclose-labels"])
    assert code == 0, stderr
    results = json.loads((parent / "run" / "results.json").read_text())
    assert results["inferred_labels"] == results["true_labels"]  # disclosed, not inferred


@pytest.mark.parametrize(
    ("factory", "needles"),
    [
        (
            "gifd_no_such_module_xyz:make",
            ["victim module 'gifd_no_such_module_xyz' not found", "working directory"],
        ),
        ("PKG.nope:make", ["victim module 'PKG.nope' not found", "working directory"]),
        ("PKG.needs_missing:make", ["imports 'gifd_no_such_dependency_xyz', which is not installed"]),
        ("PKG.raises:make", ["importing victim module 'PKG.raises' raised ValueError: config file missing"]),
        ("PKG.models:missing", ["PKG.models has no attribute 'missing'", "models.py"]),
        ("PKG.models:SmallCNN.missing", ["PKG.models:SmallCNN has no attribute 'missing'"]),
        ("PKG.models:NOT_CALLABLE", ["is a int, not a callable"]),
        ("PKG.models:no_keywords", ["does not take the keyword arguments num_classes and resolution"]),
        ("PKG.models:broken", ["(num_classes=10, resolution=16) raised RuntimeError: no such layer size"]),
        ("PKG.models:not_a_module", ["returned a dict, not a torch.nn.Module"]),
        ("PKG.models:wrong_classes", ["to (2, 11), not (batch, num_classes) = (2, 10)"]),
        ("PKG.models:", ["is not MODULE:FACTORY"]),
    ],
)
def test_bad_factories_are_one_line_errors_before_any_compute(
    factories: Factories, factory: str, needles: list[str]
) -> None:
    spec = factory.replace("PKG", factories.package)
    parent = factories.root / "runs"
    parent.mkdir()
    code, _, stderr = run_cli(["attack", "--victim", spec, *TINY, "--out", str(parent / "run")])
    assert_clean_failure(code, stderr, parent, *[n.replace("PKG", factories.package) for n in needles])


# ------------------------------------------------------------------------------- the Flower audit
def test_a_flower_audit_update_of_a_factory_victim_is_reattacked_from_the_cli(factories: Factories) -> None:
    pytest.importorskip("flwr")
    from gifd.flower import FlowerAudit, audit_config

    spec = factories.spec("small_cnn")
    # The federation's global model: the factory's model at another init than the audit's seed.
    client = create_victim(spec, resolution=16, num_classes=10, seed=5)
    private = load_images("builtin:cifar10", 16, [0, 1])
    global_state, reply, reported, delta = fedavg_reply(client, private.images, private.labels)
    config = audit_config(
        {"victim": spec, "resolution": 16, "attacks": ["ig"], "steps": 2, "restarts": 1, "device": "cpu"}
    )
    audit = FlowerAudit(config, factories.root / "audit", background=False)
    audit.sent(1, "7", global_state, {})
    audit.received(1, "7", reply, reported)
    (record,) = audit.wait()
    assert record["status"] == "attacked", record.get("reason")
    assert record["inferred_labels"] == [3, 8]
    run = factories.root / "audit" / record["run"]
    update = load_update(run / "update.pt")
    assert update.metadata["victim"] == spec
    for name, tensor in delta.tensors.items():
        torch.testing.assert_close(update.tensors[name], tensor, rtol=1e-5, atol=1e-7)

    # From the CLI: the update's metadata names the victim; the global model gives its weights.
    weights = factories.root / "audit" / "round_001" / "global_model.pt"
    rerun = factories.root / "rerun"
    reattack = ["attack", "--update", str(run / "update.pt"), "--out", str(rerun), *TINY[:6], "--quiet"]
    scored = ["--images", "builtin:cifar10", "--indices", "0,1"]
    code, _, stderr = run_cli([*reattack, *scored])
    assert code == 2 and "other weights than this victim's" in stderr and not rerun.exists()
    code, _, stderr = run_cli([*reattack, "--victim-weights", str(weights), *scored])
    assert code == 0, stderr
    results = json.loads((rerun / "results.json").read_text())
    assert results["config"]["victim"] == spec and results["config"]["resolution"] == 16
    assert results["inferred_labels"] == record["inferred_labels"] == results["true_labels"]
    assert results["config"]["local_steps"] == 1 and results["attacks"]["ig"]["steps"] == 2


def test_a_flower_audit_refuses_a_victim_without_a_linear_classifier(factories: Factories) -> None:
    pytest.importorskip("flwr")
    from gifd.flower import FlowerAudit, audit_config

    config = audit_config({"victim": factories.spec("all_conv"), "resolution": 16, "attacks": ["ig"]})
    with pytest.raises(GifdError, match="does not end in a linear classifier.*never carries its labels"):
        FlowerAudit(config, factories.root / "audit")
    with pytest.raises(GifdError, match="has no attribute 'missing'"):
        audit_config({"victim": factories.spec("missing")})
