"""The setting of `gifd reproduce`: prior, victim, resolution, data and every table's budget.

`ReproduceConfig()` is the built-in setting (the face DCGAN prior, an untrained ConvNet at 64 px,
real faces and out-of-distribution photos), sized for two CPU cores; configs/reproduce-*.yaml
hold the paper's budgets for a GPU and the user's prior weights. Every value is checked here,
before any compute: unknown attacks, priors, defenses, label rules and batch sizes that do not
fit a data set are one-line GifdErrors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gifd.attacks.labels import LabelRule
from gifd.config import Count, DeviceName, Index, Positive, Seed, VictimName, build_config, read_yaml
from gifd.defenses import default_strengths
from gifd.errors import GifdError

#: The tables of the report, in its order.
TABLES = ("methods", "ablation", "batch", "defenses", "labels")
Table = Literal["methods", "ablation", "batch", "defenses", "labels"]
#: The methods compared in the methods table (the paper's Table 1 columns, plus IG and GI).
METHODS = ("gifd", "gias", "ggl", "latent", "ig", "gi")
#: The attacks whose budget `stage_steps` sets (per stage) in place of `steps`.
STAGED = ("gifd", "gifd-noball", "latent")


class DataSet(BaseModel):
    """Images of one data set: a source (`builtin:NAME`, a folder, files) and which of them."""

    model_config = ConfigDict(extra="forbid")

    images: str
    indices: Annotated[list[Index], Field(min_length=1)]
    #: Words for the report, e.g. "real faces (LFW)".
    label: str = ""

    @model_validator(mode="after")
    def _distinct(self) -> DataSet:
        if len(set(self.indices)) < len(self.indices):
            raise GifdError(
                f"data set {self.images}: indices {self.indices} name an image twice: give each once"
            )
        return self

    def describe(self) -> str:
        return f"{self.label} ({self.images}, images {self.indices})" if self.label else self.images


def _default_steps() -> dict[str, int]:
    return {"gifd": 300, "gias": 300, "ggl": 150, "latent": 300, "ig": 300, "gi": 300}


class ReproduceConfig(BaseModel):
    """One setting of the paper's experiments and the budgets of its tables."""

    model_config = ConfigDict(extra="forbid")

    #: Words naming the setting in the report.
    name: str = "built-in: face DCGAN prior, untrained ConvNet at 64 px, 2 CPU cores"
    #: True when the budgets are far below the paper's (the report then says so at every table).
    short_budget: bool = True
    victim: VictimName = "convnet"
    victim_weights: str | None = None
    resolution: Annotated[int, Field(ge=8, le=1024)] = 64
    num_classes: Annotated[int, Field(ge=2)] = 10
    prior: str = "digiface-dcgan64"
    prior_weights: str | None = None
    #: Data close to the prior's domain and far from it (out of distribution).
    near: DataSet = DataSet(images="builtin:lfw_faces", indices=[0, 1], label="real faces (LFW)")
    far: DataSet = DataSet(images="builtin:photos", indices=[2, 3], label="photos, no faces (OOD)")
    #: Which tables run (all by default).
    tables: list[Table] = Field(default_factory=lambda: list(TABLES))

    # -- shared attack budget
    #: Steps per restart of each method (the staged ones split them over their stages). An
    #: attack missing here gets its own default budget.
    steps: dict[str, Count] = Field(default_factory=_default_steps)
    #: Steps of every stage of gifd, gifd-noball and latent (the paper: 1000); replaces their `steps`.
    stage_steps: Count | None = None
    restarts: Count = 2
    #: Per-attack settings passed through to every run, e.g. {"gifd": {"radii": [...]}}, {"ggl": {"population": 8}}.
    attack_settings: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"ggl": {"population": 8}})
    label_inference: LabelRule = "unique"
    seed: Seed = 0
    device: DeviceName = "auto"
    #: torch CPU threads of every run (None: torch's own choice).
    threads: Count | None = None

    # -- methods and ablation
    methods: list[str] = Field(default_factory=lambda: list(METHODS))
    #: Data sets of the ablation (the paper's claim is about the far one).
    ablation_data: list[Literal["near", "far"]] = Field(default_factory=lambda: ["far"])
    #: Feature stages searched alone in the ablation (None: every stage after the latent).
    ablation_stages: list[Count] | None = None

    # -- batch sizes
    batch_sizes: list[Count] = Field(default_factory=lambda: [1, 2, 4, 8])
    batch_attacks: list[str] = Field(default_factory=lambda: ["gifd", "latent", "ig"])
    #: Images of the batch table: a batch of size B is the first B of them.
    batch_data: DataSet = DataSet(
        images="builtin:photos", indices=[1, 2, 3, 4, 5, 6, 7, 8], label="photos, no faces (OOD)"
    )
    #: Steps per restart of every attack of the batch table (None: `steps`).
    batch_steps: Count | None = 200

    # -- defenses
    #: Each defense at two strengths (weaker first), as `--defense` specs.
    defenses: list[str] = Field(default_factory=default_strengths)
    defense_attacks: list[str] = Field(default_factory=lambda: ["gifd"])
    defense_knowledge: list[Literal["adaptive", "oblivious", "estimated"]] = Field(
        default_factory=lambda: ["adaptive", "oblivious"]
    )
    #: Data of the defense table (None: the far data set).
    defense_data: DataSet | None = None
    #: Steps per restart of every attack of the defense table (None: `steps`).
    defense_steps: Count | None = 200

    # -- label inference (no attack runs)
    label_rules: list[LabelRule] = Field(default_factory=lambda: ["unique", "count", "paper"])
    label_batch_sizes: list[Count] = Field(default_factory=lambda: [1, 2, 4, 8])
    #: Batches per (rule, batch size, labels, protocol) cell.
    label_trials: Count = 10
    label_images: str = "builtin:lfw_faces"
    #: FedAvg's local training in the label table: SGD steps (> 1) and learning rate.
    label_local_steps: Annotated[int, Field(ge=2)] = 4
    label_local_lr: Positive = 1e-3

    @model_validator(mode="after")
    def _check(self) -> ReproduceConfig:
        """Names, defenses and sizes valid before anything runs (imports the registries)."""
        from gifd.attacks import ATTACKS
        from gifd.defenses import parse_defense
        from gifd.priors import PRIORS

        if self.prior not in PRIORS:
            raise GifdError(
                f"unknown prior {self.prior!r}: use one of {', '.join(sorted(PRIORS))} (see `gifd priors`)"
            )
        for field in ("methods", "batch_attacks", "defense_attacks"):
            names = getattr(self, field)
            for name in names:
                ATTACKS.get(name)
            if len(set(names)) < len(names):
                raise GifdError(f"{field} {names} names an attack twice: name each once")
        for name in [*self.steps, *self.attack_settings]:
            ATTACKS.get(name)
        for spec in self.defenses:
            if parse_defense(spec).spec() == "none":
                raise GifdError(f"defenses holds {spec!r}: the table adds the undefended run itself, drop it")
        if len(set(self.tables)) < len(self.tables):
            raise GifdError(f"tables {self.tables} names a table twice: name each once")
        largest = max(self.batch_sizes, default=0)
        if largest > len(self.batch_data.indices):
            raise GifdError(
                f"batch size {largest} needs {largest} images but batch_data has {len(self.batch_data.indices)}: "
                "give batch_data more indices or drop the batch size"
            )
        if self.label_inference != "count" and largest > self.num_classes:
            raise GifdError(
                f"batch size {largest} exceeds the {self.num_classes} classes, so label inference "
                f"{self.label_inference!r} cannot give distinct labels: use label_inference count"
            )
        return self

    def steps_for(self, attack: str) -> int | None:
        """Steps per restart of `attack` in the methods and ablation tables: its own entry of
        `steps`, GIFD's for GIFD without the ball, else None (the attack's default)."""
        if attack == "gifd-noball" and attack not in self.steps:
            return self.steps.get("gifd")
        return self.steps.get(attack)

    def describe_budget(self, steps: int | None, attacks: list[str]) -> str:
        """Words for a table's budget: steps per restart (or per stage), restarts."""
        parts = []
        for name in attacks:
            if self.stage_steps is not None and name in STAGED:
                parts.append(f"{name} {self.stage_steps} steps per stage")
            else:
                count = steps if steps is not None else self.steps_for(name)
                parts.append(f"{name} {count if count is not None else 'its default'} steps")
        return f"{', '.join(parts)}; {self.restarts} restarts"


def reproduce_config(values: dict[str, Any], source: str = "config") -> ReproduceConfig:
    """Validate a dict of settings into a ReproduceConfig (one-line errors)."""
    return build_config(ReproduceConfig, values, source)


def load_reproduce_config(path: str | Path | None) -> ReproduceConfig:
    """The setting in the YAML file at `path`, or the built-in one (None)."""
    if path is None:
        return ReproduceConfig()
    return reproduce_config(read_yaml(path), str(path))
