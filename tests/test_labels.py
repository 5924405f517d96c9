"""Label inference against the true labels on untrained victims (no oracle, no BN statistics)."""

import pytest
import torch

from gifd.attacks import infer_labels
from gifd.client import compute_update
from gifd.errors import GifdError
from gifd.fedavg import compute_fedavg_update
from gifd.metrics import label_accuracy
from gifd.victims import create_victim


@pytest.mark.parametrize("name", ["lenet", "convnet", "resnet18"])
@pytest.mark.parametrize("batch", [1, 4, 8])
def test_unique_labels_are_exact(name: str, batch: int, cifar32) -> None:
    generator = torch.Generator().manual_seed(batch)
    for trial in range(2):
        victim = create_victim(name, resolution=32, num_classes=10, seed=trial)
        labels = torch.randperm(10, generator=generator)[:batch]
        images = cifar32[torch.randperm(8, generator=generator)[:batch]]
        update = compute_update(victim, images, labels)
        assert infer_labels(update, victim).tolist() == sorted(labels.tolist())


def test_paper_rule_is_exact_for_one_image_and_can_fail_for_batches(cifar32) -> None:
    victim = create_victim("lenet", resolution=32, num_classes=10, seed=0)
    update = compute_update(victim, cifar32[:1], torch.tensor([6]))
    assert infer_labels(update, victim, "paper").tolist() == [6]
    # LeNet's untrained predictions are dominated by few classes: the row-sum rule misses labels
    # that the subspace rule recovers (measured over 10 random batches of 8: 0/10 vs 10/10).
    failures = 0
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        labels = torch.randperm(10, generator=generator)[:8]
        update = compute_update(
            create_victim("lenet", seed=seed), torch.rand(8, 3, 32, 32, generator=generator), labels
        )
        failures += infer_labels(update, create_victim("lenet", seed=seed), "paper").tolist() != sorted(
            labels.tolist()
        )
    assert failures >= 1


@pytest.mark.parametrize("name", ["convnet", "resnet18"])
def test_repeated_labels_are_counted(name: str, cifar32) -> None:
    generator = torch.Generator().manual_seed(0)
    accuracy = []
    for trial in range(3):
        victim = create_victim(name, resolution=32, num_classes=10, seed=trial)
        labels = torch.randint(0, 10, (8,), generator=generator)
        update = compute_update(victim, cifar32, labels)
        inferred = infer_labels(update, victim, "count")
        assert inferred.numel() == 8
        accuracy.append(label_accuracy(inferred, labels))
    assert sum(accuracy) / len(accuracy) >= 0.9


def test_delta_updates_flip_the_sign(cifar32) -> None:
    victim = create_victim("convnet", seed=0)
    update = compute_update(victim, cifar32[:2], torch.tensor([2, 7]))
    update.tensors = {k: -0.1 * v for k, v in update.tensors.items()}
    update.kind = "delta"
    assert infer_labels(update, victim).tolist() == [2, 7]


@pytest.mark.parametrize("name", ["convnet", "resnet18"])
@pytest.mark.parametrize(("steps", "lr", "local_batch"), [(1, 1e-4, None), (3, 1e-4, None), (4, 1e-3, 2)])
def test_count_rule_reads_a_fedavg_delta_at_the_gradient_scale(name, steps, lr, local_batch, cifar32) -> None:
    # A delta is -lr x the sum of the steps' gradients: read as a gradient it gave [0, 0, 0, 0].
    victim = create_victim(name, resolution=32, num_classes=10, seed=0)
    labels = torch.tensor([1, 3, 3, 7])
    update = compute_fedavg_update(
        victim, cifar32[:4], labels, local_steps=steps, local_lr=lr, local_batch_size=local_batch
    )
    assert infer_labels(update, victim, "count").tolist() == [1, 3, 3, 7]


def test_scale_free_rules_read_a_fedavg_delta(cifar32) -> None:
    victim = create_victim("convnet", resolution=32, num_classes=10, seed=0)
    update = compute_fedavg_update(victim, cifar32[:4], torch.tensor([2, 9, 0, 5]), local_steps=2, local_lr=1e-4)
    for rule in ("unique", "paper", "count"):
        assert infer_labels(update, victim, rule).tolist() == [0, 2, 5, 9]


def test_unique_rule_refuses_batches_larger_than_the_class_count(cifar32) -> None:
    victim = create_victim("convnet", num_classes=4)
    update = compute_update(victim, cifar32[:6], torch.tensor([0, 1, 2, 3, 0, 1]))
    with pytest.raises(GifdError, match="exceeds the 4 classes.*use label inference rule 'count'"):
        infer_labels(update, victim, "unique")
    assert infer_labels(update, victim, "count").numel() == 6
