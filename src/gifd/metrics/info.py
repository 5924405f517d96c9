"""What each metric of an `Evaluation` means, defined once (as torchmetrics' `higher_is_better`):
its display name, direction, range and number format. The report, the sweep aggregate and the
benchmarks read it from here."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    """Display and comparison facts of one metric."""

    key: str
    #: Display name, with the unit where there is one.
    name: str
    higher_is_better: bool
    #: The values' range (PSNR is unbounded above: a perfect reconstruction is +inf).
    low: float
    high: float
    #: Format of one value in tables.
    fmt: str

    @property
    def header(self) -> str:
        """Table header: the name and an arrow for the better direction."""
        return f"{self.name} {'↑' if self.higher_is_better else '↓'}"

    @property
    def direction(self) -> str:
        """The better direction in words, for axis labels."""
        return "higher is better" if self.higher_is_better else "lower is better"


def _info(key: str, name: str, higher: bool, low: float, high: float, fmt: str) -> MetricInfo:
    return MetricInfo(key, name, higher, low, high, fmt)


#: Every metric `gifd.metrics.evaluate` can report, in display order.
METRIC_INFO: dict[str, MetricInfo] = {
    info.key: info
    for info in (
        _info("psnr", "PSNR (dB)", True, 0.0, math.inf, "{:.2f}"),
        _info("ssim", "SSIM", True, -1.0, 1.0, "{:.3f}"),
        _info("ms_ssim", "MS-SSIM", True, -1.0, 1.0, "{:.3f}"),
        _info("lpips_st", "LPIPS-ST", False, 0.0, math.inf, "{:.3f}"),
        _info("lpips", "LPIPS", False, 0.0, math.inf, "{:.3f}"),
        _info("mse", "MSE", False, 0.0, 1.0, "{:.4f}"),
        _info("feature_mse", "feature MSE", False, 0.0, math.inf, "{:.3g}"),
    )
}
