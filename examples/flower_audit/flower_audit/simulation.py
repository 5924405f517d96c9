"""Run the federation in Flower's simulation engine, with (or without) the gifd audit on the server."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from flower_audit.server_app import make_audit, train
from flower_audit.task import DEFAULT_SETTINGS

HERE = Path(__file__).resolve().parent.parent


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
    flower_audit = (
        make_audit(audit, out or "runs/flower-audit", clients, settings, progress)
        if audit is not None
        else None
    )
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


def _state(arrays: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in arrays.to_torch_state_dict().items()}


def _message_apps(
    settings: dict[str, Any], rounds: int, clients: int, audit: Any, result: SimulationResult
) -> tuple[Any, Any]:
    from flwr.app import ArrayRecord, Context
    from flwr.serverapp import Grid, ServerApp

    from flower_audit.client_app import app as client_app

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        def record(server_round: int, arrays: ArrayRecord) -> None:
            result.global_models[server_round] = _state(arrays)

        train(grid, settings, rounds, clients, audit, evaluate_fn=record)

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
