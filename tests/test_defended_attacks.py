"""Defenses and FedAvg wired end to end: client transform, attacker's model, experiment results."""

import pytest
import torch

from gifd.attacks import GradientMatcher, Target
from gifd.client import compute_update
from gifd.defenses import apply_defense, parse_defense
from gifd.experiment import ExperimentConfig, run_experiment
from gifd.fedavg import compute_fedavg_update


def test_adaptive_matcher_gives_zero_loss_on_the_true_images_under_pruning(lenet32, cifar32) -> None:
    images, labels = cifar32[:1], torch.tensor([3])
    defense = parse_defense("prune:0.9")
    update = apply_defense(compute_update(lenet32, images, labels), defense)
    inputs = lenet32.normalize(images)
    adaptive = GradientMatcher(Target(lenet32, update, labels, defense=defense))
    oblivious = GradientMatcher(Target(lenet32, update, labels))
    assert float(adaptive(inputs).detach()) < 1e-6
    assert float(oblivious(inputs).detach()) > 1e-3


def test_fedavg_matcher_unrolls_the_local_steps(lenet32, cifar32) -> None:
    images, labels = cifar32[:2], torch.tensor([1, 5])
    update = compute_fedavg_update(lenet32, images, labels, local_steps=3, local_lr=0.1, local_batch_size=1)
    matcher = GradientMatcher(Target(lenet32, update, labels))
    inputs = lenet32.normalize(images).requires_grad_(True)
    loss = matcher(inputs)
    assert float(loss.detach()) < 1e-6
    # The loss is differentiable in the inputs, and a wrong batch is far.
    (grad,) = torch.autograd.grad(matcher(inputs + 0.1), [inputs])
    assert grad.abs().sum() > 0
    assert float(matcher(lenet32.normalize(cifar32[2:4])).detach()) > 1e-3


@pytest.mark.parametrize("knowledge", ["adaptive", "estimated", "oblivious"])
def test_experiment_records_the_defense_and_its_utility_cost(knowledge: str) -> None:
    config = ExperimentConfig(
        victim="lenet",
        attacks=["ig"],
        steps=2,
        restarts=1,
        defense="prune:0.5",
        defense_knowledge=knowledge,
    )
    results = run_experiment(config, None, progress=False)
    assert results["defense"]["spec"] == "prune:0.5" and results["defense"]["knowledge"] == knowledge
    cost = results["defense"]["utility_cost"]
    assert 0 < cost["cosine"] < 1 and cost["zero_fraction"] >= 0.5


def test_experiment_runs_fedavg_updates() -> None:
    config = ExperimentConfig(
        victim="lenet", attacks=["ig"], steps=2, restarts=1, local_steps=2, local_lr=0.01
    )
    results = run_experiment(config, None, progress=False)
    assert results["label_accuracy"] == 1.0 and results["defense"]["utility_cost"] is None
