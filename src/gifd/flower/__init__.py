"""Audit a Flower federated training: attack the client updates a strategy receives.

`audit_strategy(strategy, audit)` wraps any Flower strategy, of the Message API
(`flwr.serverapp.strategy.Strategy`: configure_train / aggregate_train with ArrayRecords) or of the
legacy API (`flwr.server.strategy.Strategy`: configure_fit / aggregate_fit with Parameters). The
wrapper records the global model sent to each client, and when the client's reply arrives it
hands (global model, reply, reported metadata) to a `FlowerAudit`, then lets the wrapped strategy
aggregate the replies exactly as it would have. The audit turns each reply into a gifd FedAvg
`Update` (delta = reply - global model) and attacks it in a background thread, so the round is
not stalled; each attacked client becomes a gifd run under out/round_RRR/client_ID, and
out/audit.json and out/report.html list every client the audit saw, updated as attacks finish.

What the client reports (Flower metrics of its reply, or the train config the server sent) is
read under the keys of `AuditConfig.keys`: examples, epochs or steps, batch size, learning rate,
shuffle seed, and its input normalisation (mean and std). A client whose normalisation differs from
the attacker's is never attacked with the wrong constants: the audit adopts the client's (default)
or skips it, and says so in the report.

Modules: `config` (AuditConfig, the report keys), `audit` (FlowerAudit), `strategies` (the
wrappers and `audit_strategy`), `records` (reading Flower's records and metrics).
"""

from gifd.flower.audit import FlowerAudit, TruthFn
from gifd.flower.config import DEFAULT_KEYS, GLOBAL_MODEL_FILE, AuditConfig, audit_config
from gifd.flower.records import ClientRound
from gifd.flower.strategies import AuditedLegacyStrategy, AuditedStrategy, audit_strategy

__all__ = [
    "DEFAULT_KEYS",
    "GLOBAL_MODEL_FILE",
    "AuditConfig",
    "AuditedLegacyStrategy",
    "AuditedStrategy",
    "ClientRound",
    "FlowerAudit",
    "TruthFn",
    "audit_config",
    "audit_strategy",
]
