"""The clients (Flower Message API): train on private images, reply with weights and metadata."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_audit.task import build_model, partition, train

app = ClientApp()


@app.train()
def train_on_private_images(msg: Message, context: Context) -> Message:
    """One round of local training from the global model the server sent."""
    settings = dict(msg.content["config"])
    victim = build_model(settings)
    victim.model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    pid, count = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    data = partition(pid, count, int(settings["images-per-client"]), int(settings["resolution"]))
    metrics = train(victim, data, settings)
    # Simulation only: lets the audit score reconstructions against this client's images.
    metrics["partition-id"], metrics["num-partitions"] = pid, count
    reply = RecordDict({"arrays": ArrayRecord(victim.model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=reply, reply_to=msg)
