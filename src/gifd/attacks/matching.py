"""The gradient matcher: the dummy batch's update against the received one, for one or many restarts."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from gifd.attacks.batchnorm import affine_batch_norm_copy
from gifd.attacks.objectives import GradientDistance, gradient_distance
from gifd.attacks.target import Target
from gifd.errors import GifdError
from gifd.fedavg import LocalTraining, simulate_local_training


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
