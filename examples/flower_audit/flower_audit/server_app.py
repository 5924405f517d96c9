"""The server (Flower Message API): FedAvg, wrapped by a gifd audit of every client update.

`app` is the ServerApp that `flwr run` starts (settings from [tool.flwr.app.config] in
../pyproject.toml, overridable with `--run-config`); `train` and `make_audit` are shared with the
Python driver in simulation.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flower_audit.task import DEFAULT_SETTINGS, build_model, partition
from gifd.flower import FlowerAudit, audit_config, audit_strategy

log = logging.getLogger(__name__)


def make_audit(
    values: Mapping[str, Any],
    out: str | Path,
    clients: int,
    settings: Mapping[str, Any],
    progress: bool = False,
) -> FlowerAudit:
    """A gifd audit of this federation (AuditConfig `values`), scoring with the simulated clients'
    private images, which the clients identify by the partition id they report."""
    config = audit_config(
        {"victim": settings["victim"], "resolution": settings["resolution"], **values},
        "flower audit settings",
    )
    per_client, resolution = int(settings["images-per-client"]), int(settings["resolution"])

    def truth(server_round: int, client: str, reported: Mapping[str, Any]) -> Any:
        pid = reported.get("partition-id")  # reported by the simulated clients only
        count = int(reported.get("num-partitions", clients))
        return None if pid is None else partition(int(pid), count, per_client, resolution)

    return FlowerAudit(config, out, truth=truth, progress=progress)


def train(
    grid: Grid,
    settings: Mapping[str, Any],
    rounds: int,
    clients: int,
    audit: FlowerAudit | None,
    evaluate_fn: Callable[[int, ArrayRecord], None] | None = None,
) -> None:
    """`rounds` FedAvg rounds over `clients` nodes, audited when `audit` is given."""
    strategy: Any = FedAvg(fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients)
    if audit is not None:
        strategy = audit_strategy(strategy, audit)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(build_model(settings).model.state_dict()),
        num_rounds=rounds,
        train_config=ConfigRecord(dict(settings)),
        evaluate_fn=evaluate_fn,
    )


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """`flwr run`: train and audit with the run config's settings."""
    config = dict(context.run_config)
    settings = {**DEFAULT_SETTINGS, **{k: v for k, v in config.items() if k in DEFAULT_SETTINGS}}
    clients = int(config["clients"])
    out = Path(str(config["out"])).expanduser().resolve()
    audit = make_audit(
        {
            "attacks": [a.strip() for a in str(config["attacks"]).split(",") if a.strip()],
            "steps": int(config["steps"]),
            "restarts": int(config["restarts"]),
            "device": str(config["device"]),
        },
        out,
        clients,
        settings,
    )
    log.warning("gifd audit writing to %s", out)
    train(grid, settings, int(config["rounds"]), clients, audit)
    log.warning("gifd audit report: %s", out / "report.html")
