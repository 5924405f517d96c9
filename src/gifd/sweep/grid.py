"""A sweep's grid: the sweep file, its axes, and the jobs they expand into (ids, names, configs)."""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gifd.config import build_config, read_yaml
from gifd.errors import GifdError
from gifd.experiment import ExperimentConfig

#: torch threads of every job unless the sweep sets `threads` (in base or as an axis).
DEFAULT_JOB_THREADS = 1
#: Grid key that expands to one job per image: `images_each: [0, 1]` == `indices: [[0], [1]]`.
IMAGES_EACH = "images_each"
#: Short prefixes of axis values in job names (no prefix: the value names itself).
_NAME_PREFIX = {
    "indices": "img",
    "batch_size": "b",
    "seed": "seed",
    "attacks": "",
    "defense": "",
    "victim": "",
    "prior": "",
}
#: Longest readable part of a job id (before the hash).
_MAX_NAME = 60


class SweepFile(BaseModel):
    """The keys of a sweep file: the shared settings and the axes to vary."""

    model_config = ConfigDict(extra="forbid")

    #: ExperimentConfig keys shared by every job, or the path of a config YAML holding them.
    base: dict[str, Any] | str = Field(default_factory=dict)
    #: Axis name (an ExperimentConfig key, or images_each) -> list of values.
    grid: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """One experiment of a sweep: its id (also its directory name), axis values and config."""

    id: str
    axes: dict[str, Any]
    config: ExperimentConfig


@dataclass
class Sweep:
    """A validated sweep: the shared settings, the axes (in file order) and the jobs (their product)."""

    source: str
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    jobs: list[Job] = field(default_factory=list)


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; every problem is a one-line GifdError naming the fix."""
    path = Path(path)
    return sweep_from_dict(read_yaml(path), source=str(path), root=path.parent)


def sweep_from_dict(values: dict[str, Any], source: str = "sweep", root: str | Path | None = None) -> Sweep:
    """Validate a sweep given as a mapping (`base`, `grid`) and expand it into jobs.

    `root` is where a `base` given as a file path is looked up (default: the working directory).
    """
    spec = build_config(SweepFile, values, source)
    if isinstance(spec.base, str):
        base_path = Path(spec.base)
        if not base_path.is_absolute() and root is not None:
            base_path = Path(root) / base_path
        base = read_yaml(base_path)
        base_source = str(base_path)
    else:
        base = dict(spec.base)
        base_source = f"{source} base"
    # Every job runs on a fixed number of torch threads, so its numbers do not depend on --workers
    # (float sums split over threads round differently).
    base.setdefault("threads", DEFAULT_JOB_THREADS)
    build_config(ExperimentConfig, base, base_source)  # base errors name the base, not a job
    axes = _grid_axes(spec.grid, source)
    sweep = Sweep(source=source, base=base, axes=axes)
    seen: dict[str, Job] = {}
    for combination in itertools.product(*axes.values()):
        chosen = dict(zip(axes, combination, strict=True))
        name = _job_name(chosen)
        config = build_config(ExperimentConfig, {**base, **chosen}, f"{source} job {name}")
        job = Job(id=f"{name}-{config_hash(config)}", axes=chosen, config=config)
        if job.id in seen:
            raise GifdError(
                f"{source}: jobs {seen[job.id].axes} and {chosen} have the same settings: drop one"
            )
        seen[job.id] = job
        sweep.jobs.append(job)
    return sweep


def _grid_axes(grid: dict[str, Any], source: str) -> dict[str, list[Any]]:
    """The grid's axes with their values normalised (single values of list keys wrapped)."""
    fields = ExperimentConfig.model_fields
    valid = [*fields, IMAGES_EACH]
    axes: dict[str, list[Any]] = {}
    if IMAGES_EACH in grid and "indices" in grid:
        raise GifdError(f"{source}: grid has both {IMAGES_EACH!r} and 'indices': keep one")
    for key, values in grid.items():
        key = str(key)
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
            raise GifdError(f"{source}: unknown grid key {key!r}: {hint}")
        if not isinstance(values, list):
            raise GifdError(
                f"{source}: grid axis {key!r} must be a list of values, not {values!r}: write {key}: [{values}]"
            )
        if not values:
            raise GifdError(f"{source}: grid axis {key!r} is empty: give it at least one value or remove it")
        if key == IMAGES_EACH:
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise GifdError(
                    f"{source}: grid.{IMAGES_EACH} must list image indices (integers), got {values!r}"
                )
            key, values = "indices", [[v] for v in values]
        elif _accepts_list(fields[key].annotation):
            values = [v if isinstance(v, list) or v is None else [v] for v in values]
        texts = [json.dumps(v, sort_keys=True, default=str) for v in values]
        for i, text in enumerate(texts):
            if text in texts[:i]:
                raise GifdError(
                    f"{source}: grid axis {key!r} repeats the value {values[i]!r}: give each value once"
                )
        axes[key] = values
    return axes


def _accepts_list(annotation: Any) -> bool:
    """Whether a field's type is a list (possibly optional)."""
    origin = typing.get_origin(annotation)
    if annotation is list or origin is list:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_list(arg) for arg in typing.get_args(annotation))
    return False


def _job_name(chosen: dict[str, Any]) -> str:
    """A readable name from a job's axis values, safe as a directory name."""
    parts = []
    for key, value in chosen.items():
        prefix = _NAME_PREFIX.get(key, f"{key}-")
        parts.append(prefix + _value_text(value))
    name = re.sub(r"[^A-Za-z0-9._+=-]+", "-", "_".join(parts) or "job").strip("-._") or "job"
    name = re.sub(r"-+", "-", name)
    return name[:_MAX_NAME].rstrip("-_.")


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "-".join(_value_text(v) for v in value) or "empty"
    if isinstance(value, dict):
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:6]
    if value is None:
        return "none"
    return str(value)


def config_hash(config: ExperimentConfig) -> str:
    """Eight hex digits identifying a config by the keys it sets away from their defaults.

    Defaults are left out so that a key added to ExperimentConfig later keeps existing ids.
    """
    explicit = config.model_dump(mode="json", exclude_defaults=True)
    return hashlib.sha256(json.dumps(explicit, sort_keys=True).encode()).hexdigest()[:8]
