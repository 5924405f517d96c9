"""Defenses on an `Update`: aimed at the victim, applied by the client, and what they cost it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from gifd.defenses.base import ClientContext, Compose, Defense, as_list
from gifd.defenses.parsing import parse_defense
from gifd.errors import GifdError
from gifd.update import Update
from gifd.victims import Victim


def aimed_at(defense: Defense, victim: Victim) -> Defense:
    """`defense` with every member set up for `victim` (`Defense.aimed_at`: Soteria takes the
    victim's last linear layer); `defense` itself when no member changes."""
    members = defense.members()
    aimed = [d.aimed_at(victim) for d in members]
    if all(a is d for a, d in zip(aimed, members, strict=True)):
        return defense
    return aimed[0] if len(aimed) == 1 else Compose(aimed)


def apply_defense(
    update: Update,
    defense: Defense | str | None,
    *,
    generator: torch.Generator | None = None,
    context: ClientContext | None = None,
    disclose: bool = False,
) -> Update:
    """A copy of `update` with `defense` applied by the client.

    With `disclose`, the spec goes into the metadata ("defense"), for a threat model in which the
    server knows the defense. DP-SGD needs a FedSGD gradient (kind "gradient") and a context.
    """
    defense = parse_defense(defense)
    if update.kind != "gradient" and defense.replaces_gradient:
        raise GifdError(
            f"{defense.spec()} defends a FedSGD gradient, not a FedAvg weight delta: "
            "use one local step (--local-steps 1) or another defense"
        )
    if context is not None and context.images.shape[0] != update.batch_size:
        raise GifdError(
            f"the defense's context holds {context.images.shape[0]} images but the update is of a batch of "
            f"{update.batch_size}: pass the batch the update was computed from"
        )
    tensors = defense.apply(dict(update.tensors), generator, context)
    metadata = dict(update.metadata)
    if disclose:
        metadata["defense"] = defense.spec()
    return Update(
        tensors={k: v.detach() for k, v in tensors.items()},
        batch_size=update.batch_size,
        kind=update.kind,
        labels=update.labels,
        metadata=metadata,
    )


@torch.no_grad()
def utility_cost(
    clean: Mapping[str, Tensor] | Sequence[Tensor], defended: Mapping[str, Tensor] | Sequence[Tensor]
) -> dict[str, float]:
    """How far a defense moves the update the server averages (the victim's utility cost).

    `cosine`: cosine similarity of the defended to the clean update (1 = direction kept);
    `relative_l2_error`: ||defended - clean|| / ||clean||; `norm_ratio`: ||defended|| / ||clean||;
    `zero_fraction`: the fraction of exactly-zero entries in the defended update.
    """
    clean_list, clean_names = as_list(clean)
    defended_list, defended_names = as_list(defended)
    if clean_names is not None and defended_names is not None:
        if set(clean_names) != set(defended_names):
            raise GifdError("the clean and defended updates have different parameter names")
        defended_list = [dict(zip(defended_names, defended_list, strict=True))[n] for n in clean_names]
    if len(clean_list) != len(defended_list) or any(
        a.shape != b.shape for a, b in zip(clean_list, defended_list, strict=True)
    ):
        raise GifdError("the clean and defended updates differ in tensor count or shapes")
    c = torch.cat([t.detach().double().flatten().cpu() for t in clean_list])
    d = torch.cat([t.detach().double().flatten().cpu() for t in defended_list])
    clean_norm, defended_norm = float(c.norm()), float(d.norm())
    return {
        "cosine": float(c @ d) / (clean_norm * defended_norm)
        if clean_norm > 0 and defended_norm > 0
        else 0.0,
        "relative_l2_error": float((d - c).norm()) / clean_norm if clean_norm > 0 else math.inf,
        "norm_ratio": defended_norm / clean_norm if clean_norm > 0 else math.inf,
        "zero_fraction": float((d == 0).double().mean()),
    }
