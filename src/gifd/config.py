"""Typed, validated configs: unknown keys are errors that suggest the closest valid key.

Configs come from YAML files and command-line flags (flags override file keys) and are saved in
full with every run, so a run can be repeated from its results.json alone.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, Field, ValidationError

from gifd.errors import GifdError

ModelT = TypeVar("ModelT", bound=BaseModel)

# The number types of every config (one definition, so every attack and command checks alike).
#: A count of steps, restarts, images, ...: at least 1.
Count = Annotated[int, Field(ge=1)]
#: An index, a start step: at least 0.
Index = Annotated[int, Field(ge=0)]
#: A learning rate, a bound: finite and > 0.
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: A regulariser weight: finite and >= 0.
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
#: A fraction of a schedule: in [0, 1].
Fraction = Annotated[float, Field(ge=0, le=1)]
#: A seed torch.manual_seed takes: 0 <= seed < 2**63.
Seed = Annotated[int, Field(ge=0, lt=2**63)]
#: A device name: auto (CUDA if available), cpu, cuda or cuda:N.
DeviceName = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")]


def _known_victim(name: str) -> str:
    from gifd.victims import victim_factory  # imports torch: only once a config is validated

    victim_factory(name)  # an unknown name, or a MODULE:FACTORY that cannot be imported, fails here
    return name


#: A victim: a built-in architecture or the user's own MODULE:FACTORY, checked (imported, not built).
VictimName = Annotated[str, AfterValidator(_known_victim)]


def build_config(model: type[ModelT], values: dict[str, Any], source: str = "config") -> ModelT:
    """Validate `values` into `model`, turning pydantic's errors into one-line GifdErrors."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise GifdError(describe_validation_error(exc, model, source)) from None


def describe_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """The first problem of a ValidationError, in words, with the fix.

    A GifdError raised by a validator is its own message; on the command line a top-level key is
    named as its flag (`--steps -1`), elsewhere as the key path (`attack_settings.ig.lr`).
    """
    error = exc.errors()[0]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, GifdError):
        return f"{source}: {cause}"
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][-1])
        valid = _valid_keys(model, error["loc"][:-1])
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
        return f"{source}: unknown key {location!r}: {hint}"
    given = error.get("input")
    message = _BOUND_FIXES.get(error["type"], str(error["msg"])).format(**error.get("ctx", {}))
    if error["type"] == "string_pattern_mismatch" and error["loc"][-1] == "device":
        message = "use auto, cpu, cuda or cuda:N"
    loc = error["loc"]
    if source == "command line" and all(isinstance(part, int) for part in loc[1:]) and not isinstance(given, dict):
        return f"--{str(loc[0]).replace('_', '-')} {given} is invalid: {message}"
    return f"{source}: {location} = {given!r} is invalid: {message}"


#: pydantic's error types of the number bounds, as the fix in words.
_BOUND_FIXES = {
    "greater_than_equal": "pass a number >= {ge}",
    "greater_than": "pass a number > {gt}",
    "less_than_equal": "pass a number <= {le}",
    "less_than": "pass a number < {lt}",
    "finite_number": "pass a finite number",
}


def _valid_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at `path` (best effort: top-level names if unknown)."""
    current: type[BaseModel] = model
    for part in path:
        field = current.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            current = annotation
        else:
            break
    return list(current.model_fields)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file (an empty file is an empty mapping)."""
    import yaml  # here, not at import: the command line's start-up stays fast

    path = Path(path)
    if path.is_dir():
        raise GifdError(f"config file {path} is a directory: pass the path of a YAML file")
    if not path.is_file():
        raise GifdError(f"config file {path} not found: pass the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise GifdError(f"config file {path} is not text: pass a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise GifdError(f"config file {path} is not valid YAML{where}: {problem}: fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GifdError(
            f"config file {path} must hold a mapping of keys to values, not a {type(data).__name__}"
        )
    return data
