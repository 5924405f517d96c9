"""A client's participation in a round as the audit tracks it, and reading Flower's records and
reported metrics (one model per record, tensors, plain values)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gifd.errors import GifdError
from gifd.fedavg import LocalTraining
from gifd.flower.config import KEY_FIX, AuditConfig


def single_record(records: Mapping[str, Any], kind: str, what: str) -> Any:
    if len(records) != 1:
        raise GifdError(f"a {what} holds {len(records)} {kind}s, the audit needs exactly one (the model)")
    return next(iter(records.values()))


def as_tensor(value: Any) -> Tensor:
    array = value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray | Tensor) else value
    if isinstance(array, Tensor):
        return array.detach().cpu().clone()
    return torch.from_numpy(np.array(array, copy=True))


def plain_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-representable entries of Flower metrics/config (bytes and the like are left out)."""
    scalar = str | int | float | bool
    return {
        k: v
        for k, v in values.items()
        if isinstance(v, scalar) or (isinstance(v, list) and all(isinstance(x, scalar) for x in v))
    }


def reported_integer(reported: Mapping[str, Any], key: str) -> int | None:
    value = reported.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        return None
    return int(value)


def reported_triple(reported: Mapping[str, Any], key: str) -> tuple[float, float, float] | None:
    """Three floats reported as a list or as comma-separated text (legacy metrics hold scalars)."""
    value = reported.get(key)
    if isinstance(value, str):
        value = value.split(",")
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == 3 else None  # type: ignore[return-value]


@dataclass
class ClientRound:
    """One client's participation in one round, as the server saw it."""

    round: int
    client: str
    global_state: dict[str, Tensor]
    client_state: dict[str, Tensor]
    #: The train config the server sent, overridden by the metrics the client reported.
    reported: dict[str, Any]


@dataclass
class Pending:
    """What the server sent one client, until its reply arrives."""

    state: dict[str, Tensor] | None
    config: dict[str, Any]
    #: Why the sent model cannot be audited (the reply then gets a "failed" record).
    error: str | None = None


@dataclass
class Screened:
    """What the server-thread checks of a reply established (see `FlowerAudit._screen`)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    examples: int
    training: LocalTraining
    warnings: list[str]


class SkipError(GifdError):
    """The options or the client's metadata rule this client's attack out (not an error)."""


def reported_training(
    config: AuditConfig, reported: Mapping[str, Any], examples: int, warnings: list[str]
) -> LocalTraining:
    """The client's local training as it reported it (under `config.keys`), to replay; what it
    left out is assumed and noted in `warnings`; what cannot be replayed skips the client."""
    key = config.key
    lr = reported.get(key("local_lr"))
    if not isinstance(lr, int | float) or isinstance(lr, bool):
        raise SkipError(
            f"the client did not report its learning rate under {key('local_lr')!r}{KEY_FIX}"
        )
    epochs, steps = reported_integer(reported, key("epochs")), reported_integer(reported, key("local_steps"))
    if epochs is None and steps is None:
        raise SkipError(
            f"the client reported neither local epochs ({key('epochs')!r}) nor steps ({key('local_steps')!r})"
            f"{KEY_FIX}"
        )
    batch = reported_integer(reported, key("local_batch_size"))
    if batch is None:
        warnings.append(
            f"no local batch size ({key('local_batch_size')!r}) reported: assumed full-batch steps"
        )
    seed = reported_integer(reported, key("shuffle_seed"))
    if seed is None and batch is not None and batch < examples:
        warnings.append(
            f"no shuffle seed ({key('shuffle_seed')!r}) reported: mini-batches replayed in the data's order"
        )
    try:
        return LocalTraining(
            local_steps=None if epochs is not None else steps,
            epochs=epochs,
            local_lr=float(lr),
            local_batch_size=None if batch is None else min(batch, examples),
            shuffle_seed=seed,
        )
    except GifdError as exc:
        raise SkipError(f"the client's reported local training cannot be replayed: {exc}") from exc
