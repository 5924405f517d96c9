"""Multi-step FedAvg: the attacker's unrolled local training reproduces the client's weight delta."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gifd.attacks.objectives import gradient_distance
from gifd.client import compute_update, validate_update
from gifd.errors import GifdError
from gifd.fedavg import (
    DELTA_CONVENTION,
    LocalTraining,
    compute_fedavg_update,
    simulate_fedavg,
    simulate_local_training,
)
from gifd.victims import Victim, create_victim

SETTINGS = {"local_steps": 3, "local_lr": 0.05, "local_batch_size": 2, "shuffle_seed": 7}


def snapshot(victim: Victim) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in victim.model.state_dict().items()}


@pytest.mark.parametrize("arch", ["lenet", "convnet"])
def test_unrolled_update_of_the_true_images_equals_the_shared_delta(arch: str, cifar32: torch.Tensor) -> None:
    victim = create_victim(arch, resolution=32, num_classes=10, seed=0)
    images, labels = cifar32[:4], torch.tensor([3, 8, 0, 8])
    before = snapshot(victim)
    update = compute_fedavg_update(victim, images, labels, **SETTINGS)
    validate_update(update, victim)
    assert update.kind == "delta" and update.batch_size == 4
    assert update.metadata["delta"] == DELTA_CONVENTION
    assert {k: update.metadata[k] for k in SETTINGS} == SETTINGS

    inputs = victim.normalize(images).requires_grad_(True)
    replay = simulate_fedavg(victim, inputs, labels, **SETTINGS)
    shared = update.ordered(victim)
    worst = max(float((a.detach() - b).abs().max()) for a, b in zip(replay, shared, strict=True))
    assert worst < 1e-5
    assert max(float(t.abs().max()) for t in shared) > 1e-3  # a real update, not zeros

    # Three steps on shuffled mini-batches are not one step on the whole batch.
    fedsgd = compute_update(victim, images, labels).ordered(victim)
    assert float(gradient_distance(shared, [-g for g in fedsgd])) > 1e-4

    # Gradients reach the inputs through all steps; the victim is untouched.
    loss = gradient_distance(replay, [t + 0.01 for t in shared])
    (grad,) = torch.autograd.grad(loss, inputs)
    assert torch.isfinite(grad).all() and float(grad.abs().max()) > 0
    after = snapshot(victim)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in victim.model.parameters())


def test_one_full_batch_step_is_minus_lr_times_the_fedsgd_gradient(
    lenet32: Victim, cifar32: torch.Tensor
) -> None:
    images, labels = cifar32[:3], torch.tensor([1, 2, 5])
    delta = compute_fedavg_update(lenet32, images, labels, local_steps=1, local_lr=0.1, local_batch_size=None)
    gradient = compute_update(lenet32, images, labels)
    for name, tensor in delta.tensors.items():
        torch.testing.assert_close(tensor, -0.1 * gradient.tensors[name], rtol=1e-4, atol=1e-7)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 2)
        self.fc = nn.Linear(2 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def test_unrolled_update_passes_gradcheck() -> None:
    torch.manual_seed(0)
    victim = Victim("tiny", TinyNet().double().eval(), 3, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    labels = torch.tensor([0, 2, 1])
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in victim.model.parameters()]

    def objective(inputs: torch.Tensor) -> torch.Tensor:
        delta = simulate_fedavg(
            victim, inputs, labels, local_steps=3, local_lr=0.5, local_batch_size=2, shuffle_seed=3
        )
        return sum((d * w).sum() for d, w in zip(delta, weights, strict=True))

    inputs = torch.randn(3, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(objective, (inputs,))


def test_schedule_is_reproducible_from_the_seed() -> None:
    training = LocalTraining(local_steps=5, local_batch_size=3, shuffle_seed=11)
    batches = training.schedule(7)
    assert [len(b) for b in batches] == [3, 3, 1, 3, 3]  # epoch 1 (3 + 3 + 1), then epoch 2
    assert sorted(torch.cat(batches[:3]).tolist()) == list(range(7))
    assert all(torch.equal(a, b) for a, b in zip(batches, training.schedule(7), strict=True))
    other = LocalTraining(local_steps=5, local_batch_size=3, shuffle_seed=12).schedule(7)
    assert any(not torch.equal(a, b) for a, b in zip(batches, other, strict=True))
    plain = LocalTraining(local_steps=3, local_batch_size=3, shuffle_seed=None).schedule(7)
    assert [b.tolist() for b in plain] == [[0, 1, 2], [3, 4, 5], [6]]
    by_epochs = LocalTraining(local_steps=None, epochs=2, local_batch_size=2)
    assert by_epochs.num_steps(5) == 6 and len(by_epochs.schedule(5)) == 6


def test_settings_round_trip_through_the_update(lenet32: Victim, cifar32: torch.Tensor) -> None:
    images, labels = cifar32[:4], torch.tensor([3, 8, 0, 1])
    update = compute_fedavg_update(
        lenet32, images, labels, epochs=2, local_lr=0.02, local_batch_size=3, shuffle_seed=None
    )
    training = LocalTraining.from_update(update)
    assert training == LocalTraining(
        local_steps=None, epochs=2, local_lr=0.02, local_batch_size=3, shuffle_seed=None
    )
    assert update.metadata["local_steps"] == 4
    replay = simulate_local_training(lenet32, lenet32.normalize(images), labels, training, create_graph=False)
    assert (
        max(float((a - b).abs().max()) for a, b in zip(replay, update.ordered(lenet32), strict=True)) < 1e-5
    )
    with pytest.raises(GifdError, match="not a FedAvg weight delta"):
        LocalTraining.from_update(compute_update(lenet32, images, labels))
    with pytest.raises(GifdError, match="--local-lr"):
        LocalTraining.from_metadata({"local_steps": 2})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"local_steps": 0}, "at least 1"),
        ({"local_lr": 0.0}, "learning rate"),
        ({"local_batch_size": 9}, "exceeds the client's 4 images"),
        ({"local_steps": 2, "epochs": None, "local_batch_size": 0}, "at least 1"),
    ],
)
def test_bad_local_training_settings(kwargs, message, lenet32: Victim, cifar32: torch.Tensor) -> None:
    with pytest.raises(GifdError, match=message):
        compute_fedavg_update(lenet32, cifar32[:4], torch.tensor([0, 1, 2, 3]), **kwargs)
    with pytest.raises(GifdError, match="not both"):
        LocalTraining(local_steps=2, epochs=1)


def test_replay_with_the_wrong_order_differs(lenet32: Victim, cifar32: torch.Tensor) -> None:
    """The mini-batch schedule matters: a wrong shuffling seed gives a different delta."""
    images, labels = cifar32[:4], torch.tensor([3, 8, 0, 1])
    update = compute_fedavg_update(lenet32, images, labels, **SETTINGS)
    wrong = dict(SETTINGS, shuffle_seed=8)
    replay = simulate_fedavg(lenet32, lenet32.normalize(images), labels, **wrong, create_graph=False)
    assert (
        max(float((a - b).abs().max()) for a, b in zip(replay, update.ordered(lenet32), strict=True)) > 1e-4
    )
