"""Separate random streams (gifd.device.derived_generator): the client's draws never move the
attacker's, each batch and attack has its own stream, and a saved update is attacked again with
the starts the run that saved it used."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from gifd.attacks import ATTACKS
from gifd.attacks.gifd import GIFD
from gifd.device import derived_generator, derived_seed
from gifd.experiment import experiment_config, run_experiment
from gifd.rundir import UPDATE_FILE
from gifd.victims import create_victim
from tolerances import kernel_rtol

#: A tiny run: LeNet at 32 px, one real CIFAR-10 image, one restart of a few steps.
BASE: dict[str, Any] = {
    "victim": "lenet",
    "resolution": 32,
    "images": "builtin:cifar10",
    "restarts": 1,
    "steps": 4,
    "device": "cpu",
    "attack_settings": {"latent": {"log_every": 1}},
}


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, torch.Tensor]]:
    """(attack, state of the generator it was handed) for every attack run, in order (a spy: the
    real `run` goes on)."""
    seen: list[tuple[str, torch.Tensor]] = []
    for cls in {ATTACKS.get("ig"), GIFD}:
        original = cls.run

        def spy(self, target, generator, original=original):  # type: ignore[no-untyped-def]
            seen.append((self.name, generator.get_state().clone()))
            return original(self, target, generator)

        monkeypatch.setattr(cls, "run", spy)
    return seen


def _run(**settings: Any) -> dict[str, Any]:
    return run_experiment(experiment_config({**BASE, **settings}), progress=False)


def test_derived_seed_is_63_bits_of_the_sha256_of_its_names() -> None:
    reference = hashlib.sha256(json.dumps([7, "attacker", 0, "attack", "ig"]).replace(" ", "").encode())
    assert derived_seed(7, "attacker", 0, "attack", "ig") == int(reference.hexdigest()[:16], 16) >> 1
    seeds = {
        derived_seed(s, *names) for s in (0, 1) for names in (("client", 0), ("attacker", 0), ("client", 1))
    }
    assert len(seeds) == 6 and all(0 <= s < 2**63 for s in seeds)
    assert derived_seed(0, 0, "a") != derived_seed(0, "0", "a")  # JSON keeps the types apart
    a, b = derived_generator(3, "client", 0), derived_generator(3, "client", 0)
    assert torch.equal(torch.randn(5, generator=a), torch.randn(5, generator=b))


def test_a_negligible_noise_defense_leaves_the_attackers_start_and_result(starts: list) -> None:
    """noise:1e-12 (the update practically unchanged) once moved the latent search's final loss
    0.127 -> 0.086: the client's noise draw shifted the attacker's start in the shared generator."""
    clean = _run(attacks=["latent"])
    noisy = _run(attacks=["latent"], defense="noise:1e-12", defense_knowledge="oblivious")
    assert len(starts) == 2 and torch.equal(starts[0][1], starts[1][1])
    expected = derived_generator(0, "attacker", 0, "attack", "latent").get_state()
    assert torch.equal(starts[0][1], expected)
    # The updates differ by <= 1e-12 per entry: below float32 rounding of the gradient loss, a sum
    # over the victim's parameters, carried through the 4 steps.
    victim = create_victim("lenet", resolution=32, num_classes=10)
    tol = kernel_rtol(torch.float32, sum(p.numel() for p in victim.model.parameters()), depth=4)
    clean_losses = clean["batches"][0]["attacks"]["latent"]["loss_history"]["losses"]
    noisy_losses = noisy["batches"][0]["attacks"]["latent"]["loss_history"]["losses"]
    assert noisy_losses[0] == pytest.approx(clean_losses[0], rel=tol)
    assert noisy["attacks"]["latent"]["gradient_loss"] == pytest.approx(
        clean["attacks"]["latent"]["gradient_loss"], rel=tol
    )


def test_adding_an_attack_leaves_the_others_results(starts: list) -> None:
    alone = _run(attacks=["latent"])
    after_ig = _run(attacks=["ig", "latent"])
    assert [name for name, _ in starts] == ["latent", "ig", "latent"]
    assert torch.equal(starts[0][1], starts[2][1])
    # The same kernels on the same data, in one process: equal.
    assert (
        after_ig["batches"][0]["attacks"]["latent"]["loss_history"]
        == alone["batches"][0]["attacks"]["latent"]["loss_history"]
    )
    assert after_ig["attacks"]["latent"]["gradient_loss"] == alone["attacks"]["latent"]["gradient_loss"]


def test_each_batch_and_party_has_its_own_stream(starts: list) -> None:
    _run(attacks=["ig"], indices=[0, 1], batch_size=1, defense="noise:1e-3")
    assert [name for name, _ in starts] == ["ig", "ig"]
    for batch, (_, state) in enumerate(starts):
        assert torch.equal(state, derived_generator(0, "attacker", batch, "attack", "ig").get_state())
    assert not torch.equal(starts[0][1], starts[1][1])
    client = [derived_generator(0, "client", b, p).get_state() for b in (0, 1) for p in ("labels", "defense")]
    assert not any(torch.equal(state, c) for _, state in starts for c in client)


def test_reattacking_a_saved_update_reproduces_the_in_process_attacks(tmp_path: Path) -> None:
    first = run_experiment(
        experiment_config({**BASE, "attacks": ["ig", "latent"], "seed": 5}),
        tmp_path / "first",
        progress=False,
        save_update=True,
    )
    again = run_experiment(
        experiment_config(
            {
                "update": str(tmp_path / "first" / UPDATE_FILE),
                "attacks": ["ig", "latent"],
                "steps": 4,
                "restarts": 1,
                "seed": 5,
                "device": "cpu",
                "images": "builtin:cifar10",
                "attack_settings": {"latent": {"log_every": 1}},
            }
        ),
        progress=False,
    )
    assert again["inferred_labels"] == first["inferred_labels"]
    for name in ("ig", "latent"):
        # The same kernels on the same data (the update as saved), in one process: equal.
        ran, reran = first["batches"][0]["attacks"][name], again["batches"][0]["attacks"][name]
        assert reran["loss_history"] == ran["loss_history"] and reran["gradient_loss"] == ran["gradient_loss"]
        assert again["attacks"][name]["psnr"] == first["attacks"][name]["psnr"]
