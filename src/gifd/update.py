"""What crosses from the client to the server: the `Update` and its file format.

The server (attacker) sees only the `Update`: the named gradients (or, for multi-step FedAvg, the
weight delta) plus the metadata the threat model lets the client disclose. Labels are part of the
update only when disclosed. The client that computes it is `gifd.client`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gifd.errors import GifdError, list_some, load_torch_file
from gifd.victims import Victim

UPDATE_FORMAT = "gifd-update"
UPDATE_VERSION = 1
#: What an update's tensors are: FedSGD gradients or a FedAvg weight difference.
UPDATE_KINDS = ("gradient", "delta")


@dataclass
class Update:
    """What the server receives from one client for one batch.

    `tensors` maps parameter names to gradients (kind "gradient") or weight differences
    (kind "delta"). `labels` is None unless the client discloses them. `metadata` holds plain
    values the client reports (victim name, resolution, normalisation, local training settings).
    """

    tensors: dict[str, Tensor]
    batch_size: int
    kind: str = "gradient"
    labels: Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Update:
        """A copy with every tensor on `device`."""
        return Update(
            tensors={k: v.to(device) for k, v in self.tensors.items()},
            batch_size=self.batch_size,
            kind=self.kind,
            labels=None if self.labels is None else self.labels.to(device),
            metadata=dict(self.metadata),
        )

    def ordered(self, victim: Victim) -> list[Tensor]:
        """The tensors in the victim's parameter order (after `validate_update`)."""
        return [self.tensors[name] for name, _ in victim.named_parameters()]


def check_batch(victim: Victim, images: Tensor, labels: Tensor) -> None:
    """Refuse a private batch that the victim cannot take, naming the fix."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise GifdError(f"images must be a N x 3 x H x W tensor, got shape {tuple(images.shape)}")
    side = victim.resolution
    if images.shape[2:] != (side, side):
        raise GifdError(
            f"images are {images.shape[3]}x{images.shape[2]} but the victim takes {side}x{side}: "
            f"resize them (gifd.data.load_images does) or build the victim with resolution={images.shape[2]}"
        )
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise GifdError("images must be finite and in [0, 1] (not normalised): pass the raw images")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise GifdError(
            f"need one label per image: {images.shape[0]} images, labels of shape {tuple(labels.shape)}"
        )
    if (
        labels.dtype not in (torch.int64, torch.int32)
        or labels.min() < 0
        or labels.max() >= victim.num_classes
    ):
        raise GifdError(
            f"labels must be integers in 0..{victim.num_classes - 1} for a victim with {victim.num_classes} classes, "
            f"got {labels.tolist()}"
        )


def victim_metadata(victim: Victim) -> dict[str, Any]:
    """The plain facts about the victim a client reports with its update.

    `weights_sha256` identifies the weights the update was computed on, so that attacking it with
    another model (a wrong or missing --victim-weights) is refused instead of silently wrong.
    """
    return {
        "victim": victim.name,
        "resolution": victim.resolution,
        "num_classes": victim.num_classes,
        "mean": list(victim.mean),
        "std": list(victim.std),
        "weights_sha256": weights_fingerprint(victim),
    }


def weights_fingerprint(victim: Victim) -> str:
    """SHA-256 of the victim's parameters (names, shapes, float32 values, in order)."""
    digest = hashlib.sha256()
    for name, param in victim.named_parameters():
        values = param.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(values.shape)};".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def validate_update(update: Update, victim: Victim) -> None:
    """Refuse an update that does not fit `victim`, naming the parameter at fault.

    Checks: the same parameter names (none missing, none extra), the same shapes, finite values,
    a positive batch size, and disclosed labels in the victim's class range.
    """
    if update.kind not in UPDATE_KINDS:
        raise GifdError(f"update kind {update.kind!r} is unknown: expected one of {UPDATE_KINDS}")
    expected = dict(victim.named_parameters())
    missing = sorted(set(expected) - set(update.tensors))
    extra = sorted(set(update.tensors) - set(expected))
    if missing or extra:
        arch = update.metadata.get("victim")
        origin = f" (it was made for victim {arch!r})" if arch and arch != victim.name else ""
        raise GifdError(
            f"the update does not fit victim {victim.name!r}{origin}: missing {list_some(missing)}; "
            f"extra {list_some(extra)}. Attack it with the victim architecture the client used"
        )
    for name, param in expected.items():
        tensor = update.tensors[name]
        if tuple(tensor.shape) != tuple(param.shape):
            raise GifdError(
                f"update tensor {name} has shape {tuple(tensor.shape)} but victim {victim.name!r} has "
                f"{tuple(param.shape)}: check --resolution and --num-classes"
            )
        if not torch.isfinite(tensor).all():
            raise GifdError(f"update tensor {name} contains NaN or inf: the client's update is corrupt")
    if update.batch_size < 1:
        raise GifdError(f"update batch size must be positive, got {update.batch_size}")
    if update.labels is not None:
        labels = update.labels
        if labels.numel() != update.batch_size or labels.min() < 0 or labels.max() >= victim.num_classes:
            raise GifdError(
                f"disclosed labels {labels.tolist()} do not fit a batch of {update.batch_size} "
                f"with {victim.num_classes} classes"
            )


def save_update(update: Update, path: str | Path) -> Path:
    """Write `update` to `path` atomically (plain tensors and values; loadable with weights_only)."""
    path = Path(path)
    payload = {
        "format": UPDATE_FORMAT,
        "version": UPDATE_VERSION,
        "kind": update.kind,
        "batch_size": int(update.batch_size),
        "labels": None if update.labels is None else update.labels.detach().cpu(),
        "tensors": {k: v.detach().cpu() for k, v in update.tensors.items()},
        "metadata": update.metadata,
    }
    atomic_torch_save(payload, path)
    return path


def atomic_torch_save(obj: object, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: never a partly written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_update(path: str | Path, *, batch_size: int | None = None) -> Update:
    """Read an update written by `save_update`, or a plain {name: tensor} dict of gradients.

    A plain dict carries no batch size, so `batch_size` must be given for it.
    """
    path = Path(path)
    payload = load_torch_file(
        path,
        "update file",
        "pass the path of a file written by gifd.client.save_update or by torch.save of a "
        "{name: tensor} dict",
    )
    if isinstance(payload, dict) and payload.get("format") == UPDATE_FORMAT:
        return _update_from_payload(payload, path)
    if isinstance(payload, dict) and payload and all(isinstance(v, Tensor) for v in payload.values()):
        if batch_size is None:
            raise GifdError(
                f"update file {path} is a plain gradient dict without a batch size: pass --batch-size"
            )
        return Update(tensors={str(k): v for k, v in payload.items()}, batch_size=batch_size)
    raise GifdError(
        f"update file {path} is neither a gifd update nor a {{name: tensor}} dict of gradients: "
        "write it with gifd.client.save_update"
    )


def _update_from_payload(payload: dict[str, Any], path: Path) -> Update:
    version = payload.get("version")
    if version != UPDATE_VERSION:
        raise GifdError(
            f"update file {path} has format version {version}; this gifd reads version {UPDATE_VERSION}"
        )
    tensors, labels = payload.get("tensors"), payload.get("labels")
    batch_size = payload.get("batch_size")
    if not isinstance(tensors, dict) or not all(isinstance(v, Tensor) for v in tensors.values()):
        raise GifdError(f"update file {path} is damaged: its 'tensors' entry is not a {{name: tensor}} dict")
    if not isinstance(batch_size, int) or (labels is not None and not isinstance(labels, Tensor)):
        raise GifdError(f"update file {path} is damaged: bad 'batch_size' or 'labels' entry")
    return Update(
        tensors=tensors,
        batch_size=batch_size,
        kind=str(payload.get("kind", "gradient")),
        labels=labels,
        metadata=dict(payload.get("metadata") or {}),
    )
