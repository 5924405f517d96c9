"""One attack experiment, end to end: client -> update -> attacks -> evaluation -> results.

The three parties stay apart: the client computes the update from the private batch; each attack
gets only a `Target` (victim, update, inferred labels); only the evaluation sees the private images.
Their randomness is apart too: every draw comes from a stream derived from the run's seed for one
party, batch and purpose (`gifd.device.derived_generator`): the client's ("client", batch, "labels"
| "defense") and the attacker's ("attacker", batch, "label-inference" | "attack", name). The
attacker is never handed a client stream, a defense's noise does not move any attack's random
start, and an attack draws the same start whichever other attacks run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

import gifd
from gifd.attacks import ATTACKS, AttackResult, Target, infer_labels
from gifd.attacks.labels import LabelRule, check_label_inference
from gifd.calibration import resolve_auto_radii
from gifd.client import Update, compute_update, load_update, save_update, validate_update, weights_fingerprint
from gifd.config import Count, DeviceName, Index, Positive, Seed, VictimName, build_config
from gifd.data import ImageSet, load_images
from gifd.defenses import (
    ClientContext,
    Defense,
    aimed_at,
    apply_defense,
    parse_defense,
    parse_defense_sweep,
    utility_cost,
)
from gifd.device import derived_generator, resolve_device, seed_everything, torch_threads
from gifd.errors import GifdError
from gifd.fedavg import LocalTraining, compute_fedavg_update
from gifd.imageio import save_grid, save_image
from gifd.metrics import evaluate, label_accuracy
from gifd.priors import PRIORS, StagedGenerator, create_prior, prior_settings
from gifd.results import RESULTS_VERSION, validate_results
from gifd.rundir import check_replaceable, files_below, stage_image_name, write_marker
from gifd.victims import Victim, create_victim, normalization_name

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
    #: (each restart runs its full budget) or "fast" (early stop; GIFD also prunes restarts).
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
    defense_knowledge: Literal["adaptive", "estimated", "oblivious"] = "adaptive"
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


def run_experiment(
    config: ExperimentConfig,
    out: str | Path | None = None,
    *,
    progress: bool = True,
    save_update: bool = False,
) -> dict[str, Any]:
    """Run `config`; return the results dict, and with `out` write results.json and PNGs there.

    `save_update` also writes the update the client sent as OUT/update.pt (gifd format, for
    `gifd attack --update`); it takes a run of one batch and an `out`.

    The output directory appears complete or not at all: everything is written to a temporary
    directory beside it and renamed into place at the end. The run uses `config.threads` torch
    threads when set (the count is restored afterwards).
    """
    if save_update and (out is None or config.update is not None or len(config.indices) != config.batch_size):
        raise GifdError(
            "--save-update saves the one update a run computes: give --out and one batch (as many --indices "
            "as --batch-size), and no --update"
        )
    with torch_threads(config.threads):
        return _run_experiment(config, out, progress, save_update)


def _run_experiment(
    config: ExperimentConfig, out: str | Path | None, progress: bool, save_update: bool
) -> dict[str, Any]:
    seed_everything(config.seed)
    if config.update is not None:
        return _attack_saved_update(config, out, progress)
    device = resolve_device(config.device)
    defense = parse_defense(config.defense)
    if out is not None:
        check_replaceable(Path(out), "run")
    private = load_images(config.images, config.resolution, config.indices)
    num_classes = config.num_classes or private.num_classes or 10
    labels = _private_labels(config, private, num_classes)
    victim = create_victim(
        config.victim,
        resolution=config.resolution,
        num_classes=num_classes,
        seed=config.seed,
        normalization=config.normalization,
        weights=config.victim_weights,
        device=device,
    )
    defense = aimed_at(defense, victim)
    if not config.disclose_labels:
        check_label_inference(victim)
    if config.label_inference != "count" and config.batch_size > num_classes and not config.disclose_labels:
        raise GifdError(
            f"batch size {config.batch_size} exceeds the victim's {num_classes} classes, so its labels cannot "
            f"all differ as label inference {config.label_inference!r} assumes: pass --label-inference count"
        )
    prior = None
    if any(ATTACKS.get(name).needs_prior for name in config.attacks):
        prior = create_prior(config.prior, config.prior_weights, device, config.prior_settings)
    check_attacks_fit(config, prior)
    config = resolve_auto_radii(config, victim, prior, progress=progress)
    batches, reconstructions = [], {name: [] for name in config.attacks}
    #: attack -> stage -> best images after that stage, one tensor per batch (staged attacks only).
    stage_images: dict[str, dict[int, list[torch.Tensor]]] = {}
    for index, start in enumerate(range(0, len(private), config.batch_size)):
        images = private.images[start : start + config.batch_size]
        batch_labels = labels[start : start + config.batch_size]
        update, utility = client_update(
            config,
            victim,
            defense,
            images.to(device),
            batch_labels,
            derived_generator(config.seed, "client", index, "defense"),
        )
        batches.append(
            _attack_batch(
                config,
                victim,
                prior,
                attacker_defense(config, defense, update, victim),
                update,
                (images, batch_labels),
                index,
                progress,
                reconstructions,
                stage_images,
            )
        )
        batches[-1]["utility_cost"] = utility
        shared = update
    results = _results(
        config.model_copy(update={"num_classes": num_classes}), device, private, batches, defense
    )
    results["true_labels"] = labels.tolist()
    results["label_accuracy"] = float(np.mean([b["label_accuracy"] for b in batches]))
    validate_results(results, "the run's results")  # the writer keeps to the format its readers read
    if out is not None:
        joined = _joined(reconstructions, stage_images, len(batches))
        write_run(Path(out), results, private.images, *joined, update=shared if save_update else None)
    return results


def attack_received_update(
    config: ExperimentConfig,
    victim: Victim,
    update: Update,
    out: str | Path | None = None,
    *,
    truth: ImageSet | None = None,
    prior: StagedGenerator | None = None,
    progress: bool = True,
    batch_index: int = 0,
) -> dict[str, Any]:
    """Attack an update a server received (e.g. in a Flower round) with the attacks of `config`.

    Unlike `run_experiment`, the client's side already happened: `victim` holds the weights the
    client started from and `update` is what it sent (checked against the victim). `truth` (the
    private images with their labels, known only in a simulation) adds the metrics; without it the
    run holds the reconstructions, inferred labels and gradient losses. `prior` reuses a loaded
    prior across calls. Returns the results dict in run_experiment's format and, with `out`, writes
    the run there (all or nothing, the update included as update.pt), so `gifd report` works on it.

    The batch size, disclosed labels and local training recorded are the update's own. Randomness
    comes from the attacker's streams of batch `batch_index` derived from `config.seed` (the
    streams `run_experiment` gives that batch, so an update it saved is attacked again with the
    same random starts); the global seeds are left alone (a server calling this from a thread
    keeps its own random sampling).
    """
    validate_update(update, victim)
    if update.labels is None:
        check_label_inference(victim)
    if truth is not None and truth.labels is None:
        raise GifdError("the ground truth has no labels: give the client's images with their labels")
    if truth is not None and len(truth) != update.batch_size:
        raise GifdError(
            f"the ground truth holds {len(truth)} images but the update is of a batch of {update.batch_size}: "
            "give exactly the client's images"
        )
    if out is not None:
        check_replaceable(Path(out), "run")
    config = config.model_copy(update=_update_facts(update, config))
    if prior is None and any(ATTACKS.get(name).needs_prior for name in config.attacks):
        prior = create_prior(config.prior, config.prior_weights, victim.device, config.prior_settings)
    check_attacks_fit(config, prior)
    config = resolve_auto_radii(config, victim, prior, progress=progress)
    reconstructions: dict[str, list[torch.Tensor]] = {name: [] for name in config.attacks}
    stage_images: dict[str, dict[int, list[torch.Tensor]]] = {}
    batch = _attack_batch(
        config,
        victim,
        prior,
        None,
        update,
        None if truth is None else (truth.images, truth.labels),
        batch_index,
        progress,
        reconstructions,
        stage_images,
    )
    results = _results(config, victim.device, truth, [batch], parse_defense(None))
    if truth is not None:
        results["true_labels"] = batch["true_labels"]
        results["label_accuracy"] = batch["label_accuracy"]
    validate_results(results, "the run's results")
    if out is not None:
        originals = None if truth is None else truth.images
        write_run(Path(out), results, originals, *_joined(reconstructions, stage_images, 1), update=update)
    return results


def _update_facts(update: Update, config: ExperimentConfig) -> dict[str, Any]:
    """The config values an update fixes: batch size, disclosed labels, the local training."""
    facts: dict[str, Any] = {"batch_size": update.batch_size, "disclose_labels": update.labels is not None}
    if len(config.indices) != update.batch_size:
        facts["indices"] = list(range(update.batch_size))
    if update.kind == "delta":
        training = LocalTraining.from_update(update)
        facts.update(
            local_steps=training.num_steps(update.batch_size),
            local_lr=training.local_lr,
            local_batch_size=training.batch_size_for(update.batch_size),
        )
    else:
        facts.update(local_steps=None)
    return facts


#: File name, inside a run directory, of the attacked update when it was given (gifd format).
UPDATE_FILE = "update.pt"

#: Settings of the client's side: they shape an update gifd computes, not one it is given.
CLIENT_SETTINGS = ("defense", "local_steps", "local_lr", "local_batch_size", "disclose_labels")


def _attack_saved_update(config: ExperimentConfig, out: str | Path | None, progress: bool) -> dict[str, Any]:
    """`run_experiment` for `config.update`: the victim from the update's metadata and the config,
    the private images (scored only when `images` is set), then `attack_received_update`."""
    given = config.model_fields_set
    client_side = [key for key in CLIENT_SETTINGS if key in given]
    if client_side:
        raise GifdError(
            f"{', '.join(client_side)} shape(s) an update gifd computes; the saved update {config.update} is "
            "attacked as it was sent: drop them"
        )
    scoring_only = [key for key in ("indices", "labels") if key in given]
    if scoring_only and "images" not in given:
        raise GifdError(
            f"{', '.join(scoring_only)} describe(s) the update's private images: pass --images too, or drop them"
        )
    update = load_update(config.update, batch_size=config.batch_size if "batch_size" in given else None)
    meta = update.metadata

    def setting(key: str) -> Any:
        return getattr(config, key) if key in given or key not in meta else meta[key]

    name, resolution = str(setting("victim")), int(setting("resolution"))
    num_classes = int(setting("num_classes") or 10)
    normalization: Any = config.normalization
    if "mean" in meta and "std" in meta:
        sent = (tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"]))
        if "normalization" in given and normalization_name(*sent) != config.normalization:
            raise GifdError(
                f"the update says its client normalised with mean {list(sent[0])} std {list(sent[1])}, "
                f"not {config.normalization!r}: drop --normalization (the update's constants are used)"
            )
        normalization = sent
    victim = create_victim(
        name,
        resolution=resolution,
        num_classes=num_classes,
        seed=config.seed,
        normalization=normalization,
        weights=config.victim_weights,
        device=resolve_device(config.device),
    )
    if meta.get("weights_sha256") not in (None, weights_fingerprint(victim)):
        raise GifdError(
            f"the update {config.update} was computed on other weights than this victim's: pass the model "
            "it started from as --victim-weights (a Flower audit saves it as round_RRR/global_model.pt)"
        )
    truth = None
    if "images" in given:
        private = load_images(config.images, resolution, config.indices)
        if config.labels is None and private.labels is None:
            raise GifdError(f"{config.images} has no labels: pass --labels of the update's private images")
        labels = _private_labels(config, private, num_classes)
        truth = ImageSet(private.images, labels, private.names, num_classes, private.source)
    record = {
        "victim": name,
        "resolution": resolution,
        "num_classes": num_classes,
        "normalization": normalization_name(victim.mean, victim.std),
        "images": config.images if truth is not None else f"update {config.update}",
    }
    return attack_received_update(
        config.model_copy(update=record),
        victim,
        update.to(victim.device),
        out,
        truth=truth,
        progress=progress,
    )


def _results(
    config: ExperimentConfig,
    device: torch.device,
    private: ImageSet | None,
    batches: list[dict[str, Any]],
    defense: Defense,
) -> dict[str, Any]:
    """The results dict of a run: config, provenance, per-batch and per-attack results."""
    return {
        "version": RESULTS_VERSION,
        "config": config.model_dump(mode="json"),
        "seed": config.seed,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "device": str(device),
        "images": None if private is None else {"source": private.source, "names": private.names},
        "inferred_labels": [label for b in batches for label in b["inferred_labels"]],
        "batches": batches,
        "attacks": {name: _aggregate(name, batches) for name in config.attacks},
        "defense": {
            "spec": defense.spec(),
            "description": defense.describe(),
            "knowledge": config.defense_knowledge,
            "utility_cost": _mean_utility([b.get("utility_cost") for b in batches]),
        },
    }


def _joined(
    reconstructions: dict[str, list[torch.Tensor]],
    stage_images: dict[str, dict[int, list[torch.Tensor]]],
    num_batches: int,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[int, torch.Tensor]]]:
    """Per-batch image tensors joined into one per attack (and per stage reached by every batch)."""
    return (
        {name: torch.cat(parts) for name, parts in reconstructions.items()},
        {
            name: {stage: torch.cat(parts) for stage, parts in by_stage.items() if len(parts) == num_batches}
            for name, by_stage in stage_images.items()
        },
    )


def check_attacks_fit(config: AttackPlan, prior: StagedGenerator | None) -> None:
    """Each attack's settings against the loaded prior (e.g. GIFD's radii and stages against the
    prior's stages), before any compute: a mismatch fails here, not after the other attacks ran."""
    for name in config.attacks:
        cls = ATTACKS.get(name)
        cls(config.settings_for(name), progress=False, **({"prior": prior} if cls.needs_prior else {})).check()


def _private_labels(config: ExperimentConfig, private: ImageSet, num_classes: int) -> torch.Tensor:
    """The client's labels: given, the source's own, or distinct ones drawn per batch from the
    client's stream ("client", batch, "labels")."""
    if config.labels is not None:
        if len(config.labels) != len(private):
            raise GifdError(
                f"{len(config.labels)} labels given for {len(private)} images: give one per image"
            )
        labels = torch.tensor(config.labels, dtype=torch.long)
    elif private.labels is not None:
        labels = private.labels.clone()
    else:
        batches = range(len(private) // config.batch_size)  # whole batches (checked by the config)
        streams = [derived_generator(config.seed, "client", index, "labels") for index in batches]
        draws = [torch.randperm(num_classes, generator=stream)[: config.batch_size] for stream in streams]
        labels = torch.cat(draws)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise GifdError(
            f"labels {labels.tolist()} do not fit a victim with {num_classes} classes: "
            f"raise --num-classes to at least {int(labels.max()) + 1} or pass --labels"
        )
    return labels


def client_update(
    config: ExperimentConfig,
    victim: Victim,
    defense: Defense,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
) -> tuple[Update, dict[str, float] | None]:
    """What the client sends for one batch (FedSGD gradient or FedAvg delta, defended), and the
    defense's utility cost (similarity of the defended update to the clean one). `generator` is
    the client's own stream for the defense's noise (never one the attacker draws from)."""
    if config.local_steps is None:
        clean = compute_update(victim, images, labels, disclose_labels=config.disclose_labels)
    else:
        clean = compute_fedavg_update(
            victim,
            images,
            labels,
            local_steps=config.local_steps,
            local_lr=config.local_lr,
            local_batch_size=config.local_batch_size,
            shuffle_seed=config.seed,
            disclose_labels=config.disclose_labels,
        )
    if defense.spec() == "none":
        return clean, None
    context = ClientContext(victim, images, labels) if defense.requires_context else None
    defended = apply_defense(clean, defense, generator=generator, context=context)
    return defended, utility_cost(clean.tensors, defended.tensors)


def attacker_defense(
    config: ExperimentConfig, defense: Defense, update: Update, victim: Victim
) -> Defense | None:
    """The attacker's model of the defense, by the threat model's `defense_knowledge`."""
    if defense.spec() == "none" or config.defense_knowledge == "oblivious":
        return None
    if config.defense_knowledge == "estimated":
        names = [name for name, _ in victim.named_parameters()]
        return defense.estimated(update.ordered(victim), names)
    return defense


def _attack_batch(
    config: ExperimentConfig,
    victim: Victim,
    prior: StagedGenerator | None,
    defense: Defense | None,
    update: Update,
    truth: tuple[torch.Tensor, torch.Tensor] | None,
    batch_index: int,
    progress: bool,
    reconstructions: dict[str, list[torch.Tensor]],
    stage_images: dict[str, dict[int, list[torch.Tensor]]],
) -> dict[str, Any]:
    """Infer labels, run every attack on one update, and score each against the private batch.

    `truth` is the private (images, labels); without it nothing is scored and the reconstructions
    stay in the attack's own order. Label inference and each attack draw from their own attacker
    streams of batch `batch_index`.
    """
    if update.labels is not None:
        inferred = update.labels.sort().values
    else:
        stream = derived_generator(config.seed, "attacker", batch_index, "label-inference")
        inferred = infer_labels(update, victim, config.label_inference, generator=stream)
    target = Target(victim=victim, update=update, labels=inferred, defense=defense)
    batch: dict[str, Any] = {"inferred_labels": inferred.tolist(), "attacks": {}}
    if truth is not None:
        batch["true_labels"] = truth[1].tolist()
        batch["label_accuracy"] = label_accuracy(inferred, truth[1])
    for name in config.attacks:
        cls = ATTACKS.get(name)
        extra = {"prior": prior} if cls.needs_prior else {}
        attack = cls(config.settings_for(name), progress=progress, **extra)
        stream = derived_generator(config.seed, "attacker", batch_index, "attack", name)
        result: AttackResult = attack.run(target, stream)
        batch["attacks"][name] = result.summary()
        order = torch.arange(result.images.shape[0])
        if truth is not None:
            evaluation = evaluate(
                result.images.to(victim.device),
                truth[0].to(victim.device),
                features=lambda x: victim.model(victim.normalize(x)),
            )
            order = evaluation.order  # reconstructions paired with the originals
            batch["attacks"][name]["metrics"] = evaluation.to_dict()
        reconstructions[name].append(result.images[order].cpu())
        for stage in result.stages:
            stage_images.setdefault(name, {}).setdefault(stage.stage, []).append(stage.images[order].cpu())
    return batch


def _aggregate(name: str, batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-image metric values of one attack over all batches, their means, time and steps."""
    per_image: dict[str, list[float | None]] = {}
    for batch in batches:
        scored = batch["attacks"][name].get("metrics") or {"per_image": {}}  # none without the truth
        for metric, values in scored["per_image"].items():
            per_image.setdefault(metric, []).extend(values)
    means = {m: _mean(v) for m, v in per_image.items()}
    runs = [b["attacks"][name] for b in batches]
    return {
        **means,
        "per_image": per_image,
        "seconds": round(sum(r["seconds"] for r in runs), 3),
        "steps": runs[0]["steps"],
        "gradient_loss": [r["gradient_loss"] for r in runs],
    }


def _mean_utility(costs: list[dict[str, float] | None]) -> dict[str, float] | None:
    """Mean of each utility-cost measure over the batches (None without a defense)."""
    present = [c for c in costs if c is not None]
    if not present:
        return None
    return {key: float(np.mean([c[key] for c in present])) for key in present[0]}


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    if len(finite) < len(values):  # an infinite PSNR (exact reconstruction) is reported as None
        return None
    return float(np.mean(finite))


def versions() -> dict[str, str]:
    """Versions of what produced a run."""
    return {
        "gifd": gifd.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def write_run(
    out: Path,
    results: dict[str, Any],
    originals: torch.Tensor | None,
    reconstructions: dict[str, torch.Tensor],
    stage_images: dict[str, dict[int, torch.Tensor]] | None = None,
    update: Update | None = None,
) -> None:
    """Write results.json and image grids into `out`, all or nothing.

    `originals` None (an audit without the private images) writes the reconstructions alone;
    `update` (an attacked update the server received) is saved as update.pt.

    `stage_images[attack][stage]` (staged attacks) are the best images after each stage, saved as
    images/<attack>_stage<S>_NNN.png for the report's stage progression.

    Everything goes into a staging directory beside `out`, which then replaces `out` (an earlier
    run there is moved aside first and deleted last, so there is always one complete run). `out`
    must be new, empty or a gifd run holding only gifd's files (`gifd.rundir`).
    """
    out = out.resolve()
    check_replaceable(out, "run")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as exc:
        raise GifdError(f"cannot write to --out {out}: {exc.strerror}") from exc
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        (staging / "images").mkdir()
        count = next(iter(reconstructions.values())).shape[0] if originals is None else originals.shape[0]
        nrow = min(8, count)
        if originals is not None:
            save_grid(originals, staging / "originals.png", nrow=nrow)
            for i, image in enumerate(originals):
                save_image(image, staging / "images" / f"original_{i:03d}.png")
        for name, images in reconstructions.items():
            save_grid(images, staging / f"{name}.png", nrow=nrow)
            for i, image in enumerate(images):
                save_image(image, staging / "images" / f"{name}_{i:03d}.png")
        for name, by_stage in (stage_images or {}).items():
            for stage, images in by_stage.items():
                for i, image in enumerate(images):
                    save_image(image, staging / stage_image_name(name, stage, i))
        if update is not None:
            save_update(update, staging / UPDATE_FILE)
        (staging / "results.json").write_text(json.dumps(results, indent=2))
        write_marker(staging, "run", files_below(staging))
        if out.exists():
            os.replace(out, old)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def experiment_config(values: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a dict of settings into an ExperimentConfig (one-line errors)."""
    return build_config(ExperimentConfig, values, source)
