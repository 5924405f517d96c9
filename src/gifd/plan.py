"""What a run is: the attack plan (shared by experiments, sweeps and Flower audits) and the whole
experiment's settings, validated before any compute."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gifd.attacks import ATTACKS
from gifd.attacks.labels import LabelRule
from gifd.client import ClientConfig
from gifd.config import Count, DeviceName, Index, Positive, Seed, VictimName, build_config
from gifd.defenses import parse_defense_sweep
from gifd.errors import GifdError
from gifd.priors import PRIORS, StagedGenerator, create_prior, prior_settings
from gifd.threat import DefenseKnowledge, ThreatModel

#: Largest image side a run takes: above it a victim's activations for one image pass 1 GB.
MAX_RESOLUTION = 1024


class AttackPlan(BaseModel):
    """Which attacks run and how: the part of a run's settings that an experiment and a Flower
    audit (gifd.flower.AuditConfig) share."""

    model_config = ConfigDict(extra="forbid")

    attacks: list[str] = Field(default_factory=lambda: ["ig"])
    #: Generative prior of the GAN-based attacks (see `gifd priors`) and its weights path.
    prior: str = "digiface-dcgan64"
    prior_weights: str | None = None
    #: The prior's settings, e.g. {"cut": "batchnorm"} for a DCGAN (see the prior's settings model).
    prior_settings: dict[str, Any] = Field(default_factory=dict)
    #: Total step budget per restart for every attack (None: each attack's own default); the
    #: staged attacks (gifd, gifd-noball, latent) split it over their stages (equal total compute).
    steps: Count | None = None
    #: Steps of every stage of the staged attacks, as the paper has them (1000 per stage). It sets
    #: their budget in place of `steps` (which still sets the other attacks').
    stage_steps: Count | None = None
    restarts: Count | None = None
    #: Named settings of the attacks that have presets (gifd, latent, gifd-noball, gias): "paper"
    #: (each restart runs its full budget) or "fast" (GIFD prunes restarts; GIAS stops early).
    #: None: each attack's own default ("paper"). `attack_settings` override it.
    preset: Literal["paper", "fast"] | None = None
    #: Per-attack settings, e.g. {"ig": {"tv": 1e-3}}; override the shared steps/restarts.
    attack_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    label_inference: LabelRule = "unique"
    seed: Seed = 0
    device: DeviceName = "auto"

    @model_validator(mode="after")
    def _check_plan(self) -> AttackPlan:
        """Every attack known and named once, the prior known, and each attack's settings valid for
        it, so a bad setting fails before any compute rather than when its attack starts."""
        if not self.attacks:
            raise GifdError("no attack given: pass --attack with one or more of " + ", ".join(ATTACKS.names()))
        twice = sorted({name for name in self.attacks if self.attacks.count(name) > 1})
        if twice:
            raise GifdError(f"attack {', '.join(twice)} is named twice in --attack: name each attack once")
        for name in [*self.attacks, *self.attack_settings]:
            ATTACKS.get(name)
        if self.prior not in PRIORS:
            raise GifdError(
                f"unknown prior {self.prior!r}: use one of {', '.join(sorted(PRIORS))} (see `gifd priors`)"
            )
        prior_settings(self.prior, self.prior_settings)
        for name in self.attacks:
            build_config(ATTACKS.get(name).Config, self.settings_for(name), f"{name} settings")
        return self

    def load_prior(self, device: torch.device) -> StagedGenerator | None:
        """The prior with its settings, loaded when an attack of the plan needs one (else None)."""
        if any(ATTACKS.get(name).needs_prior for name in self.attacks):
            return create_prior(self.prior, self.prior_weights, device, self.prior_settings)
        return None

    def settings_for(self, name: str) -> dict[str, Any]:
        """Attack `name`'s settings: the shared budget, restarts and preset (for the attacks that
        have one), then its own attack_settings.

        The budget: `stage_steps` for the staged attacks when given, else `steps`; an attack's own
        `steps` or `stage_steps` in attack_settings replaces both shared ones.
        """
        fields = ATTACKS.get(name).Config.model_fields
        own = self.attack_settings.get(name, {})
        settings: dict[str, Any] = {}
        if not {"steps", "stage_steps"} & own.keys():
            if self.stage_steps is not None and "stage_steps" in fields:
                settings["stage_steps"] = self.stage_steps
            elif self.steps is not None:
                settings["steps"] = self.steps
        if self.restarts is not None:
            settings["restarts"] = self.restarts
        if self.preset is not None and "preset" in fields:
            settings["preset"] = self.preset
        settings.update(own)
        return settings


class ExperimentConfig(AttackPlan):
    """Everything that defines a run; saved in full in results.json."""

    #: A built-in victim (gifd.victims.victim_names) or the user's own as MODULE:FACTORY.
    victim: VictimName = "convnet"
    resolution: Annotated[int, Field(ge=8, le=MAX_RESOLUTION)] = 32
    #: Class count of the victim (default: the image source's, or 10 when it has none).
    num_classes: Annotated[int, Field(ge=2)] | None = None
    victim_weights: str | None = None
    normalization: str = "imagenet"
    images: str = "builtin:cifar10"
    #: Which images of the source (default: the first batch_size of them).
    indices: list[Index] = Field(default_factory=list)
    batch_size: Count = 1
    #: Private labels (default: the source's own labels, else distinct labels drawn from the seed).
    labels: list[Index] | None = None
    #: Client-side defense, e.g. "prune:0.5" or "clip:4+noise:0.01" (None or "none": no defense).
    defense: str | None = None
    #: What the attacker knows of the defense: its parameters ("adaptive"), only its kind with the
    #: parameters estimated from the update ("estimated"), or nothing ("oblivious").
    defense_knowledge: DefenseKnowledge = "adaptive"
    #: Multi-step FedAvg: local SGD steps (None: one FedSGD gradient), learning rate, mini-batch size.
    local_steps: Count | None = None
    local_lr: Positive = 1e-4
    local_batch_size: Count | None = None
    #: A saved update to attack (gifd format, e.g. a Flower audit's update.pt) instead of one
    #: computed from `images`. Its metadata gives the victim, resolution, classes and normalisation
    #: unless set here; `images`, if set, are its private images (to score the reconstructions).
    update: str | None = None
    #: Threat model: does the client disclose its labels with the update?
    disclose_labels: bool = False
    #: torch CPU threads during the run (None: leave torch's setting). Float sums split over
    #: threads round differently, so runs compare exactly only at the same count; sweeps fix it.
    threads: Count | None = None

    def client_config(self) -> ClientConfig:
        """The client's side of the run: its defense, local training, disclosure and seed."""
        return ClientConfig(
            defense=self.defense,
            local_steps=self.local_steps,
            local_lr=self.local_lr,
            local_batch_size=self.local_batch_size,
            disclose_labels=self.disclose_labels,
            seed=self.seed,
        )

    def threat_model(self, disclosed_labels: bool | None = None) -> ThreatModel:
        """What the run's attacker knows (`disclosed_labels`: the update's own, when it is given)."""
        return ThreatModel(
            disclosed_labels=self.disclose_labels if disclosed_labels is None else disclosed_labels,
            label_rule=self.label_inference,
            defense_knowledge=self.defense_knowledge,
            prior=self.prior,
        )

    @model_validator(mode="after")
    def _check_batches(self) -> ExperimentConfig:
        """Default indices (the first batch's worth of images), whole batches, a valid defense."""
        if not self.indices:  # set as a resolved value, not as one the user gave (model_fields_set)
            object.__setattr__(self, "indices", list(range(self.batch_size)))
        if len(set(self.indices)) < len(self.indices):
            raise GifdError(f"indices {self.indices} name an image twice: give each index once")
        if len(self.indices) % self.batch_size:
            raise GifdError(
                f"{len(self.indices)} images do not split into batches of {self.batch_size}: "
                "pass a number of --indices that is a multiple of --batch-size"
            )
        if self.defense is not None:
            parse_defense_sweep(self.defense)  # one setting, or several for a sweep over them
        return self


def experiment_config(values: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a dict of settings into an ExperimentConfig (one-line errors)."""
    return build_config(ExperimentConfig, values, source)


def check_attacks_fit(config: AttackPlan, prior: StagedGenerator | None) -> None:
    """Each attack's settings against the loaded prior (e.g. GIFD's radii and stages against the
    prior's stages), before any compute: a mismatch fails here, not after the other attacks ran."""
    for name in config.attacks:
        cls = ATTACKS.get(name)
        cls(config.settings_for(name), progress=False, **({"prior": prior} if cls.needs_prior else {})).check()
