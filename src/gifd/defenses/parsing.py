"""Defense specs: the CLI form (`clip:4+noise:0.01`) of any registered defense, parsed and listed."""

from __future__ import annotations

from gifd.defenses.base import DEFENSES, Compose, Defense, NoDefense
from gifd.errors import GifdError


def defense_forms() -> str:
    """The CLI forms of the registered defenses, for error messages and help texts."""
    forms = ", ".join(DEFENSES.get(name).form() for name in DEFENSES.in_order())
    return f"{forms}, joined with + to chain them (e.g. clip:4+noise:0.01)"


def defense_names() -> list[str]:
    """The defense names the CLI spec knows, in registration order ("none" first)."""
    return DEFENSES.in_order()


def _parse_term(term: str, whole: str) -> Defense:
    name, _, arg_text = term.partition(":")
    name = name.strip().lower()
    if name not in DEFENSES:
        raise GifdError(f"unknown defense {name!r} in {whole!r}: valid forms are {defense_forms()}")
    cls = DEFENSES.get(name)
    count = len(cls.arguments)
    pieces = [p.strip() for p in arg_text.split(",")] if arg_text.strip() else []
    if len(pieces) != count:
        raise GifdError(
            f"defense {name!r} in {whole!r} takes {count} number(s), got {len(pieces)}: valid forms are {defense_forms()}"
        )
    try:
        numbers = [float(p) for p in pieces]
    except ValueError:
        raise GifdError(
            f"defense {term!r} in {whole!r} has a non-number: valid forms are {defense_forms()}"
        ) from None
    return cls.from_numbers(numbers)


def parse_defense(spec: str | Defense | None) -> Defense:
    """The defense of a CLI spec: `noise:0.01`, `clip:4`, `prune:0.2`, `soteria:0.1`,
    `dpsgd:1.0,1.1`, `none` (any registered defense, `defense_forms()`), or several joined with
    `+` (applied left to right).

    A Defense is returned as it is; None or "" mean no defense. Bad specs raise a GifdError that
    lists the valid forms.
    """
    if isinstance(spec, Defense):
        return spec
    if spec is None or not str(spec).strip():
        return NoDefense()
    if not isinstance(spec, str):
        raise GifdError(f"a defense is given as text like 'clip:4+noise:0.01', got {type(spec).__name__}")
    terms = [t.strip() for t in spec.split("+")]
    if any(not t for t in terms):
        raise GifdError(f"defense {spec!r} has an empty part around '+': valid forms are {defense_forms()}")
    parsed = [_parse_term(t, spec) for t in terms]
    members = [d for d in parsed if not isinstance(d, NoDefense)]
    if not members:
        return NoDefense()
    if len(members) == 1:
        return members[0]
    return Compose(members)


def parse_defense_sweep(spec: str) -> list[Defense]:
    """The settings of a sweep spec: a single-number defense with several values, e.g.
    `prune:0.1,0.3,0.5` -> three pruning defenses; anything else is one setting (`parse_defense`).
    """
    name, _, arg_text = spec.strip().partition(":")
    name = name.strip().lower()
    if "+" not in spec and name in DEFENSES and len(DEFENSES.get(name).arguments) == 1 and "," in arg_text:
        return [parse_defense(f"{name}:{value}") for value in arg_text.split(",")]
    return [parse_defense(spec)]
