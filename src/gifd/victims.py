"""Victim classifiers by name, with their input normalisation.

The paper's victims are untrained (random init, eval mode): the attacker knows the weights, and an
untrained network is the hardest common case for inversion. Every victim works for any square input
size and class count; the random init is seeded so client and attacker build the same model.

Besides the built-in architectures, a victim may be the user's own model, named `MODULE:FACTORY`
(e.g. `mymodels:make_classifier`): FACTORY, a callable in the module MODULE (importable from the
installed packages or the working directory), is called as `FACTORY(num_classes=..., resolution=...)`
and returns the nn.Module. `create_victim` checks it on a probe batch before anything else runs.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import math
import os
import re
import sys
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

    `classifier` names the last linear layer, the one whose output is the model's output (its
    gradient rows reveal the labels); None when the model has none (label inference then fails).
    """

    name: str
    model: nn.Module
    resolution: int
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classifier: str | None = "fc"

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

    def classifier_tensor(self, kind: str = "weight") -> str | None:
        """The update key of the classifier's `kind` ("weight" or "bias"), None without a classifier."""
        if self.classifier is None:
            return None
        return f"{self.classifier}.{kind}" if self.classifier else kind

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


#: `MODULE:FACTORY`: a dotted module name, a colon, a dotted attribute path inside it.
_FACTORY_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_factory_spec(name: str) -> bool:
    """Whether victim `name` is the user's own `MODULE:FACTORY` rather than a built-in."""
    return ":" in name


def victim_factory(name: str) -> Callable[..., nn.Module]:
    """The callable that builds victim `name`: a built-in architecture or `MODULE:FACTORY`.

    For `MODULE:FACTORY` the module is imported (the working directory is added to the end of
    sys.path if it is not on it) and the attribute checked to be a callable that takes
    `num_classes` and `resolution`; every problem is a one-line GifdError. Nothing is built.
    """
    if not is_factory_spec(name):
        try:
            return ARCHITECTURES.get(name)
        except GifdError as exc:
            raise GifdError(
                f"{exc} Or name your own model as MODULE:FACTORY, e.g. mymodels:make_victim."
            ) from None
    if not _FACTORY_SPEC.fullmatch(name):
        raise GifdError(
            f"victim {name!r} is not MODULE:FACTORY: write e.g. mymodels:make_victim (a dotted module name, "
            "a colon, a callable in it), or use a built-in victim: " + ", ".join(victim_names())
        )
    module_name, _, attribute = name.partition(":")
    cwd = os.getcwd()
    if cwd not in {os.path.abspath(entry or os.curdir) for entry in sys.path}:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise GifdError(
                f"victim module {module_name!r} not found: --victim {name} imports it from the installed "
                f"packages and the working directory {cwd}; run gifd where {module_name.replace('.', '/')}.py "
                "is, or install it"
            ) from None
        raise GifdError(
            f"victim module {module_name!r} could not be imported: it imports {missing!r}, which is not "
            "installed; install it"
        ) from None
    except Exception as exc:
        raise GifdError(
            f"importing victim module {module_name!r} raised {_exception_text(exc)}: fix the module"
        ) from exc
    factory: object = module
    for i, part in enumerate(attribute.split(".")):
        if not hasattr(factory, part):
            owner = module_name if i == 0 else f"{module_name}:{'.'.join(attribute.split('.')[:i])}"
            where = getattr(module, "__file__", None) or module_name
            raise GifdError(
                f"victim {name!r}: {owner} has no attribute {part!r}: name a callable defined in {where}"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise GifdError(
            f"victim {name!r} is a {type(factory).__name__}, not a callable: name a function or class "
            "that returns an nn.Module for num_classes= and resolution="
        )
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: its call will tell
        signature = None
    if signature is not None:
        try:
            signature.bind(num_classes=2, resolution=8)
        except TypeError:
            raise GifdError(
                f"victim factory {name} does not take the keyword arguments num_classes and resolution "
                f"(its signature is {signature}): give it the parameters (num_classes: int, resolution: int)"
            ) from None
    return factory  # type: ignore[return-value]


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

    `name` is a built-in architecture or `MODULE:FACTORY` (see `victim_factory`). The random init
    is drawn from `seed`: the factory runs under `torch.manual_seed(seed)` inside
    `torch.random.fork_rng` (the caller's CPU random state is restored afterwards), so a factory
    that builds on the CPU with torch's own initialisers gets the same init on every machine. With
    `weights` the state dict at that path is loaded strictly instead. The model is in eval mode
    (batch-norm uses its running statistics, as in the paper). A factory's model is checked on a
    probe batch of two random images: it must map (2, 3, resolution, resolution) to
    (2, num_classes); its `classifier` is the nn.Linear whose output is the model's output, if any.
    """
    factory = victim_factory(name)
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
        if is_factory_spec(name):
            model = _call_factory(factory, name, num_classes, resolution)
        else:
            model = factory(num_classes=num_classes, resolution=resolution)
    model.eval()
    classifier = _probe(model, name, num_classes, resolution) if is_factory_spec(name) else "fc"
    if weights is not None:
        load_victim_weights(model, Path(weights).expanduser(), name)
    model.to(device)
    return Victim(
        name=name,
        model=model,
        resolution=resolution,
        num_classes=num_classes,
        mean=mean,
        std=std,
        classifier=classifier,
    )


def _exception_text(exc: BaseException) -> str:
    """`Type: first line of the message` (one line, for an error message)."""
    text = str(exc).strip()
    return type(exc).__name__ + (": " + text.splitlines()[0][:200] if text else "")


def _call_factory(factory: Callable[..., object], name: str, num_classes: int, resolution: int) -> nn.Module:
    """`factory(num_classes=, resolution=)`, refused unless it returns an nn.Module of float32 parameters."""
    call = f"{name}(num_classes={num_classes}, resolution={resolution})"
    try:
        model = factory(num_classes=num_classes, resolution=resolution)
    except Exception as exc:
        raise GifdError(
            f"victim factory {call} raised {_exception_text(exc)}: fix the factory, or the --num-classes "
            "and --resolution it is given"
        ) from exc
    if not isinstance(model, nn.Module):
        raise GifdError(
            f"victim factory {call} returned a {type(model).__name__}, not a torch.nn.Module: return the model"
        )
    params = list(model.parameters())
    if not params:
        raise GifdError(
            f"victim factory {call} returned a model without parameters: there is no update to attack"
        )
    dtypes = sorted({str(p.dtype) for p in params if p.dtype != torch.float32})
    if dtypes:
        raise GifdError(
            f"victim factory {call} returned {', '.join(dtypes)} parameters: gifd attacks float32 models; "
            "return model.float()"
        )
    # The client shares the gradient of every parameter, so every one takes part in autograd.
    model.requires_grad_(True)
    return model


@torch.no_grad()
def _probe(model: nn.Module, name: str, num_classes: int, resolution: int) -> str | None:
    """Check the output shape of `model` on two random images; return the name of the nn.Linear
    whose output is the model's output (called once per forward), or None."""
    shape = (2, 3, resolution, resolution)
    images = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    outputs: dict[nn.Module, list[object]] = {}

    def record(module: nn.Module, _inputs: object, output: object) -> None:
        outputs.setdefault(module, []).append(output)

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        logits = model(images)
    except Exception as exc:
        raise GifdError(
            f"victim {name} failed on a probe batch of shape {shape} ({_exception_text(exc)}): it must take "
            f"RGB images of --resolution {resolution}"
        ) from exc
    finally:
        for hook in hooks:
            hook.remove()
    got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
    if got != (2, num_classes):
        raise GifdError(
            f"victim {name} maps a probe batch of shape {shape} to {got}, not (batch, num_classes) = "
            f"(2, {num_classes}): return one logit per class for --num-classes {num_classes}"
        )
    names = {module: key for key, module in model.named_modules()}
    return next((names[m] for m, outs in outputs.items() if len(outs) == 1 and outs[0] is logits), None)


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
