"""Input checks shared by the metrics: batches of images in [0, 1], same shape, one device."""

from __future__ import annotations

import torch

from gifd.errors import GifdError


def work_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (exact agreement with NumPy references), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def image_pair(
    x: torch.Tensor, y: torch.Tensor, *, name: str, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two N x C x H x W batches of equal shape; return them clamped to [0, 1] on x's device.

    `dtype` None = `work_dtype(x.device)`.
    """
    for label, tensor in (("first", x), ("second", y)):
        if not isinstance(tensor, torch.Tensor):
            raise GifdError(f"{name}: the {label} argument is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.dim() != 4:
            raise GifdError(
                f"{name}: expected a batch of images N x C x H x W, got shape {tuple(tensor.shape)}"
                " (add a batch dimension with .unsqueeze(0) for a single image)"
            )
        if tensor.shape[0] == 0:
            raise GifdError(f"{name}: the {label} batch is empty")
    if x.shape != y.shape:
        raise GifdError(
            f"{name}: the two batches differ in shape, {tuple(x.shape)} vs {tuple(y.shape)}: "
            "pass reconstructions and ground truth of the same size (resize the reconstruction first)"
        )
    dtype = work_dtype(x.device) if dtype is None else dtype
    return x.to(dtype).clamp(0, 1), y.to(x.device, dtype).clamp(0, 1)
