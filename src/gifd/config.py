"""Typed, validated configs: unknown keys are errors that suggest the closest valid key.

Configs come from YAML files and command-line flags (flags override file keys) and are saved in
full with every run, so a run can be repeated from its results.json alone.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gifd.errors import GifdError

ModelT = TypeVar("ModelT", bound=BaseModel)


def build_config(model: type[ModelT], values: dict[str, Any], source: str = "config") -> ModelT:
    """Validate `values` into `model`, turning pydantic's errors into one-line GifdErrors."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise GifdError(describe_validation_error(exc, model, source)) from None


def describe_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """The first problem of a ValidationError, in words, with the fix."""
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][-1])
        valid = _valid_keys(model, error["loc"][:-1])
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
        return f"{source}: unknown key {location!r}: {hint}"
    given = error.get("input")
    return f"{source}: {location} = {given!r} is invalid: {error['msg']}"


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
    path = Path(path)
    if not path.is_file():
        raise GifdError(f"config file {path} not found: pass the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GifdError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GifdError(
            f"config file {path} must hold a mapping of keys to values, not a {type(data).__name__}"
        )
    return data
