"""The audit: it receives (global model, reply, report) per client, turns each reply into a FedAvg
`Update` and attacks it in a background thread, writing one gifd run per attacked client."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gifd.attacks.labels import check_label_inference
from gifd.data import ImageSet
from gifd.device import resolve_device
from gifd.errors import GifdError, list_some
from gifd.experiment import attack_received_update
from gifd.flower.config import ARCHITECTURE_FIX, GLOBAL_MODEL_FILE, KEY_FIX, AuditConfig
from gifd.flower.records import (
    ClientRound,
    Pending,
    Screened,
    SkipError,
    as_tensor,
    plain_values,
    reported_integer,
    reported_training,
    reported_triple,
)
from gifd.imageio import write_atomically
from gifd.plan import AttackPlan, ExperimentConfig
from gifd.priors import StagedGenerator
from gifd.report import write_audit_report, write_report
from gifd.results import RESULTS_NAME, validate_results
from gifd.rundir import read_marker, write_marker
from gifd.update import Update, atomic_torch_save, victim_metadata
from gifd.victims import (
    Victim,
    create_victim,
    load_victim_state,
    normalization_name,
    same_normalization,
)

#: (round, client, reported metadata) -> the client's private images with labels, or None.
#: Only a simulation knows them; with them the audit scores the reconstructions.
TruthFn = Callable[[int, str, Mapping[str, Any]], ImageSet | None]

log = logging.getLogger("gifd.flower")


class FlowerAudit:
    """Attacks the client updates handed to it, in one background thread, and records the results.

    One record per (round, client) it was handed, with a status: "queued" (attack pending),
    "attacked", "skipped" (ruled out by the options or the client's metadata, or no reply;
    `reason` says why) or "failed" (the model or the attack raised; `reason` holds the error).
    Whether a client is attacked is decided on the server's thread as its reply arrives (cheap
    checks); building its update and the attack run in the background.

    `victim` overrides the model built from the config (any `Victim`, e.g. your own nn.Module
    wrapped with its input size, class count and normalisation). `truth` scores reconstructions
    in a simulation. `background=False` attacks inside the round (for debugging).
    """

    def __init__(
        self,
        config: AuditConfig,
        out: str | Path,
        *,
        victim: Victim | None = None,
        truth: TruthFn | None = None,
        background: bool = True,
        progress: bool = False,
    ) -> None:
        self.config = config
        self.out = Path(out)
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise GifdError(
                f"audit directory {self.out} exists and is not empty: pass a new or empty directory "
                "(an audit never mixes its runs with others)"
            )
        self.device = resolve_device(config.device)
        self.victim = victim or create_victim(
            config.victim,
            resolution=config.resolution,
            num_classes=config.num_classes,
            seed=config.seed,
            normalization=config.normalization,
            device=self.device,
        )
        self.victim.to(self.device)
        check_label_inference(
            self.victim, "or audit another model (a FedAvg update never carries its labels)"
        )
        self._state_names = list(self.victim.model.state_dict())
        self.truth = truth
        self.progress = progress
        self.records: list[dict[str, Any]] = []
        self._pending: dict[tuple[int, str], Pending] = {}
        #: The last model object `sent` converted, and its tensors (one conversion per round).
        self._last_sent: tuple[Any, dict[str, Tensor]] | None = None
        self._futures: list[Future[None]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="gifd-audit") if background else None
        )
        self._prior: StagedGenerator | None = None
        #: The round whose global model round_RRR/global_model.pt holds, and that model.
        self._round_model: tuple[int, dict[str, Tensor]] | None = None

    # ------------------------------------------------------------------ what the strategy hands over
    def sent(
        self,
        server_round: int,
        client: str,
        state: Mapping[str, Any] | Sequence[Any],
        config: Mapping[str, Any],
    ) -> None:
        """Record the global model (and train config) the server sends `client` in `server_round`."""
        if not self._wanted_round(server_round):
            return
        try:
            if self._last_sent is None or self._last_sent[0] is not state:
                self._last_sent = (state, self._named(state, "global model"))
            self._pending[(server_round, client)] = Pending(self._last_sent[1], dict(config))
        except GifdError as exc:
            self._pending[(server_round, client)] = Pending(None, dict(config), error=str(exc))

    def refused(self, server_round: int, client: str, reason: str) -> None:
        """Record that `client`'s message of `server_round` cannot be audited, and why."""
        if self._wanted_round(server_round):
            self._pending[(server_round, client)] = Pending(None, {}, error=reason)

    def received(
        self,
        server_round: int,
        client: str,
        state: Mapping[str, Any] | Sequence[Any],
        metrics: Mapping[str, Any],
    ) -> None:
        """Take `client`'s reply of `server_round` and queue its attack (or record why not)."""
        pending = self._pending.pop((server_round, client), None)
        if pending is None:
            return  # a round not audited, or a reply to a message the wrapper did not see
        reported = {**pending.config, **metrics}
        record = self._new_record(server_round, client, reported)
        try:
            if pending.error is not None:
                raise GifdError(pending.error)
            quota = self.config.clients_per_round
            if quota is not None and self._attacked_in(server_round) >= quota:
                raise SkipError(f"clients_per_round={quota} reached")
            assert pending.state is not None
            job = ClientRound(
                server_round, client, pending.state, self._named(state, "client reply"), reported
            )
            screened = self._screen(job)
        except SkipError as exc:
            self._finish(record, "skipped", str(exc))
            return
        except GifdError as exc:
            self._finish(record, "failed", str(exc))
            return
        except Exception as exc:  # never let the audit stop the round
            log.exception(
                "gifd audit could not take the reply of client %s in round %s", client, server_round
            )
            self._finish(record, "failed", f"{exc.__class__.__name__}: {exc}")
            return
        with self._lock:
            record["status"] = "queued"
        if self._executor is None:
            self._attack(job, record, screened)
        else:
            self._futures.append(self._executor.submit(self._attack, job, record, screened))

    def end_round(self, server_round: int) -> None:
        """Close `server_round`: clients sent a model but without a reply are recorded as skipped."""
        for key in [k for k in self._pending if k[0] == server_round]:
            pending = self._pending.pop(key)
            self._finish(
                self._new_record(*key, pending.config), "skipped", "no reply (the client dropped out)"
            )

    def wait(self) -> list[dict[str, Any]]:
        """Block until every queued attack has finished; return all records (one per client/round)."""
        for future in list(self._futures):
            future.result()
        self._write_index(report=True)
        with self._lock:
            return [dict(r) for r in self.records]

    def close(self) -> list[dict[str, Any]]:
        """Finish the queued attacks, stop the worker thread and return all records.

        The Message-API wrapper's `start` calls it; with a legacy strategy call it after training.
        """
        records = self.wait()
        if self._executor is not None:
            self._executor.shutdown()
        return records

    # ------------------------------------------------------------------ the attack of one client
    def _attack(self, job: ClientRound, record: dict[str, Any], screened: Screened) -> None:
        fields: dict[str, Any] = {"warnings": screened.warnings}  # applied to the record when done
        try:
            victim, update, config = self._prepare(job, screened)
            fields.update(
                num_examples=update.batch_size,
                local_training={
                    k: update.metadata[k]
                    for k in ("local_steps", "epochs", "local_lr", "local_batch_size", "shuffle_seed")
                },
                normalization={"mean": list(victim.mean), "std": list(victim.std)},
            )
            weights = self._save_global_model(job)
            config = config.model_copy(update={"victim_weights": str(weights.resolve())})
            truth = self.truth(job.round, job.client, job.reported) if self.truth is not None else None
            run_dir = self.out / f"round_{job.round:03d}" / f"client_{job.client}"
            results = attack_received_update(
                config,
                victim,
                update,
                run_dir,
                truth=truth,
                prior=self._prior_for(config),
                progress=self.progress,
            )
            write_report(run_dir)
            fields["run"] = str(run_dir.relative_to(self.out))
            typed = validate_results(results, str(run_dir / RESULTS_NAME))
            fields["inferred_labels"] = typed.inferred_labels
            if truth is not None:
                fields["true_labels"] = typed.true_labels
                fields["label_accuracy"] = typed.label_accuracy
            fields["attacks"] = {
                name: totals.model_dump(exclude={"per_image"}, exclude_unset=True)
                for name, totals in typed.attacks.items()
            }
            self._finish(record, "attacked", fields=fields, report=True)
        except GifdError as exc:
            self._finish(record, "failed", str(exc), fields=fields, report=True)
        except Exception as exc:  # an audit must never stall or crash the federation
            log.exception("gifd audit of client %s in round %s failed", job.client, job.round)
            self._finish(record, "failed", f"{exc.__class__.__name__}: {exc}", fields=fields, report=True)

    def _screen(self, job: ClientRound) -> Screened:
        """The cheap checks of a reply, on the server's thread as it arrives: what the client
        reported (normalisation, examples, local training) and whether the options allow the attack.

        Raises `SkipError` (a GifdError) when they rule the attack out.
        """
        warnings: list[str] = []
        reported = job.reported
        mean, std = self._normalization(reported, warnings)
        examples = reported_integer(reported, self.config.key("num_examples"))
        if examples is None:
            raise SkipError(
                f"the client did not report its example count under {self.config.key('num_examples')!r}{KEY_FIX}"
            )
        if examples > self.config.max_examples:
            raise SkipError(
                f"{examples} examples exceed max_examples={self.config.max_examples}: "
                "one update of that many images is beyond inversion; raise max_examples to try"
            )
        training = reported_training(self.config, reported, examples, warnings)
        return Screened(mean, std, examples, training, warnings)

    def _prepare(self, job: ClientRound, screened: Screened) -> tuple[Victim, Update, ExperimentConfig]:
        """The victim at the global model, the client's FedAvg update and the attack config (in the
        worker: the model copy, the delta and the weights fingerprint grow with the model).

        Warnings found here are added to `screened.warnings`.
        """
        mean, std, examples, warnings = screened.mean, screened.std, screened.examples, screened.warnings
        model = copy.deepcopy(self.victim.model)
        load_victim_state(
            model, job.global_state, self.victim.name, "the global model's tensors", ARCHITECTURE_FIX
        )
        victim = dataclasses.replace(self.victim, model=model, mean=mean, std=std)
        names = [name for name, _ in victim.named_parameters()]
        params = set(names)
        changed = [
            k
            for k, v in job.client_state.items()
            if k not in params
            and k in job.global_state
            and v.is_floating_point()
            and not torch.equal(v, job.global_state[k])
        ]
        if changed:
            warnings.append(
                f"the client changed non-trained state ({list_some(changed, 3)}): it trained batch norm in train "
                "mode; gifd replays eval-mode training, so this reconstruction understates the leak"
            )
        metadata = victim_metadata(victim)
        metadata.update(screened.training.to_metadata(examples))
        metadata.update({"flower_round": job.round, "flower_client": job.client})
        update = Update(
            tensors={n: (job.client_state[n] - job.global_state[n]).to(self.device) for n in names},
            batch_size=examples,
            kind="delta",
            metadata=metadata,
        )
        plan = self.config.model_dump(include=set(AttackPlan.model_fields))
        plan.update(
            label_inference=self._label_rule(examples, victim.num_classes, warnings), device=str(self.device)
        )
        config = ExperimentConfig(
            **plan,
            victim=victim.name,
            resolution=victim.resolution,
            num_classes=victim.num_classes,
            normalization=normalization_name(mean, std),
            images=f"flower: round {job.round}, client {job.client}",
        )
        return victim, update, config

    def _save_global_model(self, job: ClientRound) -> Path:
        """Save the global model `job`'s client started from, as a state dict gifd loads as victim
        weights: once per round (round_RRR/global_model.pt), or beside it for a client that was
        sent another model. With the client's update.pt it lets anyone re-run the attack."""
        round_dir = self.out / f"round_{job.round:03d}"
        state = job.global_state
        if self._round_model is None or self._round_model[0] != job.round:
            self._round_model = (job.round, state)  # rounds arrive in order: keep the current one
            path = round_dir / GLOBAL_MODEL_FILE
        elif self._round_model[1] is state or (
            self._round_model[1].keys() == state.keys()
            and all(torch.equal(self._round_model[1][k], v) for k, v in state.items())
        ):
            return round_dir / GLOBAL_MODEL_FILE
        else:
            path = round_dir / f"global_model_client_{job.client}.pt"
        atomic_torch_save(state, path)
        return path

    def _label_rule(self, examples: int, num_classes: int, warnings: list[str]) -> str:
        """The label-inference rule; "count" where more examples than classes forbid distinct labels."""
        if self.config.label_inference == "count" or examples <= num_classes:
            return self.config.label_inference
        warnings.append(
            f"{examples} examples but {num_classes} classes: labels repeat, so they were inferred with rule "
            f"'count' instead of {self.config.label_inference!r}"
        )
        return "count"

    def _normalization(
        self, reported: Mapping[str, Any], warnings: list[str]
    ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """The normalisation to attack with: the attacker's, unless the client reports another."""
        ours = (tuple(self.victim.mean), tuple(self.victim.std))
        mean_key, std_key = self.config.key("mean"), self.config.key("std")
        mean, std = reported_triple(reported, mean_key), reported_triple(reported, std_key)
        if mean is None or std is None:
            warnings.append(
                f"the client did not report its normalisation ({mean_key!r}, {std_key!r}); "
                f"assumed the audit's {self.config.normalization} mean {list(ours[0])} std {list(ours[1])}"
            )
            return ours  # type: ignore[return-value]
        if same_normalization((mean, std), ours):
            return ours  # type: ignore[return-value]
        mismatch = (
            f"normalisation mismatch: the client normalises with mean {list(mean)} std {list(std)}, "
            f"the audit config says {self.config.normalization} (mean {list(ours[0])} std {list(ours[1])})"
        )
        if self.config.on_normalization_mismatch == "skip":
            raise SkipError(mismatch + "; not attacked (on_normalization_mismatch=skip)")
        warnings.append(mismatch + "; attacked with the client's constants (on_normalization_mismatch=adopt)")
        return mean, std

    # ------------------------------------------------------------------ bookkeeping
    def _wanted_round(self, server_round: int) -> bool:
        return self.config.rounds is None or server_round in self.config.rounds

    def _named(self, state: Mapping[str, Any] | Sequence[Any], what: str) -> dict[str, Tensor]:
        """A {name: CPU tensor} copy of a Flower model: a name -> array mapping, or arrays in the
        victim's state_dict order (legacy NumPy clients; an ArrayRecord of a list has keys "0".."n-1")."""
        if isinstance(state, Mapping) and [str(k) for k in state] == [str(i) for i in range(len(state))]:
            state = list(state.values())
        if isinstance(state, Mapping):
            named = {str(k): as_tensor(v) for k, v in state.items()}
        else:
            arrays = list(state)
            if len(arrays) != len(self._state_names):
                raise GifdError(
                    f"the {what} is a list of {len(arrays)} arrays but victim {self.victim.name!r} has "
                    f"{len(self._state_names)} state entries: send the model as "
                    "[v.numpy() for v in model.state_dict().values()] of the audited architecture"
                )
            named = {n: as_tensor(a) for n, a in zip(self._state_names, arrays, strict=True)}
        missing = [n for n, _ in self.victim.named_parameters() if n not in named]
        if missing:
            raise GifdError(
                f"the {what} lacks parameters {list_some(missing)} of victim {self.victim.name!r}: "
                f"{ARCHITECTURE_FIX}"
            )
        return named

    def _prior_for(self, config: ExperimentConfig) -> StagedGenerator | None:
        """The plan's prior, loaded once for the whole audit."""
        if self._prior is None:
            self._prior = config.load_prior(self.device)
        return self._prior

    def _new_record(self, server_round: int, client: str, reported: Mapping[str, Any]) -> dict[str, Any]:
        record = {
            "round": server_round,
            "client": client,
            "status": "new",
            "warnings": [],
            "reported": plain_values(reported),
        }
        with self._lock:
            self.records.append(record)
        return record

    def _attacked_in(self, server_round: int) -> int:
        """Clients of `server_round` queued or attacked so far (what `clients_per_round` counts)."""
        with self._lock:
            return sum(
                1
                for r in self.records
                if r["round"] == server_round and r["status"] in ("queued", "attacked")
            )

    def _finish(
        self,
        record: dict[str, Any],
        status: str,
        reason: str | None = None,
        fields: dict[str, Any] | None = None,
        report: bool = False,
    ) -> None:
        with self._lock:
            record.update(fields or {})
            record["status"] = status
            if reason is not None:
                record["reason"] = reason
        if reason is not None:
            log.info(
                "gifd audit: round %s client %s %s: %s", record["round"], record["client"], status, reason
            )
        self._write_index(report)

    def _write_index(self, report: bool) -> None:
        """Rewrite audit.json and, with `report` (after an attack, and at `wait`), report.html.

        A snapshot is taken under the lock; the (slower) writing happens outside it, serialised by
        its own lock so that an older snapshot never overwrites a newer one.
        """
        with self._write_lock:
            with self._lock:
                document = {
                    "config": self.config.model_dump(mode="json"),
                    "victim": self.victim.name,
                    "clients": json.loads(json.dumps(self.records)),
                }
            self.out.mkdir(parents=True, exist_ok=True)
            if read_marker(self.out) is None:
                write_marker(self.out, "audit", ["audit.json", "report.html"])
            text = json.dumps(document, indent=2).encode()
            write_atomically(self.out / "audit.json", lambda handle: handle.write(text))
            if report:
                write_audit_report(self.out, document)


