"""Flower's names that the audit uses (one place that says how to install Flower when missing)."""

from gifd.errors import GifdError

try:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.common import FitIns, FitRes, Parameters, Scalar, parameters_to_ndarrays
    from flwr.server.client_manager import ClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import Strategy as LegacyStrategy
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import Strategy
    from flwr.serverapp.strategy.result import Result
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise GifdError(
        "gifd.flower needs Flower: install it with pip install 'gifd[flower]' (flwr[simulation]==1.42.0)"
    ) from exc

__all__ = [
    "ArrayRecord",
    "ClientManager",
    "ClientProxy",
    "ConfigRecord",
    "FitIns",
    "FitRes",
    "Grid",
    "LegacyStrategy",
    "Message",
    "MetricRecord",
    "Parameters",
    "Result",
    "Scalar",
    "Strategy",
    "parameters_to_ndarrays",
]
