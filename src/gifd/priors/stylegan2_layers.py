"""StyleGAN2's layers in plain PyTorch, as in rosinality's `stylegan2-pytorch` (`model.py`).

The same module tree, hence the same state-dict names (`style.1.weight`, `input.input`,
`conv1.conv.weight`, `convs.N.conv.blur.kernel`, `to_rgbs.N.upsample.kernel`, `noises.noise_N`, ...),
and the same forward semantics, with no compiled operator: `upfirdn2d` is a depthwise `conv2d` with
the flipped FIR kernel after zero insertion and padding, the fused leaky ReLU is
`leaky_relu(x + b, 0.2) * sqrt(2)`. `gifd.priors.stylegan2.StyleGAN2Generator` assembles them and
cuts the network into stages.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gifd.errors import GifdError

#: The FIR filter of StyleGAN2's up-sampling (rosinality's `blur_kernel`).
BLUR_KERNEL = (1.0, 3.0, 3.0, 1.0)
LEAKY_SLOPE = 0.2
ACTIVATION_GAIN = math.sqrt(2.0)


# --------------------------------------------------------------------------------------------
# Plain-torch replacements of rosinality's compiled operators
# --------------------------------------------------------------------------------------------
def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Per channel: up-sample by zero insertion, pad (pad0 before, pad1 after; negative crops) on
    both axes, convolve with the FIR `kernel` (a true convolution: correlation with the flipped
    kernel) and keep every `down`-th sample. Output side: (side * up + pad0 + pad1 - k) // down + 1.
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(n, c, h * up, w * up)
    pad0, pad1 = pad
    if pad0 or pad1:
        x = F.pad(x, (pad0, pad1, pad0, pad1))
    kh, kw = kernel.shape
    weight = kernel.flip((0, 1)).to(x.dtype).reshape(1, 1, kh, kw).expand(c, 1, kh, kw)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def fused_leaky_relu(x: Tensor, bias: Tensor | None = None) -> Tensor:
    """rosinality's `fused_leaky_relu`: add a per-channel bias (dim 1), leaky ReLU 0.2, gain sqrt(2)."""
    if bias is not None:
        x = x + bias.reshape(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, LEAKY_SLOPE) * ACTIVATION_GAIN


def make_fir_kernel(taps: tuple[float, ...] = BLUR_KERNEL) -> Tensor:
    """The separable 2-D FIR kernel outer(taps, taps), normalised to sum 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


# --------------------------------------------------------------------------------------------
# Layers (attribute names are those of rosinality's model.py: they make the state-dict names)
# --------------------------------------------------------------------------------------------
class PixelNorm(nn.Module):
    """Normalise each vector to unit root-mean-square over dim 1."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: weight * lr_mul / sqrt(in_dim), bias * lr_mul."""

    def __init__(
        self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def preactivation(self, x: Tensor) -> Tensor:
        """The affine part (before the activation)."""
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)

    def forward(self, x: Tensor) -> Tensor:
        out = self.preactivation(x)
        return fused_leaky_relu(out) if self.activate else out


class Blur(nn.Module):
    """FIR low-pass after the transposed conv of an up-sampling layer (kernel scaled by factor^2)."""

    def __init__(self, pad: tuple[int, int], factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", make_fir_kernel() * factor**2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR up-sampling of the ToRGB skip image (zero insertion + filter, output side 2 * side)."""

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.register_buffer("kernel", make_fir_kernel() * factor**2)
        self.factor = factor
        p = len(BLUR_KERNEL) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution: weights scaled per input channel by an affine map of w,
    optionally demodulated (unit norm per output channel), optionally 2x up-sampling by a
    stride-2 transposed convolution followed by the FIR blur.

    Computed in the equivalent "non-fused" form (scale the input, convolve with the shared weight,
    scale the output by the demodulation coefficients), which uses one dense convolution for the
    whole batch instead of a grouped one.
    """

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample = upsample
        self.demodulate = demodulate
        if upsample:
            factor = 2
            p = (len(BLUR_KERNEL) - factor) - (kernel_size - 1)
            self.blur = Blur(pad=((p + 1) // 2 + factor - 1, p // 2 + 1), factor=factor)
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        style = self.modulation(w)  # (N, in)
        weight = self.weight[0] * self.scale  # (out, in, k, k)
        x = x * style[:, :, None, None]
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            out = self.blur(out)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum over (in, kh, kw) of (weight * style)^2, per sample and output channel
            energy = style.square() @ weight.square().sum(dim=(2, 3)).t()  # (N, out)
            out = out * torch.rsqrt(energy + 1e-8)[:, :, None, None]
        return out


class NoiseInjection(nn.Module):
    """Add a learned multiple of a single-channel noise map."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    """Per-channel bias, leaky ReLU 0.2, gain sqrt(2)."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class ConstantInput(nn.Module):
    """The learned 4x4 constant the synthesis network starts from."""

    def __init__(self, channel: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, n: int) -> Tensor:
        return self.input.expand(n, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated 3x3 conv, noise injection, biased leaky ReLU."""

    def __init__(self, in_channel: int, out_channel: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor) -> Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation) plus bias, added to the up-sampled skip image."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, w) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


def default_channels(resolution: int, channel_multiplier: int = 2) -> dict[int, int]:
    """rosinality's channel table: 512 up to 32 px, then 256, 128, 64, 32, 16 times the multiplier."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    if resolution not in table:
        raise GifdError(
            f"no default channel table for {resolution} px (rosinality defines 4..1024 px): pass channels="
        )
    return {r: c if r <= 32 else c * channel_multiplier for r, c in table.items() if r <= resolution}


__all__ = [
    "BLUR_KERNEL",
    "Blur",
    "ConstantInput",
    "EqualLinear",
    "FusedLeakyReLU",
    "ModulatedConv2d",
    "NoiseInjection",
    "PixelNorm",
    "StyledConv",
    "ToRGB",
    "Upsample",
    "default_channels",
    "fused_leaky_relu",
    "make_fir_kernel",
    "upfirdn2d",
]
