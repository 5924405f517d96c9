"""Victim classifiers by name, with their input normalisation.

The paper's victims are untrained (random init, eval mode): the attacker knows the weights, and an
untrained network is the hardest common case for inversion. Every victim works for any square input
size and class count; the random init is seeded so client and attacker build the same model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from gifd.errors import GifdError, list_some, load_torch_file
from gifd.registry import Registry

#: Named input normalisations (mean, std per RGB channel).
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}

ARCHITECTURES: Registry[nn.Module] = Registry("victim")


@dataclass
class Victim:
    """A classifier under attack: the model, its input size, class count and normalisation.

    `classifier` names the last linear layer (its gradient rows reveal the labels).
    """

    name: str
    model: nn.Module
    resolution: int
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classifier: str = "fc"

    def normalize(self, images: Tensor) -> Tensor:
        """Map images in [0, 1] to the model's input space."""
        mean = images.new_tensor(self.mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.std).view(1, 3, 1, 1)
        return (images - mean) / std

    def denormalize(self, inputs: Tensor) -> Tensor:
        """Map model inputs back to [0, 1] image space (no clamping)."""
        mean = inputs.new_tensor(self.mean).view(1, 3, 1, 1)
        std = inputs.new_tensor(self.std).view(1, 3, 1, 1)
        return inputs * std + mean

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The parameters whose gradients a client shares, in a fixed order."""
        return list(self.model.named_parameters())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Victim:
        self.model.to(device)
        return self


# --------------------------------------------------------------------------------------------- LeNet
@ARCHITECTURES.register("lenet")
class LeNet(nn.Module):
    """The LeNet of DLG (Zhu et al. 2019): three sigmoid convolutions and one linear layer.

    Initialised uniformly in [-0.5, 0.5] as in DLG, which makes it the easy sanity case.
    """

    def __init__(self, num_classes: int, resolution: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 12, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1),
            nn.Sigmoid(),
        )
        side = (resolution + 3) // 4
        self.fc = nn.Linear(12 * side * side, num_classes)
        for p in self.parameters():
            nn.init.uniform_(p, -0.5, 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x).flatten(1))


# ------------------------------------------------------------------------------------------- ConvNet
@ARCHITECTURES.register("convnet")
class ConvNet(nn.Module):
    """A small VGG-style ConvNet: four conv-BN-ReLU blocks (32-64-64-128), 4x4 pooling, linear."""

    def __init__(self, num_classes: int, resolution: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, 32, 64, 64, 128]
        for i, (c_in, c_out) in enumerate(itertools.pairwise(channels)):
            stride = 1 if i == 0 else 2
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(128 * 16, num_classes)
        _kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.body(x)).flatten(1))


# ------------------------------------------------------------------------------------------ ResNet-18
class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1-conv shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


@ARCHITECTURES.register("resnet18")
class ResNet18(nn.Module):
    """The CIFAR-style ResNet-18 of the paper: 3x3 stride-1 stem, no max-pool, [2, 2, 2, 2] blocks."""

    def __init__(self, num_classes: int, resolution: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, c_in, stages = [64, 128, 256, 512], 64, []
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width, 1)))
            c_in = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        _kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(self.pool(out).flatten(1))


def _kaiming_init(model: nn.Module) -> None:
    """Kaiming fan-out for convolutions, BN weight 1 and bias 0 (torchvision's ResNet init)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------- factory
def victim_names() -> list[str]:
    return ARCHITECTURES.names()


def create_victim(
    name: str,
    *,
    resolution: int = 32,
    num_classes: int = 10,
    seed: int = 0,
    normalization: str | tuple[tuple[float, float, float], tuple[float, float, float]] = "imagenet",
    weights: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> Victim:
    """Build victim `name` for `resolution` x `resolution` RGB inputs and `num_classes` classes.

    The random init is drawn from `seed` (on the CPU, so it is the same on every device); with
    `weights` the state dict at that path is loaded strictly instead. The model is in eval mode
    (batch-norm uses its running statistics, as in the paper).
    """
    factory: Callable[..., nn.Module] = ARCHITECTURES.get(name)
    if resolution < 8 or resolution > 1024:
        raise GifdError(
            f"resolution {resolution} is out of range: use a square size between 8 and 1024 pixels"
        )
    if num_classes < 2:
        raise GifdError(f"num_classes must be at least 2, got {num_classes}")
    mean, std = _resolve_normalization(normalization)
    fork_devices: list[int] = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = factory(num_classes=num_classes, resolution=resolution)
    if weights is not None:
        load_victim_weights(model, Path(weights).expanduser(), name)
    model.eval().to(device)
    return Victim(name=name, model=model, resolution=resolution, num_classes=num_classes, mean=mean, std=std)


Normalization = tuple[Sequence[float], Sequence[float]]


def same_normalization(a: Normalization, b: Normalization) -> bool:
    """Whether two (mean, std) pairs are the same constants (to 1e-5 relative)."""
    first, second = [*a[0], *a[1]], [*b[0], *b[1]]
    return len(first) == len(second) and all(
        math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6) for x, y in zip(first, second, strict=True)
    )


def normalization_name(mean: Sequence[float], std: Sequence[float]) -> str:
    """The name of the normalisation with these constants, else "custom"."""
    return next(
        (name for name, pair in NORMALIZATIONS.items() if same_normalization((mean, std), pair)), "custom"
    )


def _resolve_normalization(
    normalization: str | tuple[tuple[float, float, float], tuple[float, float, float]],
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    if isinstance(normalization, str):
        if normalization not in NORMALIZATIONS:
            raise GifdError(
                f"unknown normalization {normalization!r}: use one of {', '.join(NORMALIZATIONS)} "
                "or give mean and std explicitly"
            )
        return NORMALIZATIONS[normalization]
    mean, std = (tuple(float(v) for v in t) for t in normalization)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise GifdError(f"normalization needs 3 means and 3 positive stds, got mean={mean} std={std}")
    return mean, std  # type: ignore[return-value]


def load_victim_weights(model: nn.Module, path: Path, name: str) -> None:
    """Load a state dict into `model` strictly, with errors that name the mismatch."""
    state = load_torch_file(path, "victim weights", "pass the path of a state dict saved with torch.save")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise GifdError(f"victim weights {path} hold a {type(state).__name__}, not a state dict")
    load_victim_state(model, state, name, f"victim weights {path}")


def load_victim_state(
    model: nn.Module,
    state: dict[str, Tensor],
    name: str,
    source: str,
    fix: str = "check --victim, --resolution and --num-classes",
) -> None:
    """Load `state` into `model` strictly; errors name `source` (a plural noun phrase), the
    mismatched keys or shapes and `fix`."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise GifdError(
            f"{source} do not fit {name!r}: missing {list_some(missing)}, unexpected {list_some(unexpected)}; {fix}"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise GifdError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, {name!r} expects {tuple(tensor.shape)}; {fix}"
            )
    model.load_state_dict(state)
