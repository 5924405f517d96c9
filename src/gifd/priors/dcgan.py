"""DCGAN priors: the pretrained DigiFace-1M face generator and the project's own trained DCGAN.

One architecture, `DCGANGenerator(nz, ngf, resolution, nc)` (Radford et al. 2016, as in the PyTorch
DCGAN tutorial): a 1x1 latent is up-sampled by ConvTranspose2d + BatchNorm + ReLU blocks to a 4x4
map and then doubled in size per block, and a last ConvTranspose2d + Tanh gives the image. Parameter
names (`main.0.weight`, `main.1.running_mean`, ...) are those of the tutorial, so the weights shipped
in the PyPI package `gan-face-generate==1.1.1` load strictly.

Stages (`DCGANPrior`): stage 0 is z, kept flat as (N, nz) rather than (N, nz, 1, 1), because the
trailing 1x1 is an implementation detail of the first ConvTranspose2d and a flat vector is what the
sphere constraint and black-box optimisers (CMA-ES) act on. Stage i = 1..B is the output of
up-sampling block i after its BatchNorm + ReLU (by default; the setting `cut` takes it before the
ReLU or after the ConvTranspose2d instead, see `DCGANPrior`) (for the 64-px face prior 512x4x4,
256x8x8, 128x16x16, 64x32x32); the last ConvTranspose2d + Tanh maps the last stage to the image. z ~ N(0, I)
and `sphere_latent` is True: GIFD keeps BigGAN's Gaussian z on the sphere of its starting norm, and
this z is Gaussian in the same way. BatchNorm always uses its running statistics (the prior stays in
eval mode even if `.train()` is called), so a sample never depends on the rest of its batch.

Radii: the official GIFD radii (BigGAN 2000..7500) are absolute l1 norms for BigGAN's own feature
maps and carry no meaning for other generators, so the schedule is scaled by the prior's own
features: with F_i the mean per-sample l1 norm of stage i's variables (measured once on random
latents with a fixed seed, `radii_from_feature_norms`), the default is the official shape
radius_i = 0.5 x F_1 x i (`linear_radii`): the absolute room grows by a constant per stage, so the
room relative to a deeper, larger feature shrinks. The constant 0.5 comes from `gifd calibrate` on
public calibration images (digiface-dcgan64, ConvNet at 64 px; bench/README.md), where it beat the
former rule (0.1 x F_i per stage) and no ball; a calibration for another victim writes its own
radii file. The latent stage keeps 0.1 x its norm (unused: z stays on its sphere).

Stage cut (`cut` setting): by default a stage is the block's output after BatchNorm + ReLU, as in
the generator's own modules. That calibration measured the cut after BatchNorm (before the ReLU,
where no entry is clamped to zero) too, and the ReLU cut won (19.1 dB against 17.3 dB mean PSNR),
so it stays the default; "batchnorm" and "conv" remain settings for other victims and priors.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from gifd.errors import GifdError, load_torch_file
from gifd.priors.base import (
    DEFAULT_RADIUS_FRACTION,
    Context,
    PriorEntry,
    StagedGenerator,
    Variables,
    linear_radii,
    radii_from_feature_norms,
    register_prior,
)

#: Output sides the architecture supports (4x4 after the first block, doubled per block).
SUPPORTED_RESOLUTIONS = (32, 64)
#: The calibrated step of the default linear schedule: radius_i = 0.5 x F_1 x i (see the module doc).
DEFAULT_RADIUS_STEP = 0.5

FACE_PACKAGE = "gan_face_generate"
FACE_PIP_INSTALL = "pip install --no-deps gan-face-generate==1.1.1"
#: `format` field of the files written by `gifd train-prior`.
CHECKPOINT_FORMAT = "gifd-dcgan-checkpoint"
GENERATOR_FORMAT = "gifd-dcgan-generator"
FORMAT_VERSION = 1


class DCGANGenerator(nn.Module):
    """The DCGAN generator: latent (N, nz, 1, 1) -> image (N, nc, resolution, resolution) in [-1, 1].

    `main` holds, per up-sampling block b = 1..B (B = log2(resolution) - 2), a ConvTranspose2d
    (4x4, stride 1 for the first block, stride 2 after, no bias), a BatchNorm2d and a ReLU; then the
    output ConvTranspose2d (stride 2, no bias) and a Tanh. Channels go ngf * 2^(B-1) down to ngf.
    """

    def __init__(self, nz: int = 100, ngf: int = 64, resolution: int = 64, nc: int = 3) -> None:
        super().__init__()
        if resolution not in SUPPORTED_RESOLUTIONS:
            raise GifdError(
                f"DCGAN resolution {resolution} is not supported: use one of {list(SUPPORTED_RESOLUTIONS)}"
            )
        for name, value in (("nz", nz), ("ngf", ngf), ("nc", nc)):
            if value < 1:
                raise GifdError(f"DCGAN {name} must be a positive integer, got {value}")
        self.nz, self.ngf, self.resolution, self.nc = nz, ngf, resolution, nc
        self.num_blocks = resolution.bit_length() - 3  # log2(resolution) - 2
        layers: list[nn.Module] = []
        in_channels = nz
        for b in range(self.num_blocks):
            out_channels = ngf * 2 ** (self.num_blocks - 1 - b)
            stride, padding = (1, 0) if b == 0 else (2, 1)
            layers += [
                nn.ConvTranspose2d(in_channels, out_channels, 4, stride, padding, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=False),
            ]
            in_channels = out_channels
        layers += [nn.ConvTranspose2d(in_channels, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    @property
    def arch(self) -> dict[str, int]:
        """The architecture as a plain dict (stored in checkpoints)."""
        return {"nz": self.nz, "ngf": self.ngf, "resolution": self.resolution, "nc": self.nc}

    def block(self, index: int, x: Tensor, start: int = 0, end: int = 3) -> Tensor:
        """Up-sampling block `index` (1-based) applied to `x`: its layers `start` to `end` - 1
        (0 ConvTranspose2d, 1 BatchNorm2d, 2 ReLU; default the whole block)."""
        first = 3 * (index - 1)
        for layer in self.main[first + start : first + end]:
            x = layer(x)
        return x

    def output(self, x: Tensor) -> Tensor:
        """The output layer (ConvTranspose2d + Tanh) applied to the last block's output."""
        start = 3 * self.num_blocks
        return self.main[start + 1](self.main[start](x))

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.main(z)


def init_dcgan_weights(module: nn.Module, generator: torch.Generator) -> None:
    """DCGAN initialisation, drawn from `generator`: conv weights N(0, 0.02), BatchNorm gamma
    N(1, 0.02) and beta 0, biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * 0.02)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(1.0 + torch.randn(m.weight.shape, generator=generator) * 0.02)
                m.bias.zero_()


#: Where a DCGAN stage is cut inside its block: after the ReLU (the whole block), after the
#: BatchNorm (before the ReLU), or after the ConvTranspose2d -> number of the block's layers run.
CUT_LAYERS: dict[str, int] = {"relu": 3, "batchnorm": 2, "conv": 1}
DCGANCut = Literal["relu", "batchnorm", "conv"]


class DCGANSettings(BaseModel):
    """The DCGAN priors' settings (`prior_settings` of a run)."""

    model_config = ConfigDict(extra="forbid")

    #: Where each stage is cut inside its block (see `DCGANPrior`).
    cut: DCGANCut = "relu"


class DCGANPrior(StagedGenerator):
    """A `DCGANGenerator` cut into stages (see the module docstring for the stage layout).

    `cut` says where stage i >= 1 is taken inside block i: "relu" (the default: the block's output
    after BatchNorm + ReLU), "batchnorm" (after BatchNorm, before the ReLU) or "conv" (the
    ConvTranspose2d output); the rest of the block runs in the later stages' generator. After the
    ReLU most entries are exactly zero and an optimised feature may go negative where the generator
    never does; before it, every entry is free and the feature stays in the generator's own range.
    "batchnorm" and "conv" reach the same images (eval-mode BatchNorm is a fixed per-channel affine
    map); they differ in the geometry of the l1 ball and of Adam's steps: after BatchNorm every
    channel has about unit scale, so one radius and one lr treat the channels alike, while the
    ConvTranspose2d output has each channel's own running scale. Which cut fits best per victim is
    measured by `gifd calibrate` (it records the winner); the default stays "relu" until that
    measurement says otherwise.

    GIAS's fine-tune lr (`gias_finetune_lr`) follows the weight-scale rule of `StagedGenerator`:
    2.5e-3 x the RMS of the ConvTranspose2d kernels, to one digit (1e-4 for the face prior, whose
    kernels have an RMS near 0.04). GIAS published no value for a DCGAN; a rule on the weights'
    own scale carries to any DCGAN `gifd train-prior` writes, and it is the relative step that
    StyleGAN2's published 1e-3 on unit-scale weights takes, within a factor of 2.5.
    """

    sphere_latent = True

    def __init__(
        self,
        net: DCGANGenerator,
        label: str = "DCGAN",
        weights_key: tuple[Any, ...] | None = None,
        cut: DCGANCut = "relu",
    ) -> None:
        super().__init__()
        if net.nc != 3:
            raise GifdError(f"a DCGAN prior must produce RGB images (nc=3), this generator has nc={net.nc}")
        self.net = net
        self.resolution = net.resolution
        self.latent_dim = net.nz
        self.label = label
        #: Identifies the weights for the module-level radius cache (None: cache per instance only).
        self.weights_key = weights_key
        self._radii: list[float] | None = None
        self.cut: DCGANCut = "relu"
        self.configure(DCGANSettings(cut=cut))
        self.net.eval()

    def configure(self, settings: BaseModel) -> None:
        """Apply `DCGANSettings` (the stage cut); the radii are measured again for the new cut."""
        if not isinstance(settings, DCGANSettings):
            raise GifdError(f"{self.label} takes DCGANSettings, got {type(settings).__name__}")
        self.cut = settings.cut
        self._radii = None

    @property
    def _cut_layers(self) -> int:
        return CUT_LAYERS[self.cut]

    def train(self, mode: bool = True) -> DCGANPrior:
        """Set the mode of the module, but keep BatchNorm on its running statistics."""
        super().train(mode)
        self.net.eval()
        return self

    @property
    def num_stages(self) -> int:
        return self.net.num_blocks + 1

    @property
    def stage_names(self) -> list[str]:
        names = [f"latent z ({self.net.nz})"]
        side = 4
        for b in range(1, self.net.num_blocks + 1):
            channels = self.net.ngf * 2 ** (self.net.num_blocks - b)
            names.append(f"block {b} ({channels}x{side}x{side})")
            side *= 2
        return names

    def init_latent(
        self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Variables:
        z = torch.randn(n, self.net.nz, generator=generator)
        return {"z": z.to(self.device)}

    def _input(self, stage: int, variables: Variables) -> Tensor:
        self.check_stage(stage)
        key = "z" if stage == 0 else "h"
        if key not in variables:
            raise GifdError(
                f"stage {stage} of {self.label} takes the variable {key!r}, got {sorted(variables)}"
            )
        x = variables[key]
        expected = self._stage_shape(stage)
        if tuple(x.shape[1:]) != expected:
            raise GifdError(
                f"stage {stage} of {self.label} takes {key!r} of per-sample shape {expected}, "
                f"got {tuple(x.shape[1:])}"
            )
        return x[:, :, None, None] if stage == 0 else x

    def _stage_shape(self, stage: int) -> tuple[int, ...]:
        if stage == 0:
            return (self.net.nz,)
        channels = self.net.ngf * 2 ** (self.net.num_blocks - stage)
        side = 4 * 2 ** (stage - 1)
        return (channels, side, side)

    def forward(self, stage: int, variables: Variables, context: Context) -> Tensor:  # type: ignore[override]
        x = self._input(stage, variables)
        if stage > 0:
            x = self.net.block(stage, x, start=self._cut_layers)
        for b in range(stage + 1, self.net.num_blocks + 1):
            x = self.net.block(b, x)
        return self.net.output(x)

    def advance(self, stage: int, variables: Variables, context: Context) -> Variables:
        x = self._input(stage, variables)
        if stage + 1 >= self.num_stages:
            raise GifdError(f"stage {stage} is the last stage of {self.label}: there is no stage {stage + 1}")
        with torch.no_grad():
            if stage > 0:
                x = self.net.block(stage, x, start=self._cut_layers)
            return {"h": self.net.block(stage + 1, x, end=self._cut_layers)}

    def default_radii(self) -> list[float]:
        """The calibrated linear schedule 0.5 x F_1 x i (see the module doc; measured once)."""
        if self._radii is None:
            norms = radii_from_feature_norms(self, fraction=1.0)
            self._radii = linear_radii(norms, DEFAULT_RADIUS_STEP, DEFAULT_RADIUS_FRACTION * norms[0])
        return list(self._radii)


# ---------------------------------------------------------------------------------------------
# Loading weights


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


#: How an unreadable weights file is described (load_torch_file's `unreadable`).


def _short_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_generator_state(net: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """Load `state` into `net` strictly; missing, unexpected and mis-shaped keys become a GifdError."""
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise GifdError(f"{source} does not hold a state dict of tensors: it is not DCGAN generator weights")
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short_list(unexpected)}")
    if mis_shaped:
        problems.append(f"wrong shapes: {_short_list(mis_shaped, 4)}")
    if problems:
        arch = getattr(net, "arch", None)
        raise GifdError(
            f"{source} does not match the DCGAN generator {arch}: {'; '.join(problems)}. "
            "Pass the weights of a generator with this architecture."
        )
    net.load_state_dict(dict(state), strict=True)


def face_weights_path() -> Path:
    """The path of `weights.tar` inside the installed package gan-face-generate (not imported)."""
    try:
        spec = importlib.util.find_spec(FACE_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise GifdError(
            f"the face DCGAN weights come from the package gan-face-generate, which is not installed: "
            f"run `{FACE_PIP_INSTALL}`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "weights.tar"


def load_face_dcgan(path: Path | None = None) -> DCGANPrior:
    """The DigiFace-1M DCGAN (64x64) from `path`, by default gan-face-generate's `weights.tar`.

    `path` may hold the package's dict {"netG_state_dict": ...} or a bare generator state dict.
    """
    path = face_weights_path() if path is None else Path(path)
    fix = f"reinstall the package with `{FACE_PIP_INSTALL}` or pass that package's weights.tar"
    data = load_torch_file(path, "face DCGAN weights", fix)
    if isinstance(data, Mapping) and "netG_state_dict" in data:
        state = data["netG_state_dict"]
    elif isinstance(data, Mapping) and any(isinstance(k, str) and k.startswith("main.") for k in data):
        state = data
    else:
        keys = list(data)[:5] if isinstance(data, Mapping) else type(data).__name__
        raise GifdError(
            f"face DCGAN weights {path} hold no generator (expected the key 'netG_state_dict' or keys "
            f"'main.*', found {keys}): {fix}"
        )
    net = DCGANGenerator(nz=100, ngf=64, resolution=64, nc=3)
    load_generator_state(net, state, f"face DCGAN weights {path}")
    return DCGANPrior(net, label="digiface-dcgan64", weights_key=_file_key(path))


def _resolve_trained_path(path: Path) -> Path:
    """A directory written by `gifd train-prior` stands for its generator.pt (else checkpoint.pt)."""
    if path.is_dir():
        for name in ("generator.pt", "checkpoint.pt"):
            if (path / name).is_file():
                return path / name
        raise GifdError(
            f"directory {path} holds neither generator.pt nor checkpoint.pt: pass the output directory "
            "of `gifd train-prior` or one of those files"
        )
    return path


def arch_from_config(config: Any, source: str) -> dict[str, int]:
    """The generator architecture (nz, ngf, resolution, nc) stored under "arch" in a gifd DCGAN file."""
    try:
        arch = {k: int(config[k]) for k in ("nz", "ngf", "resolution")}
        arch["nc"] = int(config.get("nc", 3))
    except (KeyError, TypeError, ValueError) as exc:
        raise GifdError(
            f"{source} has no valid generator architecture (nz, ngf, resolution): the file is damaged; "
            "train again with `gifd train-prior`"
        ) from exc
    return arch


def load_trained_dcgan(path: str | Path | None) -> DCGANPrior:
    """The DCGAN written by `gifd train-prior`: its generator.pt, a checkpoint.pt, or the directory."""
    fix = "pass the generator.pt or checkpoint.pt written by `gifd train-prior` with --prior-weights"
    if path is None:
        raise GifdError(f"prior 'dcgan' has no default weights: {fix}")
    path = _resolve_trained_path(Path(path))
    data = load_torch_file(path, "DCGAN checkpoint", fix)
    fmt = data.get("format") if isinstance(data, Mapping) else None
    if fmt not in (CHECKPOINT_FORMAT, GENERATOR_FORMAT):
        raise GifdError(f"{path} is not a gifd DCGAN checkpoint (no format {GENERATOR_FORMAT!r}): {fix}")
    if int(data.get("version", -1)) > FORMAT_VERSION:
        raise GifdError(
            f"{path} was written by a newer gifd (format version {data.get('version')}): upgrade gifd"
        )
    arch = arch_from_config(data.get("arch", {}), str(path))
    state = data.get("generator")
    net = DCGANGenerator(**arch)
    load_generator_state(net, state if state is not None else {}, f"DCGAN checkpoint {path}")
    return DCGANPrior(net, label=f"dcgan ({path.name})", weights_key=_file_key(path))


register_prior(
    PriorEntry(
        name="digiface-dcgan64",
        description=(
            "DCGAN trained on the synthetic DigiFace-1M faces: z (100) -> 64x64 RGB, "
            "stages z, 512x4x4, 256x8x8, 128x16x16, 64x32x32"
        ),
        weights_source=(
            "gan_face_generate/weights.tar of the PyPI package gan-face-generate==1.1.1 "
            f"(`{FACE_PIP_INSTALL}`)"
        ),
        build=load_face_dcgan,
        default_weights=face_weights_path,
        settings=DCGANSettings,
    )
)

register_prior(
    PriorEntry(
        name="dcgan",
        description=(
            "a DCGAN trained with `gifd train-prior` (32 or 64 px; stages z and one per up-sampling block)"
        ),
        weights_source=(
            "the generator.pt or checkpoint.pt written by `gifd train-prior` (--prior-weights PATH)"
        ),
        build=load_trained_dcgan,
        settings=DCGANSettings,
    )
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULT_RADIUS_FRACTION",
    "GENERATOR_FORMAT",
    "DCGANCut",
    "DCGANGenerator",
    "DCGANPrior",
    "DCGANSettings",
    "face_weights_path",
    "init_dcgan_weights",
    "load_face_dcgan",
    "load_generator_state",
    "load_trained_dcgan",
    "radii_from_feature_norms",
]
