"""One call that scores a reconstructed batch against the ground truth (the evaluation party only)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from gifd.errors import GifdError
from gifd.metrics._inputs import image_pair
from gifd.metrics.batch import feature_distance, match_batch
from gifd.metrics.image import SSIM_WINDOW_SIZE, ms_ssim, ms_ssim_window_size, mse, psnr, ssim
from gifd.metrics.perceptual import PerceptualDistance, PerceptualMetric


def _json_number(value: float) -> float | None:
    """JSON has no inf / nan: those become None (e.g. the PSNR of a perfect reconstruction)."""
    return value if math.isfinite(value) else None


@dataclass
class Evaluation:
    """Metrics of a reconstructed batch after pairing it with the ground truth.

    order: order[i] = index of the reconstruction paired with ground-truth image i.
    per_image: metric name -> one value per ground-truth image (in ground-truth order).
    mean: metric name -> mean over the batch.
    notes: why a metric is missing, and caveats (e.g. lpips_st is not published LPIPS).
    Metric names: psnr (dB, higher is better), mse, ssim, ms_ssim (higher is better),
    lpips_st / lpips (lower is better), feature_mse (lower is better).
    """

    order: list[int]
    per_image: dict[str, list[float]]
    mean: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (non-finite numbers, e.g. infinite PSNR, become None)."""
        return {
            "order": list(self.order),
            "per_image": {name: [_json_number(v) for v in values] for name, values in self.per_image.items()},
            "mean": {name: _json_number(value) for name, value in self.mean.items()},
            "notes": list(self.notes),
        }


def _default_perceptual(notes: list[str]) -> PerceptualMetric | None:
    try:
        return PerceptualDistance("alex")
    except GifdError as exc:
        message = f"lpips_st omitted: {exc}"
        warnings.warn(message, stacklevel=3)
        notes.append(message)
        return None


def evaluate(
    reconstruction: torch.Tensor,
    truth: torch.Tensor,
    *,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    perceptual: PerceptualMetric | Literal["default"] | None = "default",
    match: bool = True,
) -> Evaluation:
    """Score `reconstruction` against `truth` (both N x C x H x W in [0, 1], clamped).

    match: pair images by optimal assignment on MSE first (a batch's order is not leaked by the
      gradient); False keeps index order.
    perceptual: "default" = shift-tolerant AlexNet LPIPS ("lpips_st") if its weights are installed
      (else omitted with a note); a `PerceptualDistance` / `LPIPS` instance; None = skip.
    features: a function images -> features (e.g. the victim's logits, including its own input
      normalisation), applied to both batches to give "feature_mse".
    Metrics that the image size does not allow (ssim below 11 px, ms_ssim below 33 px, the
    perceptual net below its minimum) are omitted with a note, except an explicitly passed
    perceptual metric, whose error is raised.
    """
    recon_clamped, truth_clamped = image_pair(reconstruction, truth, name="evaluate")
    notes: list[str] = []
    with torch.no_grad():
        order = match_batch(recon_clamped, truth_clamped) if match else torch.arange(truth_clamped.shape[0])
        aligned = recon_clamped[order.to(recon_clamped.device)]
        per_image: dict[str, torch.Tensor] = {
            "psnr": psnr(aligned, truth_clamped),
            "mse": mse(aligned, truth_clamped),
        }
        height, width = truth_clamped.shape[-2:]
        if min(height, width) >= SSIM_WINDOW_SIZE:
            per_image["ssim"] = ssim(aligned, truth_clamped)
        else:
            notes.append(
                f"ssim omitted: {height} x {width} px is smaller than its {SSIM_WINDOW_SIZE} px window"
            )
        if ms_ssim_window_size(height, width) is not None:
            per_image["ms_ssim"] = ms_ssim(aligned, truth_clamped)
        else:
            notes.append(
                f"ms_ssim omitted: {height} x {width} px is too small for 5 scales (needs a side > 32 px)"
            )

        if perceptual == "default":
            metric = _default_perceptual(notes)
            if metric is not None and min(height, width) < metric.minimum_side:
                notes.append(
                    f"{metric.metric_name} omitted: {height} x {width} px is below the "
                    f"{metric.minimum_side} px its network needs"
                )
                metric = None
        elif perceptual is None or isinstance(perceptual, PerceptualMetric):
            metric = perceptual
        else:
            raise GifdError(
                f"evaluate: perceptual={perceptual!r} is not understood: pass 'default', None, "
                "or a PerceptualDistance / LPIPS instance"
            )
        if metric is not None:
            per_image[metric.metric_name] = metric(aligned, truth_clamped)
            if metric.metric_name == "lpips_st":
                notes.append("lpips_st is shift-tolerant LPIPS: not comparable with published LPIPS values")

        if features is not None:
            dtype = truth.dtype if truth.is_floating_point() else torch.float32
            features_recon = features(aligned.to(truth.device, dtype))
            features_truth = features(truth_clamped.to(truth.device, dtype))
            per_image["feature_mse"] = feature_distance(features_recon, features_truth)

    values = {name: [float(v) for v in tensor.detach().cpu().double()] for name, tensor in per_image.items()}
    means = {name: float(tensor.detach().cpu().double().mean()) for name, tensor in per_image.items()}
    return Evaluation(order=[int(i) for i in order], per_image=values, mean=means, notes=notes)
