"""Learned perceptual distances (LPIPS family) as torch-only networks, loaded from local files only.

Two metrics share one architecture family (Zhang et al. 2018: normalised deep features of a
backbone, squared differences weighted per channel by 1x1 "lin" layers, averaged over space and
summed over 5 layers):

* `PerceptualDistance` ("lpips_st"): the shift-tolerant LPIPS of Ghildyal & Liu (ECCV 2022), an
  anti-aliased AlexNet/VGG16 (stride-1 convolutions followed by blur pooling with reflection
  padding) whose full weights (backbone + lin layers) ship in the wheel `stlpips-pytorch==0.0.2`.
  Works offline. Its numbers are NOT comparable with published LPIPS values.
* `LPIPS` ("lpips"): standard LPIPS v0.1 on a plain torchvision AlexNet/VGG16 backbone, for users
  who have the backbone weights and the LPIPS lin-layer file on disk. Nothing is ever downloaded.

Both take images in [0, 1] (clamped), map them to [-1, 1] inside, and return one distance per
image (0 for identical images). The networks run in eval mode without gradients and are cached,
one per (weights, device).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gifd.errors import GifdError, load_torch_file
from gifd.metrics._inputs import image_pair

NetName = Literal["alex", "vgg"]
STLPIPS_INSTALL = "pip install --no-deps stlpips-pytorch==0.0.2"
# The input scaling of LPIPS v0.1 (ImageNet statistics expressed for [-1, 1] inputs).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
FEATURE_CHANNELS: dict[str, tuple[int, ...]] = {
    "alex": (64, 192, 384, 256, 256),
    "vgg": (64, 128, 256, 512, 512),
}

# A backbone is a flat list of layer specs cut into 5 slices (indices match the weight files):
# ("conv", in, out, kernel, stride, padding) | ("relu",) | ("maxpool", kernel, stride) | ("blur", channels)
LayerSpec = tuple
_ALEX_STANDARD: list[LayerSpec] = [
    ("conv", 3, 64, 11, 4, 2), ("relu",), ("maxpool", 3, 2),
    ("conv", 64, 192, 5, 1, 2), ("relu",), ("maxpool", 3, 2),
    ("conv", 192, 384, 3, 1, 1), ("relu",),
    ("conv", 384, 256, 3, 1, 1), ("relu",),
    ("conv", 256, 256, 3, 1, 1), ("relu",),
]  # fmt: skip
# stlpips "shift_tolerant" AlexNet: first conv at stride 1, blur after it; max-pools at stride 1 + blur.
_ALEX_SHIFT_TOLERANT: list[LayerSpec] = [
    ("conv", 3, 64, 11, 1, 2), ("blur", 64), ("relu",),
    ("maxpool", 3, 1), ("blur", 64), ("conv", 64, 192, 5, 1, 2), ("relu",),
    ("maxpool", 3, 1), ("blur", 192), ("conv", 192, 384, 3, 1, 1), ("relu",),
    ("conv", 384, 256, 3, 1, 1), ("relu",),
    ("conv", 256, 256, 3, 1, 1), ("relu",),
]  # fmt: skip
_VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def _vgg16_spec(shift_tolerant: bool) -> list[LayerSpec]:
    """VGG16 features up to relu5_3; shift-tolerant pools are max-pool stride 1 + blur stride 2."""
    spec: list[LayerSpec] = []
    channels = 3
    for item in _VGG16_CONFIG:
        if item == "M":
            spec += [("maxpool", 2, 1), ("blur", channels)] if shift_tolerant else [("maxpool", 2, 2)]
        else:
            spec += [("conv", channels, item, 3, 1, 1), ("relu",)]
            channels = int(item)
    return spec


_ARCHITECTURES: dict[tuple[str, bool], tuple[list[LayerSpec], tuple[int, ...]]] = {
    # (net, shift_tolerant) -> (layers, end index of each of the 5 slices)
    ("alex", False): (_ALEX_STANDARD, (2, 5, 8, 10, 12)),
    ("alex", True): (_ALEX_SHIFT_TOLERANT, (3, 7, 11, 13, 15)),
    ("vgg", False): (_vgg16_spec(False), (4, 9, 16, 23, 30)),
    ("vgg", True): (_vgg16_spec(True), (4, 10, 18, 26, 34)),
}


class BlurPool(nn.Module):
    """Anti-aliased downsampling (Zhang 2019): reflect-pad 2, binomial [1, 2, 1]^2 / 16 filter, stride 2.

    The filter is the persistent buffer `filt` (channels x 1 x 3 x 3), as in the stlpips weights.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = taps[:, None] * taps[None, :]
        self.register_buffer("filt", (kernel / kernel.sum()).expand(channels, 1, 3, 3).clone())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        padded = F.pad(inputs, (2, 2, 2, 2), mode="reflect")
        return F.conv2d(padded, self.filt, stride=2, groups=inputs.shape[1])


def _make_layer(spec: LayerSpec) -> nn.Module:
    kind = spec[0]
    if kind == "conv":
        _, c_in, c_out, kernel, stride, padding = spec
        return nn.Conv2d(c_in, c_out, kernel_size=kernel, stride=stride, padding=padding)
    if kind == "relu":
        return nn.ReLU()
    if kind == "maxpool":
        return nn.MaxPool2d(kernel_size=spec[1], stride=spec[2])
    if kind == "blur":
        return BlurPool(spec[1])
    raise ValueError(f"unknown layer kind {kind!r}")


def _output_side(spec: list[LayerSpec], side: int) -> int | None:
    """Spatial side after the layers, or None if some layer cannot take the input size."""
    for layer in spec:
        kind = layer[0]
        if kind == "conv":
            _, _, _, kernel, stride, padding = layer
            side = (side + 2 * padding - kernel) // stride + 1
        elif kind == "maxpool":
            side = (side - layer[1]) // layer[2] + 1
        elif kind == "blur":
            if side <= 2:  # reflection padding needs pad < size
                return None
            side = (side + 4 - 3) // 2 + 1
        if side < 1:
            return None
    return side


@functools.cache
def minimum_side(net: NetName, shift_tolerant: bool) -> int:
    """Smallest image side (px) the backbone accepts."""
    spec, _ = _ARCHITECTURES[(net, shift_tolerant)]
    return next(side for side in range(1, 4097) if _output_side(spec, side) is not None)


class _Backbone(nn.Module):
    """slice1..slice5 (nn.Sequential with the original layer indices as names); returns 5 feature maps."""

    def __init__(self, spec: list[LayerSpec], slice_ends: tuple[int, ...]) -> None:
        super().__init__()
        start = 0
        for number, end in enumerate(slice_ends, start=1):
            block = nn.Sequential()
            for index in range(start, end):
                block.add_module(str(index), _make_layer(spec[index]))
            self.add_module(f"slice{number}", block)
            start = end

    def forward(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        features = []
        hidden = inputs
        for number in range(1, 6):
            hidden = getattr(self, f"slice{number}")(hidden)
            features.append(hidden)
        return features


class _ScalingLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return (inputs - self.shift) / self.scale


class _LinearHead(nn.Module):
    """A 1x1 convolution to one channel without bias; `model.0` is the (eval-time no-op) dropout slot."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)


class LpipsNetwork(nn.Module):
    """The LPIPS computation with state-dict names of the lpips / stlpips packages.

    Keys: `scaling_layer.{shift,scale}`, `net.sliceK.I.{weight,bias,filt}`, `linL.model.1.weight`.
    `distance(a, b)` takes images in [-1, 1] and returns one value per image.
    """

    def __init__(self, net: NetName, shift_tolerant: bool) -> None:
        super().__init__()
        if net not in FEATURE_CHANNELS:
            raise GifdError(f"unknown perceptual network {net!r}: use 'alex' or 'vgg'")
        spec, slice_ends = _ARCHITECTURES[(net, shift_tolerant)]
        self.net_name = net
        self.shift_tolerant = shift_tolerant
        self.scaling_layer = _ScalingLayer()
        self.net = _Backbone(spec, slice_ends)
        for index, channels in enumerate(FEATURE_CHANNELS[net]):
            self.add_module(f"lin{index}", _LinearHead(channels))

    @staticmethod
    def _unit_normalise(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        return features / (features.pow(2).sum(1, keepdim=True).sqrt() + eps)

    def distance(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Per-image distance between two N x 3 x H x W batches in [-1, 1]."""
        count = first.shape[0]
        features = self.net(self.scaling_layer(torch.cat([first, second])))
        total = first.new_zeros(count)
        for index, feature in enumerate(features):
            normalised = self._unit_normalise(feature)
            squared = (normalised[:count] - normalised[count:]).pow(2)
            total = total + getattr(self, f"lin{index}")(squared).mean((1, 2, 3))
        return total

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return self.distance(first, second)


def _load_file(path: Path, what: str, fix: str) -> Mapping[str, torch.Tensor]:
    state = load_torch_file(path, f"{what} file", fix)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GifdError(f"{what} file {path} is not a state dict of tensors: {fix}")
    return state


def _load_strict(network: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True), with missing / unexpected / mis-shaped keys as one GifdError."""
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:4])}" + (" ..." if len(unexpected) > 4 else ""))
    if wrong_shape:
        problems.append(f"wrong shape {', '.join(wrong_shape[:4])}")
    if problems:
        raise GifdError(f"{source} does not fit the network: {'; '.join(problems)}")
    network.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)


def stlpips_weights_path(net: NetName = "alex") -> Path:
    """Where the shift-tolerant LPIPS weights of `stlpips-pytorch` are, without importing the package.

    (Its modules import torchvision, which must not be loaded here.)
    """
    if net not in FEATURE_CHANNELS:
        raise GifdError(f"unknown perceptual network {net!r}: use 'alex' or 'vgg'")
    spec = importlib.util.find_spec("stlpips_pytorch")
    if spec is None or spec.origin is None:
        raise GifdError(
            "the shift-tolerant LPIPS weights (package stlpips-pytorch) are not installed: "
            f"run `{STLPIPS_INSTALL}`"
        )
    path = Path(spec.origin).parent / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"
    if not path.is_file():
        raise GifdError(f"shift-tolerant LPIPS weights {path} are missing: run `{STLPIPS_INSTALL}`")
    return path


# One network per (kind, net, weight files, device); built on CPU once, copied to other devices.
_NETWORK_CACHE: dict[tuple, LpipsNetwork] = {}


def _cached_network(key: tuple, build: Callable[[], LpipsNetwork], device: torch.device) -> LpipsNetwork:
    if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" share one copy
        device = torch.device("cuda", torch.cuda.current_device())
    cpu_key = (*key, "cpu")
    if cpu_key not in _NETWORK_CACHE:
        network = build()
        network.eval().requires_grad_(False)
        _NETWORK_CACHE[cpu_key] = network
    device_key = (*key, str(device))
    if device_key not in _NETWORK_CACHE:
        _NETWORK_CACHE[device_key] = copy.deepcopy(_NETWORK_CACHE[cpu_key]).to(device)
    return _NETWORK_CACHE[device_key]


def clear_network_cache() -> None:
    """Forget every loaded perceptual network (e.g. after replacing a weight file)."""
    _NETWORK_CACHE.clear()


def _file_key(path: Path) -> tuple[str, int]:
    """Cache key of a weight file: resolved path and modification time (a rewritten file reloads)."""
    resolved = path.resolve()
    try:
        return str(resolved), os.stat(resolved).st_mtime_ns
    except OSError:  # gone since: a cache miss, and loading then reports the missing file
        return str(resolved), -1


class PerceptualMetric(nn.Module):
    """Base of the LPIPS-style metrics: checks inputs, runs the cached network of the input's device.

    Holds no parameters itself (the network lives in a shared cache, one copy per device), so
    `.to(device)` is not needed: inputs on any device work. `metric_name` names the result in
    `evaluate`.
    """

    metric_name = "perceptual"

    def __init__(self, net: NetName, shift_tolerant: bool) -> None:
        super().__init__()
        if net not in FEATURE_CHANNELS:
            raise GifdError(f"unknown perceptual network {net!r}: use 'alex' or 'vgg'")
        self.net_name = net
        self.shift_tolerant = shift_tolerant
        self.eval()

    def _cache_key(self) -> tuple:
        raise NotImplementedError

    def _build(self) -> LpipsNetwork:
        raise NotImplementedError

    def network(self, device: torch.device | str = "cpu") -> LpipsNetwork:
        """The loaded (cached) network on `device`, in eval mode without gradients."""
        return _cached_network(self._cache_key(), self._build, torch.device(device))

    @property
    def minimum_side(self) -> int:
        """Smallest image side (px) the backbone accepts."""
        return minimum_side(self.net_name, self.shift_tolerant)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance per image (shape N) of two N x C x H x W batches in [0, 1]; C = 1 is repeated to 3."""
        x, y = image_pair(x, y, name=self.metric_name, dtype=torch.float32)
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        if x.shape[1] != 3:
            raise GifdError(
                f"{self.metric_name}: needs RGB (3-channel) or grey images, got {x.shape[1]} channels"
            )
        if min(x.shape[-2:]) < self.minimum_side:
            raise GifdError(
                f"{self.metric_name}: {x.shape[-2]} x {x.shape[-1]} px images are too small for the "
                f"{self.net_name} network (needs at least {self.minimum_side} px a side): upsample them first"
            )
        network = self.network(x.device)
        with torch.no_grad():
            return network.distance(2 * x - 1, 2 * y - 1)

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}"


class PerceptualDistance(PerceptualMetric):
    """Shift-tolerant LPIPS ("lpips_st") on an anti-aliased AlexNet or VGG16, fully offline.

    Weights: `weights` (a state dict in the stlpips format) or, by default, the file shipped in the
    `stlpips-pytorch==0.0.2` wheel (located without importing that package). Loaded strictly: every
    key of the file is used and every parameter and blur filter comes from it.

    Note: these values are NOT comparable with published LPIPS numbers (different backbone and lin
    layers, trained for shift tolerance); compare methods with each other only.
    """

    metric_name = "lpips_st"

    def __init__(self, net: NetName = "alex", weights: str | os.PathLike | None = None) -> None:
        super().__init__(net, shift_tolerant=True)
        if weights is None:
            self.weights_path = stlpips_weights_path(net)
            fix = f"reinstall with `{STLPIPS_INSTALL}`"
        else:
            self.weights_path = Path(weights)
            fix = (
                f"pass the path of an stlpips {net}_shift_tolerant.pth file, "
                f"or weights=None after `{STLPIPS_INSTALL}`"
            )
        if not self.weights_path.is_file():
            raise GifdError(f"shift-tolerant LPIPS weights file {self.weights_path} not found: {fix}")
        self._fix = fix
        self.network("cpu")  # load now, so a bad file fails here rather than at the first use

    def _cache_key(self) -> tuple:
        return ("lpips_st", self.net_name, _file_key(self.weights_path))

    def _build(self) -> LpipsNetwork:
        state = _load_file(self.weights_path, "shift-tolerant LPIPS weights", self._fix)
        network = LpipsNetwork(self.net_name, shift_tolerant=True)
        _load_strict(network, state, f"shift-tolerant LPIPS weights file {self.weights_path}")
        return network


def _standard_backbone_keys(net: NetName) -> dict[str, str]:
    """torchvision key (features.N.weight) -> LpipsNetwork key (net.sliceK.N.weight)."""
    network = LpipsNetwork(net, shift_tolerant=False)
    mapping = {}
    for key in network.state_dict():
        if key.startswith("net.slice"):
            _, _, index, parameter = key.split(".")
            mapping[f"features.{index}.{parameter}"] = key
    return mapping


class LPIPS(PerceptualMetric):
    """Standard LPIPS v0.1 (Zhang et al. 2018) from local files; nothing is downloaded.

    backbone_weights: a torchvision AlexNet or VGG16 state dict (keys `features.N.weight/bias`;
      `classifier.*` keys are ignored), e.g. alexnet-owt-7be5be79.pth or vgg16-397923af.pth.
    linear_weights: the lpips package's lin-layer file for the same net (v0.1/alex.pth or vgg.pth,
      keys `lin0.model.1.weight` ... `lin4.model.1.weight`).
    Values are comparable with published LPIPS numbers when those are the official files.
    """

    metric_name = "lpips"

    def __init__(
        self,
        net: NetName,
        backbone_weights: str | os.PathLike,
        linear_weights: str | os.PathLike,
    ) -> None:
        super().__init__(net, shift_tolerant=False)
        self.backbone_path = Path(backbone_weights)
        self.linear_path = Path(linear_weights)
        torchvision_name = "AlexNet" if net == "alex" else "VGG16"
        self._backbone_fix = (
            f"pass the path of a torchvision {torchvision_name} state dict (features.N.weight keys)"
        )
        self._linear_fix = (
            f"pass the path of the lpips v0.1 {net}.pth lin-layer file (lin0.model.1.weight keys)"
        )
        for path, what, fix in (
            (self.backbone_path, f"LPIPS backbone ({torchvision_name})", self._backbone_fix),
            (self.linear_path, "LPIPS linear-layer", self._linear_fix),
        ):
            if not path.is_file():
                raise GifdError(f"{what} weights file {path} not found: {fix}")
        self.network("cpu")

    def _cache_key(self) -> tuple:
        return ("lpips", self.net_name, _file_key(self.backbone_path), _file_key(self.linear_path))

    def _build(self) -> LpipsNetwork:
        backbone = _load_file(self.backbone_path, "LPIPS backbone weights", self._backbone_fix)
        linear = _load_file(self.linear_path, "LPIPS linear-layer weights", self._linear_fix)
        network = LpipsNetwork(self.net_name, shift_tolerant=False)
        renamed = _standard_backbone_keys(self.net_name)
        features = {key: value for key, value in backbone.items() if key.startswith("features.")}
        if not features:
            raise GifdError(
                f"LPIPS backbone weights file {self.backbone_path} has no features.N.* keys: "
                f"{self._backbone_fix}"
            )
        unexpected = sorted(set(features) - set(renamed))
        missing = sorted(set(renamed) - set(features))
        if unexpected or missing:
            detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
            raise GifdError(
                f"LPIPS backbone weights file {self.backbone_path} is not a torchvision "
                f"{'AlexNet' if self.net_name == 'alex' else 'VGG16'} ({detail}): {self._backbone_fix}"
            )
        state = {renamed[key]: value for key, value in features.items()}
        linear_keys = {f"lin{index}.model.1.weight" for index in range(5)}
        if set(linear) != linear_keys:
            raise GifdError(
                f"LPIPS linear-layer weights file {self.linear_path} has keys {sorted(linear)[:5]}, expected "
                f"{sorted(linear_keys)}: {self._linear_fix}"
            )
        state.update(linear)
        state.update(
            {key: value for key, value in network.state_dict().items() if key.startswith("scaling_layer.")}
        )
        _load_strict(network, state, f"LPIPS weights ({self.backbone_path}, {self.linear_path})")
        return network
