"""Multi-step FedAvg: the client's local training and the attacker's differentiable replay of it.

The client starts from the server's weights w0, runs S steps of plain SGD (no momentum, no weight
decay) on mini-batches of its private batch, and shares the weight difference

    delta = w_S - w_0   (after minus before; about -lr times the sum of the step gradients),

as an `Update` of kind "delta" whose metadata discloses the local training settings. The
mini-batch order comes from `shuffle_seed` alone (a CPU torch.Generator), so the attacker replays
exactly the same schedule with `simulate_fedavg`: it unrolls the same S steps on its dummy inputs
with `torch.func.functional_call` (the victim's own parameters are never changed) and keeps the
graph, so a distance between its delta and the shared one can be back-propagated to the inputs.

Slots: the schedule indexes the client's batch. The attacker's dummy i plays the client's image i,
so with mini-batches (`local_batch_size` < batch size) the labels must be given in the client's
order (disclosed labels are; inferred labels are a sorted multiset and then only a guess of it).
With full-batch steps the order does not matter.

The model runs in its current mode on both sides (the victims are in eval mode: batch norm uses
and keeps its running statistics). Buffers are copied, so even a model in train mode is left as
it was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from gifd.errors import GifdError
from gifd.update import Update, check_batch, victim_metadata
from gifd.victims import Victim

#: Written into an update's metadata: what the delta's sign means.
DELTA_CONVENTION = "w_after - w_before"


@dataclass(frozen=True)
class LocalTraining:
    """The client's local training: `local_steps` SGD steps (or `epochs` passes over the batch).

    `local_batch_size` None means full-batch steps. `shuffle_seed` None means no shuffling (the
    batch in its own order every epoch); otherwise each epoch is a fresh permutation drawn from one
    CPU generator seeded with it. Exactly one of `local_steps` and `epochs` counts the steps.
    """

    local_steps: int | None = 1
    local_lr: float = 1e-4
    local_batch_size: int | None = None
    shuffle_seed: int | None = 0
    epochs: int | None = None

    def __post_init__(self) -> None:
        if (self.local_steps is None) == (self.epochs is None):
            raise GifdError(
                "give the local training length either as local steps or as epochs, not both "
                f"(got local_steps={self.local_steps}, epochs={self.epochs})"
            )
        if self.local_steps is not None and self.local_steps < 1:
            raise GifdError(f"local steps must be at least 1 (--local-steps), got {self.local_steps}")
        if self.epochs is not None and self.epochs < 1:
            raise GifdError(f"local epochs must be at least 1, got {self.epochs}")
        if not (self.local_lr > 0) or math.isinf(self.local_lr):
            raise GifdError(
                f"the local learning rate must be a finite number > 0 (--local-lr), got {self.local_lr}"
            )
        if self.local_batch_size is not None and self.local_batch_size < 1:
            raise GifdError(
                f"the local batch size must be at least 1 (--local-batch-size), got {self.local_batch_size}"
            )

    def batch_size_for(self, num_images: int) -> int:
        """The mini-batch size for a private batch of `num_images` images."""
        size = num_images if self.local_batch_size is None else self.local_batch_size
        if size > num_images:
            raise GifdError(
                f"the local batch size {size} exceeds the client's {num_images} images: "
                f"pass --local-batch-size {num_images} or less"
            )
        return size

    def num_steps(self, num_images: int) -> int:
        """How many SGD steps the client runs."""
        if self.local_steps is not None:
            return self.local_steps
        assert self.epochs is not None
        return self.epochs * math.ceil(num_images / self.batch_size_for(num_images))

    def schedule(self, num_images: int) -> list[Tensor]:
        """The index tensor (CPU, int64) of every step's mini-batch, in order.

        Each epoch walks one permutation (or 0..N-1 without shuffling) in chunks of the local batch
        size; the last chunk of an epoch may be smaller. Counting by steps continues into new epochs.
        """
        size = self.batch_size_for(num_images)
        generator = None if self.shuffle_seed is None else torch.Generator().manual_seed(self.shuffle_seed)
        batches: list[Tensor] = []
        total = self.num_steps(num_images)
        while len(batches) < total:
            order = (
                torch.arange(num_images)
                if generator is None
                else torch.randperm(num_images, generator=generator)
            )
            batches.extend(order[i : i + size] for i in range(0, num_images, size))
        return batches[:total]

    def to_metadata(self, num_images: int) -> dict[str, Any]:
        """The settings as plain values for an update's metadata (steps and batch size resolved)."""
        return {
            "local_steps": self.num_steps(num_images),
            "epochs": self.epochs,
            "local_lr": float(self.local_lr),
            "local_batch_size": self.batch_size_for(num_images),
            "shuffle_seed": self.shuffle_seed,
            "delta": DELTA_CONVENTION,
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> LocalTraining:
        """The settings a client disclosed (the inverse of `to_metadata`)."""
        missing = [k for k in ("local_lr", "local_batch_size", "shuffle_seed") if k not in metadata]
        if missing or ("local_steps" not in metadata and metadata.get("epochs") is None):
            raise GifdError(
                f"the FedAvg update does not disclose its local training ({', '.join(missing) or 'local_steps'} "
                "missing): pass --local-steps, --local-lr and --local-batch-size as the client used them"
            )
        if metadata.get("delta", DELTA_CONVENTION) != DELTA_CONVENTION:
            raise GifdError(
                f"the update's delta is {metadata['delta']!r}, gifd expects {DELTA_CONVENTION!r}: negate it first"
            )
        epochs = metadata.get("epochs")
        seed = metadata["shuffle_seed"]
        return cls(
            local_steps=None if epochs is not None else int(metadata["local_steps"]),
            epochs=None if epochs is None else int(epochs),
            local_lr=float(metadata["local_lr"]),
            local_batch_size=int(metadata["local_batch_size"]),
            shuffle_seed=None if seed is None else int(seed),
        )

    @classmethod
    def from_update(cls, update: Update) -> LocalTraining:
        """The local training a FedAvg `update` (kind "delta") discloses in its metadata."""
        if update.kind != "delta":
            raise GifdError(f"update of kind {update.kind!r} is not a FedAvg weight delta")
        return cls.from_metadata(update.metadata)


def _start(victim: Victim) -> tuple[list[str], dict[str, Tensor], dict[str, Tensor]]:
    names = [n for n, _ in victim.named_parameters()]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in victim.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in victim.model.named_buffers()}
    return names, params, buffers


def _sgd_steps(
    victim: Victim,
    inputs: Tensor,
    labels: Tensor,
    training: LocalTraining,
    create_graph: bool,
) -> tuple[list[str], dict[str, Tensor], dict[str, Tensor]]:
    """Run the local SGD steps functionally; returns the names, the start and the end parameters."""
    names, start, buffers = _start(victim)
    params = dict(start)
    for indices in training.schedule(inputs.shape[0]):
        indices = indices.to(inputs.device)
        logits = functional_call(victim.model, {**params, **buffers}, (inputs[indices],))
        loss = F.cross_entropy(logits, labels[indices])
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
        params = {n: params[n] - training.local_lr * g for n, g in zip(names, grads, strict=True)}
        if not create_graph:
            params = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    return names, start, params


def compute_fedavg_update(
    victim: Victim,
    images: Tensor,
    labels: Tensor,
    *,
    local_steps: int | None = 1,
    local_lr: float = 1e-4,
    local_batch_size: int | None = None,
    shuffle_seed: int | None = 0,
    epochs: int | None = None,
    disclose_labels: bool = False,
) -> Update:
    """The client's FedAvg update: delta = w_after - w_before after local plain-SGD training.

    `images` are in [0, 1] at the victim's resolution (the client normalises them). With `epochs`
    set, `local_steps` is ignored. The metadata discloses the victim and the local training
    settings (`LocalTraining.to_metadata`), which the attacker needs to replay the steps.
    The victim's parameters and buffers are left unchanged.
    """
    training = LocalTraining(
        local_steps=None if epochs is not None else local_steps,
        local_lr=local_lr,
        local_batch_size=local_batch_size,
        shuffle_seed=shuffle_seed,
        epochs=epochs,
    )
    check_batch(victim, images, labels)
    device = victim.device
    inputs, labels = victim.normalize(images.to(device)), labels.to(device).long()
    with torch.enable_grad():
        names, start, end = _sgd_steps(victim, inputs, labels, training, create_graph=False)
    metadata = victim_metadata(victim)
    metadata.update(training.to_metadata(images.shape[0]))
    return Update(
        tensors={n: (end[n] - start[n]).detach() for n in names},
        batch_size=images.shape[0],
        kind="delta",
        labels=labels.detach().clone() if disclose_labels else None,
        metadata=metadata,
    )


def simulate_fedavg(
    victim: Victim,
    inputs: Tensor,
    labels: Tensor,
    *,
    local_steps: int | None = 1,
    local_lr: float = 1e-4,
    local_batch_size: int | None = None,
    shuffle_seed: int | None = 0,
    epochs: int | None = None,
    create_graph: bool = True,
) -> list[Tensor]:
    """The attacker's replay of the client's local training on normalised `inputs`.

    Returns delta = w_after - w_before in the victim's parameter order, differentiable in `inputs`
    (with `create_graph`, the default: each step's gradient keeps its graph, a double backward
    through S steps). The victim's own parameters are read, never changed.
    """
    training = LocalTraining(
        local_steps=None if epochs is not None else local_steps,
        local_lr=local_lr,
        local_batch_size=local_batch_size,
        shuffle_seed=shuffle_seed,
        epochs=epochs,
    )
    return simulate_local_training(victim, inputs, labels, training, create_graph=create_graph)


def simulate_local_training(
    victim: Victim, inputs: Tensor, labels: Tensor, training: LocalTraining, *, create_graph: bool = True
) -> list[Tensor]:
    """`simulate_fedavg` with the settings as one `LocalTraining` (e.g. `LocalTraining.from_update`)."""
    if labels.shape[0] != inputs.shape[0]:
        raise GifdError(f"{labels.shape[0]} labels given for {inputs.shape[0]} dummy inputs")
    with torch.enable_grad():
        names, start, end = _sgd_steps(victim, inputs, labels.long(), training, create_graph=create_graph)
    delta = [end[n] - start[n].detach() for n in names]
    return delta if create_graph else [d.detach() for d in delta]
