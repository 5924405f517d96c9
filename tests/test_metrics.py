"""Metrics against independent references: scikit-image, NumPy re-implementations, brute force."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.signal import convolve2d
from skimage import data as skdata
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

from gifd.errors import GifdError
from gifd.metrics import (
    LPIPS,
    MS_SSIM_WEIGHTS,
    PerceptualDistance,
    evaluate,
    feature_distance,
    label_accuracy,
    match_batch,
    ms_ssim,
    ms_ssim_window_size,
    mse,
    psnr,
    ssim,
    stlpips_weights_path,
)
from gifd.metrics import perceptual as perceptual_module


def _to_tensor(image_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image_hwc.transpose(2, 0, 1))).float()


def _to_numpy(image_chw: torch.Tensor) -> np.ndarray:
    return image_chw.double().clamp(0, 1).numpy().transpose(1, 2, 0)


@pytest.fixture(scope="module")
def astronaut64() -> torch.Tensor:
    """skimage's astronaut, 64 x 64, in [0, 1], shape 1 x 3 x 64 x 64."""
    image = resize(skdata.astronaut(), (64, 64), anti_aliasing=True)
    return _to_tensor(image).unsqueeze(0)


def _noisy(images: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (images + std * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def _pairs(astronaut64: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Real image + noise at two levels, and random pairs of several sizes (incl. non-square, odd)."""
    generator = torch.Generator().manual_seed(0)
    pairs = [(_noisy(astronaut64, 0.05, 1), astronaut64), (_noisy(astronaut64, 0.2, 2), astronaut64)]
    for shape in [(2, 3, 32, 32), (1, 3, 48, 37), (2, 1, 40, 40)]:
        truth = torch.rand(shape, generator=generator)
        blurred = F.avg_pool2d(truth, 3, stride=1, padding=1)  # structured, not pure noise
        pairs.append((blurred, truth))
    return pairs


# ---------------------------------------------------------------- PSNR, MSE, SSIM vs scikit-image


def test_psnr_mse_ssim_agree_with_skimage(astronaut64: torch.Tensor) -> None:
    for reconstruction, truth in _pairs(astronaut64):
        ours_psnr, ours_mse, ours_ssim = (
            psnr(reconstruction, truth),
            mse(reconstruction, truth),
            ssim(reconstruction, truth),
        )
        assert ours_psnr.shape == ours_mse.shape == ours_ssim.shape == (truth.shape[0],)
        for index in range(truth.shape[0]):
            a, b = _to_numpy(reconstruction[index]), _to_numpy(truth[index])
            assert ours_mse[index].item() == pytest.approx(mean_squared_error(b, a), rel=1e-9)
            assert ours_psnr[index].item() == pytest.approx(
                peak_signal_noise_ratio(b, a, data_range=1), abs=1e-3
            )
            reference_ssim = structural_similarity(
                b,
                a,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1,
                channel_axis=-1,
            )
            assert ours_ssim[index].item() == pytest.approx(reference_ssim, abs=1e-3)
            assert ours_ssim[index].item() == pytest.approx(reference_ssim, abs=1e-6)  # float64 inside


def test_inputs_are_clamped_and_identity_is_perfect(astronaut64: torch.Tensor) -> None:
    overshoot = astronaut64 * 1.5 - 0.25  # outside [0, 1]; clamped equals clamp(overshoot)
    assert psnr(overshoot, overshoot.clamp(0, 1)).item() == float("inf")
    assert ssim(astronaut64, astronaut64).item() == pytest.approx(1.0, abs=1e-12)
    assert mse(astronaut64, astronaut64).item() == 0.0


# ---------------------------------------------------------------------------------- MS-SSIM


def _reference_ms_ssim(a: np.ndarray, b: np.ndarray, window_size: int) -> float:
    """Straightforward NumPy MS-SSIM of two H x W x C images whose sides stay even over 4 halvings."""
    offsets = np.arange(window_size) - (window_size - 1) / 2
    g = np.exp(-(offsets**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    per_channel = []
    for channel in range(a.shape[2]):
        x, y = a[:, :, channel], b[:, :, channel]
        value = 1.0
        for level, weight in enumerate(MS_SSIM_WEIGHTS):

            def smooth(image: np.ndarray) -> np.ndarray:
                return convolve2d(image, window, mode="valid")

            mu_x, mu_y = smooth(x), smooth(y)
            var_x, var_y, cov = smooth(x * x) - mu_x**2, smooth(y * y) - mu_y**2, smooth(x * y) - mu_x * mu_y
            cs = np.mean((2 * cov + c2) / (var_x + var_y + c2))
            if level < len(MS_SSIM_WEIGHTS) - 1:
                value *= max(cs, 0.0) ** weight
                height, width = x.shape
                x = x.reshape(height // 2, 2, width // 2, 2).mean((1, 3))
                y = y.reshape(height // 2, 2, width // 2, 2).mean((1, 3))
            else:
                full = np.mean(
                    (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * (2 * cov + c2) / (var_x + var_y + c2)
                )
                value *= max(full, 0.0) ** weight
        per_channel.append(value)
    return float(np.mean(per_channel))


def test_ms_ssim_window_rule() -> None:
    assert ms_ssim_window_size(64, 64) == 3
    assert ms_ssim_window_size(96, 80) == 5
    assert ms_ssim_window_size(128, 128) == 7
    assert ms_ssim_window_size(160, 160) == 9
    assert ms_ssim_window_size(161, 300) == 11
    assert ms_ssim_window_size(32, 32) is None
    assert ms_ssim_window_size(33, 33) == 3
    with pytest.raises(GifdError, match="too small for 5 scales"):
        ms_ssim(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(GifdError, match="does not fit"):
        ms_ssim(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), window_size=11)


def test_ms_ssim_matches_numpy_reference_and_orders_noise(astronaut64: torch.Tensor) -> None:
    assert ms_ssim(astronaut64, astronaut64).item() == pytest.approx(1.0, abs=1e-12)
    values = [ms_ssim(_noisy(astronaut64, std, 3), astronaut64).item() for std in (0.02, 0.1, 0.3)]
    assert values[0] > values[1] > values[2]

    checks = [(_noisy(astronaut64, 0.1, 4), astronaut64, 3)]
    large = resize(skdata.chelsea(), (96, 80), anti_aliasing=True)
    large_tensor = _to_tensor(large).unsqueeze(0)
    checks.append((_noisy(large_tensor, 0.1, 5), large_tensor, 5))
    for reconstruction, truth, window_size in checks:
        expected = _reference_ms_ssim(_to_numpy(reconstruction[0]), _to_numpy(truth[0]), window_size)
        assert ms_ssim(reconstruction, truth).item() == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------- matching, labels, features


def test_match_batch_recovers_a_permutation() -> None:
    generator = torch.Generator().manual_seed(6)
    truth = torch.rand(6, 3, 16, 16, generator=generator)
    permutation = torch.tensor([3, 0, 5, 1, 4, 2])
    reconstruction = _noisy(truth[permutation], 0.05, 7)
    order = match_batch(reconstruction, truth)
    assert order.dtype == torch.long
    assert torch.equal(order, torch.argsort(permutation))
    assert torch.allclose(reconstruction[order], truth, atol=0.3)


def test_match_batch_equals_brute_force() -> None:
    generator = torch.Generator().manual_seed(8)
    truth = torch.rand(5, 3, 8, 8, generator=generator)
    reconstruction = torch.rand(5, 3, 8, 8, generator=generator)
    cost = np.array(
        [[mse(reconstruction[j : j + 1], truth[i : i + 1]).item() for j in range(5)] for i in range(5)]
    )
    best = min(itertools.permutations(range(5)), key=lambda perm: sum(cost[i, perm[i]] for i in range(5)))
    assert match_batch(reconstruction, truth).tolist() == list(best)


def test_label_accuracy_is_order_free_and_counts_repeats() -> None:
    assert label_accuracy([3, 1, 2], [1, 2, 3]) == 1.0
    assert label_accuracy([1, 1, 2], [1, 2, 2]) == pytest.approx(2 / 3)
    assert label_accuracy(torch.tensor([7, 7, 7, 7]), torch.tensor([7, 1, 7, 2])) == 0.5
    assert label_accuracy(np.array([0, 0]), [1, 2]) == 0.0
    with pytest.raises(GifdError, match="3 inferred labels for a batch of 2"):
        label_accuracy([1, 2, 3], [1, 2])


def test_feature_distance() -> None:
    a = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    b = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 4.0]])
    assert feature_distance(a, b).tolist() == pytest.approx([5 / 3, 3.0])
    with pytest.raises(GifdError, match="differ in shape"):
        feature_distance(a, b[:1])


# ------------------------------------------------------------------------- shift-tolerant LPIPS


def test_lpips_st_weights_load_strictly() -> None:
    for net in ("alex", "vgg"):
        path = stlpips_weights_path(net)
        file_state = torch.load(path, map_location="cpu", weights_only=True)
        network = PerceptualDistance(net).network("cpu")
        assert set(network.state_dict()) == set(file_state)
        for key, value in network.state_dict().items():
            assert torch.equal(value, file_state[key]), key
        assert PerceptualDistance(net).network("cpu") is network  # cached


def test_lpips_st_properties(astronaut64: torch.Tensor) -> None:
    distance = PerceptualDistance("alex")
    batch = torch.cat([astronaut64, _noisy(astronaut64, 0.1, 9)])
    assert distance(batch, batch).tolist() == [0.0, 0.0]
    noisy = [_noisy(astronaut64, std, 10) for std in (0.02, 0.08, 0.25)]
    values = [distance(image, astronaut64).item() for image in noisy]
    assert 0 < values[0] < values[1] < values[2]
    assert distance(astronaut64, noisy[1]).item() == pytest.approx(values[1], rel=1e-5)  # symmetric
    grey = astronaut64.mean(1, keepdim=True)
    assert distance(grey, grey).item() == 0.0
    vgg_values = [PerceptualDistance("vgg")(image, astronaut64).item() for image in noisy[::2]]
    assert 0 < vgg_values[0] < vgg_values[1]
    with pytest.raises(GifdError, match="too small"):
        distance(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))


def test_lpips_st_missing_files_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "absent.pth"
    with pytest.raises(GifdError, match=r"absent\.pth not found"):
        PerceptualDistance("alex", weights=missing)
    monkeypatch.setattr(perceptual_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(GifdError, match=r"pip install --no-deps stlpips-pytorch==0\.0\.2"):
        PerceptualDistance("alex")


def test_lpips_st_rejects_a_file_with_wrong_keys(tmp_path: Path) -> None:
    state = torch.load(stlpips_weights_path("alex"), map_location="cpu", weights_only=True)
    del state["lin4.model.1.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(GifdError, match=r"missing lin4\.model\.1\.weight; unexpected extra\.weight"):
        PerceptualDistance("alex", weights=path)


# -------------------------------------------------------------------- standard LPIPS, local files

_ALEX_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
_LIN_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


def _vgg_convs() -> dict[int, tuple[int, int, int]]:
    convs, index, channels = {}, 0, 3
    for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if item == "M":
            index += 1
        else:
            convs[index] = (item, channels, 3)
            channels = item
            index += 2
    return convs


def _write_random_lpips(tmp_path: Path, net: str, seed: int) -> tuple[Path, Path, dict, dict]:
    generator = torch.Generator().manual_seed(seed)
    backbone = {}
    for index, (c_out, c_in, kernel) in (_ALEX_CONVS if net == "alex" else _vgg_convs()).items():
        fan_in = c_in * kernel * kernel
        backbone[f"features.{index}.weight"] = (
            torch.randn(c_out, c_in, kernel, kernel, generator=generator) * (2 / fan_in) ** 0.5
        )
        backbone[f"features.{index}.bias"] = 0.01 * torch.randn(c_out, generator=generator)
    backbone["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision files also hold the classifier
    linear = {
        f"lin{k}.model.1.weight": torch.rand(1, channels, 1, 1, generator=generator)
        for k, channels in enumerate(_LIN_CHANNELS[net])
    }
    backbone_path, linear_path = tmp_path / f"{net}_backbone.pth", tmp_path / f"{net}_lin.pth"
    torch.save(backbone, backbone_path)
    torch.save(linear, linear_path)
    return backbone_path, linear_path, backbone, linear


def _reference_alex_lpips(x: torch.Tensor, y: torch.Tensor, backbone: dict, linear: dict) -> torch.Tensor:
    """LPIPS v0.1 with an AlexNet written out layer by layer (torchvision layout), inputs in [0, 1]."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def features(images: torch.Tensor) -> list[torch.Tensor]:
        h = ((2 * images - 1) - shift) / scale

        def conv(h: torch.Tensor, index: int, padding: int, stride: int = 1) -> torch.Tensor:
            weight, bias = backbone[f"features.{index}.weight"], backbone[f"features.{index}.bias"]
            return torch.relu(F.conv2d(h, weight, bias, stride=stride, padding=padding))

        relu1 = conv(h, 0, 2, stride=4)
        relu2 = conv(F.max_pool2d(relu1, 3, 2), 3, 2)
        relu3 = conv(F.max_pool2d(relu2, 3, 2), 6, 1)
        relu4 = conv(relu3, 8, 1)
        return [relu1, relu2, relu3, relu4, conv(relu4, 10, 1)]

    total = torch.zeros(x.shape[0])
    for k, (fx, fy) in enumerate(zip(features(x), features(y), strict=True)):
        fx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
        fy = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
        total += ((fx - fy) ** 2 * linear[f"lin{k}.model.1.weight"]).sum(1).mean((1, 2))
    return total


def test_standard_lpips_from_local_files(tmp_path: Path, astronaut64: torch.Tensor) -> None:
    backbone_path, linear_path, backbone, linear = _write_random_lpips(tmp_path, "alex", seed=11)
    metric = LPIPS("alex", backbone_path, linear_path)
    noisy = _noisy(astronaut64, 0.1, 12)
    batch_x, batch_y = torch.cat([astronaut64, noisy]), torch.cat([noisy, noisy])
    values = metric(batch_x, batch_y)
    assert values[1].item() == 0.0 and values[0].item() > 0
    expected = _reference_alex_lpips(batch_x, batch_y, backbone, linear)
    assert torch.allclose(values, expected, rtol=1e-4, atol=1e-7)

    vgg_backbone, vgg_linear, _, _ = _write_random_lpips(tmp_path, "vgg", seed=13)
    vgg = LPIPS("vgg", vgg_backbone, vgg_linear)
    small = F.interpolate(astronaut64, size=32, mode="area")
    assert vgg(small, small).item() == 0.0
    assert vgg(small, _noisy(small, 0.1, 14)).item() > 0


def test_standard_lpips_errors_name_the_file(tmp_path: Path) -> None:
    backbone_path, linear_path, _, _ = _write_random_lpips(tmp_path, "alex", seed=15)
    with pytest.raises(GifdError, match=r"linear-layer weights file .*nope\.pth not found"):
        LPIPS("alex", backbone_path, tmp_path / "nope.pth")
    with pytest.raises(GifdError, match=r"backbone \(VGG16\) weights file .*gone\.pth not found"):
        LPIPS("vgg", tmp_path / "gone.pth", linear_path)
    with pytest.raises(GifdError, match="is not a torchvision VGG16"):
        LPIPS("vgg", backbone_path, linear_path)  # an AlexNet file given as VGG


# ----------------------------------------------------------------------------------- evaluate


def test_evaluate_pairs_then_scores(astronaut64: torch.Tensor) -> None:
    chelsea = _to_tensor(resize(skdata.chelsea(), (64, 64), anti_aliasing=True)).unsqueeze(0)
    coffee = _to_tensor(resize(skdata.coffee(), (64, 64), anti_aliasing=True)).unsqueeze(0)
    truth = torch.cat([astronaut64, chelsea, coffee])
    reconstruction = torch.cat([_noisy(coffee, 0.1, 16), astronaut64, _noisy(chelsea, 0.05, 17)])

    weight = torch.randn(10, 3 * 64 * 64, generator=torch.Generator().manual_seed(18))

    def logits(images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1) @ weight.T

    result = evaluate(reconstruction, truth, features=logits)
    assert result.order == [1, 2, 0]
    assert set(result.per_image) == {"psnr", "mse", "ssim", "ms_ssim", "lpips_st", "feature_mse"}
    aligned = reconstruction[result.order]
    assert result.per_image["ssim"] == pytest.approx(ssim(aligned, truth).tolist())
    assert result.per_image["psnr"][0] == float("inf")
    assert result.per_image["lpips_st"][0] == 0.0
    assert result.mean["mse"] == pytest.approx(float(mse(aligned, truth).mean()))
    expected_features = ((logits(aligned) - logits(truth)) ** 2).mean(1)
    assert result.per_image["feature_mse"] == pytest.approx(expected_features.tolist(), rel=1e-5)
    as_json = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert as_json["per_image"]["psnr"][0] is None and as_json["mean"]["psnr"] is None
    assert as_json["order"] == [1, 2, 0]
    assert any("not comparable" in note for note in result.notes)

    unmatched = evaluate(reconstruction, truth, match=False, perceptual=None)
    assert unmatched.order == [0, 1, 2] and "lpips_st" not in unmatched.per_image


def test_evaluate_small_images_and_size_mismatch() -> None:
    generator = torch.Generator().manual_seed(19)
    truth = torch.rand(2, 3, 32, 32, generator=generator)
    result = evaluate(_noisy(truth, 0.1, 20), truth)
    assert "ms_ssim" not in result.per_image and "ssim" in result.per_image and "lpips_st" in result.per_image
    assert any(note.startswith("ms_ssim omitted") for note in result.notes)
    with pytest.raises(GifdError, match=r"differ in shape, \(3, 3, 32, 32\) vs \(2, 3, 32, 32\)"):
        evaluate(torch.rand(3, 3, 32, 32), truth)
    with pytest.raises(GifdError, match="N x C x H x W"):
        psnr(truth[0], truth[0])
    with pytest.raises(GifdError, match="perceptual="):
        evaluate(truth, truth, perceptual="vgg")  # type: ignore[arg-type]
