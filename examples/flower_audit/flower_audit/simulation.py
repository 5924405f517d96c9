"""Run the federation in Flower's simulation engine, with (or without) the gifd audit on the server."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

HERE = Path(__file__).resolve().parent.parent

#: Settings the server sends the clients each round (Flower train config).
DEFAULT_SETTINGS: dict[str, Any] = {
    "victim": "lenet",
    "resolution": 32,
    "images-per-client": 2,
    "lr": 0.01,
    "local-epochs": 1,
    "batch-size": 2,
    "shuffle-seed": 0,
    "normalization": "imagenet",
}


@dataclass
class SimulationResult:
    """What a simulated training produced: the global model after every round, and the audit."""

    #: Round -> the global model after it (0: the initial model).
    global_models: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    #: One record per (round, client) the audit saw (empty without an audit).
    audit: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_model(self) -> dict[str, torch.Tensor]:
        return self.global_models[max(self.global_models)]


def run(
    *,
    clients: int = 2,
    rounds: int = 2,
    settings: Mapping[str, Any] | None = None,
    audit: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    api: Literal["message", "legacy"] = "message",
    progress: bool = False,
) -> SimulationResult:
    """Train `rounds` FedAvg rounds over `clients` simulated clients.

    `audit` (AuditConfig values) wraps the server's strategy in a gifd audit writing to `out`;
    None trains the same federation unaudited. `api` picks the strategy API the server uses.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    # The simulation's client processes import this package: put it on their path.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(HERE) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *paths])
    from flwr.simulation import run_simulation

    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    result = SimulationResult()
    flower_audit = _audit(audit, out, clients, settings, progress) if audit is not None else None
    if api == "message":
        server, client = _message_apps(settings, rounds, clients, flower_audit, result)
    else:
        server, client = _legacy_apps(settings, rounds, clients, flower_audit, result)
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    if flower_audit is not None:
        result.audit = flower_audit.close()  # the legacy API has no end-of-training hook
    return result


def _audit(
    values: Mapping[str, Any],
    out: str | Path | None,
    clients: int,
    settings: Mapping[str, Any],
    progress: bool,
) -> Any:
    from flower_audit.task import partition
    from gifd.flower import FlowerAudit, audit_config

    config = audit_config(
        {"victim": settings["victim"], "resolution": settings["resolution"], **values},
        "flower audit settings",
    )
    per_client, resolution = int(settings["images-per-client"]), int(settings["resolution"])

    def truth(server_round: int, client: str, reported: Mapping[str, Any]) -> Any:
        pid = reported.get("partition-id")  # reported by the simulated clients only
        return None if pid is None else partition(int(pid), clients, per_client, resolution)

    return FlowerAudit(config, out or "runs/flower-audit", truth=truth, progress=progress)


def _state(arrays: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in arrays.to_torch_state_dict().items()}


def _message_apps(
    settings: dict[str, Any], rounds: int, clients: int, audit: Any, result: SimulationResult
) -> tuple[Any, Any]:
    from flwr.app import ArrayRecord, ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from flower_audit.client_app import app as client_app
    from flower_audit.task import build_model

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy: Any = FedAvg(fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients)
        if audit is not None:
            from gifd.flower import audit_strategy

            strategy = audit_strategy(strategy, audit)

        def record(server_round: int, arrays: ArrayRecord) -> None:
            result.global_models[server_round] = _state(arrays)

        initial = ArrayRecord(build_model(settings).model.state_dict())
        strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=rounds,
            train_config=ConfigRecord(settings),
            evaluate_fn=record,
        )

    return server, client_app


def _legacy_apps(
    settings: dict[str, Any], rounds: int, clients: int, audit: Any, result: SimulationResult
) -> tuple[Any, Any]:
    from flwr.app import Context
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.serverapp import ServerApp

    from flower_audit.legacy_client_app import app as client_app
    from flower_audit.task import build_model

    names = list(build_model(settings).model.state_dict())

    def record(server_round: int, arrays: list[np.ndarray], config: dict[str, Any]) -> None:
        result.global_models[server_round] = {
            n: torch.from_numpy(np.array(a, copy=True)) for n, a in zip(names, arrays, strict=True)
        }

    def components(context: Context) -> ServerAppComponents:
        initial = [v.numpy() for v in build_model(settings).model.state_dict().values()]
        strategy: Any = FedAvg(
            fraction_evaluate=0.0,
            min_fit_clients=clients,
            min_available_clients=clients,
            initial_parameters=ndarrays_to_parameters(initial),
            on_fit_config_fn=lambda server_round: dict(settings),
            evaluate_fn=record,
        )
        if audit is not None:
            from gifd.flower import audit_strategy

            strategy = audit_strategy(strategy, audit)
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    return ServerApp(server_fn=components), client_app
