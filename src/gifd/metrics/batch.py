"""Batch-level comparisons: feature distance, order-free label accuracy, optimal image pairing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from gifd.errors import GifdError
from gifd.metrics._inputs import image_pair


def feature_distance(features_x: torch.Tensor, features_y: torch.Tensor) -> torch.Tensor:
    """Mean squared difference per sample of two feature batches (e.g. victim logits), shape N.

    The caller computes the features (victim forward, with its own input normalisation); any
    trailing shape is flattened.
    """
    if not isinstance(features_x, torch.Tensor) or not isinstance(features_y, torch.Tensor):
        raise GifdError("feature_distance: pass two torch.Tensor feature batches (N x ...)")
    if features_x.shape != features_y.shape or features_x.dim() == 0:
        raise GifdError(
            f"feature_distance: feature batches differ in shape, {tuple(features_x.shape)} vs "
            f"{tuple(features_y.shape)}: compute both with the same network on batches of the same size"
        )
    difference = features_x.double() - features_y.to(features_x.device).double()
    return difference.pow(2).reshape(difference.shape[0], -1).mean(1)


def _labels_list(labels: torch.Tensor | Sequence[int] | np.ndarray, name: str) -> list[int]:
    if isinstance(labels, torch.Tensor):
        return [int(v) for v in labels.detach().cpu().reshape(-1).tolist()]
    try:
        return [int(v) for v in np.asarray(labels).reshape(-1).tolist()]
    except (TypeError, ValueError) as exc:
        raise GifdError(f"label_accuracy: {name} labels must be integers, got {labels!r}") from exc


def label_accuracy(
    inferred: torch.Tensor | Sequence[int] | np.ndarray, true: torch.Tensor | Sequence[int] | np.ndarray
) -> float:
    """Fraction of the true labels recovered, ignoring order: |multiset overlap| / batch size.

    Label inference returns a set of labels in arbitrary order, so position-wise comparison would
    be meaningless; repeated labels count as often as they occur in both (e.g. inferred [1, 1, 2]
    vs true [1, 2, 2] -> 2/3).
    """
    inferred_list, true_list = _labels_list(inferred, "inferred"), _labels_list(true, "true")
    if len(true_list) == 0:
        raise GifdError("label_accuracy: the true label list is empty")
    if len(inferred_list) != len(true_list):
        raise GifdError(
            f"label_accuracy: {len(inferred_list)} inferred labels for a batch of {len(true_list)}: "
            "infer exactly one label per image"
        )
    overlap = Counter(inferred_list) & Counter(true_list)
    return sum(overlap.values()) / len(true_list)


def pairwise_mse(reconstruction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Matrix M (N x N) with M[i, j] = MSE between ground-truth image i and reconstruction j."""
    reconstruction, truth = image_pair(reconstruction, truth, name="pairwise_mse")
    flat_recon, flat_truth = reconstruction.flatten(1), truth.flatten(1)
    # Direct differences (not the |a|^2 + |b|^2 - 2ab expansion, which loses precision near 0).
    distance = torch.cdist(flat_truth, flat_recon, compute_mode="donot_use_mm_for_euclid_dist")
    return distance.pow(2) / flat_truth.shape[1]


def match_batch(reconstruction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Optimal pairing of a reconstructed batch with the ground truth (order of a batch is not leaked).

    Returns a LongTensor `order` (on CPU) with `order[i]` = index of the reconstruction paired with
    ground-truth image i, minimising the total per-pair MSE (Hungarian algorithm,
    scipy.optimize.linear_sum_assignment); `reconstruction[order]` is aligned with `truth`.
    """
    cost = pairwise_mse(reconstruction, truth).detach().cpu().numpy()
    rows, columns = linear_sum_assignment(cost)
    order = np.empty(len(rows), dtype=np.int64)
    order[rows] = columns
    return torch.from_numpy(order)
