"""BigGAN-deep (128, 256, 512 px) in plain PyTorch, reading the checkpoints of `pytorch-pretrained-biggan`.

Checkpoint format (the package's `BigGAN.from_pretrained` on a local directory): a directory holding
`config.json` (keys `output_dim`, `z_dim`, `class_embed_dim`, `channel_width`, `num_classes`, `layers`
as [up-sample?, in-ratio, out-ratio] triples, `attention_layer_position`, `eps`, `n_stats`) and
`pytorch_model.bin`, a state dict with the package's parameter names:

- `embeddings.weight` (z_dim x num_classes = 128 x 1000): a bias-free Linear applied to a one-hot
  class vector, i.e. the class embedding;
- `generator.gen_z.*`: spectrally normalised Linear 256 -> 4*4*16*ch (ch = channel_width = 128);
- `generator.layers.N.*`: GenBlocks (`bn_0..bn_3` conditional batch norms, each with spectrally
  normalised bias-free Linears `scale` and `offset` on the 256-d condition vector and per-truncation
  statistics `running_means`/`running_vars` of shape n_stats x C; `conv_0..conv_3`: 1x1, 3x3, 3x3, 1x1
  convolutions through a bottleneck of in/4 channels), and one `SelfAttn` (`snconv1x1_theta`,
  `_phi`, `_g`, `_o_conv`, `gamma`) inserted before config layer `attention_layer_position`;
- `generator.bn.*` (unconditional: `weight`, `bias`, `running_means`, `running_vars`) and
  `generator.conv_to_rgb.*` (3x3, ch -> ch; the first 3 channels are the image).

Spectral norm is stored as torch's `nn.utils.spectral_norm` does: `weight_orig`, `weight_u`,
`weight_v`; the weight used is `weight_orig / (u . W v)` with W = weight_orig flattened to
(out, -1) and the stored u, v (torch's eval-mode rule: no power iteration). The batch-norm
statistics are read at the truncation value with the package's own rule (see `_truncation_stats`).

Condition vector: `cond = cat(z, embeddings(one_hot(label)))` (256-d). It feeds `gen_z` and every
conditional batch norm.

Stages (GIFD's split, as in the authors' code: stage i starts the generator at `layers[i]`): stage 0
is `{"z": N x 128}`; stage i = 1 .. L-1 (L = number of `generator.layers`: 11 / 13 / 15 for
128 / 256 / 512 px) is `{"h": output of generator.layers[i-1]}`, where module 1 = gen_z + reshape +
layers[0], module i = layers[i-1], and the last module = layers[L-1] + BN + ReLU + conv_to_rgb + tanh.
For 256 px (13 stages, 13 modules):

    stage 0   z                       128
    stage 1   GenBlock 0  (layers.0)  2048 x 4 x 4
    stage 2   GenBlock 1  (layers.1)  2048 x 8 x 8
    stage 3   GenBlock 2  (layers.2)  2048 x 8 x 8
    stage 4   GenBlock 3  (layers.3)  1024 x 16 x 16
    stage 5   GenBlock 4  (layers.4)  1024 x 16 x 16
    stage 6   GenBlock 5  (layers.5)  1024 x 32 x 32
    stage 7   GenBlock 6  (layers.6)  1024 x 32 x 32
    stage 8   GenBlock 7  (layers.7)   512 x 64 x 64
    stage 9   attention   (layers.8)   512 x 64 x 64
    stage 10  GenBlock 8  (layers.9)   512 x 64 x 64
    stage 11  GenBlock 9  (layers.10)  256 x 128 x 128
    stage 12  GenBlock 10 (layers.11)  256 x 128 x 128
    (module 13: GenBlock 11 -> 128 x 256 x 256, then BN, ReLU, conv_to_rgb, tanh -> 3 x 256 x 256)

(The paper's "down to 128x128x128" names the spatial size; the checkpoint has 256 channels there.)

Conditioning at the feature stages: the condition vector feeds every later GenBlock, so it cannot be
dropped. As in GIFD, only h is optimised from stage 1 on; the z found at stage 0 is frozen and
carried along as a variable of every later stage (`{"h": ..., "z": ...}`), which `trainable(stage)`
leaves out, so attacks neither optimise nor project it.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gifd.errors import GifdError, load_torch_file
from gifd.priors.base import Context, PriorEntry, StagedGenerator, Variables, register_prior

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "pytorch_model.bin"
_WEIGHTS_FIX = (
    "pass the directory holding config.json and pytorch_model.bin of a BigGAN-deep checkpoint "
    "with --prior-weights"
)
_FIX_SENTENCE = _WEIGHTS_FIX[0].upper() + _WEIGHTS_FIX[1:]


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


# --------------------------------------------------------------------------------------------------
# The staged prior


class BigGANDeep(StagedGenerator):
    """BigGAN-deep as a staged, class-conditional prior (see the module docstring for the stages).

    Stage 0: z ~ N(0, I) (128-d, as in GIFD; the package's own sampler draws truncated normals
    scaled by the truncation instead), kept on the sphere of its starting norm by the attack.
    `truncation` only picks the batch-norm statistics (1.0, the last row, as GIFD uses).
    """

    sphere_latent = True

    def gias_finetune_lr(self) -> float:
        """1e-5: GIAS's value for BigGAN (Jeon et al. 2021)."""
        return 1e-5

    def __init__(self, config: BigGANConfig, truncation: float = 1.0) -> None:
        super().__init__()
        config.check()
        if not 0.0 < truncation <= 1.0:
            raise GifdError(f"BigGAN truncation must be in (0, 1], got {truncation}")
        self.config = config
        self.truncation = float(truncation)
        self.resolution = config.output_dim
        self.latent_dim = config.z_dim
        self.num_classes = config.num_classes
        self.embeddings = nn.Linear(config.num_classes, config.z_dim, bias=False)
        self.generator = Generator(config)
        #: Run the feature maps in channels-last memory format on the CPU: oneDNN's convolutions
        #: then need no layout reorders (same numbers up to float rounding; variables and images
        #: stay in the standard layout). False: the standard layout everywhere.
        self.channels_last = True

    # ----- structure

    @property
    def num_stages(self) -> int:
        return self.config.num_generator_layers

    def _layer_names(self) -> list[str]:
        names, block = [], 0
        for layer in self.generator.layers:
            if isinstance(layer, GenBlock):
                names.append(f"GenBlock {block}")
                block += 1
            else:
                names.append("self-attention")
        return names

    @property
    def stage_names(self) -> list[str]:
        names = ["latent z"]
        for stage, layer_name in enumerate(self._layer_names()[:-1], start=1):
            c, h, w = self.stage_shapes(stage)["h"]
            names.append(f"{layer_name} (layers.{stage - 1}) {c}x{h}x{w}")
        return names

    def stage_shapes(self, stage: int) -> dict[str, tuple[int, ...]]:
        """Per-sample shapes of the stage's variables, from the config (no dry run)."""
        self.check_stage(stage)
        if stage == 0:
            return {"z": (self.config.z_dim,)}
        z_shape = (self.config.z_dim,)
        ch, side, channels = self.config.channel_width, 4, 16
        for layer in self.generator.layers[:stage]:
            if isinstance(layer, GenBlock):
                channels = layer.out_channels // ch
                side *= 2 if layer.up_sample else 1
        return {"h": (ch * channels, side, side), "z": z_shape}

    def trainable(self, stage: int) -> list[str]:
        """Only h from stage 1 on: the stage-0 z stays frozen (GIFD)."""
        return ["z"] if stage == 0 else ["h"]

    def default_radii(self) -> list[float]:
        """GIFD's radii: stage 0 unused (sphere-constrained z), then 2000, 2500, ... (+500 per stage)."""
        return [1000.0] + [2000.0 + 500.0 * (stage - 1) for stage in range(1, self.num_stages)]

    # ----- inputs

    def init_latent(
        self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Variables:
        """z ~ N(0, I), n x z_dim, drawn on the CPU and moved to the prior's device."""
        z = torch.randn(n, self.config.z_dim, generator=generator)
        return {"z": z.to(device=self.device, dtype=self.embeddings.weight.dtype)}

    def context(self, labels: Tensor | None, n: int) -> Context:
        """`{"class_embedding": embeddings(one_hot(labels))}`, n x z_dim."""
        super().context(labels, n)
        assert labels is not None
        if (
            labels.dim() != 1
            or labels.shape[0] != n
            or labels.dtype.is_floating_point
            or labels.dtype == torch.bool
        ):
            raise GifdError(
                f"BigGAN labels must be {n} integer class indices, got shape {tuple(labels.shape)} "
                f"of {labels.dtype}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.config.num_classes):
            raise GifdError(
                f"BigGAN labels must be ImageNet classes 0..{self.config.num_classes - 1}, got "
                f"{labels.tolist()}: map the victim's labels to ImageNet classes first"
            )
        weight = self.embeddings.weight
        one_hot = F.one_hot(labels.to(weight.device, torch.long), self.config.num_classes).to(weight.dtype)
        return {"class_embedding": self.embeddings(one_hot)}

    def _condition(self, stage: int, variables: Variables, context: Context) -> Tensor:
        """cat(z, class embedding): z is a variable of every stage (frozen after stage 0)."""
        if "class_embedding" not in context:
            raise GifdError(
                "BigGAN needs context['class_embedding']: build the context with prior.context(labels, n)"
            )
        self._check_variables(variables, stage)
        z, embedding = variables["z"], context["class_embedding"]
        if z.shape[0] != embedding.shape[0]:
            raise GifdError(
                f"BigGAN batch mismatch: {z.shape[0]} latents but {embedding.shape[0]} class embeddings "
                "(the context must be built for the same samples as the variables)"
            )
        return torch.cat((z, embedding), dim=1)

    def _check_variables(self, variables: Variables, stage: int) -> None:
        expected = self.stage_shapes(stage)
        if set(variables) != set(expected):
            raise GifdError(
                f"BigGAN stage {stage} takes variables {sorted(expected)}, got {sorted(variables)}"
            )
        for key, shape in expected.items():
            if tuple(variables[key].shape[1:]) != shape:
                raise GifdError(
                    f"BigGAN stage {stage}: {key} has per-sample shape {tuple(variables[key].shape[1:])}, "
                    f"expected {shape}"
                )

    # ----- running

    def forward(self, stage: int, variables: Variables, context: Context) -> Tensor:  # type: ignore[override]
        """The image in [-1, 1], (N, 3, resolution, resolution), from `stage`'s variables."""
        self.check_stage(stage)
        condition = self._condition(stage, variables, context)
        h = self._layout(self.generator.stem(condition) if stage == 0 else variables["h"])
        for index in range(stage, self.num_stages):
            h = self.generator.run_layer(index, h, condition, self.truncation)
        return self.generator.head(h, self.truncation).contiguous()

    def _layout(self, h: Tensor) -> Tensor:
        """`h` in the memory format the layers run in (see `channels_last`)."""
        if self.channels_last and h.device.type == "cpu":
            return h.contiguous(memory_format=torch.channels_last)
        return h

    @torch.no_grad()
    def advance(self, stage: int, variables: Variables, context: Context) -> Variables:
        """`{"h": output of layers[stage], "z": the stage-0 z (detached)}`."""
        self.check_stage(stage)
        if stage == self.num_stages - 1:
            raise GifdError(f"BigGAN stage {stage} is the last stage: there is no stage {stage + 1}")
        condition = self._condition(stage, variables, context)
        h = self._layout(self.generator.stem(condition) if stage == 0 else variables["h"])
        return {
            "h": self.generator.run_layer(stage, h, condition, self.truncation).contiguous(),
            "z": variables["z"].detach().clone(),
        }


# --------------------------------------------------------------------------------------------------
# Loading


def _describe_keys(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def _guess_checkpoint(state: Mapping[str, Any]) -> str:
    """What the state dict seems to be, in words (for error messages)."""
    layer_ids = set()
    for key in state:
        parts = key.split(".")
        if len(parts) > 2 and parts[0] == "generator" and parts[1] == "layers" and parts[2].isdigit():
            layer_ids.add(int(parts[2]))
    if not layer_ids:
        return "it does not look like a BigGAN-deep checkpoint (no generator.layers.* entries)"
    count = max(layer_ids) + 1
    by_count = {cfg.num_generator_layers: side for side, cfg in PUBLISHED_CONFIGS.items()}
    if count in by_count:
        return f"it looks like BigGAN-deep-{by_count[count]} ({count} generator layers)"
    return f"it has {count} generator layers, which matches no published BigGAN-deep model (11, 13, 15)"


def read_config(directory: Path) -> BigGANConfig:
    """Read and check `directory/config.json`."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise GifdError(f"BigGAN config {path} not found: {_WEIGHTS_FIX}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GifdError(f"BigGAN config {path} cannot be read ({exc}): {_WEIGHTS_FIX}") from exc
    return BigGANConfig.from_json_dict(data, source=str(path))


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    state = load_torch_file(
        path,
        "BigGAN weights",
        _WEIGHTS_FIX,
    )
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise GifdError(
            f"BigGAN weights {path} hold a {type(state).__name__}, not a state dict: {_WEIGHTS_FIX}"
        )
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise GifdError(
            f"BigGAN weights {path}: entries {_describe_keys(bad)} are not tensors: {_WEIGHTS_FIX}"
        )
    return dict(state)


def load_biggan(path: Path | str, truncation: float = 1.0) -> BigGANDeep:
    """Build BigGAN-deep from a `pytorch-pretrained-biggan` checkpoint directory, strictly.

    `path` is the directory with `config.json` and `pytorch_model.bin` (a path to one of the two
    files is taken as its directory). Every parameter and buffer must be present with the right
    shape, and nothing else may be: any mismatch is a GifdError naming the keys.
    """
    directory = Path(path)
    if directory.is_file() and directory.name in (CONFIG_NAME, WEIGHTS_NAME):
        directory = directory.parent
    if not directory.is_dir():
        raise GifdError(f"BigGAN checkpoint directory {directory} not found: {_WEIGHTS_FIX}")
    config = read_config(directory)
    weights_path = directory / WEIGHTS_NAME
    state = _read_state_dict(weights_path)

    with torch.device("meta"):
        model = BigGANDeep(config, truncation=truncation)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_describe_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_describe_keys(unexpected)}")
        raise GifdError(
            f"BigGAN weights {weights_path} do not fit the BigGAN-deep-{config.output_dim} of its "
            f"config.json: {'; '.join(parts)}; {_guess_checkpoint(state)}. {_FIX_SENTENCE}"
        )
    for key, shape in expected.items():
        tensor = state[key]
        if tuple(tensor.shape) != shape:
            raise GifdError(
                f"BigGAN weights {weights_path}: {key} has shape {tuple(tensor.shape)}, but the "
                f"BigGAN-deep-{config.output_dim} of its config.json needs {shape}; "
                f"{_guess_checkpoint(state)}. {_FIX_SENTENCE}"
            )
        if not tensor.is_floating_point():
            raise GifdError(
                f"BigGAN weights {weights_path}: {key} is {tensor.dtype}, not floating point: {_WEIGHTS_FIX}"
            )
    converted = {}
    for key, tensor in state.items():
        value = tensor.to(torch.float32).contiguous()
        if not torch.isfinite(value).all():
            raise GifdError(
                f"BigGAN weights {weights_path}: {key} holds NaN or infinite values (corrupt file): "
                f"download it again, then {_WEIGHTS_FIX}"
            )
        converted[key] = value
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# Registry


def _build(name: str, side: int) -> Callable[[Path | None], StagedGenerator]:
    """The registry build function of prior `name`: checks the resolution, then loads strictly."""

    def build(weights: Path | None) -> StagedGenerator:
        if weights is None:
            raise GifdError(
                f"prior {name} has no default weights location (gifd never downloads weights): {_WEIGHTS_FIX}"
            )
        directory = (
            weights.parent if weights.is_file() and weights.name in (CONFIG_NAME, WEIGHTS_NAME) else weights
        )
        if directory.is_dir() and (directory / CONFIG_NAME).is_file():
            config = read_config(directory)
            if config.output_dim != side:
                raise GifdError(
                    f"the checkpoint in {directory} is BigGAN-deep-{config.output_dim} (config.json "
                    f"output_dim), but prior {name} was asked for: use --prior "
                    f"biggan-deep-{config.output_dim}, or pass a BigGAN-deep-{side} checkpoint "
                    "with --prior-weights"
                )
        return load_biggan(directory)

    return build


for _side in (128, 256, 512):
    _name = f"biggan-deep-{_side}"
    register_prior(
        PriorEntry(
            name=_name,
            description=f"BigGAN-deep, {_side} px, ImageNet class-conditional (z 128-d), "
            f"{PUBLISHED_CONFIGS[_side].num_generator_layers} stages",
            weights_source=(
                f"the pytorch-pretrained-biggan release files {_name}-config.json and "
                f"{_name}-pytorch_model.bin (URLs in PRETRAINED_*_ARCHIVE_MAP of "
                "pytorch_pretrained_biggan/model.py), downloaded by you and saved as config.json and "
                "pytorch_model.bin in one directory, "
                "given with --prior-weights; gifd never downloads them"
            ),
            build=_build(_name, _side),
        )
    )

__all__ = ["PUBLISHED_CONFIGS", "BigGANConfig", "BigGANDeep", "load_biggan", "read_config"]
