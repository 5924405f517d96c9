"""StyleGAN2 (config-f) generator in plain PyTorch, loading checkpoints of the rosinality port.

The network follows rosinality's `stylegan2-pytorch` (`model.py`), with the same state-dict names;
its layers (in plain torch, no compiled operator) are in `gifd.priors.stylegan2_layers`.

Layout (resolution R = 2^k, `num_blocks` = k - 2 synthesis blocks at 8, 16, ..., R px):
- mapping: PixelNorm, then `n_mlp` equalized-lr linear layers (lr_mul 0.01) with the fused leaky ReLU;
- w+ holds `n_latent` = 2k - 2 rows. Row 0 modulates conv1, row 1 to_rgb1 *and* the up-sampling
  conv of block 1; block j (1-based) reads rows 2j-1 (up conv), 2j (conv) and 2j+1 (its ToRGB),
  so each ToRGB shares its row with the next block's up conv (as in rosinality);
- `num_layers` = 2 * num_blocks + 1 noise maps: noise_0 (4x4) for conv1, noise_{2j-1} and noise_{2j}
  (side 4 * 2^j) for block j.

Stages (GIFD): the modules are G = block_n o ... o block_1 o conv1 (conv1 includes the constant
input and to_rgb1). Stage 0 holds {"w": N x n_latent x style_dim, "noise_0", ..., "noise_{L-1}"}.
Stage s >= 1 holds the output of module s: {"h": its feature map, "skip": the RGB image accumulated
by the ToRGB skip branch up to and including module s, "w", and the noise maps of the later blocks,
noise_{2s-1}, ...}. A StyleGAN2 module's output is the pair (h, skip): without `skip` the image
cannot be continued exactly (the official GIFD code drops it, so its intermediate stages render a
different image). `skip` is an ordinary stage variable, so an attack optimises and projects it
like `h` (it is a 3-channel image at the stage's resolution; at 1024 px with 8 stages its largest
size is 3 x 256 x 256).

Stage rule: every module except the last one is a stage (the last module's output is the image
itself, so optimising it would be a pixel-space search), capped at `max_stages` (default 8 = the
paper's latent + conv1 + blocks 1..6 at 1024 px). 1024 and 512 px: 8 stages; 256 px: 7; 64 px: 5;
32 px: 4; in general min(max_stages, num_blocks + 1).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from gifd.errors import GifdError, list_some, load_torch_file
from gifd.priors.base import Context, PriorEntry, StagedGenerator, Variables, register_prior
from gifd.priors.stylegan2_layers import (
    ConstantInput,
    EqualLinear,
    PixelNorm,
    StyledConv,
    ToRGB,
    Upsample,
    default_channels,
    fused_leaky_relu,
    upfirdn2d,
)

WEIGHTS_FIX = (
    "pass the .pt checkpoint of the rosinality stylegan2-pytorch port (dict with key g_ema)"
    " with --prior-weights"
)
#: The official GIFD l1-ball radii of the 8 StyleGAN2 stages.
OFFICIAL_RADII = (1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0, 8000.0)


def _forget_w_fit_after_load(module: nn.Module, incompatible_keys: object) -> None:
    """New weights make the cached w+ fit stale (a module-level function keeps the model picklable)."""
    module._forget_w_fit()  # type: ignore[operator]


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------
class StyleGAN2Generator(StagedGenerator):
    """StyleGAN2 generator (rosinality state-dict layout) cut into GIFD stages (see module docstring).

    `channels` maps every side 4, 8, ..., resolution to its feature width; by default rosinality's
    table with `channel_multiplier` (2 = config-f). Images are clamped to [-1, 1] unless
    `clamp_output` is False (`synthesize` returns the raw output).
    """

    sphere_latent = False
    num_classes = None
    #: Samples of the mapping network used to fit the w+ initialisation (fixed seed, no file).
    W_FIT_SAMPLES = 10_000
    W_FIT_SEED = 20_231_001

    def gias_finetune_lr(self) -> float:
        """1e-3: GIAS's value for StyleGAN2 (Jeon et al. 2021), whose equalised-learning-rate weights
        are stored at unit scale."""
        return 1e-3

    def __init__(
        self,
        resolution: int = 1024,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        channels: Mapping[int, int] | None = None,
        lr_mlp: float = 0.01,
        max_stages: int = 8,
        clamp_output: bool = True,
    ) -> None:
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise GifdError(f"StyleGAN2 resolution must be a power of two >= 8, got {resolution}")
        if n_mlp < 1 or style_dim < 1:
            raise GifdError(f"StyleGAN2 needs n_mlp >= 1 and style_dim >= 1, got {n_mlp} and {style_dim}")
        if max_stages < 1:
            raise GifdError(f"max_stages must be >= 1, got {max_stages}")
        sides = [2**k for k in range(2, int(math.log2(resolution)) + 1)]
        if channels is None:
            channels = default_channels(resolution, channel_multiplier)
        missing = [s for s in sides if s not in channels]
        if missing:
            raise GifdError(
                f"channels has no width for sides {missing}: give one for every side 4..{resolution}"
            )
        self.channels = {s: int(channels[s]) for s in sides}
        self.resolution = resolution
        self.style_dim = self.latent_dim = style_dim
        self.n_mlp = n_mlp
        self.clamp_output = clamp_output
        self.log_size = int(math.log2(resolution))
        self.num_blocks = self.log_size - 2
        self.num_layers = 2 * self.num_blocks + 1
        self.n_latent = 2 * self.log_size - 2
        self._num_stages = min(max_stages, self.num_blocks + 1)
        #: The rosinality channel multiplier if `channels` is its table (below 64 px every multiplier
        #: gives the same table: the one asked for is kept), else None.
        self.channel_multiplier: int | None = None
        if resolution <= 1024:
            multiplier = self.channels[64] // 256 if resolution >= 64 else channel_multiplier
            if multiplier >= 1 and self.channels == default_channels(resolution, multiplier):
                self.channel_multiplier = multiplier

        self.style = nn.Sequential(
            PixelNorm(),
            *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activate=True) for _ in range(n_mlp)],
        )
        c4 = self.channels[4]
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, style_dim)
        self.to_rgb1 = ToRGB(c4, style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for k in range(self.num_layers):
            side = self.noise_side(k)
            self.noises.register_buffer(f"noise_{k}", torch.randn(1, 1, side, side))
        in_channel = c4
        for side in sides[1:]:
            out_channel = self.channels[side]
            self.convs.append(StyledConv(in_channel, out_channel, style_dim, upsample=True))
            self.convs.append(StyledConv(out_channel, out_channel, style_dim))
            self.to_rgbs.append(ToRGB(out_channel, style_dim))
            in_channel = out_channel

        self._w_fit: tuple[Tensor, Tensor] | None = None
        self.register_load_state_dict_post_hook(_forget_w_fit_after_load)

    # ---- metadata --------------------------------------------------------------------------
    @staticmethod
    def noise_side(k: int) -> int:
        """Side of noise map k (rosinality: 2 ** ((k + 5) // 2)): 4, 8, 8, 16, 16, ..."""
        return 2 ** ((k + 5) // 2)

    @property
    def num_stages(self) -> int:
        return self._num_stages

    def stage_side(self, stage: int) -> int:
        """Side of the feature map h of `stage` >= 1 (4 for conv1, 8 for block 1, ...)."""
        return 4 * 2 ** (stage - 1)

    def first_noise(self, stage: int) -> int:
        """Index of the first noise map still used after `stage` (0 at stage 0, 2s-1 at stage s)."""
        return 0 if stage == 0 else 2 * stage - 1

    @property
    def stage_names(self) -> list[str]:
        names = ["latent (w+, noise)"]
        for s in range(1, self.num_stages):
            side = self.stage_side(s)
            module = "conv1" if s == 1 else f"block {s - 1}"
            names.append(f"{module} ({self.channels[side]}x{side}x{side})")
        return names

    def stage_shapes(self, stage: int) -> dict[str, tuple[int, ...]]:
        """Per-sample shapes of the variables of `stage` (analytic, no dry run)."""
        self.check_stage(stage)
        shapes: dict[str, tuple[int, ...]] = {}
        if stage > 0:
            side = self.stage_side(stage)
            shapes["h"] = (self.channels[side], side, side)
            shapes["skip"] = (3, side, side)
        shapes["w"] = (self.n_latent, self.style_dim)
        for k in range(self.first_noise(stage), self.num_layers):
            side = self.noise_side(k)
            shapes[f"noise_{k}"] = (1, side, side)
        return shapes

    def default_radii(self) -> list[float]:
        """The official radii [1000, 2000, ..., 6000, 8000, 8000], cut to the number of stages
        (a 32 px generator with 4 stages gets [1000, 2000, 3000, 4000]); stages past the eighth,
        if `max_stages` > 8, repeat 8000. Radii are absolute l1 norms per sample: for small
        generators whose features have fewer entries they are looser than at 1024 px."""
        n = self.num_stages
        return list(OFFICIAL_RADII[:n]) + [OFFICIAL_RADII[-1]] * max(0, n - len(OFFICIAL_RADII))

    # ---- mapping network and the w+ initialisation -----------------------------------------
    def mapping(self, z: Tensor) -> Tensor:
        """w = mapping(z), shape (N, style_dim)."""
        return self.style(z)

    def _mapping_preactivation(self, z: Tensor) -> Tensor:
        x = z
        for layer in list(self.style)[:-1]:
            x = layer(x)
        return self.style[-1].preactivation(x)

    def _forget_w_fit(self) -> None:
        self._w_fit = None

    @torch.no_grad()
    def w_gaussian(self) -> tuple[Tensor, Tensor]:
        """Per-dimension mean and std (CPU, float32) of the last mapping layer's pre-activation u,
        fitted on W_FIT_SAMPLES z ~ N(0, I) drawn with a fixed seed; cached on the instance and
        recomputed after a `load_state_dict`.

        w = fused_leaky_relu(u), so a Gaussian on u pushed through the activation reproduces the
        skewed per-dimension law of w better than a Gaussian on w itself (the fit the official code
        loads from its `gaussian_fit.pt`, built here instead of read from a file).
        """
        if self._w_fit is None:
            gen = torch.Generator().manual_seed(self.W_FIT_SEED)
            z = torch.randn(self.W_FIT_SAMPLES, self.style_dim, generator=gen)
            dtype = self.input.input.dtype
            u = torch.cat(
                [
                    self._mapping_preactivation(chunk.to(self.device, dtype)).double().cpu()
                    for chunk in z.split(2500)
                ]
            )
            self._w_fit = (u.mean(0).float(), u.std(0).float())
        return self._w_fit

    def init_latent(
        self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Variables:
        """Stage-0 variables for `n` samples: w+ rows drawn independently as fused_leaky_relu(mean +
        std * eps) from the fitted Gaussian, and fresh N(0, 1) noise maps. Every call and every
        sample gets its own tensors (no noise map is shared between samples or restarts)."""
        mean, std = self.w_gaussian()
        eps = torch.randn(n, self.n_latent, self.style_dim, generator=generator)
        variables: Variables = {"w": fused_leaky_relu(mean + std * eps)}
        for k in range(self.num_layers):
            side = self.noise_side(k)
            variables[f"noise_{k}"] = torch.randn(n, 1, side, side, generator=generator)
        dtype = self.input.input.dtype
        return {name: v.to(self.device, dtype) for name, v in variables.items()}

    # ---- running the generator -------------------------------------------------------------
    def _check_variables(self, stage: int, variables: Variables) -> int:
        self.check_stage(stage)
        expected = self.stage_shapes(stage)
        if variables.keys() != expected.keys():
            missing = sorted(expected.keys() - variables.keys())
            unexpected = sorted(variables.keys() - expected.keys())
            raise GifdError(
                f"StyleGAN2 stage {stage} needs variables {list_some(sorted(expected), 8)}; missing: "
                f"{list_some(missing)}; unexpected: {list_some(unexpected)}"
                " (build them with init_latent/advance)"
            )
        n = variables["w"].shape[0]
        for name, shape in expected.items():
            got = tuple(variables[name].shape)
            if got != (n, *shape):
                raise GifdError(
                    f"StyleGAN2 stage {stage} variable {name!r} has shape {got}, expected {(n, *shape)}"
                    " (build the variables with init_latent/advance)"
                )
        return n

    def _module(self, index: int, variables: Variables) -> tuple[Tensor, Tensor]:
        """(h, skip) of stage index + 1 from the variables of stage `index`: for index 0 the constant
        input, conv1 and to_rgb1 (module g_1); for index j >= 1 synthesis block j (module g_{j+1})
        applied to the h and skip of stage j."""
        w = variables["w"]
        if index == 0:
            h = self.conv1(self.input(w.shape[0]), w[:, 0], variables["noise_0"])
            return h, self.to_rgb1(h, w[:, 1])
        j = index - 1  # 0-based block
        h = self.convs[2 * j](variables["h"], w[:, 2 * j + 1], variables[f"noise_{2 * j + 1}"])
        h = self.convs[2 * j + 1](h, w[:, 2 * j + 2], variables[f"noise_{2 * j + 2}"])
        return h, self.to_rgbs[j](h, w[:, 2 * j + 3], variables["skip"])

    def synthesize(self, stage: int, variables: Variables) -> Tensor:
        """The raw (unclamped) generator output from `stage`'s variables."""
        self._check_variables(stage, variables)
        state = dict(variables)
        for index in range(stage, self.num_blocks + 1):
            state["h"], state["skip"] = self._module(index, state)
        return state["skip"]

    def forward(self, stage: int, variables: Variables, context: Context | None = None) -> Tensor:  # type: ignore[override]
        """The image (N, 3, R, R) from `stage`'s variables, clamped to [-1, 1] if `clamp_output`."""
        image = self.synthesize(stage, variables)
        return image.clamp(-1.0, 1.0) if self.clamp_output else image

    @torch.no_grad()
    def advance(self, stage: int, variables: Variables, context: Context | None = None) -> Variables:
        """Stage + 1 from stage: run module `stage`; keep w+ and the later noise maps (copies)."""
        self._check_variables(stage, variables)
        if stage + 1 >= self.num_stages:
            raise GifdError(
                f"stage {stage} is the last stage of this StyleGAN2 prior (stages 0..{self.num_stages - 1}):"
                " there is no next stage"
            )
        h, skip = self._module(stage, variables)
        nxt: Variables = {"h": h, "skip": skip, "w": variables["w"].detach().clone()}
        for k in range(self.first_noise(stage + 1), self.num_layers):
            nxt[f"noise_{k}"] = variables[f"noise_{k}"].detach().clone()
        return nxt


# --------------------------------------------------------------------------------------------
# Loading rosinality checkpoints
# --------------------------------------------------------------------------------------------
def _read_g_ema(path: Path) -> dict[str, Tensor]:
    """The `g_ema` state dict of a rosinality checkpoint, loaded with weights_only=True.

    Training checkpoints of the port also hold `args`, an argparse.Namespace, which the safe
    unpickler refuses by default; it is allowed here, for this load only (torch's scoped
    `safe_globals`), so such files load without weights_only=False.
    """
    checkpoint = load_torch_file(
        path,
        "StyleGAN2 checkpoint",
        WEIGHTS_FIX,
        mmap=True,
        safe_globals=[argparse.Namespace],
    )
    if not isinstance(checkpoint, Mapping) or "g_ema" not in checkpoint:
        found = (
            list_some(sorted(map(str, checkpoint)))
            if isinstance(checkpoint, Mapping)
            else type(checkpoint).__name__
        )
        raise GifdError(f"{path} has no 'g_ema' entry (it holds: {found}): {WEIGHTS_FIX}")
    state = checkpoint["g_ema"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise GifdError(f"'g_ema' in {path} is not a state dict of tensors: {WEIGHTS_FIX}")
    return {str(k): v for k, v in state.items()}


def _count(state: Mapping[str, Tensor], pattern: str, start: int) -> int:
    n = start
    while pattern.format(n) in state:
        n += 1
    return n - start


def _infer_config(state: Mapping[str, Tensor], path: Path) -> dict:
    """Resolution, style_dim, n_mlp and the channel table, read from the state-dict shapes."""
    core = ["input.input", "style.1.weight", "conv1.conv.weight", "to_rgb1.conv.weight"]
    missing = [k for k in core if k not in state]
    if missing:
        raise GifdError(
            f"'g_ema' in {path} is not a StyleGAN2 generator of the rosinality port (missing "
            f"{list_some(missing)}; it holds {list_some(sorted(state))}): {WEIGHTS_FIX}"
        )

    def shape_of(name: str, ndim: int) -> tuple[int, ...]:
        shape = tuple(state[name].shape)
        if len(shape) != ndim:
            raise GifdError(
                f"parameter {name} in {path} has shape {shape}, expected {ndim} dimensions: {WEIGHTS_FIX}"
            )
        return shape

    num_blocks = _count(state, "to_rgbs.{}.conv.weight", 0)
    channels = {4: shape_of("input.input", 4)[1]}
    for j in range(num_blocks):
        channels[8 * 2**j] = shape_of(f"to_rgbs.{j}.conv.weight", 5)[2]
    return {
        "resolution": 4 * 2**num_blocks,
        "style_dim": shape_of("style.1.weight", 2)[1],
        "n_mlp": _count(state, "style.{}.weight", 1),
        "channels": channels,
    }


def load_stylegan2(path: str | Path, resolution: int | None = None, **options: object) -> StyleGAN2Generator:
    """Build a StyleGAN2Generator from a rosinality `stylegan2-pytorch` checkpoint (.pt dict with
    `g_ema`), inferring resolution, style dim, mapping depth and channel widths from the shapes.

    Strict: every key must match by name and shape, else a GifdError lists the missing and
    unexpected keys or names the mismatched parameter. `resolution`, if given, must equal the
    checkpoint's. `options` go to the constructor (max_stages, clamp_output, lr_mlp).
    """
    path = Path(path)
    state = _read_g_ema(path)
    config = _infer_config(state, path)
    if resolution is not None and resolution != config["resolution"]:
        raise GifdError(
            f"{path} holds a {config['resolution']} px StyleGAN2 generator, but {resolution} px was"
            f" asked for: pass the checkpoint of a {resolution} px generator"
            f" or ask for {config['resolution']} px"
        )
    if config["resolution"] < 8:
        raise GifdError(f"{path} holds a generator without synthesis blocks (4 px): {WEIGHTS_FIX}")
    with torch.device("meta"):
        model = StyleGAN2Generator(**config, **options)  # type: ignore[arg-type]
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    described = (
        f"a {config['resolution']} px StyleGAN2 generator"
        f" (style_dim {config['style_dim']}, n_mlp {config['n_mlp']})"
    )
    if missing or unexpected:
        raise GifdError(
            f"'g_ema' in {path} does not match {described}: missing keys: {list_some(missing, 8)}; "
            f"unexpected keys: {list_some(unexpected, 8)}: {WEIGHTS_FIX}"
        )
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise GifdError(
                f"parameter {name} has shape {tuple(state[name].shape)} in {path}, but {described} with "
                f"channels {model.channels} expects {shape}: {WEIGHTS_FIX}"
            )
        if not state[name].is_floating_point():
            raise GifdError(f"parameter {name} in {path} is not a floating-point tensor: {WEIGHTS_FIX}")
    # copies (float32, contiguous), so the model owns its memory even when the file was memory-mapped
    model.load_state_dict(
        {k: v.detach().to(torch.float32, copy=True).contiguous() for k, v in state.items()},
        strict=True,
        assign=True,
    )
    return model


def _build_from_weights(path: Path | None) -> StagedGenerator:
    if path is None:
        raise GifdError(f"the stylegan2 prior has no default weights: {WEIGHTS_FIX}")
    return load_stylegan2(path)


register_prior(
    PriorEntry(
        name="stylegan2",
        description="StyleGAN2 config-f (rosinality layout, any 2^k resolution); w+ and noise, then conv1"
        " and blocks 1..6 (8 stages at 1024 px)",
        weights_source="user-supplied: the rosinality stylegan2-pytorch checkpoint"
        " stylegan2-ffhq-config-f.pt (FFHQ 1024 px), downloaded or converted from NVIDIA's .pkl"
        " with the port's convert_weight.py",
        build=_build_from_weights,
    )
)

__all__ = [
    "OFFICIAL_RADII",
    "WEIGHTS_FIX",
    "StyleGAN2Generator",
    "Upsample",
    "default_channels",
    "load_stylegan2",
    "upfirdn2d",
]
