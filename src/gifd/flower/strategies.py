"""Wrapping a Flower strategy (Message API or legacy) so that every reply is handed to the audit
before the strategy aggregates the replies as it would have."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gifd.errors import GifdError
from gifd.flower._flwr import (
    ArrayRecord,
    ClientManager,
    ClientProxy,
    ConfigRecord,
    FitIns,
    FitRes,
    Grid,
    LegacyStrategy,
    Message,
    MetricRecord,
    Parameters,
    Result,
    Scalar,
    Strategy,
    parameters_to_ndarrays,
)
from gifd.flower.audit import FlowerAudit
from gifd.flower.records import single_record


class _Wrapper:
    """Reads of attributes the wrapper lacks go to the wrapped strategy (fraction_train, ...)."""

    def __getattr__(self, name: str) -> Any:
        strategy = self.__dict__.get("strategy")
        if strategy is None:
            raise AttributeError(name)
        return getattr(strategy, name)


class AuditedStrategy(_Wrapper, Strategy):
    """A Message-API strategy that attacks the updates its wrapped strategy aggregates, unchanged."""

    def __init__(self, strategy: Strategy, audit: FlowerAudit) -> None:
        self.strategy = strategy
        self.audit = audit

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        for message in messages:
            content, client = message.content, str(message.metadata.dst_node_id)
            settings = {k: v for record in content.config_records.values() for k, v in record.items()}
            try:
                sent = single_record(content.array_records, "ArrayRecord", "train message")
            except GifdError as exc:
                self.audit.refused(server_round, client, str(exc))
                continue
            self.audit.sent(server_round, client, sent, settings)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for reply in replies:
            if reply.has_error():
                continue
            content, client = reply.content, str(reply.metadata.src_node_id)
            try:
                arrays = single_record(content.array_records, "ArrayRecord", "train reply")
            except GifdError as exc:
                self.audit.refused(server_round, client, str(exc))
                arrays = {}
            metrics = {k: v for record in content.metric_records.values() for k, v in record.items()}
            metrics.update({k: v for record in content.config_records.values() for k, v in record.items()})
            self.audit.received(server_round, client, arrays, metrics)
        self.audit.end_round(server_round)
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()

    def start(self, grid: Grid, initial_arrays: ArrayRecord, *args: Any, **kwargs: Any) -> Result:
        """The wrapped strategy's training loop; returns once the audit's attacks have finished."""
        result = super().start(grid, initial_arrays, *args, **kwargs)
        self.audit.close()
        return result


class AuditedLegacyStrategy(_Wrapper, LegacyStrategy):
    """A legacy-API strategy (configure_fit / aggregate_fit) that attacks the updates it aggregates."""

    def __init__(self, strategy: LegacyStrategy, audit: FlowerAudit) -> None:
        self.strategy = strategy
        self.audit = audit

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        for proxy, fit in instructions:
            self.audit.sent(server_round, str(proxy.cid), parameters_to_ndarrays(fit.parameters), fit.config)
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        for proxy, fit in results:
            reported = {**fit.metrics, self.audit.config.key("num_examples"): fit.num_examples}
            self.audit.received(
                server_round, str(proxy.cid), parameters_to_ndarrays(fit.parameters), reported
            )
        self.audit.end_round(server_round)
        return self.strategy.aggregate_fit(server_round, results, failures)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> Any:
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> Any:
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters) -> Any:
        return self.strategy.evaluate(server_round, parameters)


def audit_strategy(
    strategy: Strategy | LegacyStrategy, audit: FlowerAudit
) -> AuditedStrategy | AuditedLegacyStrategy:
    """Wrap `strategy` (Message API or legacy) so that `audit` attacks the client updates it receives."""
    if isinstance(strategy, Strategy):
        return AuditedStrategy(strategy, audit)
    if isinstance(strategy, LegacyStrategy):
        return AuditedLegacyStrategy(strategy, audit)
    raise GifdError(
        f"cannot audit a {type(strategy).__name__}: pass a Flower strategy (flwr.serverapp.strategy or "
        "flwr.server.strategy)"
    )
