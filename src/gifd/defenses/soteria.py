"""Soteria (`soteria:FRACTION`): pruning the last layer's weight update by feature importance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from gifd.defenses.base import (
    Defense,
    Tensors,
    as_list,
    check_ratio,
    register_defense,
    require_context,
    same_form,
    spec_number,
)
from gifd.defenses.prune import prune_count
from gifd.errors import GifdError
from gifd.victims import Victim


def _classifier_index(names: Sequence[str], classifier: str) -> int:
    weight = f"{classifier}.weight" if classifier else "weight"
    if weight not in names:
        raise GifdError(
            f"Soteria needs the last linear layer's weight {weight!r} in the update, which has "
            f"{len(names)} other tensors: build the defense with classifier=<the victim's classifier name>"
        )
    return list(names).index(weight)


@register_defense
@dataclass(frozen=True)
class SoteriaDefense(Defense):
    """Soteria (Sun et al. 2021): prune the fc-weight gradient columns of unimportant fc-input features.

    With r the input of the last linear layer (B x F) and x the model input, feature f's score is
    sum_b ||d r_bf / d x_b|| / |r_bf| (a feature with r_bf = 0 adds nothing for sample b); the
    floor(fraction F) features with the lowest scores have their columns of the fc-weight update
    zeroed. The client computes it from its batch (`soteria_scores`: costly), so `apply` needs
    a `ClientContext`; on a FedAvg delta the mask comes from the batch at the starting weights.
    `classifier` names the last linear layer (`Victim.classifier`).
    """

    fraction: float
    classifier: str = "fc"
    name: ClassVar[str] = "soteria"
    arguments: ClassVar[tuple[str, ...]] = ("FRACTION",)
    strengths: ClassVar[tuple[str, ...]] = ("soteria:0.1", "soteria:0.5")
    requires_context: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_ratio("soteria", self.fraction, "fraction")

    @classmethod
    def from_numbers(cls, numbers: list[float]) -> Defense:
        """A fraction of 1 or more is most likely a percentage: say how to write it."""
        if numbers[0] >= 1:
            raise GifdError(
                f"soteria takes a fraction in [0, 1) (soteria:0.1 prunes 10 %), got {spec_number(numbers[0])}"
            )
        return cls(numbers[0])

    def aimed_at(self, victim: Victim) -> Defense:
        """Aimed at `victim`'s last linear layer (`Victim.classifier`: "fc" for the built-ins, found
        on a probe batch for a MODULE:FACTORY victim)."""
        if victim.classifier is None:
            raise GifdError(
                f"Soteria prunes the input features of the last linear layer, and victim {victim.name} does not "
                "end in one: use another defense"
            )
        return replace(self, classifier=victim.classifier)

    @torch.no_grad()
    def apply(self, tensors: Tensors, generator=None, context=None) -> Tensors:  # type: ignore[override]
        context = require_context(context, "Soteria")
        values, names = as_list(tensors)
        param_names = names if names is not None else [n for n, _ in context.victim.named_parameters()]
        if len(param_names) != len(values):
            raise GifdError(
                f"{len(values)} tensors given for a victim with {len(param_names)} parameters: "
                "pass the update in the victim's parameter order"
            )
        index = _classifier_index(param_names, self.classifier)
        weight = values[index]
        scores = soteria_scores(context.victim, context.images, self.classifier)
        if scores.numel() != weight.shape[-1]:
            raise GifdError(
                f"Soteria found {scores.numel()} fc-input features but {param_names[index]} has "
                f"{weight.shape[-1]} columns: is {self.classifier!r} the victim's last linear layer?"
            )
        mask = torch.ones_like(scores)
        drop = prune_count(scores.numel(), self.fraction)
        if drop > 0:
            mask[torch.topk(scores, drop, largest=False).indices] = 0
        out = list(values)
        out[index] = weight * mask.to(weight.dtype).view(1, -1)
        return same_form(out, names)

    def adapt(self, dummy: list[Tensor], shared: list[Tensor], names: list[str]) -> list[Tensor]:
        """Zero the dummy fc-weight columns that are all zero in the shared update."""
        index = _classifier_index(names, self.classifier)
        mask = soteria_mask(shared[index]).to(dummy[index].dtype)
        out = list(dummy)
        out[index] = dummy[index] * mask.view(1, -1)
        return out

    @classmethod
    def estimate(
        cls, shared: Sequence[Tensor], names: Sequence[str], classifier: str = "fc"
    ) -> SoteriaDefense:
        """The fraction read off the zero columns of the fc-weight update (`adapt` uses them directly)."""
        mask = soteria_mask(shared[_classifier_index(names, classifier)])
        fraction = float((mask == 0).sum()) / mask.numel()
        return cls(min(fraction, 1 - 1e-9), classifier)

    def estimated(self, shared: Sequence[Tensor], names: Sequence[str]) -> Defense:
        return self.estimate(shared, names, self.classifier)

    def describe(self) -> str:
        return (
            f"Soteria: the last layer's weight update loses the columns of the {100 * self.fraction:.4g} % "
            "of its input features whose score ||d r_f / d x|| / |r_f| is lowest"
        )


def soteria_mask(fc_weight_update: Tensor) -> Tensor:
    """1 for the columns of a (C x F) fc-weight update with a nonzero entry, 0 for all-zero columns."""
    return (fc_weight_update.detach() != 0).any(dim=0).to(fc_weight_update.dtype)


def fc_input_features(victim: Victim, inputs: Tensor, classifier: str = "fc") -> Tensor:
    """The input of the victim's last linear layer for normalised `inputs`, B x F (keeps the graph)."""
    captured: list[Tensor] = []
    try:
        module = victim.model.get_submodule(classifier)
    except AttributeError as exc:
        raise GifdError(
            f"victim {victim.name!r} has no layer {classifier!r}: pass its classifier name"
        ) from exc
    hook = module.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    try:
        victim.model(inputs)
    finally:
        hook.remove()
    return captured[0].flatten(1)


def soteria_scores(
    victim: Victim, images: Tensor, classifier: str = "fc", chunk: int | None = None
) -> Tensor:
    """Soteria's per-feature scores (F,) for a batch of [0, 1] images (see `SoteriaDefense`).

    d r_bf / d x_b for `chunk` features at once: the batch is repeated `chunk` times and copy j
    back-propagates feature j only, one ordinary backward pass per chunk (samples must be
    independent: eval mode, as the victims are). The cost is about F / B forward-backward passes
    of the victim over the batch; e.g. ResNet-18 at 32 px, F = 512: ~25 s per image on one CPU core.
    """
    inputs = victim.normalize(images.to(victim.device)).detach()
    batch = inputs.shape[0]
    with torch.no_grad():
        features = fc_input_features(victim, inputs, classifier)
    num_features = features.shape[1]
    if chunk is None:
        chunk = max(1, min(num_features, 2**20 // max(1, batch * inputs[0].numel())))
    norms = torch.empty(num_features, batch, dtype=features.dtype, device=features.device)
    with torch.enable_grad():
        for start in range(0, num_features, chunk):
            stop = min(start + chunk, num_features)
            copies = inputs.repeat(stop - start, *([1] * (inputs.ndim - 1))).requires_grad_(True)
            replicated = fc_input_features(victim, copies, classifier).view(stop - start, batch, num_features)
            picked = replicated[torch.arange(stop - start), :, torch.arange(start, stop)]  # copy j, feature j
            (jac,) = torch.autograd.grad(picked.sum(), copies)
            norms[start:stop] = jac.view(stop - start, batch, -1).norm(dim=2)
    magnitude = features.abs().t()
    ratio = torch.where(magnitude > 0, norms / magnitude.clamp_min(torch.finfo(magnitude.dtype).tiny), 0.0)
    return ratio.sum(dim=1)
