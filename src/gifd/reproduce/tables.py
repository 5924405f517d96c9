"""The experiments of `gifd reproduce`: each attack table a list of cells (one ExperimentConfig
each, run by `gifd.experiment.run_experiment`), the label-inference table computed directly.

A cell runs one attack, so a cell two tables share (the ablation's GIFD and latent search are the
methods table's on the far data) runs once, and a cell whose run directory already holds the
results of exactly its config is read back, not run again: a killed reproduction resumes where
it stopped. Each attack draws from its own seed-derived stream (gifd.experiment), so running the
attacks of a setting one per cell gives the numbers one run of all of them would.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gifd.errors import GifdError
from gifd.experiment import ExperimentConfig, experiment_config, run_experiment
from gifd.reproduce.config import DataSet, ReproduceConfig
from gifd.sweep import Job, config_hash, job_is_finished

#: Metric columns of the attack tables.
METRICS = ("psnr", "ssim", "lpips_st")


@dataclass(frozen=True)
class Cell:
    """One run of one attack: the table's row key (words and values) and the run's config."""

    table: str
    key: dict[str, Any]
    attack: str
    config: ExperimentConfig

    @property
    def id(self) -> str:
        """Directory name: the attack and the hash of the whole config (shared cells share it)."""
        return f"{self.attack}-{config_hash(self.config)}"


@dataclass
class Plan:
    """The cells of every attack table, and what the planning resolved (the prior's stages)."""

    cells: dict[str, list[Cell]] = field(default_factory=dict)
    stage_names: list[str] = field(default_factory=list)

    def unique(self) -> list[Cell]:
        """Every distinct cell once, in table order."""
        seen: dict[str, Cell] = {}
        for cells in self.cells.values():
            for cell in cells:
                seen.setdefault(cell.id, cell)
        return list(seen.values())


def plan(config: ReproduceConfig) -> Plan:
    """The cells of the attack tables of `config`, every config validated and the prior's stages,
    radii and budgets checked against the loaded prior, before anything runs."""
    from gifd.data import load_images
    from gifd.experiment import check_attacks_fit
    from gifd.priors import create_prior

    prior = create_prior(config.prior, config.prior_weights, "cpu")
    last = prior.num_stages - 1
    stages = config.ablation_stages if config.ablation_stages is not None else list(range(1, last + 1))
    if any(k > last for k in stages):
        raise GifdError(
            f"ablation_stages {stages} go beyond the last stage {last} of prior {config.prior}: use stages 1..{last}"
        )
    result = Plan(stage_names=list(prior.stage_names))
    tables = set(config.tables)
    if "methods" in tables:
        result.cells["methods"] = [
            _cell(
                config, "methods", {"data": data, "method": m}, m, getattr(config, data), config.steps_for(m)
            )
            for data in ("near", "far")
            for m in config.methods
        ]
    if "ablation" in tables:
        gifd_steps = config.steps_for("gifd")
        cells = []
        for data in config.ablation_data:
            images = getattr(config, data)
            cells.append(
                _cell(
                    config,
                    "ablation",
                    {"data": data, "variant": "latent only"},
                    "latent",
                    images,
                    config.steps_for("latent"),
                )
            )
            for k in stages:
                cells.append(
                    _cell(
                        config,
                        "ablation",
                        {"data": data, "variant": f"layer {k} alone", "stage": k},
                        "gifd",
                        images,
                        gifd_steps,
                        settings={"stage_start": k, "stage_end": k},
                    )
                )
            noball = config.steps_for("gifd-noball")
            cells.append(
                _cell(
                    config,
                    "ablation",
                    {"data": data, "variant": "GIFD without the ball"},
                    "gifd-noball",
                    images,
                    noball,
                )
            )
            cells.append(
                _cell(config, "ablation", {"data": data, "variant": "GIFD"}, "gifd", images, gifd_steps)
            )
        result.cells["ablation"] = cells
    if "batch" in tables:
        result.cells["batch"] = [
            _cell(
                config,
                "batch",
                {"batch_size": b, "method": a},
                a,
                DataSet(images=config.batch_data.images, indices=config.batch_data.indices[:b]),
                config.batch_steps or config.steps_for(a),
                batch_size=b,
            )
            for b in config.batch_sizes
            for a in config.batch_attacks
        ]
    if "defenses" in tables:
        data = config.defense_data or config.far
        steps = config.defense_steps
        cells = [
            _cell(
                config,
                "defenses",
                {"defense": "none", "knowledge": "-", "method": a},
                a,
                data,
                steps or config.steps_for(a),
            )
            for a in config.defense_attacks
        ]
        for spec in config.defenses:
            blind = attacker_models_nothing(spec)
            for knowledge in config.defense_knowledge:
                # An attacker with no model of the defense (noise) is oblivious whatever it knows:
                # its row is the oblivious run, not a second run of the same attack.
                runs_as = "oblivious" if blind and knowledge != "oblivious" else knowledge
                key = {"defense": spec, "knowledge": knowledge}
                if runs_as != knowledge:
                    key["note"] = "= oblivious (nothing to model)"
                for a in config.defense_attacks:
                    cells.append(
                        _cell(
                            config,
                            "defenses",
                            {**key, "method": a},
                            a,
                            data,
                            steps or config.steps_for(a),
                            defense=spec,
                            knowledge=runs_as,
                        )
                    )
        result.cells["defenses"] = cells
    for cell in result.unique():
        check_attacks_fit(cell.config, prior)
    sets = [config.near, config.far, config.batch_data, config.defense_data]
    for images, indices in sorted({(d.images, tuple(d.indices)) for d in sets if d is not None}):
        load_images(images, config.resolution, list(indices))  # every index exists (cheap)
    return result


def attacker_models_nothing(spec: str) -> bool:
    """Whether the adaptive attacker's model of defense `spec` is the identity (no part of it
    changes the attacker's dummy update: additive noise), so knowing it changes nothing."""
    from gifd.defenses import Defense, parse_defense

    return all(
        type(member).adapt is Defense.adapt and type(member).dummy_gradient is Defense.dummy_gradient
        for member in parse_defense(spec).members()
    )


def _cell(
    config: ReproduceConfig,
    table: str,
    key: dict[str, Any],
    attack: str,
    data: DataSet,
    steps: int | None,
    *,
    batch_size: int = 1,
    settings: dict[str, Any] | None = None,
    defense: str | None = None,
    knowledge: str = "adaptive",
) -> Cell:
    """One cell: `attack` on `data` with `steps` per restart (None: the attack's default), the
    setting's shared values and its `attack_settings` for the attack (radii, population, ...)."""
    own = {**config.attack_settings.get(attack, {}), **(settings or {})}
    values: dict[str, Any] = {
        "victim": config.victim,
        "victim_weights": config.victim_weights,
        "resolution": config.resolution,
        "num_classes": config.num_classes,
        "prior": config.prior,
        "prior_weights": config.prior_weights,
        "images": data.images,
        "indices": list(data.indices),
        "batch_size": batch_size,
        "attacks": [attack],
        "steps": steps,
        "stage_steps": config.stage_steps,
        "restarts": config.restarts,
        "attack_settings": {attack: own} if own else {},
        "label_inference": config.label_inference,
        "seed": config.seed,
        "device": config.device,
        "threads": config.threads,
        "defense": defense,
        "defense_knowledge": knowledge,
    }
    where = f"reproduce {table} cell {attack} {key}"
    return Cell(
        table, key, attack, experiment_config({k: v for k, v in values.items() if v is not None}, where)
    )


def run_cells(
    plan: Plan, out: Path, *, log: Callable[[str], None] = print
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Run every cell not finished under OUT/cells/<id>/; return each cell's results by id and
    the counts of cells run and reused."""
    results: dict[str, dict[str, Any]] = {}
    counts = {"ran": 0, "reused": 0}
    cells = plan.unique()
    for number, cell in enumerate(cells, 1):
        directory = out / "cells" / cell.id
        if job_is_finished(Job(cell.id, {}, cell.config), directory):
            results[cell.id] = json.loads((directory / "results.json").read_text())
            counts["reused"] += 1
            continue
        start = time.perf_counter()
        results[cell.id] = run_experiment(cell.config, directory, progress=False)
        counts["ran"] += 1
        log(
            f"[{number}/{len(cells)}] {cell.table}: {cell.attack} {_key_words(cell.key)} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    return results, counts


def _key_words(key: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in key.items())


def table_rows(cells: list[Cell], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell: its key, the attack's mean metrics, time, steps, label accuracy and
    (under a defense) the defense's utility cost."""
    rows = []
    for cell in cells:
        run = results[cell.id]
        summary = run["attacks"][cell.attack]
        row: dict[str, Any] = {**cell.key, "attack": cell.attack, "cell": cell.id}
        for metric in METRICS:
            if metric in summary:
                row[metric] = summary[metric]
        row["seconds"] = summary.get("seconds")
        row["steps"] = summary.get("steps")
        row["label_accuracy"] = run.get("label_accuracy")
        row["utility_cost"] = (run.get("defense") or {}).get("utility_cost")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Label inference: no attack, only the rules on client updates.


def label_table(config: ReproduceConfig) -> list[dict[str, Any]]:
    """Accuracy of every label rule against batch size, for unique and repeated labels, on FedSGD
    gradients and FedAvg deltas (`label_local_steps` local steps): the mean over
    `label_trials` batches of `label_images`. A cell a rule cannot answer (distinct-label rules on
    a batch larger than the classes) is recorded with its reason."""
    from gifd.attacks.labels import infer_labels
    from gifd.client import Client, ClientConfig
    from gifd.data import load_images
    from gifd.device import derived_generator, resolve_device, seed_everything, torch_threads
    from gifd.metrics import label_accuracy
    from gifd.victims import create_victim

    with torch_threads(config.threads):
        seed_everything(config.seed)
        device = resolve_device(config.device)
        pool = load_images(config.label_images, config.resolution)
        victim = create_victim(
            config.victim,
            resolution=config.resolution,
            num_classes=config.num_classes,
            seed=config.seed,
            weights=config.victim_weights,
            device=device,
        )
        # The simulated clients of the two protocols (no defense, labels not disclosed).
        clients = {
            protocol: Client(
                victim,
                ClientConfig(local_steps=steps, local_lr=config.label_local_lr, seed=config.seed),
            )
            for protocol, steps in (("FedSGD", None), ("FedAvg", config.label_local_steps))
        }
        rows = []
        for protocol in ("FedSGD", "FedAvg"):
            for kind in ("unique", "repeated"):
                for b in config.label_batch_sizes:
                    if kind == "repeated" and b < 2:
                        continue  # one label cannot repeat
                    if kind == "unique" and b > config.num_classes:
                        continue
                    scores: dict[str, list[float]] = {rule: [] for rule in config.label_rules}
                    for trial in range(config.label_trials):
                        stream = derived_generator(config.seed, "reproduce-labels", protocol, kind, b, trial)
                        labels = trial_labels(kind, b, config.num_classes, stream)
                        picks = torch.randperm(len(pool), generator=stream)[:b]
                        update = clients[protocol].share(pool.images[picks], labels, trial).update
                        for rule in config.label_rules:
                            if rule != "count" and b > config.num_classes:
                                continue
                            attacker = derived_generator(config.seed, "attacker", trial, "label-inference")
                            inferred = infer_labels(update, victim, rule, generator=attacker)
                            scores[rule].append(label_accuracy(inferred, labels))
                    for rule, values in scores.items():
                        rows.append(
                            {
                                "protocol": protocol,
                                "labels": kind,
                                "batch_size": b,
                                "rule": rule,
                                "accuracy": float(sum(values) / len(values)) if values else None,
                                "trials": len(values),
                            }
                        )
    return rows


def trial_labels(kind: str, batch_size: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A batch's labels: distinct ones ("unique"), or ("repeated") drawn from max(1, B // 2)
    distinct classes, each at least once, so that a batch of two or more always repeats one."""
    classes = torch.randperm(num_classes, generator=generator)
    if kind == "unique":
        return classes[:batch_size].clone()
    pool = classes[: max(1, batch_size // 2)]
    extra = pool[torch.randint(len(pool), (batch_size - len(pool),), generator=generator)]
    return torch.cat([pool, extra])


# ---------------------------------------------------------------------------------------------
# The paper's claim, from the ablation's numbers.


@dataclass(frozen=True)
class GainClaim:
    """GIFD's PSNR gain over the latent search against the best fixed-layer ablation's, on one
    data set: whether GIFD's is larger (None: not decidable from the numbers), and the words."""

    holds: bool | None
    gifd_gain: float | None
    fixed_gain: float | None
    best_stage: int | None
    text: str


def gain_claim(
    latent: float | None, gifd: float | None, fixed: dict[int, float | None], data: str
) -> GainClaim:
    """The paper's claim tested on mean PSNRs (dB) of `data`: latent only, GIFD, and each stage
    searched alone (`fixed`, stage -> PSNR). A None or infinite PSNR cannot be compared."""
    values = [latent, gifd, *fixed.values()]
    if not fixed or any(v is None or not math.isfinite(v) for v in values):
        return GainClaim(None, None, None, None, f"Not decidable on {data}: a PSNR is missing or infinite.")
    assert latent is not None and gifd is not None
    best = max(fixed, key=lambda k: fixed[k])  # type: ignore[arg-type, return-value]
    gifd_gain, fixed_gain = gifd - latent, float(fixed[best]) - latent  # type: ignore[arg-type]
    holds = gifd_gain > fixed_gain
    numbers = (
        f"GIFD {gifd:.2f} dB vs latent only {latent:.2f} dB: gain {gifd_gain:+.2f} dB; best fixed layer "
        f"(stage {best} alone) {fixed[best]:.2f} dB: gain {fixed_gain:+.2f} dB"
    )
    verdict = (
        f"The paper's claim holds on {data}: GIFD's gain over the latent search is larger than the best fixed-layer "
        f"ablation's, by {gifd_gain - fixed_gain:.2f} dB ({numbers})."
        if holds
        else f"The paper's claim does not hold on {data}: GIFD's gain over the latent search is not larger than the best "
        f"fixed-layer ablation's ({numbers})."
    )
    return GainClaim(holds, gifd_gain, fixed_gain, best, verdict)


def ablation_claim(rows: list[dict[str, Any]], data: str, words: str) -> GainClaim:
    """`gain_claim` on the ablation rows of data set `data` ("near" or "far")."""
    mine = [r for r in rows if r["data"] == data]
    by_variant = {r["variant"]: r.get("psnr") for r in mine}
    fixed = {r["stage"]: r.get("psnr") for r in mine if "stage" in r}
    return gain_claim(by_variant.get("latent only"), by_variant.get("GIFD"), fixed, words)
