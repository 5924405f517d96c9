"""Pixel-level image similarity: MSE, PSNR, SSIM and MS-SSIM, per image, on [0, 1] images.

Every function takes two batches N x C x H x W (reconstruction, ground truth), clamps both to
[0, 1] (data range 1) and returns one value per image (a tensor of shape N). Computations run in
float64 where the device supports it, so the numbers match the NumPy references (scikit-image)
to ~1e-6 instead of float32 rounding. The functions stay differentiable inside [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from gifd.errors import GifdError
from gifd.metrics._inputs import image_pair

SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Wang, Simoncelli & Bovik 2003, the weights of scales 1 (finest) .. 5 (coarsest).
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image (over channels and pixels), shape N."""
    x, y = image_pair(x, y, name="mse")
    return (x - y).pow(2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, data range 1: 10 log10(1 / MSE); inf if identical."""
    return -10.0 * torch.log10(mse(x, y))


def gaussian_window(
    size: int, sigma: float, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The normalised 1-D Gaussian of `size` taps (the SSIM window is its outer product)."""
    offsets = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    window = torch.exp(-(offsets**2) / (2 * sigma**2))
    return window / window.sum()


def _filter_valid(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filtering of every channel, no padding ("valid": output shrinks by size-1)."""
    channels = images.shape[1]
    size = window.numel()
    horizontal = window.view(1, 1, 1, size).expand(channels, 1, 1, size)
    vertical = window.view(1, 1, size, 1).expand(channels, 1, size, 1)
    out = F.conv2d(images, horizontal, groups=channels)
    return F.conv2d(out, vertical, groups=channels)


def _ssim_and_contrast_structure(
    x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, k1: float, k2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure term per image and channel (N x C), data range 1."""
    c1, c2 = k1**2, k2**2
    mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
    # Population (biased) moments, as scikit-image with use_sample_covariance=False.
    var_x = _filter_valid(x * x, window) - mu_x**2
    var_y = _filter_valid(y * y, window) - mu_y**2
    cov_xy = _filter_valid(x * y, window) - mu_x * mu_y
    contrast_structure = (2 * cov_xy + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * contrast_structure).mean((2, 3)), contrast_structure.mean((2, 3))


def _check_window(size: int, sigma: float) -> None:
    if size < 1 or size % 2 == 0:
        raise GifdError(f"SSIM window size must be a positive odd number, got {size}")
    if sigma <= 0:
        raise GifdError(f"SSIM window sigma must be positive, got {sigma}")


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    window_size: int = SSIM_WINDOW_SIZE,
    sigma: float = SSIM_SIGMA,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004), shape N.

    Gaussian window (11 x 11, sigma 1.5 by default), K1 = 0.01, K2 = 0.03, data range 1, valid
    filtering (no padding: only windows fully inside the image count), computed per channel and
    averaged. Equals `skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)`.
    """
    _check_window(window_size, sigma)
    x, y = image_pair(x, y, name="ssim")
    if min(x.shape[-2:]) < window_size:
        raise GifdError(
            f"ssim: images of {x.shape[-2]} x {x.shape[-1]} px are smaller than the {window_size} px window: "
            "pass a smaller odd window_size"
        )
    window = gaussian_window(window_size, sigma, dtype=x.dtype, device=x.device)
    return _ssim_and_contrast_structure(x, y, window, k1, k2)[0].mean(1)


def ms_ssim_window_size(height: int, width: int, levels: int = len(MS_SSIM_WEIGHTS)) -> int | None:
    """The window MS-SSIM uses for H x W images: the largest odd size <= 11 that fits, or None.

    Rule: the coarsest of `levels` scales is 2**(levels - 1) times smaller, and the window must fit
    inside it with room to spare, i.e. min(H, W) > (window - 1) * 2**(levels - 1) (the condition
    of pytorch-msssim). With 5 scales: 64 px -> 3, 128 px -> 7, >= 161 px -> 11, 32 px -> None.
    A window below 3 px has no spatial extent, so smaller images get None (MS-SSIM undefined).
    """
    side = min(height, width)
    for size in range(SSIM_WINDOW_SIZE, 2, -2):
        if side > (size - 1) * 2 ** (levels - 1):
            return size
    return None


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    window_size: int | None = None,
    sigma: float = SSIM_SIGMA,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> torch.Tensor:
    """Multi-scale SSIM per image (Wang, Simoncelli & Bovik 2003), shape N.

    One scale per weight (5 standard ones): at each scale but the last the contrast-structure term,
    at the last the full SSIM, each averaged over the image, clipped at 0 and raised to its weight;
    between scales a 2 x 2 average pooling (zero-padded by one pixel on an odd side, as
    pytorch-msssim). Per channel, then averaged. `window_size` None picks the window by
    `ms_ssim_window_size` (Gaussian with the same sigma 1.5 whatever its size). Images too small
    for any window raise GifdError (e.g. 32 px with 5 scales).
    """
    levels = len(weights)
    if levels < 1:
        raise GifdError("ms_ssim: weights must hold at least one scale weight")
    x, y = image_pair(x, y, name="ms_ssim")
    height, width = x.shape[-2:]
    if window_size is None:
        window_size = ms_ssim_window_size(height, width, levels)
        if window_size is None:
            raise GifdError(
                f"ms_ssim: {height} x {width} px images are too small for {levels} scales (needs a side > "
                f"{2 * 2 ** (levels - 1)} px for a 3 px window): use ssim, or fewer scales via weights="
            )
    _check_window(window_size, sigma)
    if min(height, width) <= (window_size - 1) * 2 ** (levels - 1):
        raise GifdError(
            f"ms_ssim: a {window_size} px window does not fit {levels} scales of {height} x {width} px "
            f"images (needs a side > {(window_size - 1) * 2 ** (levels - 1)} px): "
            "pass window_size=None to choose one"
        )
    window = gaussian_window(window_size, sigma, dtype=x.dtype, device=x.device)
    weight = torch.tensor(list(weights), dtype=x.dtype, device=x.device)
    factors = []
    for level in range(levels):
        similarity, contrast_structure = _ssim_and_contrast_structure(x, y, window, k1, k2)
        if level < levels - 1:
            factors.append(torch.relu(contrast_structure))
            padding = (x.shape[2] % 2, x.shape[3] % 2)
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    factors.append(torch.relu(similarity))
    stacked = torch.stack(factors, dim=0)  # levels x N x C
    return torch.prod(stacked ** weight.view(-1, 1, 1), dim=0).mean(1)
