"""A Flower client's reply as the audit receives it: the global model plus one FedAvg delta."""

from __future__ import annotations

from typing import Any

import torch

from gifd.fedavg import compute_fedavg_update
from gifd.update import Update
from gifd.victims import NORMALIZATIONS, Victim


def fedavg_reply(
    victim: Victim, images: torch.Tensor, labels: torch.Tensor, **reported: Any
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any], Update]:
    """The global state, the client's reply after 1 SGD step (lr 0.1) on `images`, its metadata,
    and the FedAvg delta the reply carries.

    `reported` overrides metadata entries; an entry set to None is left out.
    """
    update = compute_fedavg_update(victim, images, labels, local_steps=1, local_lr=0.1, shuffle_seed=0)
    global_state = {k: v.clone() for k, v in victim.model.state_dict().items()}
    reply = {k: v + update.tensors.get(k, 0) for k, v in global_state.items()}
    metadata = {
        "num-examples": len(images),
        "local-steps": 1,
        "lr": 0.1,
        "batch-size": len(images),
        "shuffle-seed": 0,
        "norm-mean": list(NORMALIZATIONS["imagenet"][0]),
        "norm-std": list(NORMALIZATIONS["imagenet"][1]),
        **reported,
    }
    return global_state, reply, {k: v for k, v in metadata.items() if v is not None}, update
