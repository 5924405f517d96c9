"""The face DCGAN prior (real gan-face-generate weights): stages, strict loading, radii."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from gifd.errors import GifdError
from gifd.priors import PRIORS, create_prior
from gifd.priors import dcgan as dcgan_module
from gifd.priors.dcgan import (
    DCGANGenerator,
    face_weights_path,
    load_face_dcgan,
    radii_from_feature_norms,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gan_face_generate") is None,
    reason="needs `pip install --no-deps gan-face-generate==1.1.1` (the Makefile installs it)",
)


@pytest.fixture(scope="module")
def face_prior():
    return create_prior("digiface-dcgan64")


@pytest.fixture(scope="module")
def face_state():
    return torch.load(face_weights_path(), map_location="cpu", weights_only=True)["netG_state_dict"]


def reference_features(
    state: dict, z: torch.Tensor, cut: str = "relu"
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The DCGAN written directly with torch.nn.functional from the raw state dict: the outputs
    of the four blocks' ReLU (or, by `cut`, BatchNorm or ConvTranspose2d) and the image."""
    x = z[:, :, None, None]
    features = []
    for conv, stride, padding in ((0, 1, 0), (3, 2, 1), (6, 2, 1), (9, 2, 1)):
        x = F.conv_transpose2d(x, state[f"main.{conv}.weight"], stride=stride, padding=padding)
        after_conv = x
        bn = f"main.{conv + 1}"
        x = F.batch_norm(
            x, state[f"{bn}.running_mean"], state[f"{bn}.running_var"], state[f"{bn}.weight"],
            state[f"{bn}.bias"], training=False, eps=1e-5,
        )  # fmt: skip
        after_bn = x
        x = F.relu(x)
        features.append({"relu": x, "batchnorm": after_bn, "conv": after_conv}[cut])
    image = torch.tanh(F.conv_transpose2d(x, state["main.12.weight"], stride=2, padding=1))
    return features, image


def test_registered_with_metadata(face_prior):
    assert "digiface-dcgan64" in PRIORS and "dcgan" in PRIORS
    assert face_prior.resolution == 64 and face_prior.latent_dim == 100
    assert face_prior.num_classes is None and face_prior.sphere_latent is True
    assert face_prior.num_stages == 5
    assert face_prior.stage_shapes(0) == {"z": (100,)}
    expected = [(512, 4, 4), (256, 8, 8), (128, 16, 16), (64, 32, 32)]
    assert [face_prior.stage_shapes(i)["h"] for i in range(1, 5)] == expected
    assert len(face_prior.stage_names) == 5
    assert not any(p.requires_grad for p in face_prior.parameters())


def test_matches_functional_reference(face_prior, face_state):
    z = face_prior.init_latent(6, generator=torch.Generator().manual_seed(3))["z"]
    features, image = reference_features(face_state, z)
    with torch.no_grad():
        assert torch.allclose(face_prior(0, {"z": z}, {}), image, atol=1e-5)
        variables = {"z": z}
        for stage in range(4):
            variables = face_prior.advance(stage, variables, {})
            assert torch.allclose(variables["h"], features[stage], atol=1e-5)


def test_stage_consistency_on_real_weights(face_prior):
    variables = face_prior.init_latent(4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        from_latent = face_prior(0, variables, {})
        assert from_latent.shape == (4, 3, 64, 64)
        assert from_latent.min() >= -1 and from_latent.max() <= 1
        assert from_latent.std() > 0.1  # a real image, not a constant
        for stage in range(1, face_prior.num_stages):
            variables = face_prior.advance(stage - 1, variables, {})
            from_stage = face_prior(stage, variables, {})
            assert (from_stage - from_latent).abs().max() < 1e-5, stage


def test_samples_independent_of_batch_and_train_mode(face_prior):
    """BatchNorm uses running statistics: one sample's image does not depend on its batch, even
    after .train() is called on the prior."""
    z = face_prior.init_latent(5, generator=torch.Generator().manual_seed(1))["z"]
    face_prior.train()
    try:
        with torch.no_grad():
            batch = face_prior(0, {"z": z}, {})
            single = face_prior(0, {"z": z[2:3]}, {})
    finally:
        face_prior.eval()
    assert torch.allclose(batch[2:3], single, atol=1e-5)


def test_init_latent_seeded_gaussian(face_prior):
    a = face_prior.init_latent(200, generator=torch.Generator().manual_seed(5))["z"]
    b = face_prior.init_latent(200, generator=torch.Generator().manual_seed(5))["z"]
    assert torch.equal(a, b) and a.shape == (200, 100)
    assert abs(a.mean().item()) < 0.02 and abs(a.std().item() - 1) < 0.02


def test_gradients_flow_to_stage_variables(face_prior):
    variables = face_prior.init_latent(2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        h = face_prior.advance(0, variables, {})["h"]
    h = h.clone().requires_grad_(True)
    face_prior(1, {"h": h}, {}).square().mean().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_wrong_variables_are_clear_errors(face_prior):
    with pytest.raises(GifdError, match=r"per-sample shape \(512, 4, 4\)"):
        face_prior(1, {"h": torch.zeros(1, 256, 8, 8)}, {})
    with pytest.raises(GifdError, match="takes the variable 'z'"):
        face_prior(0, {"h": torch.zeros(1, 100)}, {})
    with pytest.raises(GifdError, match="stage 7 does not exist"):
        face_prior(7, {"h": torch.zeros(1, 100)}, {})
    with pytest.raises(GifdError, match="last stage"):
        face_prior.advance(4, {"h": torch.zeros(1, 64, 32, 32)}, {})


def test_default_radii_follow_documented_rule(face_prior, face_state):
    """radius_i = 0.5 x F_1 x i (F_1: the mean per-sample l1 norm of stage 1 over 128 latents drawn
    with seed 0) and 0.1 x the latent's norm for stage 0, recomputed with the functional reference."""
    radii = face_prior.default_radii()
    z = torch.randn(128, 100, generator=torch.Generator().manual_seed(0))
    features, _ = reference_features(face_state, z)
    norms = [z.abs().sum(1).mean().item()] + [f.flatten(1).abs().sum(1).mean().item() for f in features]
    expected = [0.1 * norms[0]] + [0.5 * norms[1] * i for i in range(1, len(norms))]
    assert radii == pytest.approx(expected, rel=1e-4)
    assert all(r > 0 for r in radii)
    # the scale-free measurement: proportional to the fraction
    fractions = radii_from_feature_norms(face_prior, fraction=0.1)
    doubled = radii_from_feature_norms(face_prior, fraction=0.2)
    assert fractions == pytest.approx([0.1 * n for n in norms], rel=1e-4)
    assert doubled == pytest.approx([2 * r for r in fractions], rel=1e-6)
    with pytest.raises(GifdError, match="fraction must be positive"):
        radii_from_feature_norms(face_prior, fraction=0.0)


@pytest.mark.parametrize("cut", ["batchnorm", "conv"])
def test_stage_cut_takes_the_feature_before_the_activation(face_state, cut):
    prior = create_prior("digiface-dcgan64", settings={"cut": cut})
    z = torch.randn(3, 100, generator=torch.Generator().manual_seed(5))
    features, image = reference_features(face_state, z, cut)
    variables, ctx = {"z": z}, {}
    assert torch.allclose(prior(0, variables, ctx), image, atol=1e-5)
    for stage in range(1, prior.num_stages):
        variables = prior.advance(stage - 1, variables, ctx)
        assert torch.allclose(variables["h"], features[stage - 1], rtol=1e-4, atol=1e-4)
        # Same image from every stage; before the ReLU the feature has negative entries.
        assert torch.allclose(prior(stage, variables, ctx), image, atol=1e-5)
        assert (variables["h"] < 0).float().mean() > 0.2


def test_radii_depend_on_the_cut(face_prior):
    relu = radii_from_feature_norms(face_prior)
    before = radii_from_feature_norms(create_prior("digiface-dcgan64", settings={"cut": "batchnorm"}))
    assert before[0] == pytest.approx(relu[0])  # z is the same
    assert all(b > r for b, r in zip(before[1:], relu[1:], strict=True))  # the ReLU zeroes entries


def test_prior_settings_checked():
    with pytest.raises(GifdError, match="cut"):
        create_prior("digiface-dcgan64", settings={"cut": "tanh"})
    with pytest.raises(GifdError, match="unknown key"):
        create_prior("digiface-dcgan64", settings={"cutt": "relu"})
    with pytest.raises(GifdError, match="takes no prior_settings"):
        create_prior("stylegan2", "/nonexistent", settings={"cut": "relu"})


def test_default_radii_cached(face_prior, monkeypatch):
    first = face_prior.default_radii()
    fresh = load_face_dcgan()  # same file: the module-level cache answers without a measurement

    def fail(*args, **kwargs):
        raise AssertionError("radii measured again")

    monkeypatch.setattr(fresh, "advance", fail)
    assert fresh.default_radii() == first


# --- strict loading -------------------------------------------------------------------------


def test_missing_key_is_listed(face_state, tmp_path):
    state = dict(face_state)
    del state["main.4.running_var"]
    path = tmp_path / "missing.tar"
    torch.save({"netG_state_dict": state}, path)
    with pytest.raises(GifdError, match=r"missing keys: main\.4\.running_var") as info:
        load_face_dcgan(path)
    assert "unexpected" not in str(info.value)


def test_other_model_is_rejected(tmp_path):
    narrow = DCGANGenerator(nz=100, ngf=32, resolution=64).state_dict()
    path = tmp_path / "narrow.tar"
    torch.save({"netG_state_dict": narrow}, path)
    with pytest.raises(GifdError, match=r"wrong shapes: main\.0\.weight \(100, 256, 4, 4\)"):
        load_face_dcgan(path)

    discriminator = {
        "main.0.weight": torch.zeros(64, 3, 4, 4),
        "main.2.weight": torch.zeros(128, 64, 4, 4),
        "main.3.weight": torch.zeros(128),
    }
    path = tmp_path / "discriminator.tar"
    torch.save({"netG_state_dict": discriminator}, path)
    with pytest.raises(GifdError, match=r"missing keys: .*unexpected keys: main\.2\.weight"):
        load_face_dcgan(path)

    path = tmp_path / "other.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(GifdError, match="hold no generator"):
        load_face_dcgan(path)


def test_bare_state_dict_accepted(face_state, tmp_path, face_prior):
    path = tmp_path / "bare.pt"
    torch.save(face_state, path)
    prior = load_face_dcgan(path).eval()
    z = torch.randn(2, 100, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(prior(0, {"z": z}, {}), face_prior(0, {"z": z}, {}))


def test_truncated_and_missing_files(tmp_path):
    data = face_weights_path().read_bytes()
    path = tmp_path / "truncated.tar"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GifdError, match=r"could not be read because it is corrupt or not a torch file"):
        load_face_dcgan(path)
    with pytest.raises(GifdError, match="not found"):
        load_face_dcgan(tmp_path / "nope.tar")


def test_absent_package_names_install_command(monkeypatch):
    monkeypatch.setattr(dcgan_module.importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(GifdError) as info:
        create_prior("digiface-dcgan64")
    assert "`pip install --no-deps gan-face-generate==1.1.1`" in str(info.value)
