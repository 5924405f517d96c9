"""BigGAN-deep's architecture in plain PyTorch: its config (the fields of `config.json`) and its layers.

The layers (spectral norm, conditional batch norm, GenBlock, self-attention, the generator body) keep
the parameter names of `pytorch-pretrained-biggan`, so its checkpoints load strictly into
`gifd.priors.biggan.BigGANDeep`, which cuts this network into stages.

Spectral norm is stored as torch's `nn.utils.spectral_norm` does: `weight_orig`, `weight_u`,
`weight_v`; the weight used is `weight_orig / (u . W v)` with W = weight_orig flattened to
(out, -1) and the stored u, v (torch's eval-mode rule: no power iteration). The batch-norm
statistics are read at the truncation value with the package's own rule (see `_truncation_stats`).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gifd.errors import GifdError

_WEIGHTS_FIX = (
    "pass the directory holding config.json and pytorch_model.bin of a BigGAN-deep checkpoint "
    "with --prior-weights"
)


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class BigGANConfig:
    """The fields of the package's `config.json` (defaults are the package's, i.e. the 128 px model)."""

    output_dim: int = 128
    z_dim: int = 128
    class_embed_dim: int = 128  # unused by the package too: the class embedding has z_dim entries
    channel_width: int = 128
    num_classes: int = 1000
    layers: tuple[tuple[bool, int, int], ...] = (
        (False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8),
        (True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1),
    )  # fmt: skip
    attention_layer_position: int = 8
    eps: float = 1e-4
    n_stats: int = 51

    @property
    def has_attention(self) -> bool:
        return 0 <= self.attention_layer_position < len(self.layers)

    @property
    def num_generator_layers(self) -> int:
        """Entries of `generator.layers`: the GenBlocks plus the attention layer."""
        return len(self.layers) + int(self.has_attention)

    def to_json_dict(self) -> dict[str, Any]:
        """The config as the package writes it (layers as lists)."""
        return {
            "attention_layer_position": self.attention_layer_position,
            "channel_width": self.channel_width,
            "class_embed_dim": self.class_embed_dim,
            "eps": self.eps,
            "layers": [list(layer) for layer in self.layers],
            "n_stats": self.n_stats,
            "num_classes": self.num_classes,
            "output_dim": self.output_dim,
            "z_dim": self.z_dim,
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any], source: str = "config.json") -> BigGANConfig:
        """Parse and check a config dict; missing optional keys take the package's defaults."""
        if not isinstance(data, Mapping):
            raise GifdError(f"{source} is not a JSON object: {_WEIGHTS_FIX}")
        for key in ("output_dim", "layers"):
            if key not in data:
                raise GifdError(
                    f"{source} has no {key!r} entry, so it is not a BigGAN-deep config: {_WEIGHTS_FIX}"
                )
        defaults = cls()
        values: dict[str, Any] = {}
        for key in (
            "output_dim",
            "z_dim",
            "class_embed_dim",
            "channel_width",
            "num_classes",
            "attention_layer_position",
            "n_stats",
        ):
            value = data.get(key, getattr(defaults, key))
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or (value < 1 and key != "attention_layer_position")
            ):
                raise GifdError(f"{source}: {key} must be a positive integer, got {value!r}: {_WEIGHTS_FIX}")
            values[key] = value
        eps = data.get("eps", defaults.eps)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise GifdError(f"{source}: eps must be a positive number, got {eps!r}: {_WEIGHTS_FIX}")
        layers = []
        raw_layers = data["layers"]
        if not isinstance(raw_layers, list) or not raw_layers:
            raise GifdError(
                f"{source}: layers must be a non-empty list of [up_sample, in, out]: {_WEIGHTS_FIX}"
            )
        for index, layer in enumerate(raw_layers):
            ok = (
                isinstance(layer, (list, tuple))
                and len(layer) == 3
                and isinstance(layer[0], bool)
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in layer[1:])
            )
            if not ok:
                raise GifdError(
                    f"{source}: layers[{index}] = {layer!r} is not [up_sample, in, out]: {_WEIGHTS_FIX}"
                )
            layers.append((layer[0], layer[1], layer[2]))
        config = cls(layers=tuple(layers), eps=float(eps), **values)
        try:
            config.check(source)
        except GifdError as exc:
            raise GifdError(f"{exc}: {_WEIGHTS_FIX}") from None
        return config

    def check(self, source: str = "config") -> None:
        """Raise a GifdError if the layers cannot form a BigGAN-deep generator of `output_dim` px."""
        ch = self.channel_width
        previous_out = 16
        for index, (_, c_in, c_out) in enumerate(self.layers):
            if c_in != previous_out:
                raise GifdError(
                    f"{source}: layers[{index}] takes {c_in} x ch channels but gets {previous_out}"
                )
            if c_out != c_in and 2 * c_out != c_in:
                raise GifdError(
                    f"{source}: layers[{index}] maps {c_in} -> {c_out}; BigGAN-deep keeps or halves"
                )
            if (ch * c_in) % 4 or (index == self.attention_layer_position and (ch * c_in) % 8):
                raise GifdError(
                    f"{source}: layers[{index}] has {ch * c_in} input channels, not a multiple of 4 (8)"
                )
            previous_out = c_out
        if ch * self.layers[-1][2] < 3:
            raise GifdError(f"{source}: the last layer has fewer than 3 channels")
        side = 4 * 2 ** sum(up for up, _, _ in self.layers)
        if side != self.output_dim:
            raise GifdError(
                f"{source}: the layers produce {side} px images but output_dim is {self.output_dim}"
            )


#: The configs of the three published BigGAN-deep checkpoints (pytorch_pretrained_biggan/
#: convert_tf_to_pytorch.py: BigGAN128, BigGAN256, BigGAN512).
_DEEP_LAYERS_256 = (
    (False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 8),
    (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1),
)  # fmt: skip
PUBLISHED_CONFIGS: dict[int, BigGANConfig] = {
    128: BigGANConfig(),
    256: BigGANConfig(output_dim=256, layers=_DEEP_LAYERS_256),
    512: BigGANConfig(output_dim=512, layers=(*_DEEP_LAYERS_256, (False, 1, 1), (True, 1, 1))),
}


# --------------------------------------------------------------------------------------------------
# Layers


class _SpectralNormMixin:
    """Weight = weight_orig / sigma with sigma = u . (W v), W = weight_orig as (out, -1).

    This is torch's `spectral_norm` in eval mode; u and v are the checkpoint's and stay fixed (no
    power iteration, in training mode either: the prior is only run, never trained).

    While weight_orig needs no gradient (the attacks keep the generator fixed), the normalised
    weight is cached: recomputing it would copy every weight at every step (~0.3 s per pass of the
    128 px model on 2 CPU threads). The cache is keyed on the identity and version counter of
    weight_orig, u and v, so an in-place change, `load_state_dict` or `.to()` invalidates it.
    """

    weight_orig: nn.Parameter
    weight_u: Tensor
    weight_v: Tensor

    def _init_spectral_norm(self, module: nn.Module, shape: tuple[int, ...]) -> None:
        module.weight_orig = nn.Parameter(torch.empty(shape))
        module.register_buffer("weight_u", torch.empty(shape[0]))
        module.register_buffer("weight_v", torch.empty(math.prod(shape[1:])))
        object.__setattr__(module, "_sn_cache", None)

    def _compute_normalized_weight(self) -> Tensor:
        w = self.weight_orig
        sigma = torch.dot(self.weight_u, torch.mv(w.reshape(w.shape[0], -1), self.weight_v))
        return w / sigma

    def normalized_weight(self) -> Tensor:
        """weight_orig / sigma (cached while weight_orig needs no gradient)."""
        sources = (self.weight_orig, self.weight_u, self.weight_v)
        if sources[0].requires_grad or torch.is_inference_mode_enabled():
            return self._compute_normalized_weight()
        try:
            versions = tuple(t._version for t in sources)
        except RuntimeError:  # tensors inside torch.func transforms have no version counter
            return self._compute_normalized_weight()
        cache = self._sn_cache
        if cache is not None:
            refs, cached_versions, weight = cache
            if cached_versions == versions and all(r() is t for r, t in zip(refs, sources, strict=True)):
                return weight
        weight = self._compute_normalized_weight()
        object.__setattr__(self, "_sn_cache", (tuple(weakref.ref(t) for t in sources), versions, weight))
        return weight


class SNLinear(_SpectralNormMixin, nn.Module):
    """Spectrally normalised Linear (parameter names as torch's `spectral_norm(nn.Linear)`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self._init_spectral_norm(self, (out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)


class SNConv2d(_SpectralNormMixin, nn.Module):
    """Spectrally normalised Conv2d, stride 1, 'same' padding for odd kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__()
        self._init_spectral_norm(self, (out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.padding = kernel_size // 2

    def forward(self, x: Tensor, out_channels: int | None = None) -> Tensor:
        """The convolution; `out_channels` keeps only the first output channels (same numbers, less work).

        A 1x1 convolution runs as the matrix product it is (weight @ x per sample): on a CPU,
        torch's convolution takes a slower path for these at batch 1, forward and backward.
        """
        weight, bias = self.normalized_weight(), self.bias
        if out_channels is not None:
            weight = weight[:out_channels]
            bias = bias[:out_channels] if bias is not None else None
        if self.padding == 0 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # channels-last (the CPU layout, see BigGANDeep.channels_last): a Linear over the channels
            return F.linear(x.permute(0, 2, 3, 1), weight.reshape(weight.shape[0], -1), bias).permute(
                0, 3, 1, 2
            )
        if self.padding == 0:  # 1x1
            n, c, height, width = x.shape
            flat = x.reshape(n, c, height * width)
            matrix = weight.reshape(1, weight.shape[0], c).expand(n, -1, -1)
            if bias is None:
                out = torch.bmm(matrix, flat)
            else:
                out = torch.baddbmm(bias.view(1, -1, 1).expand(n, -1, height * width), matrix, flat)
            return out.view(n, -1, height, width)
        return F.conv2d(x, weight, bias, padding=self.padding)


def _truncation_stats(running: Tensor, truncation: float) -> Tensor:
    """The statistics row for `truncation`, with the package's rule (kept so images match its output).

    Rows hold statistics for truncation k / (n_stats - 1). With `coef, k = modf(t / step)`, the
    package uses row k when coef == 0 and otherwise `row_k * coef + row_{k+1} * (1 - coef)` (weights
    swapped relative to linear interpolation; reproduced as is).
    """
    step = 1.0 / (running.shape[0] - 1)
    coef, start = math.modf(truncation / step)
    start = int(start)
    if coef != 0.0:
        return running[start] * coef + running[start + 1] * (1 - coef)
    return running[start]


class ConditionalBatchNorm(nn.Module):
    """Eval-mode batch norm with stored statistics and a per-sample affine from the condition vector.

    out = (x - mean) / sqrt(var + eps) * (1 + scale(c)) + offset(c), computed as the per-sample,
    per-channel affine map x * a + b (a, b from the small statistics and condition tensors): one
    pass over the feature map instead of four, forward and backward.
    """

    def __init__(self, num_features: int, condition_dim: int, n_stats: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("running_means", torch.empty(n_stats, num_features))
        self.register_buffer("running_vars", torch.empty(n_stats, num_features))
        self.scale = SNLinear(condition_dim, num_features, bias=False)
        self.offset = SNLinear(condition_dim, num_features, bias=False)

    def forward(self, x: Tensor, condition: Tensor, truncation: float) -> Tensor:
        mean = _truncation_stats(self.running_means, truncation)
        var = _truncation_stats(self.running_vars, truncation)
        weight = (1 + self.scale(condition)) / torch.sqrt(var + self.eps)  # (N, C)
        bias = self.offset(condition) - mean * weight
        return torch.addcmul(bias[:, :, None, None], x, weight[:, :, None, None])


class BatchNormWithStats(nn.Module):
    """The final, unconditional batch norm (eval mode, statistics chosen by truncation)."""

    def __init__(self, num_features: int, n_stats: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("running_means", torch.empty(n_stats, num_features))
        self.register_buffer("running_vars", torch.empty(n_stats, num_features))
        self.weight = nn.Parameter(torch.empty(num_features))
        self.bias = nn.Parameter(torch.empty(num_features))

    def forward(self, x: Tensor, truncation: float) -> Tensor:
        mean = _truncation_stats(self.running_means, truncation)
        var = _truncation_stats(self.running_vars, truncation)
        return F.batch_norm(x, mean, var, self.weight, self.bias, training=False, momentum=0.0, eps=self.eps)


class GenBlock(nn.Module):
    """BigGAN-deep residual block: 4 x (conditional BN, ReLU, conv) through an in/4 bottleneck.

    Nearest up-sampling (x2) happens before conv_1 and on the skip path; when the block halves the
    channels, the skip path keeps the first half of the input channels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        condition_dim: int,
        up_sample: bool,
        n_stats: int,
        eps: float,
    ) -> None:
        super().__init__()
        self.up_sample = up_sample
        self.out_channels = out_channels
        middle = in_channels // 4
        self.bn_0 = ConditionalBatchNorm(in_channels, condition_dim, n_stats, eps)
        self.conv_0 = SNConv2d(in_channels, middle, 1)
        self.bn_1 = ConditionalBatchNorm(middle, condition_dim, n_stats, eps)
        self.conv_1 = SNConv2d(middle, middle, 3)
        self.bn_2 = ConditionalBatchNorm(middle, condition_dim, n_stats, eps)
        self.conv_2 = SNConv2d(middle, middle, 3)
        self.bn_3 = ConditionalBatchNorm(middle, condition_dim, n_stats, eps)
        self.conv_3 = SNConv2d(middle, out_channels, 1)

    def forward(self, x: Tensor, condition: Tensor, truncation: float) -> Tensor:
        h = self.conv_0(F.relu(self.bn_0(x, condition, truncation)))
        h = F.relu(self.bn_1(h, condition, truncation))
        if self.up_sample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv_1(h)
        h = self.conv_2(F.relu(self.bn_2(h, condition, truncation)))
        h = self.conv_3(F.relu(self.bn_3(h, condition, truncation)))
        skip = x[:, : self.out_channels] if self.out_channels != x.shape[1] else x
        if self.up_sample:
            skip = F.interpolate(skip, scale_factor=2, mode="nearest")
        return h + skip


class SelfAttn(nn.Module):
    """SAGAN self-attention: keys and values max-pooled 2x2, residual weight `gamma`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.snconv1x1_theta = SNConv2d(channels, channels // 8, 1, bias=False)
        self.snconv1x1_phi = SNConv2d(channels, channels // 8, 1, bias=False)
        self.snconv1x1_g = SNConv2d(channels, channels // 2, 1, bias=False)
        self.snconv1x1_o_conv = SNConv2d(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.empty(1))

    def forward(self, x: Tensor) -> Tensor:
        n, ch, height, width = x.shape
        theta = self.snconv1x1_theta(x).reshape(n, ch // 8, height * width)
        phi = F.max_pool2d(self.snconv1x1_phi(x), 2).reshape(n, ch // 8, height * width // 4)
        attention = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)  # (n, hw, hw/4)
        g = F.max_pool2d(self.snconv1x1_g(x), 2).reshape(n, ch // 2, height * width // 4)
        attended = torch.bmm(g, attention.transpose(1, 2)).reshape(n, ch // 2, height, width)
        return x + self.gamma * self.snconv1x1_o_conv(attended)


class Generator(nn.Module):
    """`generator.*` of the checkpoint: gen_z, the layers, the output head."""

    def __init__(self, config: BigGANConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channel_width
        condition_dim = 2 * config.z_dim
        self.gen_z = SNLinear(condition_dim, 4 * 4 * 16 * ch)
        layers: list[nn.Module] = []
        for index, (up_sample, c_in, c_out) in enumerate(config.layers):
            if index == config.attention_layer_position:
                layers.append(SelfAttn(ch * c_in))
            layers.append(
                GenBlock(ch * c_in, ch * c_out, condition_dim, up_sample, config.n_stats, config.eps)
            )
        self.layers = nn.ModuleList(layers)
        self.bn = BatchNormWithStats(ch, config.n_stats, config.eps)
        self.conv_to_rgb = SNConv2d(ch, ch, 3)

    def stem(self, condition: Tensor) -> Tensor:
        """gen_z and the reshape: the weights are in TF order (N, 4, 4, C), hence the permute."""
        h = self.gen_z(condition)
        return h.reshape(-1, 4, 4, 16 * self.config.channel_width).permute(0, 3, 1, 2).contiguous()

    def run_layer(self, index: int, h: Tensor, condition: Tensor, truncation: float) -> Tensor:
        layer = self.layers[index]
        if isinstance(layer, GenBlock):
            return layer(h, condition, truncation)
        return layer(h)

    def head(self, h: Tensor, truncation: float) -> Tensor:
        """BN, ReLU, conv_to_rgb (only the 3 image channels are computed), tanh."""
        h = F.relu(self.bn(h, truncation))
        return torch.tanh(self.conv_to_rgb(h, out_channels=3))


__all__ = [
    "PUBLISHED_CONFIGS",
    "BatchNormWithStats",
    "BigGANConfig",
    "ConditionalBatchNorm",
    "GenBlock",
    "Generator",
    "SNConv2d",
    "SNLinear",
    "SelfAttn",
]
