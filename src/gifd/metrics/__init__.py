"""Image-quality metrics for gradient-inversion results, on images in [0, 1], per image.

Pure functions (torchmetrics style) taking two N x C x H x W batches and returning a tensor of N
values, plus `evaluate`, which pairs a reconstructed batch with the ground truth by optimal
assignment and collects every metric the image size allows into an `Evaluation`.
"""

from gifd.metrics.batch import feature_distance, label_accuracy, match_batch, pairwise_mse
from gifd.metrics.evaluation import Evaluation, evaluate
from gifd.metrics.image import (
    MS_SSIM_WEIGHTS,
    gaussian_window,
    ms_ssim,
    ms_ssim_window_size,
    mse,
    psnr,
    ssim,
)
from gifd.metrics.info import METRIC_INFO, MetricInfo
from gifd.metrics.perceptual import (
    LPIPS,
    LpipsNetwork,
    PerceptualDistance,
    PerceptualMetric,
    clear_network_cache,
    stlpips_weights_path,
)

__all__ = [
    "LPIPS",
    "METRIC_INFO",
    "MS_SSIM_WEIGHTS",
    "Evaluation",
    "LpipsNetwork",
    "MetricInfo",
    "PerceptualDistance",
    "PerceptualMetric",
    "clear_network_cache",
    "evaluate",
    "feature_distance",
    "gaussian_window",
    "label_accuracy",
    "match_batch",
    "ms_ssim",
    "ms_ssim_window_size",
    "mse",
    "pairwise_mse",
    "psnr",
    "ssim",
    "stlpips_weights_path",
]
