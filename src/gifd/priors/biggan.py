"""BigGAN-deep (128, 256, 512 px) as a staged prior, reading the checkpoints of `pytorch-pretrained-biggan`.

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

The layers and the config (and how spectral norm is stored) are in `gifd.priors.biggan_layers`.

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gifd.errors import GifdError, load_torch_file
from gifd.priors.base import Context, PriorEntry, StagedGenerator, Variables, register_prior
from gifd.priors.biggan_layers import _WEIGHTS_FIX, PUBLISHED_CONFIGS, BigGANConfig, GenBlock, Generator

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "pytorch_model.bin"
_FIX_SENTENCE = _WEIGHTS_FIX[0].upper() + _WEIGHTS_FIX[1:]


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
