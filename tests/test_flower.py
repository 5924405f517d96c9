"""The Flower audit: a strategy wrapper that attacks the client updates it aggregates, unchanged.

The simulation tests run the example app (examples/flower_audit) in Flower's simulation engine
with 2 clients, once unaudited and once audited, and check that the audit changes nothing in the
training and that each attack received exactly the client's delta, recomputed here from the same
private images and local-training settings with gifd's own FedAvg client.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("flwr")

from gifd.client import load_update
from gifd.errors import GifdError
from gifd.fedavg import compute_fedavg_update
from gifd.flower import FlowerAudit, audit_config, audit_strategy
from gifd.victims import NORMALIZATIONS, create_victim

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flower_audit"
sys.path.insert(0, str(EXAMPLE))

from flower_audit import simulation  # noqa: E402
from flower_audit.task import partition  # noqa: E402

from flower_replies import fedavg_reply  # noqa: E402

#: A tiny federation: LeNet at 16 px, 2 images per client, mini-batches of 1, 2 local epochs.
SETTINGS = {
    "victim": "lenet",
    "resolution": 16,
    "images-per-client": 2,
    "batch-size": 1,
    "local-epochs": 2,
    "lr": 0.05,
}
AUDIT = {"attacks": ["ig"], "steps": 3, "restarts": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def environment() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLWR_TELEMETRY_ENABLED", "0")
        patch.setenv("PYTHONPATH", os.pathsep.join([str(EXAMPLE), os.environ.get("PYTHONPATH", "")]))
        yield


@pytest.fixture(scope="module")
def message_runs(environment: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("flower") / "audit"
    plain = simulation.run(clients=2, rounds=2, settings=SETTINGS)
    audited = simulation.run(clients=2, rounds=2, settings=SETTINGS, audit=AUDIT, out=out)
    return {"plain": plain, "audited": audited, "out": out}


def _independent_delta(
    record: dict[str, Any], global_model: dict[str, torch.Tensor], settings: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The client's delta recomputed with gifd's FedAvg client from the same images and settings."""
    victim = create_victim(
        "lenet", resolution=settings["resolution"], normalization=settings.get("normalization", "imagenet")
    )
    victim.model.load_state_dict(global_model)
    data = partition(
        int(record["reported"]["partition-id"]), 2, settings["images-per-client"], settings["resolution"]
    )
    update = compute_fedavg_update(
        victim,
        data.images,
        data.labels,
        epochs=settings["local-epochs"],
        local_lr=settings["lr"],
        local_batch_size=settings["batch-size"],
        shuffle_seed=0,
    )
    return update.tensors


def _check_deltas(
    records: list[dict[str, Any]],
    out: Path,
    global_models: dict[int, dict[str, torch.Tensor]],
    settings: dict[str, Any],
) -> None:
    for record in records:
        received = load_update(out / record["run"] / "update.pt")
        start = global_models[record["round"] - 1]
        saved = torch.load(out / f"round_{record['round']:03d}" / "global_model.pt", weights_only=True)
        assert saved.keys() == start.keys() and all(torch.equal(saved[k], v) for k, v in start.items())
        expected = _independent_delta(record, start, settings)
        assert received.kind == "delta" and received.batch_size == settings["images-per-client"]
        assert set(received.tensors) == set(expected)
        for name, tensor in expected.items():
            assert tensor.abs().max() > 0
            torch.testing.assert_close(received.tensors[name], tensor, rtol=1e-5, atol=1e-7)


def test_message_api_audit_leaves_training_unchanged(message_runs: dict[str, Any]) -> None:
    plain, audited = message_runs["plain"], message_runs["audited"]
    assert sorted(audited.global_models) == [0, 1, 2]
    for name, tensor in plain.final_model.items():
        torch.testing.assert_close(audited.final_model[name], tensor, rtol=1e-6, atol=1e-7)
    assert not torch.equal(plain.final_model["fc.weight"], plain.global_models[0]["fc.weight"])


def test_message_api_attacks_receive_exactly_the_client_deltas(message_runs: dict[str, Any]) -> None:
    records, out = message_runs["audited"].audit, message_runs["out"]
    assert [(r["round"], r["status"]) for r in sorted(records, key=lambda r: r["round"])] == [
        (1, "attacked"),
        (1, "attacked"),
        (2, "attacked"),
        (2, "attacked"),
    ]
    assert {r["reported"]["partition-id"] for r in records if r["round"] == 1} == {0, 1}
    _check_deltas(records, out, message_runs["audited"].global_models, SETTINGS)
    # 2 epochs of mini-batches of 1 over 2 images: 4 SGD steps, replayed in the client's order.
    assert all(r["local_training"]["local_steps"] == 4 for r in records)


def test_message_api_audit_writes_runs_and_report(message_runs: dict[str, Any]) -> None:
    out = message_runs["out"]
    document = json.loads((out / "audit.json").read_text())
    assert len(document["clients"]) == 4 and document["config"]["attacks"] == ["ig"]
    record = document["clients"][0]
    results = json.loads((out / record["run"] / "results.json").read_text())
    assert results["config"]["batch_size"] == 2 and results["attacks"]["ig"]["steps"] == 3
    assert record["true_labels"] == results["true_labels"] and 0.0 <= record["label_accuracy"] <= 1.0
    assert "psnr" in record["attacks"]["ig"]
    page = (out / "report.html").read_text()
    assert page.count('<a href="round_00') == 4 and "4 client updates attacked" in page
    assert (out / record["run"] / "report.html").is_file()


def test_legacy_api_audit_with_a_normalisation_mismatch(environment: None, tmp_path: Path) -> None:
    """Legacy strategies are wrapped too; clients normalising with CIFAR-10 constants while the
    audit assumes ImageNet ones are attacked with the clients' constants, and the report says so.

    The aggregate is checked against FedAvg computed here from the independently recomputed
    client deltas (equal example counts: the global model plus their mean)."""
    settings = {**SETTINGS, "normalization": "cifar10"}
    audited = simulation.run(
        clients=2, rounds=1, settings=settings, audit=AUDIT, out=tmp_path / "a", api="legacy"
    )
    assert [r["status"] for r in audited.audit] == ["attacked", "attacked"]
    _check_deltas(audited.audit, tmp_path / "a", audited.global_models, settings)
    deltas = [_independent_delta(r, audited.global_models[0], settings) for r in audited.audit]
    for name, tensor in audited.final_model.items():
        expected = audited.global_models[0][name] + (deltas[0][name] + deltas[1][name]) / 2
        torch.testing.assert_close(tensor, expected, rtol=1e-5, atol=1e-7)
    for record in audited.audit:
        assert record["normalization"] == {
            "mean": list(NORMALIZATIONS["cifar10"][0]),
            "std": list(NORMALIZATIONS["cifar10"][1]),
        }
        assert any("normalisation mismatch" in w and "client's constants" in w for w in record["warnings"])
        update = load_update(tmp_path / "a" / record["run"] / "update.pt")
        assert update.metadata["mean"] == list(NORMALIZATIONS["cifar10"][0])
    assert "normalisation mismatch" in (tmp_path / "a" / "report.html").read_text()


# ------------------------------------------------------------------------ the audit without Flower
def _client_reply(
    victim_name: str = "lenet", **reported: Any
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any], Any]:
    """A global model, a client's reply after 1 SGD step on 2 images, and what it reports."""
    data = partition(0, 2, 2, 16)
    reply = fedavg_reply(create_victim(victim_name, resolution=16), data.images, data.labels, **reported)
    return (*reply[:3], data)


def _audit(tmp_path: Path, **values: Any) -> FlowerAudit:
    config = audit_config({"victim": "lenet", "resolution": 16, **AUDIT, **values})
    return FlowerAudit(config, tmp_path / "audit", background=False)


def test_normalisation_mismatch_can_refuse_the_attack(tmp_path: Path) -> None:
    audit = _audit(tmp_path, on_normalization_mismatch="skip")
    global_state, reply, metadata, _ = _client_reply(
        **{"norm-mean": [0.5, 0.5, 0.5], "norm-std": [0.5, 0.5, 0.5]}
    )
    audit.sent(1, "7", global_state, {})
    audit.received(1, "7", reply, metadata)
    (record,) = audit.wait()
    assert record["status"] == "skipped"
    assert "normalisation mismatch" in record["reason"] and "[0.5, 0.5, 0.5]" in record["reason"]
    assert not (tmp_path / "audit" / "round_001").exists()


def test_a_client_that_reports_no_normalisation_is_attacked_with_a_warning(tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    global_state, reply, metadata, data = _client_reply(**{"norm-mean": None, "norm-std": None})
    audit.sent(1, "7", global_state, {})
    audit.received(1, "7", reply, metadata)
    (record,) = audit.wait()
    assert record["status"] == "attacked"
    assert any("did not report its normalisation" in w for w in record["warnings"])
    assert record["inferred_labels"] == sorted(data.labels.tolist())
    # Without the private images: the run holds the reconstructions alone, and its report says so.
    run = tmp_path / "audit" / record["run"]
    assert sorted(p.name for p in (run / "images").iterdir()) == ["ig_000.png", "ig_001.png"]
    page = (run / "report.html").read_text()
    assert "the private labels are unknown to this audit" in page and "round_001/global_model.pt" in page
    assert '<th class="row">original</th>' not in page and page.count('alt="ig ') == 2


def test_the_train_config_supplies_what_the_reply_does_not(tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    global_state, reply, metadata, _ = _client_reply()
    config = {"lr": metadata.pop("lr"), "local-steps": metadata.pop("local-steps")}
    audit.sent(1, "7", global_state, config)
    audit.received(1, "7", reply, metadata)
    (record,) = audit.wait()
    assert record["status"] == "attacked" and record["local_training"]["local_lr"] == 0.1


@pytest.mark.parametrize(
    ("reported", "values", "reason"),
    [
        ({"lr": None}, {}, "learning rate under 'lr'"),
        ({"local-steps": None}, {}, "neither local epochs ('local-epochs') nor steps ('local-steps')"),
        ({"num-examples": None}, {}, "example count under 'num-examples'"),
        ({}, {"max_examples": 1}, "2 examples exceed max_examples=1"),
    ],
)
def test_clients_the_audit_cannot_replay_are_skipped_with_the_reason(
    tmp_path: Path, reported: dict[str, Any], values: dict[str, Any], reason: str
) -> None:
    audit = _audit(tmp_path, **values)
    global_state, reply, metadata, _ = _client_reply(**reported)
    audit.sent(1, "7", global_state, {})
    audit.received(1, "7", reply, metadata)
    (record,) = audit.wait()
    assert record["status"] == "skipped" and reason in record["reason"]


@pytest.mark.parametrize("background", [False, True])
def test_rounds_and_clients_per_round_select_what_is_attacked(tmp_path: Path, background: bool) -> None:
    config = audit_config(
        {"victim": "lenet", "resolution": 16, **AUDIT, "rounds": [2], "clients_per_round": 1}
    )
    audit = FlowerAudit(config, tmp_path / "audit", background=background)
    global_state, reply, metadata, _ = _client_reply()
    for server_round in (1, 2):
        for client in ("a", "b"):
            audit.sent(server_round, client, global_state, {})
            audit.received(server_round, client, reply, metadata)
    records = audit.wait()
    assert [(r["round"], r["client"], r["status"]) for r in records] == [
        (2, "a", "attacked"),
        (2, "b", "skipped"),
    ]
    assert "clients_per_round=1" in records[1]["reason"]


def test_a_reply_of_another_architecture_fails_with_the_fix(tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    global_state, _, metadata, _ = _client_reply()
    audit.sent(1, "7", global_state, {})
    audit.received(1, "7", {"conv.weight": torch.zeros(3)}, metadata)
    (record,) = audit.wait()
    assert record["status"] == "failed" and "lacks parameters" in record["reason"]
    assert "AuditConfig.victim" in record["reason"]
    # A global model that cannot be read never stops the round: the client's record says why.
    audit.sent(2, "7", [torch.zeros(1), torch.zeros(1)], {})
    audit.received(2, "7", global_state, metadata)
    assert audit.wait()[1]["status"] == "failed"
    assert re.search(r"list of 2 arrays but victim 'lenet' has \d+ state entries", audit.records[1]["reason"])


def test_batch_norm_trained_in_train_mode_is_reported(tmp_path: Path) -> None:
    config = audit_config({"victim": "convnet", "resolution": 16, **AUDIT})
    audit = FlowerAudit(config, tmp_path / "audit", background=False)
    global_state, reply, metadata, _ = _client_reply("convnet")
    running = next(k for k in reply if k.endswith("running_mean"))
    reply[running] = reply[running] + 0.1
    audit.sent(1, "7", global_state, {})
    audit.received(1, "7", reply, metadata)
    (record,) = audit.wait()
    assert record["status"] == "attacked"
    assert any("batch norm in train mode" in w and running in w for w in record["warnings"])


def test_bad_audit_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(GifdError, match="unknown keys entries lr-key"):
        audit_config({"keys": {"lr-key": "x"}})
    with pytest.raises(GifdError, match="on_normalization_mismatch"):
        audit_config({"on_normalization_mismatch": "ignore"})
    with pytest.raises(GifdError, match="unknown attack 'gfid'"):
        audit_config({"attacks": ["gfid"]})
    with pytest.raises(GifdError, match="pass a Flower strategy"):
        audit_strategy(object(), _audit(tmp_path))  # type: ignore[arg-type]
    used = tmp_path / "used"
    used.mkdir()
    (used / "audit.json").write_text("{}")
    with pytest.raises(GifdError, match="exists and is not empty: pass a new or empty directory"):
        FlowerAudit(audit_config({}), used)


def test_the_wrappers_expose_the_wrapped_strategy(tmp_path: Path) -> None:
    from flwr.server.strategy import FedAvg as LegacyFedAvg
    from flwr.serverapp.strategy import FedAvg

    from gifd.flower import AuditedLegacyStrategy, AuditedStrategy

    audit = _audit(tmp_path)
    wrapped = audit_strategy(FedAvg(fraction_train=0.5), audit)
    assert isinstance(wrapped, AuditedStrategy) and wrapped.fraction_train == 0.5
    legacy = audit_strategy(LegacyFedAvg(min_fit_clients=3), audit)
    assert isinstance(legacy, AuditedLegacyStrategy) and legacy.min_fit_clients == 3
    with pytest.raises(AttributeError):
        _ = wrapped.no_such_setting


def test_the_audit_leaves_the_servers_random_state_alone(tmp_path: Path) -> None:
    """Flower samples clients with Python's random module: an attack must not reseed it."""
    import random

    import numpy as np

    audit = _audit(tmp_path)
    global_state, reply, metadata, _ = _client_reply()
    random.seed(123)
    np.random.seed(123)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state())
    audit.sent(1, "7", global_state, {})
    audit.received(1, "7", reply, metadata)
    (record,) = audit.wait()
    assert record["status"] == "attacked"
    assert random.getstate() == before[0] and (np.random.get_state()[1] == before[1]).all()
    assert torch.equal(torch.random.get_rng_state(), before[2])


def test_models_sent_as_array_lists_and_clients_that_never_reply(tmp_path: Path) -> None:
    """An ArrayRecord of a list has keys "0".."n-1": read in state_dict order. A client sent a
    model but without a reply is recorded as skipped when the round ends. Config values JSON
    cannot hold (bytes) are left out of the record."""
    audit = _audit(tmp_path)
    global_state, reply, metadata, _ = _client_reply()
    as_list = {str(i): v for i, v in enumerate(global_state.values())}
    audit.sent(1, "a", as_list, {"blob": [b"x"], "tag": "t"})
    audit.sent(1, "b", global_state, {})
    audit.received(1, "a", {str(i): v for i, v in enumerate(reply.values())}, metadata)
    audit.end_round(1)
    records = {r["client"]: r for r in audit.wait()}
    assert records["a"]["status"] == "attacked" and records["a"]["reported"]["tag"] == "t"
    assert "blob" not in records["a"]["reported"]
    assert records["b"]["status"] == "skipped" and "no reply" in records["b"]["reason"]
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["clients"][1]["client"] == "b"


def test_a_message_the_wrapper_cannot_read_is_recorded_not_raised(tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    _, reply, metadata, _ = _client_reply()
    audit.refused(1, "7", "a train message holds 2 ArrayRecords, the audit needs exactly one (the model)")
    audit.received(1, "7", reply, metadata)
    (record,) = audit.wait()
    assert record["status"] == "failed" and "holds 2 ArrayRecords" in record["reason"]
