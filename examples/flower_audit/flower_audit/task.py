"""What the simulated clients hold and how they train: the parts client and server share.

Each client holds a few built-in CIFAR-10 images (distinct labels within a client, no image on
two clients) and trains a gifd victim on them with plain SGD, the way a PyTorch Flower client
does. It reports, with its update, the facts an audit needs: examples, epochs, batch size,
learning rate, shuffle seed and its input normalisation (keys as in gifd.flower.DEFAULT_KEYS).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from gifd.data import ImageSet, load_images
from gifd.victims import NORMALIZATIONS, Victim, create_victim

SOURCE = "builtin:cifar10"

#: Settings the server sends the clients each round (Flower train config).
DEFAULT_SETTINGS: dict[str, Any] = {
    "victim": "lenet",
    "resolution": 32,
    "images-per-client": 2,
    "lr": 0.01,
    "local-epochs": 1,
    "batch-size": 2,
    "shuffle-seed": 0,
    "normalization": "imagenet",
}


def partition(partition_id: int, num_partitions: int, per_client: int, resolution: int) -> ImageSet:
    """Client `partition_id`'s private images: `per_client` images with distinct labels.

    Walks the source in order and deals each image to the first client that still needs one and
    does not hold its label yet, so the split is the same on every machine.
    """
    source = load_images(SOURCE, resolution, list(range(20)))
    assert source.labels is not None
    labels = source.labels.tolist()
    shares: list[list[int]] = [[] for _ in range(num_partitions)]
    for index, label in enumerate(labels):
        for share in shares:
            if len(share) < per_client and label not in [labels[i] for i in share]:
                share.append(index)
                break
    chosen = shares[partition_id]
    if len(chosen) < per_client:
        raise ValueError(
            f"{SOURCE} has too few images for {num_partitions} clients x {per_client}: use fewer clients or images"
        )
    return ImageSet(
        images=source.images[chosen],
        labels=source.labels[chosen],
        names=[source.names[i] for i in chosen],
        num_classes=source.num_classes,
        source=f"{SOURCE} (client {partition_id})",
    )


def build_model(settings: Mapping[str, Any]) -> Victim:
    """The federation's model, as a gifd victim (architecture, input side, classes)."""
    return create_victim(
        str(settings["victim"]),
        resolution=int(settings["resolution"]),
        num_classes=10,
        normalization=str(settings.get("normalization", "imagenet")),
    )


def train(victim: Victim, data: ImageSet, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Plain-SGD local training of `victim` on `data`; returns the metrics the client reports.

    Mini-batches: each epoch walks a fresh permutation from one generator seeded with the
    shuffle seed (no shuffling without one), the schedule gifd's FedAvg replay assumes.
    """
    model = victim.model
    model.train()
    lr, epochs = float(settings["lr"]), int(settings["local-epochs"])
    examples = len(data)
    batch_size = min(int(settings.get("batch-size", examples)), examples)
    seed = int(settings["shuffle-seed"])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    inputs, labels = victim.normalize(data.images), data.labels
    for _ in range(epochs):
        order = torch.randperm(examples, generator=generator)
        for start in range(0, examples, batch_size):
            chunk = order[start : start + batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(inputs[chunk]), labels[chunk]).backward()
            optimizer.step()
    mean, std = NORMALIZATIONS[str(settings.get("normalization", "imagenet"))]
    return {
        "num-examples": examples,
        "local-epochs": epochs,
        "batch-size": batch_size,
        "lr": lr,
        "shuffle-seed": seed,
        "norm-mean": list(mean),
        "norm-std": list(std),
    }
