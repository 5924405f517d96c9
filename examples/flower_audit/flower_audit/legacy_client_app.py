"""The same clients on Flower's legacy API (NumPyClient: fit returns arrays, examples, metrics)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.client import ClientApp, NumPyClient

from flower_audit.task import build_model, partition, train


class PrivateImagesClient(NumPyClient):
    """Trains on its partition; parameters travel as state_dict() values in order."""

    def __init__(self, partition_id: int, num_partitions: int) -> None:
        self.partition_id, self.num_partitions = partition_id, num_partitions

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        victim = build_model(config)
        names = list(victim.model.state_dict())
        victim.model.load_state_dict({n: torch.from_numpy(a) for n, a in zip(names, parameters, strict=True)})
        data = partition(
            self.partition_id,
            self.num_partitions,
            int(config["images-per-client"]),
            int(config["resolution"]),
        )
        metrics = train(victim, data, config)
        # Legacy metrics are scalars: the normalisation travels as comma-separated text.
        metrics["norm-mean"] = ",".join(str(v) for v in metrics["norm-mean"])
        metrics["norm-std"] = ",".join(str(v) for v in metrics["norm-std"])
        metrics["partition-id"], metrics["num-partitions"] = self.partition_id, self.num_partitions
        examples = metrics.pop("num-examples")
        return [v.detach().numpy() for v in victim.model.state_dict().values()], examples, metrics


def make_client(context: Context) -> Any:
    """Flower's client_fn: one client per simulated node."""
    config = context.node_config
    return PrivateImagesClient(int(config["partition-id"]), int(config["num-partitions"])).to_client()


app = ClientApp(client_fn=make_client)
