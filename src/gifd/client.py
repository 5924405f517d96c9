"""The client: it owns the private batch, computes the update it shares (FedSGD gradient or FedAvg
delta, defended) with its own random stream, and discloses only what the threat model says.

`gifd.update` holds the `Update` itself and its file format (re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from gifd.data import ImageSet
from gifd.defenses import ClientContext, Defense, aimed_at, apply_defense, parse_defense, utility_cost
from gifd.device import derived_generator
from gifd.errors import GifdError
from gifd.fedavg import compute_fedavg_update
from gifd.update import (
    Update,
    atomic_torch_save,
    check_batch,
    load_update,
    save_update,
    validate_update,
    victim_metadata,
    weights_fingerprint,
)
from gifd.victims import Victim

__all__ = [
    "CLIENT_SETTINGS",
    "Client",
    "ClientConfig",
    "SharedUpdate",
    "Update",
    "atomic_torch_save",
    "check_batch",
    "compute_update",
    "load_update",
    "private_labels",
    "save_update",
    "validate_update",
    "victim_metadata",
    "weights_fingerprint",
]


def compute_update(
    victim: Victim, images: Tensor, labels: Tensor, *, disclose_labels: bool = False
) -> Update:
    """The FedSGD update of one batch: gradients of the mean cross-entropy, by parameter name.

    `images` are in [0, 1] at the victim's resolution; the client normalises them itself.
    """
    check_batch(victim, images, labels)
    device = victim.device
    images, labels = images.to(device), labels.to(device).long()
    params = victim.named_parameters()
    loss = F.cross_entropy(victim.model(victim.normalize(images)), labels)
    grads = torch.autograd.grad(loss, [p for _, p in params])
    return Update(
        tensors={name: g.detach() for (name, _), g in zip(params, grads, strict=True)},
        batch_size=images.shape[0],
        kind="gradient",
        labels=labels.detach().clone() if disclose_labels else None,
        metadata=victim_metadata(victim),
    )


class ClientConfig(BaseModel):
    """The client's own settings: its defense, its local training and what it discloses. The
    seed roots its random streams ("client", batch, "labels" | "defense"), which no attacker
    is handed."""

    model_config = ConfigDict(extra="forbid")

    #: Defense spec, e.g. "prune:0.5" or "clip:4+noise:0.01" (None or "none": no defense).
    defense: str | None = None
    #: Multi-step FedAvg: local SGD steps (None: one FedSGD gradient), learning rate, mini-batch size.
    local_steps: int | None = None
    local_lr: float = 1e-4
    local_batch_size: int | None = None
    #: Does the client send its labels with the update?
    disclose_labels: bool = False
    seed: int = 0


#: Settings of the client's side: they shape an update gifd computes, not one it is given.
CLIENT_SETTINGS = tuple(name for name in ClientConfig.model_fields if name != "seed")


@dataclass
class SharedUpdate:
    """What the client sends for one batch, and what its defense cost it (the similarity of the
    defended update to the clean one; None without a defense)."""

    update: Update
    utility_cost: dict[str, float] | None


class Client:
    """A simulated federated client: it holds the private batch, trains or differentiates the
    victim on it, applies its defense with its own random stream, and shares only the `Update`."""

    def __init__(self, victim: Victim, config: ClientConfig) -> None:
        self.victim = victim
        self.config = config
        #: The defense as parsed and aimed at this victim (e.g. Soteria's classifier layer).
        self.defense: Defense = aimed_at(parse_defense(config.defense), victim)

    def private_labels(
        self, given: list[int] | None, private: ImageSet, batch_size: int, num_classes: int
    ) -> Tensor:
        """The client's labels (see `private_labels`), drawn from its own streams when needed."""
        return private_labels(given, private, batch_size, num_classes, self.config.seed)

    def share(self, images: Tensor, labels: Tensor, batch_index: int) -> SharedUpdate:
        """The update for batch `batch_index` (FedSGD gradient or FedAvg delta, defended; the
        defense's noise from the client's stream ("client", batch, "defense"))."""
        cfg, victim = self.config, self.victim
        images = images.to(victim.device)
        if cfg.local_steps is None:
            clean = compute_update(victim, images, labels, disclose_labels=cfg.disclose_labels)
        else:
            clean = compute_fedavg_update(
                victim,
                images,
                labels,
                local_steps=cfg.local_steps,
                local_lr=cfg.local_lr,
                local_batch_size=cfg.local_batch_size,
                shuffle_seed=cfg.seed,
                disclose_labels=cfg.disclose_labels,
            )
        if self.defense.spec() == "none":
            return SharedUpdate(clean, None)
        context = ClientContext(victim, images, labels) if self.defense.requires_context else None
        stream = derived_generator(cfg.seed, "client", batch_index, "defense")
        defended = apply_defense(clean, self.defense, generator=stream, context=context)
        return SharedUpdate(defended, utility_cost(clean.tensors, defended.tensors))


def private_labels(
    given: list[int] | None, private: ImageSet, batch_size: int, num_classes: int, seed: int
) -> Tensor:
    """A client's labels: `given`, the source's own, or distinct ones drawn per batch from the
    client's stream ("client", batch, "labels") of `seed`."""
    if given is not None:
        if len(given) != len(private):
            raise GifdError(f"{len(given)} labels given for {len(private)} images: give one per image")
        labels = torch.tensor(given, dtype=torch.long)
    elif private.labels is not None:
        labels = private.labels.clone()
    else:
        batches = range(len(private) // batch_size)  # whole batches (checked by the config)
        streams = [derived_generator(seed, "client", index, "labels") for index in batches]
        labels = torch.cat([torch.randperm(num_classes, generator=s)[:batch_size] for s in streams])
    if labels.min() < 0 or labels.max() >= num_classes:
        raise GifdError(
            f"labels {labels.tolist()} do not fit a victim with {num_classes} classes: "
            f"raise --num-classes to at least {int(labels.max()) + 1} or pass --labels"
        )
    return labels
