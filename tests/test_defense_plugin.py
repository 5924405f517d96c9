"""A new defense is one class with one registration line, here in a test module: this file adds
`round:DIGITS` (every entry rounded to DIGITS decimals, a quantisation) with its adaptive half,
and uses it through `parse_defense`, `apply_defense`, the adaptive matcher and an experiment
with no other change to gifd."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import Tensor

from gifd.attacks import GradientMatcher, Target
from gifd.client import Update, compute_update
from gifd.defenses import (
    ClipDefense,
    Compose,
    Defense,
    Tensors,
    apply_defense,
    defense_names,
    parse_defense,
    parse_defense_sweep,
    register_defense,
)
from gifd.defenses.base import as_list, same_form
from gifd.errors import GifdError
from gifd.experiment import ExperimentConfig, run_experiment


@register_defense
@dataclass(frozen=True)
class RoundDefense(Defense):
    """Round every entry of the update to `digits` decimal places."""

    digits: float
    name: ClassVar[str] = "round"
    arguments: ClassVar[tuple[str, ...]] = ("DIGITS",)

    def __post_init__(self) -> None:
        if self.digits != int(self.digits) or not 0 <= self.digits <= 12:
            raise GifdError(
                f"round takes a whole number of decimals from 0 to 12 (e.g. round:3), got {self.digits:g}"
            )

    def _round(self, values: list[Tensor]) -> list[Tensor]:
        return [torch.round(t, decimals=int(self.digits)) for t in values]

    @torch.no_grad()
    def apply(self, tensors: Tensors, generator=None, context=None) -> Tensors:  # type: ignore[override]
        values, names = as_list(tensors)
        return same_form(self._round(values), names)

    def adapt(self, dummy: list[Tensor], shared: list[Tensor], names: list[str]) -> list[Tensor]:
        """The rounded dummy update, its gradient passed straight through (rounding's own is zero)."""
        return [t + (r - t).detach() for t, r in zip(dummy, self._round(list(dummy)), strict=True)]

    def describe(self) -> str:
        return f"every entry of the update is rounded to {int(self.digits)} decimal places"


def test_the_spec_parser_knows_the_new_defense() -> None:
    assert parse_defense("round:2") == RoundDefense(2)
    assert parse_defense(" Round:3 ").spec() == "round:3"
    assert parse_defense(parse_defense("round:3").spec()) == RoundDefense(3)
    assert defense_names()[-1] == "round"
    chain = parse_defense("clip:4+round:2")
    assert isinstance(chain, Compose) and chain.members() == [ClipDefense(4), RoundDefense(2)]
    assert chain.parameters() == {"clip.bound": 4.0, "round.digits": 2.0}
    assert [d.strength for d in parse_defense_sweep("round:1,2,3")] == [1, 2, 3]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("round", "takes 1 number"),
        ("round:1,2", "takes 1 number"),
        ("round:x", "non-number"),
        ("blur:1", "unknown"),
    ],
)
def test_bad_specs_name_the_new_form(spec: str, message: str) -> None:
    with pytest.raises(GifdError, match=message) as info:
        parse_defense(spec)
    assert "dpsgd:CLIP,SIGMA, round:DIGITS, joined with +" in str(info.value)


def test_the_class_checks_its_own_numbers() -> None:
    with pytest.raises(GifdError, match="whole number of decimals"):
        parse_defense("round:2.5")


def test_apply_defense_rounds_every_entry() -> None:
    values = [0.123456, -1.98765, 0.00312, 7.777]
    update = Update(tensors={"w": torch.tensor(values), "b": torch.tensor([[0.5049]])}, batch_size=1)
    defended = apply_defense(update, "round:2", disclose=True)
    eps = torch.finfo(torch.float32).eps  # one rounding of x * 100 and one of the division by 100
    expected = torch.tensor([0.12, -1.99, 0.0, 7.78])
    torch.testing.assert_close(defended.tensors["w"], expected, rtol=4 * eps, atol=0.0)
    torch.testing.assert_close(defended.tensors["b"], torch.tensor([[0.5]]), rtol=4 * eps, atol=0.0)
    assert defended.metadata["defense"] == "round:2" and defended.batch_size == 1
    assert torch.equal(update.tensors["w"], torch.tensor(values))  # the client's own copy is untouched
    clipped_then_rounded = apply_defense(update, "clip:1+round:2").tensors["w"]
    clipped = ClipDefense(1).apply(dict(update.tensors))["w"]
    torch.testing.assert_close(clipped_then_rounded, torch.round(clipped, decimals=2), rtol=0.0, atol=0.0)


def test_the_adaptive_half_rounds_and_passes_gradients_through() -> None:
    dummy = torch.tensor([0.123456, -1.98765, 0.00312], requires_grad=True)
    (out,) = RoundDefense(2).adapt([dummy], [], ["w"])
    torch.testing.assert_close(out.detach(), torch.round(dummy.detach(), decimals=2), rtol=0.0, atol=0.0)
    weights = torch.tensor([1.0, -2.0, 3.0])
    (grad,) = torch.autograd.grad((out * weights).sum(), [dummy])
    assert torch.equal(grad, weights)


def test_the_adaptive_matcher_models_the_new_defense(lenet32, cifar32) -> None:
    images, labels = cifar32[:1], torch.tensor([3])
    defense = parse_defense("round:1")  # coarse enough to move LeNet's update (entries up to ~1)
    update = apply_defense(compute_update(lenet32, images, labels), defense)
    loss = {
        known: float(
            GradientMatcher(Target(lenet32, update, labels, defense=known))(lenet32.normalize(images))
        )
        for known in (defense, None)
    }
    assert loss[defense] < 1e-6 < 1e-3 < loss[None]  # the true images match only through `adapt`


def test_an_experiment_accepts_the_new_defense() -> None:
    config = ExperimentConfig(victim="lenet", attacks=["ig"], steps=2, restarts=1, defense="round:2")
    results = run_experiment(config, None, progress=False)
    assert results["defense"]["spec"] == "round:2"
    assert results["defense"]["description"] == "every entry of the update is rounded to 2 decimal places"
    assert 0 < results["defense"]["utility_cost"]["cosine"] < 1
