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

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gifd.attacker import attack_update
from gifd.calibration import resolve_auto_radii
from gifd.client import CLIENT_SETTINGS, Client, private_labels
from gifd.data import ImageSet, load_images
from gifd.defenses import NoDefense
from gifd.device import resolve_device, seed_everything, torch_threads
from gifd.errors import GifdError
from gifd.evaluation import Gallery, score_attempt
from gifd.fedavg import LocalTraining
from gifd.imageio import write_atomically
from gifd.plan import AttackPlan, ExperimentConfig, check_attacks_fit, experiment_config
from gifd.priors import StagedGenerator
from gifd.results import run_results, validate_results, versions
from gifd.rundir import check_replaceable, write_run
from gifd.update import Update, load_update, validate_update, weights_fingerprint
from gifd.victims import Victim, create_victim, normalization_name

#: The experiment API (its settings live in gifd.plan, re-exported here).
__all__ = ["AttackPlan", "ExperimentConfig", "attack_received_update", "experiment_config", "run_experiment"]


def run_experiment(
    config: ExperimentConfig,
    out: str | Path | None = None,
    *,
    progress: bool = True,
    save_update: bool = False,
    checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Run `config`; return the results dict, and with `out` write results.json and PNGs there.

    `save_update` also writes the update the client sent as OUT/update.pt (gifd format, for
    `gifd attack --update`); it takes a run of one batch and an `out`.

    `checkpoint`: a file the run saves its finished batches to after every batch, and resumes
    from when it already holds batches of the same config: those are not attacked again. Every
    batch draws from its own streams, so a resumed run gives the results of an uninterrupted one
    (its seconds excepted). The file stays; delete it once the results are safe.

    The output directory appears complete or not at all: everything is written to a temporary
    directory beside it and renamed into place at the end. The run uses `config.threads` torch
    threads when set (the count is restored afterwards).
    """
    if checkpoint is not None and (save_update or config.update is not None):
        raise GifdError(
            "a checkpoint resumes a run of several batches; --save-update and --update attack one update: "
            "drop the checkpoint"
        )
    if save_update and (out is None or config.update is not None or len(config.indices) != config.batch_size):
        raise GifdError(
            "--save-update saves the one update a run computes: give --out and one batch (as many --indices "
            "as --batch-size), and no --update"
        )
    with torch_threads(config.threads):
        return _run_experiment(config, out, progress, save_update, None if checkpoint is None else Path(checkpoint))


def _run_experiment(
    config: ExperimentConfig, out: str | Path | None, progress: bool, save_update: bool, checkpoint: Path | None
) -> dict[str, Any]:
    seed_everything(config.seed)
    if config.update is not None:
        return _attack_saved_update(config, out, progress)
    device = resolve_device(config.device)
    if out is not None:
        check_replaceable(Path(out), "run")
    batches: list[dict[str, Any]] = []
    gallery = Gallery()
    asked = config.model_dump(mode="json")  # before `radii: auto` is resolved: what the user gave
    if checkpoint is not None:
        batches, gallery = _read_checkpoint(checkpoint, asked)
        if batches and progress:
            print(f"resuming from {checkpoint}: {len(batches)} batch(es) done", file=sys.stderr)
    private = load_images(config.images, config.resolution, config.indices)
    num_classes = config.num_classes or private.num_classes or 10
    victim = create_victim(
        config.victim,
        resolution=config.resolution,
        num_classes=num_classes,
        seed=config.seed,
        normalization=config.normalization,
        weights=config.victim_weights,
        device=device,
    )
    client = Client(victim, config.client_config())
    labels = client.private_labels(config.labels, private, config.batch_size, num_classes)
    threat = config.threat_model()
    threat.check(victim, config.attacks, config.batch_size)
    prior = config.load_prior(device)
    check_attacks_fit(config, prior)
    config = resolve_auto_radii(config, victim, prior, progress=progress)
    for index, start in enumerate(range(0, len(private), config.batch_size)):
        if index < len(batches):
            continue  # finished before the run was cut: its record and images come from the checkpoint
        images = private.images[start : start + config.batch_size]
        batch_labels = labels[start : start + config.batch_size]
        shared = client.share(images, batch_labels, index)  # the client's side
        attempt = attack_update(  # the attacker's: the update and what the threat model gives it
            config,
            config.label_inference,
            config.seed,
            index,
            victim,
            shared.update,
            prior=prior,
            defense=threat.attacker_defense(client.defense, shared.update, victim),
            progress=progress,
        )
        batches.append(score_attempt(attempt, (images, batch_labels), victim, gallery))  # the evaluation's
        batches[-1]["utility_cost"] = shared.utility_cost
        if checkpoint is not None:
            _write_checkpoint(checkpoint, asked, batches, gallery)
    results = run_results(
        config.model_copy(update={"num_classes": num_classes}), device, private, batches, client.defense
    )
    results["true_labels"] = labels.tolist()
    results["label_accuracy"] = float(np.mean([b["label_accuracy"] for b in batches]))
    validate_results(results, "the run's results")  # the writer keeps to the format its readers read
    if out is not None:
        write_run(
            Path(out), results, private.images, *gallery.joined(len(batches)), update=shared.update if save_update else None
        )
    return results


#: The `format` entry that marks a file as a checkpoint of `run_experiment`.
CHECKPOINT_FORMAT = "gifd-experiment-checkpoint/1"


def _read_checkpoint(path: Path, config: dict[str, Any]) -> tuple[list[dict[str, Any]], Gallery]:
    """The finished batches and their images saved in `path` by a run of `config` (none if no file).

    Refuses a file that is not such a checkpoint, or one of another config or software, before any
    work: it is never overwritten or resumed by mistake.
    """
    if not path.exists():
        if not path.parent.is_dir():
            raise GifdError(f"checkpoint {path}: folder {path.parent} does not exist: create it first")
        return [], Gallery()
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any unpickling failure means: not ours
        saved = None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise GifdError(f"checkpoint {path} exists and is not a gifd experiment checkpoint: pass another path")
    if saved["config"] != config:
        raise GifdError(
            f"checkpoint {path} was saved by a run of another config (it differs in "
            f"{_differing_keys(config, saved['config'])}): run that config again, or pass another checkpoint path"
        )
    if saved["versions"] != versions():
        raise GifdError(
            f"checkpoint {path} was saved by other software ({_differing_keys(versions(), saved['versions'])} "
            "differ): its batches and new ones would not be one run; pass another checkpoint path"
        )
    return saved["batches"], Gallery(saved["images"], saved["stages"])


def _differing_keys(ours: dict[str, Any], saved: dict[str, Any]) -> str:
    """The keys whose values differ between two dicts, sorted and joined for a message."""
    return ", ".join(sorted(key for key in set(ours) | set(saved) if ours.get(key) != saved.get(key)))


def _write_checkpoint(path: Path, config: dict[str, Any], batches: list[dict[str, Any]], gallery: Gallery) -> None:
    """Save the finished batches and their images to `path`, replacing it only when complete."""
    saved = {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "versions": versions(),
        "batches": batches,
        "images": gallery.images,
        "stages": gallery.stages,
    }
    write_atomically(path, lambda handle: torch.save(saved, handle))


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
    config.threat_model(disclosed_labels=update.labels is not None).check(victim, config.attacks, update.batch_size)
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
    prior = prior if prior is not None else config.load_prior(victim.device)
    check_attacks_fit(config, prior)
    config = resolve_auto_radii(config, victim, prior, progress=progress)
    attempt = attack_update(
        config, config.label_inference, config.seed, batch_index, victim, update, prior=prior, progress=progress
    )
    gallery = Gallery()
    batch = score_attempt(attempt, None if truth is None else (truth.images, truth.labels), victim, gallery)
    results = run_results(config, victim.device, truth, [batch], NoDefense())
    if truth is not None:
        results["true_labels"] = batch["true_labels"]
        results["label_accuracy"] = batch["label_accuracy"]
    validate_results(results, "the run's results")
    if out is not None:
        originals = None if truth is None else truth.images
        write_run(Path(out), results, originals, *gallery.joined(1), update=update)
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
        labels = private_labels(config.labels, private, config.batch_size, num_classes, config.seed)
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


