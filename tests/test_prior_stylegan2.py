"""StyleGAN2 prior: rosinality checkpoint format, forward semantics, GIFD stages, w+ init, errors.

Where the checkpoint names and shapes come from (rosinality/stylegan2-pytorch, model.py and
convert_weight.py), restated here independently of gifd's implementation:
- Generator.style = Sequential(PixelNorm, EqualLinear x n_mlp): `style.{1..n_mlp}.weight`
  (style_dim, style_dim) and `.bias` (style_dim,); PixelNorm (index 0) has no parameters.
  EqualLinear(lr_mul=0.01, fused_lrelu): weight * lr_mul / sqrt(in), bias * lr_mul, then
  leaky_relu(0.2) * sqrt(2).
- ConstantInput: `input.input` (1, C4, 4, 4).
- StyledConv (conv1, convs.N): `conv.weight` (1, out, in, 3, 3); `conv.modulation.weight`
  (in, style_dim), `conv.modulation.bias` (in,) (EqualLinear, bias_init 1, lr_mul 1);
  `noise.weight` (1,); `activate.bias` (out,); up-sampling convs (convs.0, 2, 4, ...) also hold the
  buffer `conv.blur.kernel` (4, 4) = outer([1,3,3,1])^2 / 64 * 4.
- ToRGB (to_rgb1, to_rgbs.N): `conv.weight` (1, 3, in, 1, 1), `conv.modulation.*`, `bias`
  (1, 3, 1, 1); to_rgbs.N also `upsample.kernel` (4, 4) (same values as the blur kernel).
- channels: 512 for 4..32 px, then 256, 128, 64, 32, 16 times channel_multiplier (64..1024 px);
  block N (side 8 * 2^N) = convs.2N (in -> out, up), convs.2N+1 (out -> out), to_rgbs.N.
- `noises.noise_{i}` (1, 1, 2^((i+5)//2), ...) for i < (log2(size) - 2) * 2 + 1.
- forward: latent row 0 -> conv1 (noise 0), row 1 -> to_rgb1; block N: rows 2N+1, 2N+2, 2N+3
  for up conv, conv, ToRGB; noises 2N+1, 2N+2; skip = to_rgb(out, w, upsample(skip)).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import signal

from gifd.errors import GifdError
from gifd.priors import PRIORS, create_prior
from gifd.priors.base import StagedGenerator
from gifd.priors.stylegan2 import StyleGAN2Generator, load_stylegan2, upfirdn2d

SMALL = {"size": 32, "style_dim": 32, "n_mlp": 2, "channels": {4: 32, 8: 32, 16: 16, 32: 8}}
LR_MLP = 0.01


def rosinality_table(size: int, style_dim: int, n_mlp: int, channels: dict[int, int]) -> dict[str, tuple]:
    """Every g_ema state-dict name and shape of a rosinality Generator (rules in the module docstring)."""
    table: dict[str, tuple] = {}
    for i in range(1, n_mlp + 1):
        table[f"style.{i}.weight"] = (style_dim, style_dim)
        table[f"style.{i}.bias"] = (style_dim,)
    table["input.input"] = (1, channels[4], 4, 4)

    def styled_conv(prefix: str, cin: int, cout: int, up: bool) -> None:
        table[f"{prefix}.conv.weight"] = (1, cout, cin, 3, 3)
        if up:
            table[f"{prefix}.conv.blur.kernel"] = (4, 4)
        table[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        table[f"{prefix}.conv.modulation.bias"] = (cin,)
        table[f"{prefix}.noise.weight"] = (1,)
        table[f"{prefix}.activate.bias"] = (cout,)

    def to_rgb(prefix: str, cin: int, up: bool) -> None:
        if up:
            table[f"{prefix}.upsample.kernel"] = (4, 4)
        table[f"{prefix}.conv.weight"] = (1, 3, cin, 1, 1)
        table[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        table[f"{prefix}.conv.modulation.bias"] = (cin,)
        table[f"{prefix}.bias"] = (1, 3, 1, 1)

    styled_conv("conv1", channels[4], channels[4], False)
    to_rgb("to_rgb1", channels[4], False)
    log_size = int(math.log2(size))
    for i in range((log_size - 2) * 2 + 1):
        side = 2 ** ((i + 5) // 2)
        table[f"noises.noise_{i}"] = (1, 1, side, side)
    cin = channels[4]
    for n, k in enumerate(range(3, log_size + 1)):
        cout = channels[2**k]
        styled_conv(f"convs.{2 * n}", cin, cout, True)
        styled_conv(f"convs.{2 * n + 1}", cout, cout, False)
        to_rgb(f"to_rgbs.{n}", cout, True)
        cin = cout
    return table


def config_f_channels(size: int, multiplier: int = 2) -> dict[int, int]:
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    return {r: c * multiplier if r >= 64 else c for r, c in base.items() if r <= size}


def random_state_dict(size, style_dim, n_mlp, channels, seed=0) -> dict[str, torch.Tensor]:
    """Random weights in the exact rosinality layout, drawn like a trained net's scales."""
    gen = torch.Generator().manual_seed(seed)
    fir = torch.tensor([1.0, 3.0, 3.0, 1.0])
    fir = torch.outer(fir, fir) / 64 * 4
    state = {}
    for name, shape in rosinality_table(size, style_dim, n_mlp, channels).items():
        t = torch.randn(shape, generator=gen)
        if name.endswith("kernel"):
            t = fir.clone()
        elif name.startswith("style.") and name.endswith("weight"):
            t = t / LR_MLP
        elif name.startswith("style.") and name.endswith("bias"):
            t = t / LR_MLP * 0.1
        elif name.endswith("modulation.bias"):
            t = 1.0 + 0.2 * t
        elif name.endswith("noise.weight") or name.endswith("activate.bias") or name.endswith(".bias"):
            t = 0.2 * t
        state[name] = t
    return state


def save(path, obj) -> None:
    torch.save(obj, path)


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """A 32 px checkpoint as written by the port's train.py (g, d, g_ema, g_optim, args)."""
    state = random_state_dict(**SMALL)
    path = tmp_path_factory.mktemp("sg2") / "small.pt"
    args = argparse.Namespace(size=32, latent=32, n_mlp=2, channel_multiplier=1, lr=0.002)
    save(path, {"g": state, "d": {"x": torch.zeros(1)}, "g_ema": state, "g_optim": {}, "args": args})
    return path, state


@pytest.fixture(scope="module")
def small_model(small_ckpt):
    model = load_stylegan2(small_ckpt[0], resolution=32)
    model.clamp_output = False
    return model


# ---- an independent forward, following rosinality's fused (grouped-conv) code path ---------------
def reference_mapping(state, z, n_mlp):
    """(pre-activation of the last mapping layer, w) computed from the raw state dict."""
    x = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
    pre = x
    for i in range(1, n_mlp + 1):
        weight = state[f"style.{i}.weight"]
        pre = F.linear(x, weight * LR_MLP / math.sqrt(weight.shape[1]), state[f"style.{i}.bias"] * LR_MLP)
        x = F.leaky_relu(pre, 0.2) * math.sqrt(2)
    return pre, x


def reference_image(state, w, noises, size):
    n = w.shape[0]

    def modconv(x, prefix, style_w, demodulate=True, up=False):
        weight = state[f"{prefix}.weight"]
        _, cout, cin, k, _ = weight.shape
        mod_w = state[f"{prefix}.modulation.weight"]
        style = F.linear(style_w, mod_w / math.sqrt(mod_w.shape[1]), state[f"{prefix}.modulation.bias"])
        wt = weight / math.sqrt(cin * k * k) * style.view(n, 1, cin, 1, 1)
        if demodulate:
            wt = wt * torch.rsqrt(wt.pow(2).sum([2, 3, 4]) + 1e-8).view(n, cout, 1, 1, 1)
        h, wd = x.shape[2:]
        if up:
            wt = wt.transpose(1, 2).reshape(n * cin, cout, k, k)
            out = F.conv_transpose2d(x.reshape(1, n * cin, h, wd), wt, stride=2, groups=n)
            out = out.view(n, cout, *out.shape[2:])
            blur = state[f"{prefix}.blur.kernel"].flip(0, 1).expand(cout, 1, 4, 4)
            return F.conv2d(out, blur, padding=1, groups=cout)  # upfirdn2d pad (1, 1)
        out = F.conv2d(
            x.reshape(1, n * cin, h, wd), wt.reshape(n * cout, cin, k, k), padding=k // 2, groups=n
        )
        return out.view(n, cout, h, wd)

    def styled(x, prefix, style_w, noise, up=False):
        out = modconv(x, f"{prefix}.conv", style_w, up=up) + state[f"{prefix}.noise.weight"] * noise
        return F.leaky_relu(out + state[f"{prefix}.activate.bias"].view(1, -1, 1, 1), 0.2) * math.sqrt(2)

    def rgb(x, prefix, style_w, skip=None):
        out = modconv(x, f"{prefix}.conv", style_w, demodulate=False) + state[f"{prefix}.bias"]
        if skip is not None:  # upfirdn2d(up=2, pad=(2, 1)) == depthwise transposed conv, padding 1
            kern = state[f"{prefix}.upsample.kernel"].expand(3, 1, 4, 4)
            out = out + F.conv_transpose2d(skip, kern, stride=2, padding=1, groups=3)
        return out

    out = state["input.input"].repeat(n, 1, 1, 1)
    out = styled(out, "conv1", w[:, 0], noises[0])
    skip = rgb(out, "to_rgb1", w[:, 1])
    i = 1
    for b in range(int(math.log2(size)) - 2):
        out = styled(out, f"convs.{2 * b}", w[:, i], noises[i], up=True)
        out = styled(out, f"convs.{2 * b + 1}", w[:, i + 1], noises[i + 1])
        skip = rgb(out, f"to_rgbs.{b}", w[:, i + 2], skip)
        i += 2
    return skip


# ---- tests -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("up", "down", "pad"), [(2, 1, (2, 1)), (1, 1, (1, 1)), (1, 2, (1, 1)), (2, 1, (-1, 0))]
)
def test_upfirdn2d_matches_scipy_convolution(up, down, pad):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64)
    kernel = torch.randn(4, 3, generator=gen, dtype=torch.float64)  # asymmetric: checks the flip
    out = upfirdn2d(x, kernel, up=up, down=down, pad=pad).numpy()
    p0, p1 = pad
    for n in range(2):
        for c in range(3):
            img = np.zeros((6 * up, 5 * up))
            img[::up, ::up] = x[n, c].numpy()
            img = np.pad(img, ((max(p0, 0), max(p1, 0)),) * 2)
            img = img[max(-p0, 0) : img.shape[0] - max(-p1, 0), max(-p0, 0) : img.shape[1] - max(-p1, 0)]
            ref = signal.convolve2d(img, kernel.numpy(), mode="valid")[::down, ::down]
            np.testing.assert_allclose(out[n, c], ref, atol=1e-12)


def test_skip_upsampling_keeps_a_constant_image_constant_inside():
    from gifd.priors.stylegan2 import Upsample

    out = Upsample()(torch.ones(1, 3, 8, 8))
    assert out.shape == (1, 3, 16, 16)
    torch.testing.assert_close(out[..., 2:-2, 2:-2], torch.ones(1, 3, 12, 12))


def test_config_f_1024_names_and_shapes_match_the_rosinality_table(tmp_path):
    with torch.device("meta"):
        model = StyleGAN2Generator(1024)  # defaults: config-f, style 512, n_mlp 8, multiplier 2
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    table = rosinality_table(1024, 512, 8, config_f_channels(1024))
    assert got == table
    assert len(table) == 171
    assert (model.n_latent, model.num_layers, model.num_stages) == (18, 17, 8)
    assert sum(p.numel() for p in model.parameters()) == sum(
        math.prod(s) for k, s in table.items() if "kernel" not in k and not k.startswith("noises")
    )
    # the loader infers the whole configuration from the shapes alone (meta tensors: no data)
    path = tmp_path / "ffhq_meta.pt"
    save(
        path,
        {
            "g_ema": {k: torch.empty(s, device="meta") for k, s in table.items()},
            "latent_avg": torch.zeros(512),
        },
    )
    loaded = load_stylegan2(path, resolution=1024)
    assert (loaded.resolution, loaded.style_dim, loaded.n_mlp, loaded.channel_multiplier) == (1024, 512, 8, 2)
    assert loaded.default_radii() == [1000, 2000, 3000, 4000, 5000, 6000, 8000, 8000]
    assert loaded.stage_shapes(1)["h"] == (512, 4, 4)
    assert loaded.stage_shapes(7)["h"] == (128, 256, 256)
    assert loaded.stage_shapes(7)["skip"] == (3, 256, 256)
    assert min(int(k.split("_")[1]) for k in loaded.stage_shapes(7) if k.startswith("noise")) == 13


@pytest.mark.parametrize(("size", "stages"), [(8, 2), (32, 4), (64, 5), (256, 7), (512, 8), (1024, 8)])
def test_stage_count_rule(size, stages):
    with torch.device("meta"):
        model = StyleGAN2Generator(size, channel_multiplier=1)
    assert model.num_stages == stages
    assert model.default_radii() == [1000, 2000, 3000, 4000, 5000, 6000, 8000, 8000][:stages]
    assert len(model.stage_names) == stages


def test_loads_a_train_checkpoint_strictly_and_matches_the_reference_forward(small_ckpt, small_model):
    state = small_ckpt[1]
    model = small_model
    assert (model.resolution, model.style_dim, model.n_mlp, model.channels) == (32, 32, 2, SMALL["channels"])
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, state[name], rtol=0, atol=0)
    gen = torch.Generator().manual_seed(1)
    variables = model.init_latent(3, generator=gen)
    with torch.no_grad():
        image = model.synthesize(0, variables)
        noises = [variables[f"noise_{i}"] for i in range(model.num_layers)]
        ref = reference_image(state, variables["w"], noises, 32)
        z = torch.randn(5, 32, generator=gen)
        torch.testing.assert_close(model.mapping(z), reference_mapping(state, z, 2)[1], rtol=1e-5, atol=1e-5)
    assert image.shape == (3, 3, 32, 32)
    assert (image - ref).abs().max() <= 1e-4 * ref.abs().max()
    # the noise maps matter: changing one changes the image
    variables["noise_5"] = variables["noise_5"] + 1.0
    with torch.no_grad():
        assert (model.synthesize(0, variables) - image).abs().max() > 1e-3


def test_forward_clamps_to_minus_one_one(small_ckpt):
    model = load_stylegan2(small_ckpt[0])
    variables = model.init_latent(2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image = model(0, variables, {})
        raw = model.synthesize(0, variables)
    assert image.min() >= -1 and image.max() <= 1
    torch.testing.assert_close(image, raw.clamp(-1, 1))


def test_every_stage_continues_the_image_exactly(small_model):
    model = small_model
    variables = model.init_latent(2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(0, variables, {})
    assert model.num_stages == 4
    for stage in range(1, model.num_stages):
        variables = model.advance(stage - 1, variables, {})
        assert {k: tuple(v.shape[1:]) for k, v in variables.items()} == model.stage_shapes(stage)
        assert StagedGenerator.stage_shapes(model, stage) == model.stage_shapes(stage)
        with torch.no_grad():
            assert (model(stage, variables, {}) - full).abs().max() < 1e-5
    assert sorted(variables) == ["h", "noise_5", "noise_6", "skip", "w"]
    with pytest.raises(GifdError, match="last stage"):
        model.advance(3, variables, {})


def test_stage_variables_all_receive_gradients(small_model):
    model = small_model
    variables = model.advance(0, model.init_latent(1, generator=torch.Generator().manual_seed(2)), {})
    variables = model.advance(1, variables, {})
    variables = {k: v.requires_grad_(True) for k, v in variables.items()}
    model(2, variables, {}).square().sum().backward()
    for name, v in variables.items():
        assert v.grad is not None and v.grad.abs().sum() > 0, name
    # rows 0..2 feed only conv1, to_rgb1 and block 1 (done before stage 2); row 3 feeds block 1's
    # ToRGB and block 2's up conv, so stage 2 still uses rows 3..7
    grad = variables["w"].grad.abs().sum(dim=(0, 2))
    assert (grad[:3] == 0).all() and (grad[3:] > 0).all()


def test_w_plus_init_follows_the_mapping_network(small_ckpt, small_model):
    _, state = small_ckpt
    model = small_model
    mean, std = model.w_gaussian()
    assert model.w_gaussian()[0] is mean  # cached
    z = torch.randn(40_000, 32, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        pre, w = reference_mapping(state, z, 2)
    # the fit is the pre-activation's per-dimension Gaussian (sampling error ~ std / 100)
    assert ((mean - pre.mean(0)).abs() / pre.std(0)).max() < 0.05
    assert ((std / pre.std(0)) - 1).abs().max() < 0.05
    # the initial w+ rows follow the law of w = mapping(z)
    init = model.init_latent(2000, generator=torch.Generator().manual_seed(12))["w"]
    assert init.shape == (2000, model.n_latent, 32)
    flat = init.reshape(-1, 32)
    assert ((flat.mean(0) - w.mean(0)).abs() / w.std(0)).max() < 0.1
    assert ((flat.std(0) / w.std(0)) - 1).abs().max() < 0.25
    assert not torch.equal(init[:, 0], init[:, 1])  # independent rows, as in the official init
    # deterministic (fixed internal seed, no file) and recomputed for new weights
    again = load_stylegan2(small_ckpt[0])
    assert torch.equal(again.w_gaussian()[0], mean)
    again.load_state_dict(random_state_dict(**SMALL, seed=1))
    assert not torch.equal(again.w_gaussian()[0], mean)


def test_samples_and_restarts_own_their_noise(small_model):
    model = small_model
    gen = torch.Generator().manual_seed(0)
    first, second = model.init_latent(2, generator=gen), model.init_latent(2, generator=gen)
    buffers = dict(model.named_buffers())
    for k in range(model.num_layers):
        a, b = first[f"noise_{k}"], second[f"noise_{k}"]
        assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()
        assert not torch.equal(a[0], a[1]) and not torch.equal(a, b)
        before_b, before_buf = b.clone(), buffers[f"noises.noise_{k}"].clone()
        a[0].add_(1.0)
        assert torch.equal(b, before_b) and torch.equal(buffers[f"noises.noise_{k}"], before_buf)
    # advancing copies: editing the next stage's noise or w leaves the previous stage alone
    nxt = model.advance(0, second, {})
    saved = {k: v.clone() for k, v in second.items()}
    nxt["noise_3"].add_(1.0)
    nxt["w"].add_(1.0)
    assert all(torch.equal(second[k], saved[k]) for k in saved)


def test_same_seed_same_latent(small_model):
    a = small_model.init_latent(2, generator=torch.Generator().manual_seed(7))
    b = small_model.init_latent(2, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_registry_builds_the_prior(small_ckpt):
    assert "stylegan2" in PRIORS
    with pytest.raises(GifdError, match="--prior-weights"):
        create_prior("stylegan2")
    prior = create_prior("stylegan2", small_ckpt[0], device="cpu")
    assert prior.resolution == 32 and not prior.training and prior.sphere_latent is False
    assert not any(p.requires_grad for p in prior.parameters())


# ---- errors ----------------------------------------------------------------------------------
FIX = "pass the .pt checkpoint of the rosinality stylegan2-pytorch port"


def test_missing_file(tmp_path):
    with pytest.raises(GifdError, match=f"not found: {FIX}"):
        load_stylegan2(tmp_path / "nope.pt")


def test_wrong_resolution(small_ckpt):
    with pytest.raises(GifdError, match="holds a 32 px StyleGAN2 generator, but 64 px"):
        load_stylegan2(small_ckpt[0], resolution=64)


def test_truncated_file(small_ckpt, tmp_path):
    data = small_ckpt[0].read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        GifdError, match=f"could not be read because it is corrupt or not a torch file .*{FIX}"
    ):
        load_stylegan2(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        GifdError, match=f"could not be read because it is corrupt or not a torch file .*{FIX}"
    ):
        load_stylegan2(path)


def test_file_without_g_ema(small_ckpt, tmp_path):
    path = tmp_path / "bare.pt"
    save(path, small_ckpt[1])  # a bare state dict, not the port's checkpoint dict
    with pytest.raises(GifdError, match=f"no 'g_ema' entry .*{FIX}"):
        load_stylegan2(path)
    save(path, [1, 2])
    with pytest.raises(GifdError, match="no 'g_ema' entry"):
        load_stylegan2(path)


def test_another_models_state_dict(tmp_path):
    dcgan = torch.nn.Sequential(torch.nn.ConvTranspose2d(100, 8, 4), torch.nn.BatchNorm2d(8)).state_dict()
    path = tmp_path / "dcgan.pt"
    save(path, {"g_ema": dcgan})
    with pytest.raises(GifdError, match=r"not a StyleGAN2 generator .*missing input\.input.*holds 0\.bias"):
        load_stylegan2(path)


def test_missing_and_unexpected_keys_are_listed(small_ckpt, tmp_path):
    state = dict(small_ckpt[1])
    del state["convs.2.noise.weight"]
    state["convs.2.extra"] = torch.zeros(1)
    path = tmp_path / "keys.pt"
    save(path, {"g_ema": state})
    with pytest.raises(
        GifdError, match=r"missing keys: convs\.2\.noise\.weight; unexpected keys: convs\.2\.extra"
    ):
        load_stylegan2(path)


def test_shape_mismatch_names_the_parameter(small_ckpt, tmp_path):
    state = dict(small_ckpt[1])
    state["convs.3.activate.bias"] = torch.zeros(7)
    path = tmp_path / "shape.pt"
    save(path, {"g_ema": state})
    with pytest.raises(GifdError, match=r"parameter convs\.3\.activate\.bias has shape \(7,\)"):
        load_stylegan2(path)


def test_bad_stage_variables(small_model):
    variables = small_model.init_latent(1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(GifdError, match="missing: h, skip"):
        small_model(1, variables, {})
    with pytest.raises(GifdError, match="stage 9 does not exist"):
        small_model(9, variables, {})
    variables["w"] = variables["w"][:, :3]
    with pytest.raises(GifdError, match="'w' has shape"):
        small_model(0, variables, {})


def test_gias_fine_tune_lr_is_the_published_value(small_model):
    assert small_model.gias_finetune_lr() == 1e-3  # Jeon et al. 2021, StyleGAN2
