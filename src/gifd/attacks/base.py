"""What every attack shares: the attacker's view, gradient matching, results, progress, registry.

The attacker sees a `Target`: the victim (architecture and weights: white-box), the shared
`Update`, and the labels it inferred (or was disclosed). It never sees the private images; the
types keep ground truth out (only `gifd.metrics` receives it).
"""

from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm.auto import tqdm

from gifd.attacks.objectives import GradientDistance, gradient_distance
from gifd.client import Update, validate_update
from gifd.config import Count, NonNegative, Positive, build_config
from gifd.defenses import Defense
from gifd.errors import GifdError
from gifd.fedavg import LocalTraining, simulate_local_training
from gifd.registry import Registry
from gifd.victims import Victim


class AttackConfig(BaseModel):
    """Settings shared by every attack; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    steps: Count = 1000
    restarts: Count = 4
    lr: Positive = 0.1
    distance: GradientDistance = "cosine"
    #: Optional weight per gradient tensor (in the victim's parameter order).
    layer_weights: list[NonNegative] | None = None
    #: Log (and record the loss curve) every this many steps.
    log_every: Count = 25
    #: Compute the restarts' gradient losses as one batched computation (torch.func vmap over the
    #: restarts); false: one restart after another. Both give the same numbers up to float
    #: rounding; the sequential loop stays for comparison and for victims vmap cannot batch.
    batched: bool = True


@dataclass
class Target:
    """The attacker's view of one client update."""

    victim: Victim
    update: Update
    labels: Tensor
    #: The attacker's model of the client's defense (None: it assumes none, i.e. oblivious).
    defense: Defense | None = None

    def __post_init__(self) -> None:
        validate_update(self.update, self.victim)
        if self.labels.numel() != self.update.batch_size:
            raise GifdError(f"{self.labels.numel()} labels given for a batch of {self.update.batch_size}")

    @property
    def batch_size(self) -> int:
        return self.update.batch_size

    @property
    def device(self) -> torch.device:
        return self.victim.device


class GradientMatcher:
    """Gradient-matching loss of dummy inputs against the shared update (differentiable).

    The dummy update is what the client would have sent for the dummy inputs and the attacker's
    labels: the gradient of the mean cross-entropy (FedSGD), or the weight delta of the same local
    SGD steps unrolled differentiably (FedAvg, when the update is a delta), passed through the
    attacker's model of the client's defense (`target.defense`; none when oblivious). It is
    computed with create_graph so its distance to the target can be back-propagated to the inputs
    (the double backward of every gradient inversion attack).
    """

    def __init__(
        self,
        target: Target,
        distance: GradientDistance = "cosine",
        layer_weights: Sequence[float] | None = None,
    ):
        self.target = target
        self.victim = target.victim
        self.params = [p for _, p in self.victim.named_parameters()]
        self.target_tensors = [t.to(self.victim.device) for t in target.update.ordered(self.victim)]
        self.labels = target.labels.to(self.victim.device)
        self.distance = distance
        self.layer_weights = layer_weights
        self.names = [name for name, _ in self.victim.named_parameters()]
        self.defense = target.defense
        self.local = LocalTraining.from_update(target.update) if target.update.kind == "delta" else None
        self._batched_failure: str | None = None
        self._affine_twin: tuple[nn.Module, nn.Module] | None = None

    def dummy_gradient(self, inputs: Tensor) -> list[Tensor]:
        """The gradient the client would send for normalised `inputs` and the attacker's labels."""
        loss = F.cross_entropy(self.victim.model(inputs), self.labels)
        return list(torch.autograd.grad(loss, self.params, create_graph=True))

    def dummy_update(self, inputs: Tensor) -> list[Tensor]:
        """The update the client would send for normalised `inputs`, as the attacker models it."""
        if self.local is not None:
            dummy = simulate_local_training(self.victim, inputs, self.labels, self.local)
        else:
            replaced = self.defense.dummy_gradient(self.victim, inputs, self.labels) if self.defense else None
            dummy = replaced if replaced is not None else self.dummy_gradient(inputs)
        return self.defense.adapt(dummy, self.target_tensors, self.names) if self.defense else dummy

    def __call__(self, inputs: Tensor) -> Tensor:
        """Distance between the dummy update of `inputs` and the shared one."""
        return gradient_distance(
            self.dummy_update(inputs), self.target_tensors, self.distance, self.layer_weights
        )

    def sequential_losses(self, inputs: Tensor, restarts: int) -> Tensor:
        """The loss of each restart's batch, one restart after another (the reference loop).

        `inputs` stacks the restarts along dim 0: restart r is rows r*N..(r+1)*N. Under
        `torch.no_grad()` it only scores (the result carries no graph).
        """
        n = self._batch_rows(inputs, restarts)
        scoring_only = not torch.is_grad_enabled()
        with torch.enable_grad():  # the dummy gradient needs autograd even when only scoring
            losses = torch.stack([self(inputs[r * n : (r + 1) * n]) for r in range(restarts)])
        return losses.detach() if scoring_only else losses

    def restart_losses(self, inputs: Tensor, restarts: int) -> Tensor:
        """The loss of each restart's batch, shape (restarts,), as ONE batched computation.

        `inputs` stacks the restarts along dim 0 (restart r is rows r*N..(r+1)*N). Each restart
        still gets its own dummy gradient: the gradient of its mean cross-entropy w.r.t. the
        victim's parameters (`torch.func.grad` over `functional_call`) and its distance to the
        target are `vmap`ped over the restarts, so the victim runs once on all R*N inputs instead of
        R times on N. The numbers equal `sequential_losses` up to float rounding, and the result is
        differentiable w.r.t. `inputs` (the double backward goes through torch.func). Works under
        `torch.no_grad()` too (then it only scores). If vmap cannot batch the victim (an op without a
        batching rule, data-dependent control flow, in-place updates of buffers as in a train-mode
        batch norm, out of memory), it warns once and uses the sequential loop from then on. A
        target that models a client defense, or a FedAvg delta, is matched by the sequential loop.

        Eval-mode batch norms run as the per-channel affine map they compute, (x - mean) * weight /
        sqrt(var + eps) + bias, in a copy of the victim that shares its tensors: the same function,
        but torch.func's batching rule for batch norm costs 20-30 % of a ConvNet step on a CPU.
        """
        n = self._batch_rows(inputs, restarts)
        if self._batched_failure is None and self.defense is None and self.local is None:
            try:
                stacked = inputs.reshape(restarts, n, *inputs.shape[1:])
                model = self._functional_model()
                return vmap(lambda one: self._one_restart_loss(one, model))(stacked)
            except (RuntimeError, NotImplementedError) as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                self._batched_failure = reason
                warnings.warn(
                    f"batched restarts do not work for victim {self.victim.name!r} ({reason}); computing "
                    "the restarts one after another instead (same numbers, slower): set batched: false "
                    "to skip the attempt",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.sequential_losses(inputs, restarts)

    @property
    def batched_failure(self) -> str | None:
        """Why batched restarts fell back to the sequential loop (None: they did not)."""
        return self._batched_failure

    def _one_restart_loss(self, inputs: Tensor, model: nn.Module) -> Tensor:
        """One restart's gradient loss in torch.func form (vmapped by `restart_losses`)."""
        params = {name: p.detach() for name, p in self.victim.named_parameters()}

        def cross_entropy(parameters: dict[str, Tensor]) -> Tensor:
            logits = functional_call(model, parameters, (inputs,))
            return F.cross_entropy(logits, self.labels)

        grads = torch.func.grad(cross_entropy)(params)
        return gradient_distance(list(grads.values()), self.target_tensors, self.distance, self.layer_weights)

    def _functional_model(self) -> nn.Module:
        """The victim with its eval-mode batch norms as affine maps (built once; the victim itself
        while any batch norm is in training mode or has no running statistics)."""
        model = self.victim.model
        norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        if not norms or any(m.training or m.running_mean is None or m.running_var is None for m in norms):
            return model
        if self._affine_twin is None or self._affine_twin[0] is not model:
            self._affine_twin = (model, affine_batch_norm_copy(model))
        return self._affine_twin[1]

    def _batch_rows(self, inputs: Tensor, restarts: int) -> int:
        """N, the rows of one restart, after checking that `inputs` holds `restarts` batches of N."""
        n = self.labels.numel()
        if restarts < 1 or inputs.shape[0] != restarts * n:
            raise GifdError(
                f"{inputs.shape[0]} stacked inputs do not hold {restarts} restarts of the batch of {n}: "
                "stack each restart's batch along dim 0"
            )
        return n


class AffineBatchNorm(nn.Module):
    """An eval-mode batch norm as the per-channel affine map it computes (vmap-friendly).

    Holds the original module's parameters and running statistics (the same tensors, under the
    same names), so `functional_call` with the victim's parameter names works on it.
    """

    def __init__(self, norm: _BatchNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias
        self.register_buffer("running_mean", norm.running_mean)
        self.register_buffer("running_var", norm.running_var)
        if norm.num_batches_tracked is not None:
            self.register_buffer("num_batches_tracked", norm.num_batches_tracked)

    def forward(self, x: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (x.ndim - 2)
        assert self.running_mean is not None and self.running_var is not None
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        y = (x - self.running_mean.view(shape)) * scale.view(shape)
        return y if self.bias is None else y + self.bias.view(shape)


def affine_batch_norm_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` sharing all its parameters and buffers, with every batch norm replaced by
    `AffineBatchNorm` (the same function in eval mode)."""
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    twin = copy.deepcopy(model, shared)
    for module in list(twin.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, _BatchNorm):
                setattr(module, name, AffineBatchNorm(child))
    return twin


@dataclass
class StageResult:
    """The best images of one stage of a staged attack and their gradient losses."""

    stage: int
    name: str
    images: Tensor
    loss: float
    restart_losses: list[float]
    #: Step (counted over the whole attack) at which this stage ended, for stage marks on loss curves.
    end_step: int | None = None
    #: Steps the stage was given and the steps it ran (fewer when it stopped early on a plateau).
    budget: int | None = None
    steps: int | None = None

    @property
    def stopped_early(self) -> bool:
        return self.budget is not None and self.steps is not None and self.steps < self.budget


@dataclass
class Pruning:
    """Restarts an attack stopped running (successive halving): in which stage, after which step
    (counted over the whole attack), and which (original indices)."""

    stage: int
    step: int
    restarts: list[int]


@dataclass
class AttackResult:
    """What an attack recovered from one update.

    `images` are the best restart's reconstructions in [0, 1] at the victim's resolution.
    `restart_losses` are the final gradient-matching losses, `loss_history[r]` the loss of
    restart r at the steps in `log_steps` (for curves). Staged attacks fill `stages`; `steps` are
    the steps run per restart (fewer than the budget when a stage stopped early).
    """

    attack: str
    images: Tensor
    labels: Tensor
    restart_losses: list[float]
    best_restart: int
    loss_history: list[list[float]]
    log_steps: list[int]
    steps: int
    seconds: float
    stages: list[StageResult] = field(default_factory=list)
    #: Settings the attack resolved itself rather than took from its config (e.g. GIAS's fine-tune
    #: lr from the prior), recorded in results.json.
    settings: dict[str, Any] = field(default_factory=dict)
    #: Restarts pruned during the attack, in order (empty: every restart ran to the end).
    pruned: list[Pruning] = field(default_factory=list)

    @property
    def loss(self) -> float:
        return self.restart_losses[self.best_restart]

    def summary(self) -> dict[str, Any]:
        """JSON-friendly facts (no images)."""
        return {
            "attack": self.attack,
            "gradient_loss": self.loss,
            "restart_losses": self.restart_losses,
            "best_restart": self.best_restart,
            "labels": self.labels.tolist(),
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "loss_history": {"steps": self.log_steps, "losses": self.loss_history},
            "settings": dict(self.settings),
            "stages": [
                {
                    "stage": s.stage,
                    "name": s.name,
                    "gradient_loss": s.loss,
                    "restart_losses": s.restart_losses,
                    "end_step": s.end_step,
                    "budget": s.budget,
                    "steps": s.steps,
                    "stopped_early": s.stopped_early,
                }
                for s in self.stages
            ],
            "pruned": [{"stage": p.stage, "step": p.step, "restarts": p.restarts} for p in self.pruned],
        }


class Attack:
    """Base of all attacks: a config and `run(target, generator) -> AttackResult`."""

    name: ClassVar[str]
    Config: ClassVar[type[AttackConfig]] = AttackConfig
    #: Whether the attack searches a generative prior (then it takes `prior=` when built).
    needs_prior: ClassVar[bool] = False

    def __init__(self, config: AttackConfig | dict[str, Any] | None = None, *, progress: bool = True):
        if isinstance(config, dict) or config is None:
            config = build_config(self.Config, config or {}, f"{self.name} settings")
        if not isinstance(config, self.Config):
            raise GifdError(f"{self.name} takes a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        self.progress = progress

    def check(self) -> None:
        """Raise a GifdError if the settings cannot work with this attack's inputs (e.g. its
        prior); called before any compute. Settings alone are checked by the Config."""

    def run(self, target: Target, generator: torch.Generator) -> AttackResult:
        raise NotImplementedError


ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: register an attack under its `name`."""
    ATTACKS.register(cls.name)(cls)
    return cls


# ------------------------------------------------------------------------------- shared loop parts
def clamp_bounds(victim: Victim, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-channel bounds of the normalised input space (images of [0, 1])."""
    zeros = torch.zeros(1, 3, 1, 1, device=device)
    return victim.normalize(zeros), victim.normalize(zeros + 1)


def to_victim_images(images: Tensor, resolution: int) -> Tensor:
    """Generator output in [-1, 1] -> [0, 1] at the victim's resolution.

    Shrinking uses area (average) pooling, as the paper does; enlarging uses bilinear interpolation.
    """
    images = (images + 1) / 2
    side = images.shape[-1]
    if side > resolution:
        return F.interpolate(images, size=(resolution, resolution), mode="area")
    if side < resolution:
        return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return images


@dataclass
class LossLog:
    """Gradient losses recorded at log intervals, per restart (host syncs only there)."""

    restarts: int
    steps: list[int] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.losses = [[] for _ in range(self.restarts)]

    def record(self, step: int, per_restart: Tensor) -> list[float]:
        values = per_restart.detach().double().cpu().tolist()
        self.steps.append(step)
        for r, v in enumerate(values):
            self.losses[r].append(v)
        return values


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool) -> Iterator[Callable[[int, float], None]]:
    """A tqdm bar with the best loss and ETA; yields `advance(steps, best_loss)`."""
    bar = tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, mininterval=0.5)

    def advance(steps: int, loss: float) -> None:
        if not math.isnan(loss):
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.update(steps)

    try:
        yield advance
    finally:
        bar.close()


class Stopwatch:
    """Wall time of an attack, synchronising CUDA so GPU work is counted."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def elapsed(self) -> float:
        return self._now() - self.start
