"""What every defense shares: the `Defense` base class, the registry of defenses, the client's
context, no defense, a chain of defenses (`Compose`), and the helpers of the built-ins.

A defense is one dataclass subclassing `Defense`, registered by its spec name:

    @register_defense
    @dataclass(frozen=True)
    class RoundDefense(Defense):
        digits: float                     # the spec's numbers are the first fields, in order
        name: ClassVar[str] = "round"
        arguments: ClassVar[tuple[str, ...]] = ("DIGITS",)
        def apply(self, tensors, generator=None, context=None): ...
        def adapt(self, dummy, shared, names): ...
        def describe(self) -> str: ...

`parse_defense("round:2")` then builds it, `spec()` and `parameters()` read its fields back, and
the error messages and help texts list its form (`round:DIGITS`). A defense the attacker can
reproduce exactly (clip, prune) subclasses `ReproducibleDefense` and writes one `transform`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from gifd.errors import GifdError
from gifd.registry import Registry
from gifd.victims import Victim

Tensors = TypeVar("Tensors", dict[str, Tensor], list[Tensor])


@dataclass(frozen=True)
class ClientContext:
    """What a client-side defense may need besides the update: the victim and the private batch.

    `images` are in [0, 1] at the victim's resolution (as `compute_update` takes them); the
    defense normalises them itself. Only the client ever builds one.
    """

    victim: Victim
    images: Tensor
    labels: Tensor


# ------------------------------------------------------------------------------------------ helpers
def as_list(tensors: Mapping[str, Tensor] | Sequence[Tensor]) -> tuple[list[Tensor], list[str] | None]:
    """An update's tensors as a list, with their names when it came as a dict (else None)."""
    if isinstance(tensors, Mapping):
        return list(tensors.values()), list(tensors.keys())
    return list(tensors), None


def same_form(values: list[Tensor], names: list[str] | None) -> Any:
    """`values` in the form the input came in (dict when names are known)."""
    return values if names is None else dict(zip(names, values, strict=True))


def spec_number(value: float) -> str:
    """A number for a spec string: 4 not 4.0, 0.01 not 1e-02, exact enough to round-trip."""
    return f"{float(value):.12g}"


def gaussian_noise(tensor: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    """N(0, std^2) noise of `tensor`'s shape and dtype, drawn on the CPU from `generator` (so a
    seed gives the same numbers on every device), on `tensor`'s device."""
    if generator is None:
        raise GifdError(
            "a noisy defense needs a torch.Generator: pass generator= "
            "(e.g. gifd.device.derived_generator(seed, 'client'))"
        )
    noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype, device="cpu")
    return noise.to(tensor.device) * std


def check_ratio(kind: str, value: float, what: str) -> None:
    """A GifdError unless `value` is a fraction in [0, 1)."""
    if not (0 <= value < 1) or math.isnan(value):
        raise GifdError(f"{kind} {what} must be a fraction in [0, 1) (e.g. 0.2 for 20 %), got {value:g}")


# --------------------------------------------------------------------------------------------- base
class Defense:
    """One defense: the client's transform and the adaptive attacker's model of it."""

    #: The name in the CLI spec (`noise`, `clip`, ...).
    name: ClassVar[str] = ""
    #: The spec's numbers after `name:`, as help texts name them (`("CLIP", "SIGMA")`: two). The
    #: dataclass's first fields hold them, in this order (see `from_numbers` and `spec`).
    arguments: ClassVar[tuple[str, ...]] = ()
    #: Whether `apply` needs a `ClientContext` (the victim and the private batch).
    requires_context: ClassVar[bool] = False
    #: Whether the defense replaces how the gradient is computed (then it must come first).
    replaces_gradient: ClassVar[bool] = False
    #: Two specs of this defense, weaker then stronger, that benchmarks and `gifd reproduce`
    #: compare by default (empty: left out of those tables).
    strengths: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def form(cls) -> str:
        """The spec's form for help texts: `noise:STD`, `dpsgd:CLIP,SIGMA`, `none`."""
        return f"{cls.name}:{','.join(cls.arguments)}" if cls.arguments else cls.name

    @classmethod
    def from_numbers(cls, numbers: list[float]) -> Defense:
        """The defense of a spec's numbers (one per `arguments`, checked by the parser)."""
        return cls(*numbers)

    def apply(
        self,
        tensors: Tensors,
        generator: torch.Generator | None = None,
        context: ClientContext | None = None,
    ) -> Tensors:
        """The client's defended update, in the form `tensors` came in (dict or list)."""
        raise NotImplementedError

    def adapt(self, dummy: list[Tensor], shared: list[Tensor], names: list[str]) -> list[Tensor]:
        """The attacker's differentiable model of the defense applied to its dummy update."""
        return list(dummy)

    def dummy_gradient(self, victim: Victim, inputs: Tensor, labels: Tensor) -> list[Tensor] | None:
        """The attacker's version of the client's gradient computation, or None for the plain one."""
        return None

    def estimated(self, shared: Sequence[Tensor], names: Sequence[str]) -> Defense:
        """This defense with parameters estimated from the shared update where possible."""
        return self

    def parameters(self) -> dict[str, float]:
        """The defense's numbers by name (for results files and sweep plots): the spec's numbers,
        the first `len(arguments)` fields (the first is the `strength`)."""
        return self._argument_values()

    @property
    def strength(self) -> float | None:
        """The main parameter, the x axis of a sweep plot (None for no defense)."""
        values = list(self.parameters().values())
        return values[0] if values else None

    def aimed_at(self, victim: Victim) -> Defense:
        """This defense set up for `victim` (e.g. Soteria's classifier layer); itself by default."""
        return self

    def spec(self) -> str:
        """The CLI form, which `parse_defense` turns back into an equal defense: the name and the
        first `len(arguments)` fields."""
        numbers = ",".join(spec_number(value) for value in self._argument_values().values())
        return f"{self.name}:{numbers}" if numbers else self.name

    def _argument_values(self) -> dict[str, float]:
        """The first `len(arguments)` dataclass fields by name: the spec's numbers, in order."""
        fields = dataclasses.fields(self)[: len(self.arguments)]  # type: ignore[arg-type]
        return {f.name: getattr(self, f.name) for f in fields}

    def describe(self) -> str:
        """One sentence for reports."""
        raise NotImplementedError

    def members(self) -> list[Defense]:
        """The single defenses this one chains (itself, unless a Compose)."""
        return [self]

    def __str__(self) -> str:
        return self.spec()


class ReproducibleDefense(Defense):
    """A defense the attacker can reproduce exactly: the client's `apply` and the attacker's
    `adapt` are one `transform` of the update's tensors (without, then with, gradients)."""

    def transform(self, values: list[Tensor]) -> list[Tensor]:
        """The defended tensors, in the order given (differentiable, for the attacker's copy)."""
        raise NotImplementedError

    @torch.no_grad()
    def apply(self, tensors: Tensors, generator=None, context=None) -> Tensors:  # type: ignore[override]
        values, names = as_list(tensors)
        return same_form(self.transform(values), names)

    def adapt(self, dummy: list[Tensor], shared: list[Tensor], names: list[str]) -> list[Tensor]:
        return self.transform(list(dummy))


def require_context(context: ClientContext | None, defense: str) -> ClientContext:
    """`context`, which a defense computed from the private batch cannot do without."""
    if context is None:
        raise GifdError(
            f"the {defense} defense needs the client's batch: pass context=ClientContext(victim, images, labels)"
        )
    return context


#: Spec name -> defense class, in registration order (the order help texts list them in).
DEFENSES: Registry[type[Defense]] = Registry("defense")


def default_strengths() -> list[str]:
    """Every registered defense's `strengths` specs, in registration order (weaker first per defense)."""
    return [spec for name in DEFENSES.in_order() for spec in DEFENSES.get(name).strengths]


def register_defense(cls: type[Defense]) -> type[Defense]:
    """Class decorator: register a defense under its `name` (`parse_defense` then knows it)."""
    DEFENSES.register(cls.name)(cls)
    return cls


@register_defense
@dataclass(frozen=True)
class NoDefense(ReproducibleDefense):
    """The update is sent unchanged."""

    name: ClassVar[str] = "none"

    def transform(self, values: list[Tensor]) -> list[Tensor]:
        return list(values)

    def describe(self) -> str:
        return "no defense: the update is sent unchanged"

    def members(self) -> list[Defense]:
        return []


@dataclass(frozen=True, init=False)
class Compose(Defense):
    """Several defenses applied left to right on the client; `adapt` chains theirs in the same order."""

    defenses: tuple[Defense, ...]
    name: ClassVar[str] = "compose"

    def __init__(self, defenses: Sequence[Defense]) -> None:
        flat: list[Defense] = []
        for defense in defenses:
            flat.extend(defense.members())
        for i, defense in enumerate(flat):
            if defense.replaces_gradient and i > 0:
                raise GifdError(
                    f"{defense.spec()} computes the gradient itself, so it must come first: "
                    f"write {defense.spec()}+... "
                )
        object.__setattr__(self, "defenses", tuple(flat))

    @property
    def requires_context(self) -> bool:  # type: ignore[override]
        return any(d.requires_context for d in self.defenses)

    @property
    def replaces_gradient(self) -> bool:  # type: ignore[override]
        return any(d.replaces_gradient for d in self.defenses)

    def apply(self, tensors: Tensors, generator=None, context=None) -> Tensors:  # type: ignore[override]
        for defense in self.defenses:
            tensors = defense.apply(tensors, generator, context)
        return tensors

    def adapt(self, dummy: list[Tensor], shared: list[Tensor], names: list[str]) -> list[Tensor]:
        for defense in self.defenses:
            dummy = defense.adapt(dummy, shared, names)
        return dummy

    def dummy_gradient(self, victim: Victim, inputs: Tensor, labels: Tensor) -> list[Tensor] | None:
        for defense in self.defenses:
            gradient = defense.dummy_gradient(victim, inputs, labels)
            if gradient is not None:
                return gradient
        return None

    def estimated(self, shared: Sequence[Tensor], names: Sequence[str]) -> Defense:
        return Compose([d.estimated(shared, names) for d in self.defenses])

    def parameters(self) -> dict[str, float]:
        return {f"{d.name}.{k}": v for d in self.defenses for k, v in d.parameters().items()}

    def spec(self) -> str:
        return "+".join(d.spec() for d in self.defenses) or "none"

    def describe(self) -> str:
        if not self.defenses:
            return NoDefense().describe()
        return "; then ".join(d.describe() for d in self.defenses)

    def members(self) -> list[Defense]:
        return list(self.defenses)
