"""BigGAN-deep prior: checkpoint format, strict loading, staged forward, error messages.

Where the checkpoint format comes from: the source of the PyPI package `pytorch-pretrained-biggan`
0.1.1 (read, not imported): `pytorch_pretrained_biggan/model.py` (classes BigGAN, Generator,
GenBlock, SelfAttn, BigGANBatchNorm; spectral norm via torch's `nn.utils.spectral_norm`, which
stores `weight_orig`, `weight_u`, `weight_v`), `config.py` (the config.json keys) and
`convert_tf_to_pytorch.py` (the BigGAN128/256/512 configs of the published checkpoints, and how u, v
were set: one power-iteration step). The published `pytorch_model.bin` files are
`torch.save(model.state_dict())` written by torch 1.0, i.e. the legacy (non-zip) format.
`reference_table` below rewrites those naming rules as data, independently of gifd's model code;
the key counts and sizes asserted against it were measured by instantiating the package's BigGAN.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gifd.errors import GifdError
from gifd.priors import PRIORS, StagedGenerator, create_prior
from gifd.priors.biggan import PUBLISHED_CONFIGS, BigGANConfig, BigGANDeep, load_biggan
from tolerances import kernel_rtol

# `layers` of BigGAN128 / BigGAN256 / BigGAN512 in convert_tf_to_pytorch.py ([up-sample, in, out]).
_LAYERS_128 = [[False, 16, 16], [True, 16, 16], [False, 16, 16], [True, 16, 8], [False, 8, 8],
               [True, 8, 4], [False, 4, 4], [True, 4, 2], [False, 2, 2], [True, 2, 1]]  # fmt: skip
_LAYERS_256 = [[False, 16, 16], [True, 16, 16], [False, 16, 16], [True, 16, 8], [False, 8, 8],
               [True, 8, 8], [False, 8, 8], [True, 8, 4], [False, 4, 4], [True, 4, 2], [False, 2, 2],
               [True, 2, 1]]  # fmt: skip
_LAYERS_512 = [*_LAYERS_256, [False, 1, 1], [True, 1, 1]]


def package_config(side: int) -> dict:
    """config.json as the package writes it (BigGANConfig.to_json_string of BigGAN<side>)."""
    layers = {128: _LAYERS_128, 256: _LAYERS_256, 512: _LAYERS_512}[side]
    return {"attention_layer_position": 8, "channel_width": 128, "class_embed_dim": 128, "eps": 0.0001,
            "layers": layers, "n_stats": 51, "num_classes": 1000, "output_dim": side, "z_dim": 128}  # fmt: skip


def reference_table(cfg: dict) -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of the package's BigGAN for `cfg`, written from its model.py."""
    ch, z_dim, n_stats = cfg["channel_width"], cfg["z_dim"], cfg["n_stats"]
    cond = 2 * z_dim  # cat(z, class embedding)
    table: dict[str, tuple[int, ...]] = {"embeddings.weight": (z_dim, cfg["num_classes"])}

    def spectral(prefix: str, shape: tuple[int, ...], bias: bool) -> None:
        if bias:
            table[f"{prefix}.bias"] = (shape[0],)
        table[f"{prefix}.weight_orig"] = shape
        table[f"{prefix}.weight_u"] = (shape[0],)
        table[f"{prefix}.weight_v"] = (math.prod(shape[1:]),)

    spectral("generator.gen_z", (4 * 4 * 16 * ch, cond), True)
    index = 0
    for position, (_, ratio_in, ratio_out) in enumerate(cfg["layers"]):
        if position == cfg["attention_layer_position"]:
            c, prefix = ch * ratio_in, f"generator.layers.{index}"
            table[f"{prefix}.gamma"] = (1,)
            spectral(f"{prefix}.snconv1x1_theta", (c // 8, c, 1, 1), False)
            spectral(f"{prefix}.snconv1x1_phi", (c // 8, c, 1, 1), False)
            spectral(f"{prefix}.snconv1x1_g", (c // 2, c, 1, 1), False)
            spectral(f"{prefix}.snconv1x1_o_conv", (c, c // 2, 1, 1), False)
            index += 1
        c_in, c_out, prefix = ch * ratio_in, ch * ratio_out, f"generator.layers.{index}"
        mid = c_in // 4
        for k, (n_in, n_out, size) in enumerate(
            [(c_in, mid, 1), (mid, mid, 3), (mid, mid, 3), (mid, c_out, 1)]
        ):
            table[f"{prefix}.bn_{k}.running_means"] = (n_stats, n_in)
            table[f"{prefix}.bn_{k}.running_vars"] = (n_stats, n_in)
            spectral(f"{prefix}.bn_{k}.scale", (n_in, cond), False)
            spectral(f"{prefix}.bn_{k}.offset", (n_in, cond), False)
            spectral(f"{prefix}.conv_{k}", (n_out, n_in, size, size), True)
        index += 1
    table["generator.bn.weight"] = (ch,)
    table["generator.bn.bias"] = (ch,)
    table["generator.bn.running_means"] = (n_stats, ch)
    table["generator.bn.running_vars"] = (n_stats, ch)
    spectral("generator.conv_to_rgb", (ch, ch, 3, 3), True)
    return table


def random_checkpoint(cfg: dict, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Random weights in the published format; u, v set as the converter does (one power step)."""
    gen = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, shape in reference_table(cfg).items():
        if name.endswith("running_vars"):
            state[name] = 0.5 + torch.rand(shape, generator=gen)
        elif name.endswith("running_means"):
            state[name] = 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("gamma"):
            state[name] = torch.full(shape, 0.5)
        elif name == "generator.bn.weight":
            state[name] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            state[name] = torch.randn(shape, generator=gen) * (0.1 if name.endswith("bias") else 1.0)
    for name in [n for n in state if n.endswith(".weight_v")]:
        prefix = name.removesuffix(".weight_v")
        weight = state[f"{prefix}.weight_orig"].reshape(state[f"{prefix}.weight_orig"].shape[0], -1)
        state[name] = F.normalize(weight.t() @ state[f"{prefix}.weight_u"], dim=0)
        state[f"{prefix}.weight_u"] = F.normalize(weight @ state[name], dim=0)
    state._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]  # as state_dict() returns
    return state


def cheap_checkpoint(table: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Right names and shapes, almost no bytes (every tensor a stride-0 view of one number)."""
    return {name: torch.zeros([1] * len(shape)).expand(shape) for name, shape in table.items()}


def write_checkpoint(directory: Path, cfg: dict | None, state: object, legacy: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if cfg is not None:
        (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    torch.save(state, directory / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    return directory


def reference_image(state: dict, cfg: dict, z: torch.Tensor, label: int, truncation: float) -> torch.Tensor:
    """The package's forward, rewritten functionally on the raw state dict (independent of gifd)."""

    def weight(prefix: str) -> torch.Tensor:
        w, u, v = (state[f"{prefix}.{k}"] for k in ("weight_orig", "weight_u", "weight_v"))
        return w / torch.dot(u, w.reshape(w.shape[0], -1) @ v)

    def stats(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        coef, start = math.modf(truncation / (1.0 / (cfg["n_stats"] - 1)))
        out = []
        for key in ("running_means", "running_vars"):
            rows = state[f"{prefix}.{key}"]
            row = rows[int(start)] * coef + rows[int(start) + 1] * (1 - coef) if coef else rows[int(start)]
            out.append(row[None, :, None, None])
        return out[0], out[1]

    def cbn(prefix: str, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mean, var = stats(prefix)
        scale = c @ weight(f"{prefix}.scale").t()
        offset = c @ weight(f"{prefix}.offset").t()
        return (x - mean) / torch.sqrt(var + cfg["eps"]) * (1 + scale[:, :, None, None]) + offset[
            :, :, None, None
        ]

    def conv(prefix: str, x: torch.Tensor) -> torch.Tensor:
        w = weight(prefix)
        return F.conv2d(x, w, state.get(f"{prefix}.bias"), padding=w.shape[-1] // 2)

    one_hot = F.one_hot(torch.tensor([label]), cfg["num_classes"]).float()
    c = torch.cat([z, one_hot @ state["embeddings.weight"].t()], dim=1)
    h = (c @ weight("generator.gen_z").t() + state["generator.gen_z.bias"]).view(-1, 4, 4, 16 * 128)
    h = h.permute(0, 3, 1, 2)
    index = 0
    for position, (up, ratio_in, ratio_out) in enumerate(cfg["layers"]):
        if position == cfg["attention_layer_position"]:
            p = f"generator.layers.{index}"
            n, ch, hh, ww = h.shape
            theta = conv(f"{p}.snconv1x1_theta", h).view(n, ch // 8, hh * ww)
            phi = F.max_pool2d(conv(f"{p}.snconv1x1_phi", h), 2).view(n, ch // 8, -1)
            attn = torch.softmax(theta.permute(0, 2, 1) @ phi, dim=-1)
            g = F.max_pool2d(conv(f"{p}.snconv1x1_g", h), 2).view(n, ch // 2, -1)
            o = conv(f"{p}.snconv1x1_o_conv", (g @ attn.permute(0, 2, 1)).view(n, ch // 2, hh, ww))
            h = h + state[f"{p}.gamma"] * o
            index += 1
        p = f"generator.layers.{index}"
        x = conv(f"{p}.conv_0", F.relu(cbn(f"{p}.bn_0", h, c)))
        x = F.relu(cbn(f"{p}.bn_1", x, c))
        x = conv(f"{p}.conv_1", F.interpolate(x, scale_factor=2) if up else x)
        x = conv(f"{p}.conv_2", F.relu(cbn(f"{p}.bn_2", x, c)))
        x = conv(f"{p}.conv_3", F.relu(cbn(f"{p}.bn_3", x, c)))
        skip = h[:, : h.shape[1] // 2] if ratio_in != ratio_out else h
        h = x + (F.interpolate(skip, scale_factor=2) if up else skip)
        index += 1
    mean, var = stats("generator.bn")
    h = (h - mean) / torch.sqrt(var + cfg["eps"]) * state["generator.bn.weight"][None, :, None, None]
    h = F.relu(h + state["generator.bn.bias"][None, :, None, None])
    return torch.tanh(conv("generator.conv_to_rgb", h)[:, :3])


# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "num_keys", "num_numbers"),
    [(128, 506, 52_687_425), (256, 602, 58_573_185), (512, 698, 58_908_865)],
)
def test_parameter_table_matches_the_package(side: int, num_keys: int, num_numbers: int) -> None:
    assert BigGANConfig.from_json_dict(package_config(side)) == PUBLISHED_CONFIGS[side]
    assert PUBLISHED_CONFIGS[side].to_json_dict() == package_config(side)
    table = reference_table(package_config(side))
    assert len(table) == num_keys and sum(math.prod(s) for s in table.values()) == num_numbers
    with torch.device("meta"):
        model = BigGANDeep(PUBLISHED_CONFIGS[side])
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == table
    assert model.num_stages == {128: 11, 256: 13, 512: 15}[side]


def test_256_stage_table_and_radii() -> None:
    with torch.device("meta"):
        model = BigGANDeep(PUBLISHED_CONFIGS[256])
    shapes = [model.stage_shapes(s)["h"] for s in range(1, 13)]
    assert shapes == [(2048, 4, 4), (2048, 8, 8), (2048, 8, 8), (1024, 16, 16), (1024, 16, 16),
                      (1024, 32, 32), (1024, 32, 32), (512, 64, 64), (512, 64, 64), (512, 64, 64),
                      (256, 128, 128), (256, 128, 128)]  # fmt: skip
    assert model.stage_shapes(0) == {"z": (128,)}
    assert model.default_radii() == [1000.0, *[2000.0 + 500 * k for k in range(12)]]
    assert model.default_radii()[-1] == 7500.0
    assert model.stage_names[9].startswith("self-attention (layers.8)")
    assert model.sphere_latent and model.num_classes == 1000 and model.latent_dim == 128


@pytest.fixture(scope="module")
def checkpoint_128(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    cfg = package_config(128)
    state = random_checkpoint(cfg)
    directory = write_checkpoint(tmp_path_factory.mktemp("biggan") / "deep128", cfg, state, legacy=True)
    return directory, state


@pytest.fixture(scope="module")
def prior_128(checkpoint_128: tuple[Path, dict]) -> StagedGenerator:
    return create_prior("biggan-deep-128", checkpoint_128[0])


def test_loads_strictly_and_matches_the_reference_forward(
    prior_128: StagedGenerator, checkpoint_128: tuple[Path, dict]
) -> None:
    state = checkpoint_128[1]
    assert isinstance(prior_128, BigGANDeep) and prior_128.resolution == 128
    assert all(isinstance(p, torch.nn.Parameter) and not p.requires_grad for p in prior_128.parameters())
    for key, value in prior_128.state_dict().items():
        assert torch.equal(value, state[key]), key
    labels = torch.tensor([207])
    z = prior_128.init_latent(1, labels, torch.Generator().manual_seed(3))
    for truncation in (1.0, 0.705):  # 0.705 takes two rows of statistics (the package's mixing rule)
        prior_128.truncation = truncation
        try:
            with torch.no_grad():
                image = prior_128(0, z, prior_128.context(labels, 1))
                expected = reference_image(state, package_config(128), z["z"], 207, truncation)
        finally:
            prior_128.truncation = 1.0
        assert (image - expected).abs().max().item() < 1e-5
    assert image.std().item() > 0.1 and image.abs().max().item() < 1.0  # not saturated


def test_spectral_norm_is_torch_eval_rule(prior_128: BigGANDeep, checkpoint_128: tuple[Path, dict]) -> None:
    state = checkpoint_128[1]
    linear = torch.nn.utils.spectral_norm(torch.nn.Linear(256, 32768))
    linear.load_state_dict({k.removeprefix("generator.gen_z."): v for k, v in state.items()
                            if k.startswith("generator.gen_z.")})  # fmt: skip
    linear.eval()
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (linear(x) - prior_128.generator.gen_z(x)).abs().max().item() < 1e-5


def test_every_stage_reproduces_the_latent_image(prior_128: BigGANDeep) -> None:
    labels = torch.tensor([12])
    context = prior_128.context(labels, 1)
    variables = prior_128.init_latent(1, labels, torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = prior_128(0, variables, context)
        assert reference.shape == (1, 3, 128, 128)
        for stage in range(1, prior_128.num_stages):
            variables = prior_128.advance(stage - 1, variables, context)
            assert set(variables) == {"h", "z"} and prior_128.trainable(stage) == ["h"]
            assert tuple(variables["h"].shape[1:]) == prior_128.stage_shapes(stage)["h"]
            image = prior_128(stage, variables, context)
            assert image.shape == (1, 3, 128, 128) and image.abs().max() <= 1.0
            assert (image - reference).abs().max().item() < 1e-5, stage
    assert prior_128.stage_shapes(10)["h"] == (256, 64, 64)
    with pytest.raises(GifdError, match="last stage"):
        prior_128.advance(prior_128.num_stages - 1, variables, context)


def test_feature_stage_gets_gradients_and_cache_follows_weight_changes(prior_128: BigGANDeep) -> None:
    labels = torch.tensor([5])
    context = prior_128.context(labels, 1)
    variables = prior_128.init_latent(1, labels, torch.Generator().manual_seed(1))
    with torch.no_grad():
        for stage in range(10):
            variables = prior_128.advance(stage, variables, context)
    h, z = variables["h"].clone().requires_grad_(True), variables["z"]
    before = prior_128(10, {"h": h, "z": z}, context)
    before.square().sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    u = prior_128.generator.conv_to_rgb.weight_u
    with torch.no_grad():
        u.mul_(2.0)  # sigma doubles, so the conv weight halves
        try:
            changed = prior_128(10, {"h": h, "z": z}, context)
        finally:
            u.div_(2.0)
        restored = prior_128(10, {"h": h, "z": z}, context)
    assert (changed - before).abs().max() > 1e-3
    assert torch.equal(restored, before.detach())


def test_bad_inputs_are_gifd_errors(prior_128: BigGANDeep) -> None:
    with pytest.raises(GifdError, match="labels are required"):
        prior_128.context(None, 1)
    with pytest.raises(GifdError, match=r"0\.\.999"):
        prior_128.context(torch.tensor([1000]), 1)
    context = prior_128.context(torch.tensor([1]), 1)
    with pytest.raises(GifdError, match=r"takes variables \['h', 'z'\], got \['h'\]"):
        prior_128(3, {"h": torch.zeros(1, 2048, 8, 8)}, context)
    z = torch.zeros(1, 128)
    with pytest.raises(GifdError, match="per-sample shape"):
        prior_128(3, {"h": torch.zeros(1, 2048, 4, 4), "z": z}, context)
    with pytest.raises(GifdError, match="stage 11 does not exist"):
        prior_128(11, {"h": torch.zeros(1, 128, 128, 128), "z": z}, context)


# ------------------------------------------------------------------------------------------------
# Wrong checkpoints


def test_256_checkpoint_asked_for_as_128(tmp_path: Path) -> None:
    directory = write_checkpoint(tmp_path / "c256", package_config(256), cheap_checkpoint({}))
    with pytest.raises(GifdError, match=r"is BigGAN-deep-256.*--prior biggan-deep-256"):
        create_prior("biggan-deep-128", directory)


def test_256_weights_under_a_128_config(tmp_path: Path) -> None:
    state = cheap_checkpoint(reference_table(package_config(256)))
    directory = write_checkpoint(tmp_path / "mixed", package_config(128), state)
    with pytest.raises(GifdError) as info:
        load_biggan(directory)
    message = str(info.value)
    assert "unexpected keys 96 (generator.layers.11." in message
    assert "looks like BigGAN-deep-256 (13 generator layers)" in message
    assert "--prior-weights" in message


def test_shape_mismatch_names_the_parameter(tmp_path: Path) -> None:
    table = reference_table(package_config(128))
    table["generator.layers.5.conv_1.weight_orig"] = (128, 128, 3, 3)
    directory = write_checkpoint(tmp_path / "shape", package_config(128), cheap_checkpoint(table))
    with pytest.raises(GifdError) as info:
        load_biggan(directory)
    message = str(info.value)
    assert "generator.layers.5.conv_1.weight_orig has shape (128, 128, 3, 3)" in message
    assert "needs (256, 256, 3, 3)" in message and "looks like BigGAN-deep-128" in message


def test_truncated_file(tmp_path: Path) -> None:
    directory = write_checkpoint(
        tmp_path / "cut", package_config(128), cheap_checkpoint(reference_table(package_config(128)))
    )
    weights = directory / "pytorch_model.bin"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(
        GifdError, match=r"could not be read because it is corrupt or not a torch file .*--prior-weights"
    ):
        load_biggan(directory)


def test_state_dict_of_another_model(tmp_path: Path) -> None:
    other = torch.nn.Sequential(torch.nn.ConvTranspose2d(100, 64, 4), torch.nn.BatchNorm2d(64)).state_dict()
    directory = write_checkpoint(tmp_path / "dcgan", package_config(128), other)
    with pytest.raises(GifdError) as info:
        load_biggan(directory)
    message = str(info.value)
    assert "missing keys 506 (embeddings.weight, generator.bn.bias" in message
    assert "unexpected keys 7 (0.bias, 0.weight, 1.bias" in message
    assert "does not look like a BigGAN-deep checkpoint" in message


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(
        GifdError, match=r"directory .*nowhere not found: pass the directory holding config\.json"
    ):
        load_biggan(tmp_path / "nowhere")
    with pytest.raises(GifdError, match="no default weights location"):
        create_prior("biggan-deep-256")
    only_weights = write_checkpoint(tmp_path / "no_config", None, {})
    with pytest.raises(GifdError, match=r"config\.json not found"):
        load_biggan(only_weights)
    (only_weights / "pytorch_model.bin").unlink()
    (only_weights / "config.json").write_text(json.dumps(package_config(128)))
    with pytest.raises(GifdError, match=r"pytorch_model\.bin not found"):
        load_biggan(only_weights)
    (only_weights / "config.json").write_text("{not json")
    with pytest.raises(GifdError, match="cannot be read"):
        load_biggan(only_weights)
    torch.save(torch.zeros(3), only_weights / "pytorch_model.bin")
    (only_weights / "config.json").write_text(json.dumps(package_config(128)))
    with pytest.raises(GifdError, match="not a state dict"):
        load_biggan(only_weights)


def test_inconsistent_config(tmp_path: Path) -> None:
    cfg = package_config(128)
    cfg["output_dim"] = 256
    directory = write_checkpoint(tmp_path / "bad_config", cfg, {})
    with pytest.raises(
        GifdError, match=r"the layers produce 128 px images but output_dim is 256.*--prior-weights"
    ):
        load_biggan(directory)


def test_registry_entries() -> None:
    for side in (128, 256, 512):
        entry = PRIORS[f"biggan-deep-{side}"]
        assert "pytorch-pretrained-biggan" in entry.weights_source and entry.default_weights() is None


def test_gias_fine_tune_lr_is_the_published_value(prior_128: BigGANDeep) -> None:
    assert prior_128.gias_finetune_lr() == 1e-5  # Jeon et al. 2021, BigGAN


@pytest.mark.parametrize("stage", [0, 6])
def test_channels_last_layout_equals_the_standard_layout(prior_128: BigGANDeep, stage: int) -> None:
    # The CPU speed path (feature maps channels-last, 1x1 convolutions as Linears over the
    # channels) against the standard layout: same images and the same gradient w.r.t. the
    # stage's variable, up to the float rounding of a different kernel order.
    labels = torch.tensor([5])
    context = prior_128.context(labels, 1)
    start = prior_128.init_latent(1, labels, torch.Generator().manual_seed(2))
    with torch.no_grad():
        for s in range(stage):
            start = prior_128.advance(s, start, context)
    key = prior_128.trainable(stage)[0]
    weights = torch.linspace(-1, 1, 3 * 128 * 128).view(1, 3, 128, 128)
    results = {}
    try:
        for channels_last in (True, False):
            prior_128.channels_last = channels_last
            variables = {k: v.clone().requires_grad_(k == key) for k, v in start.items()}
            image = prior_128(stage, variables, context)
            (grad,) = torch.autograd.grad((image * weights).sum(), [variables[key]])
            advanced = prior_128.advance(stage, variables, context)["h"] if stage < 9 else None
            results[channels_last] = (image.detach(), grad, advanced)
    finally:
        prior_128.channels_last = True
    fast, plain = results[True], results[False]
    assert fast[0].is_contiguous() and fast[2].is_contiguous()  # variables and images: standard layout
    # The largest reduction is a 3x3 convolution over 512 channels (4608 terms); ~45 convolutions
    # deep forward, as many again backward.
    rtol = kernel_rtol(torch.float32, terms=4608, depth=90)
    for a, b in zip(fast, plain, strict=True):
        assert (a - b).norm() <= rtol * b.norm()
