"""Label inference from the shared gradient: no oracle labels, no batch-norm statistics.

With P the softmax outputs, Y the one-hot labels and A the inputs of the last linear layer of a
batch of B samples, that layer's gradients are g_W = (P - Y)^T A / B and g_b = (P - Y)^T 1 / B.
Three rules:
- `paper`: the k = B rows of g_W with the most negative sums (iDLG's sign trick generalised, as in
  the GIFD paper). Exact for B = 1; for larger batches it fails when the untrained victim's
  predictions are dominated by a few classes (measured: LeNet at B = 8 fails on most batches).
- `unique` (default; Dang et al. 2021, "Revealing and protecting labels in distributed training"):
  the columns of (P - Y)^T span the same B-dim space as the left singular vectors U of g_W, and
  each column has exactly one negative entry, at its label. Class c is present iff the linear
  program {q : U_c q <= -1, U_c' q >= 0 for c' != c} is feasible. For unique labels this set is
  the answer (trimmed or filled by row sums if its size is not B).
- `count` (beyond the paper: repeated labels): the bias-gradient count estimate
  n_c = B * (mean_i p_ic - g_b[c]), rounded to integers summing to B. For an absent class
  mean_i p_ic = g_b[c] exactly; the present classes share the remaining probability mass in the
  proportions of the victim's mean prediction on random inputs (the attacker knows the weights).
  Without a bias, row sums of g_W divided by the mean input-feature sum stand in for g_b. When
  the estimate finds B distinct labels, the `unique` test replaces it (exact for distinct labels;
  with repeats it gives false positives, as the span has more dimensions than distinct labels).

A FedAvg weight delta (kind "delta") is -lr times the sum of the local steps' gradients: every rule
flips its sign, and `count`, which reads magnitudes, also divides by lr x steps (from the local
training the update discloses; `delta_to_gradient_scale`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.optimize import linprog
from torch import Tensor

from gifd.errors import GifdError
from gifd.fedavg import LocalTraining
from gifd.update import Update
from gifd.victims import Victim

LabelRule = Literal["unique", "count", "paper"]
LABEL_RULES = ("unique", "count", "paper")


def infer_labels(
    update: Update,
    victim: Victim,
    rule: LabelRule = "unique",
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The batch's labels, sorted, as inferred from `update` by `rule` (see the module doc)."""
    if rule not in LABEL_RULES:
        raise GifdError(f"unknown label inference rule {rule!r}: use one of {', '.join(LABEL_RULES)}")
    weight_name, weight, bias = _last_layer(update, victim)
    if update.kind == "delta":
        scale = -delta_to_gradient_scale(update) if rule == "count" else -1.0
        weight, bias = scale * weight, None if bias is None else scale * bias
    weight, batch = weight.detach().double().cpu(), update.batch_size
    if rule != "count" and batch > victim.num_classes:
        raise GifdError(
            f"batch size {batch} exceeds the {victim.num_classes} classes, so the labels cannot all differ: "
            "use label inference rule 'count' (repeated labels)"
        )
    row_sums = weight.sum(dim=1)
    if rule == "paper":
        labels = torch.argsort(row_sums)[:batch]
    elif rule == "unique":
        labels = _exactly_k(present_classes(weight, batch), row_sums, batch)
    else:
        counts = _label_counts(weight, bias, victim, batch, generator)
        if int(counts.max()) <= 1 and batch <= victim.num_classes:
            # The estimate sees distinct labels: the unique test finds them exactly.
            present = present_classes(weight, batch)
            counts = (
                counts
                if len(present) != batch
                else torch.bincount(torch.tensor(present), minlength=len(counts))
            )
        labels = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    return torch.sort(labels).values.to(update.tensors[weight_name].device)


def delta_to_gradient_scale(update: Update) -> float:
    """1 / (local lr x local steps): what turns a FedAvg delta's magnitude into a mean gradient's.

    A delta is -lr times the sum of the S local steps' gradients, so -delta / (lr x S) is their
    mean: the batch's gradient for full-batch steps (up to the weights' drift over the steps),
    and its mean over the mini-batches for whole epochs of equal mini-batches. The `count` rule
    compares the bias gradient with probabilities, so it needs this scale; `unique` and `paper`
    are scale-free and need only the sign.
    """
    training = LocalTraining.from_update(update)
    return 1.0 / (training.local_lr * training.num_steps(update.batch_size))


#: What label inference reads, for the errors that say it is missing.
_NEEDS = "label inference needs the gradient of a final nn.Linear with out_features = num_classes"
_DISCLOSE = "or attack with the labels disclosed (--disclose-labels)"


def check_label_inference(victim: Victim, alternative: str = _DISCLOSE) -> None:
    """Refuse, before any compute, a victim whose labels cannot be inferred from its update: the
    rules read the gradient of the linear layer whose output is the model's output
    (`Victim.classifier`, found on a probe batch for a MODULE:FACTORY victim). `alternative`
    ends the message (the way around it where there is one)."""
    if victim.classifier is None:
        raise GifdError(
            f"victim {victim.name} does not end in a linear classifier (no nn.Linear's output is the model's "
            f"output): {_NEEDS}; end the model in one, {alternative}"
        )
    module = victim.model.get_submodule(victim.classifier)
    if not isinstance(module, torch.nn.Linear) or module.out_features != victim.num_classes:
        raise GifdError(
            f"victim {victim.name}'s classifier {victim.classifier!r} is not an nn.Linear with "
            f"{victim.num_classes} outputs: {_NEEDS}; {alternative}"
        )


def _last_layer(update: Update, victim: Victim) -> tuple[str, Tensor, Tensor | None]:
    """The classifier's weight key, weight gradient and bias gradient (None without a bias)."""
    check_label_inference(victim)
    weight_name, bias_name = victim.classifier_tensor("weight"), victim.classifier_tensor("bias")
    assert weight_name is not None and bias_name is not None
    if weight_name not in update.tensors:
        raise GifdError(
            f"the update has no {weight_name}: {_NEEDS} (here {weight_name}) in the update; {_DISCLOSE}"
        )
    bias = update.tensors.get(bias_name)
    return weight_name, update.tensors[weight_name], None if bias is None else bias.detach().double().cpu()


def present_classes(weight_grad: Tensor, batch_size: int) -> list[int]:
    """Classes present in the batch, by the linear-programming test of the module doc."""
    u, _, _ = np.linalg.svd(weight_grad.numpy(), full_matrices=False)
    basis = u[:, : min(batch_size, u.shape[1])]
    num_classes, rank = basis.shape
    present = []
    for c in range(num_classes):
        a_ub = np.vstack([basis[c : c + 1], -np.delete(basis, c, axis=0)])
        b_ub = np.concatenate([[-1.0], np.zeros(num_classes - 1)])
        solution = linprog(np.zeros(rank), A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * rank, method="highs")
        if solution.status == 0:
            present.append(c)
    return present


def _exactly_k(present: list[int], row_sums: Tensor, k: int) -> Tensor:
    """`present` trimmed or filled to k classes, preferring the most negative row sums."""
    order = torch.argsort(row_sums).tolist()
    chosen = [c for c in order if c in present][:k]
    chosen += [c for c in order if c not in chosen][: k - len(chosen)]
    return torch.tensor(chosen, dtype=torch.long)


@torch.no_grad()
def _mean_prediction(victim: Victim, generator: torch.Generator | None, n: int = 64) -> tuple[Tensor, Tensor]:
    """Mean softmax output and mean last-layer input-feature sum of the victim on random images."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, victim.resolution, victim.resolution, generator=gen).to(victim.device)
    features: list[Tensor] = []
    classifier = victim.model.get_submodule(victim.classifier)
    hook = classifier.register_forward_hook(lambda _m, inputs, _o: features.append(inputs[0].flatten(1)))
    try:
        logits = victim.model(victim.normalize(images))
    finally:
        hook.remove()
    probs = torch.softmax(logits.double(), dim=1).mean(0).cpu()
    return probs, features[0].double().sum(1).mean().cpu()


def _label_counts(
    weight: Tensor,
    bias: Tensor | None,
    victim: Victim,
    batch_size: int,
    generator: torch.Generator | None,
) -> Tensor:
    """Samples per class from the count estimate, rounded to integers summing to the batch size."""
    probs, feature_sum = _mean_prediction(victim, generator)
    signal = bias if bias is not None else weight.sum(1) / feature_sum
    estimate = batch_size * (probs - signal)
    absent = estimate < 0.5
    if absent.any() and not absent.all():
        # For an absent class, signal = the batch's mean probability exactly; the present classes
        # share the rest of the probability mass in the proportions seen on random inputs.
        mass = (1 - signal[absent].sum()).clamp(0, 1)
        probs = torch.where(absent, signal, mass * probs / probs[~absent].sum().clamp_min(1e-12))
        estimate = batch_size * (probs - signal)
    estimate = estimate.clamp_min(0)
    counts = torch.floor(estimate).long()
    while int(counts.sum()) > batch_size:  # too many: take from the count furthest above its estimate
        excess = torch.where(counts > 0, counts - estimate, torch.full_like(estimate, -float("inf")))
        counts[int(torch.argmax(excess))] -= 1
    while int(counts.sum()) < batch_size:  # too few: add where the estimate is furthest above the count
        counts[int(torch.argmax(estimate - counts))] += 1
    return counts
