"""Batch-norm twins: a victim copy whose batch-norm layers apply their running statistics as a fixed
affine map, so per-restart gradients can be vmapped (no in-place buffer updates)."""

from __future__ import annotations

import copy
import itertools

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


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
