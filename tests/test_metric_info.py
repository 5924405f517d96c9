"""The metric metadata (gifd.metrics.METRIC_INFO) agrees with the metrics themselves."""

import math

import torch

from gifd.metrics import METRIC_INFO, evaluate, mse, psnr, ssim


def test_every_metric_evaluate_reports_has_metadata_and_directions_match_the_values() -> None:
    gen = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 3, 64, 64, generator=gen)
    near = (truth + 0.02 * torch.randn(truth.shape, generator=gen)).clamp(0, 1)
    far = (truth + 0.3 * torch.randn(truth.shape, generator=gen)).clamp(0, 1)
    reported = evaluate(near, truth).mean
    assert set(reported) <= set(METRIC_INFO), set(reported) - set(METRIC_INFO)
    # The better direction: the closer reconstruction scores better on each metric.
    for key, metric in (("psnr", psnr), ("ssim", ssim), ("mse", mse)):
        info = METRIC_INFO[key]
        better, worse = float(metric(near, truth).mean()), float(metric(far, truth).mean())
        assert (better > worse) == info.higher_is_better, key
        assert info.low <= min(better, worse) and max(better, worse) <= info.high, key
    assert METRIC_INFO["psnr"].high == math.inf and METRIC_INFO["psnr"].header == "PSNR (dB) ↑"
    assert METRIC_INFO["lpips_st"].header == "LPIPS-ST ↓" and METRIC_INFO["mse"].direction == "lower is better"
