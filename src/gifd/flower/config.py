"""What a Flower audit attacks and how: its config, and where it reads what the clients report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field

from gifd.config import Count, VictimName, build_config
from gifd.errors import GifdError, list_some
from gifd.plan import MAX_RESOLUTION, AttackPlan

KEY_FIX = ": have the clients report it, or map their key with AuditConfig.keys"


ARCHITECTURE_FIX = (
    "audit the architecture the federation trains (AuditConfig.victim / resolution / num_classes)"
)


#: Where the audit reads each local-training fact in a client's metrics or the train config.
DEFAULT_KEYS: dict[str, str] = {
    "num_examples": "num-examples",
    "epochs": "local-epochs",
    "local_steps": "local-steps",
    "local_batch_size": "batch-size",
    "local_lr": "lr",
    "shuffle_seed": "shuffle-seed",
    "mean": "norm-mean",
    "std": "norm-std",
}


#: File name, inside a round's directory, of the global model the server sent (a state dict).
GLOBAL_MODEL_FILE = "global_model.pt"


class AuditConfig(AttackPlan):
    """What to attack and how: the model the federation trains, the attacks, which rounds/clients."""

    #: The trained model, as a gifd victim (architecture, input side, classes, normalisation):
    #: a built-in name or your own MODULE:FACTORY (see gifd.victims). Its weights are the global
    #: model of each round; the update's metadata records the name, so `gifd attack --update` finds it.
    victim: VictimName = "lenet"
    resolution: Annotated[int, Field(ge=8, le=MAX_RESOLUTION)] = 32
    num_classes: Annotated[int, Field(ge=2)] = 10
    normalization: str = "imagenet"
    attacks: list[str] = Field(default_factory=lambda: ["gifd"])
    #: Rounds to attack (None: every round) and at most this many clients per round (None: all).
    rounds: list[Count] | None = None
    clients_per_round: Count | None = None
    #: Clients that trained on more examples than this are not attacked (inversion of a large
    #: local data set in one update is out of reach); they are listed as skipped.
    max_examples: Count = 16
    #: A client reporting another normalisation than `normalization`: attack with the client's
    #: constants ("adopt") or do not attack it ("skip"). Either way the report says so.
    on_normalization_mismatch: Literal["adopt", "skip"] = "adopt"
    #: Metric / config keys the clients use (see DEFAULT_KEYS); give only the ones that differ.
    keys: dict[str, str] = Field(default_factory=dict)

    def key(self, name: str) -> str:
        """The Flower key under which the clients report `name`."""
        return self.keys.get(name, DEFAULT_KEYS[name])


def audit_config(values: Mapping[str, Any], source: str = "audit config") -> AuditConfig:
    """Validate settings into an AuditConfig (one-line errors naming the key)."""
    config = build_config(AuditConfig, dict(values), source)  # attacks checked by AttackPlan
    unknown = sorted(set(config.keys) - set(DEFAULT_KEYS))
    if unknown:
        raise GifdError(
            f"{source}: unknown keys entries {list_some(unknown)}: use some of {', '.join(DEFAULT_KEYS)}"
        )
    return config
