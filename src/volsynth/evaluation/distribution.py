"""3D MMD: unbiased squared maximum mean discrepancy with a Gaussian kernel.

MMD² (Gretton et al. 2012, eq. 3, the unbiased U-statistic) between samples X (m) and Y (n)::

    MMD² = 1/(m(m-1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n-1)) Σ_{i≠j} k(y_i, y_j) - 2/(mn) Σ_{i,j} k(x_i, y_j)
    k(a, b) = exp(-||a - b||² / (2 σ²))

Unbiased means it can be slightly negative when the two distributions are equal; it is returned as
is (rounding to 0 would bias it). Bandwidth σ by the median heuristic: the median Euclidean distance
between distinct points of the pooled sample X ∪ Y (computed once per comparison; pass ``bandwidth``
to fix it across comparisons, e.g. the one measured on the real set, so scores of several models share
one kernel).

MONAI's ``MMDMetric`` is not used: its kernel is the plain dot product (``y_mapping`` only transforms
inputs), which compares means only, and it requires both samples to have the same size.

Features of a volume: by default the volume reoriented to RAS, scaled to [-1, 1] and downsampled
(trilinear, antialiased by area averaging) to ``size``³, then flattened; any ``[n, d]`` features (e.g.
from a 2D extractor) can be passed to ``compute_mmd`` directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from volsynth.errors import ConfigError
from volsynth.evaluation.planes import scale_intensity
from volsynth.io.volume import Volume

DEFAULT_FEATURE_SIZE = 16


def median_bandwidth(features: torch.Tensor) -> float:
    """Median Euclidean distance between distinct rows of ``features`` (the median heuristic)."""
    distances = torch.cdist(features.double(), features.double())
    off_diagonal = distances[~torch.eye(len(features), dtype=torch.bool)]
    value = float(off_diagonal.median()) if off_diagonal.numel() else 0.0
    return value if value > 0 else 1.0  # all points equal: any bandwidth gives the same (zero) MMD


def compute_mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased Gaussian-kernel MMD² between samples ``x [m, d]`` and ``y [n, d]`` (may be < 0)."""
    x = torch.as_tensor(x).double().reshape(len(x), -1)
    y = torch.as_tensor(y).double().reshape(len(y), -1)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ConfigError(None, f"MMD needs at least 2 samples on each side, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[1] != y.shape[1]:
        raise ConfigError(None, f"MMD samples differ in feature size: {x.shape[1]} vs {y.shape[1]}")
    sigma = median_bandwidth(torch.cat([x, y])) if bandwidth is None else float(bandwidth)
    if not sigma > 0:
        raise ConfigError(None, f"MMD bandwidth must be positive, got {sigma}")
    gamma = 1.0 / (2.0 * sigma**2)
    k_xx = torch.exp(-gamma * torch.cdist(x, x) ** 2)
    k_yy = torch.exp(-gamma * torch.cdist(y, y) ** 2)
    k_xy = torch.exp(-gamma * torch.cdist(x, y) ** 2)
    m, n = x.shape[0], y.shape[0]
    term_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    term_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


def volume_features(volumes: Sequence[Volume], size: int | Sequence[int] = DEFAULT_FEATURE_SIZE,
                    intensity_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Flattened ``[n, size³]`` features: each volume in RAS, scaled to [-1, 1], area-downsampled to ``size``."""
    size = (int(size),) * 3 if np.isscalar(size) else tuple(int(s) for s in size)
    rows = []
    for volume in volumes:
        array = scale_intensity(volume.reoriented("RAS").array, intensity_range)
        tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
        # area averaging where shrinking (no aliasing), trilinear where a volume is smaller than ``size``
        shrunk = F.adaptive_avg_pool3d(tensor, tuple(min(s, t) for s, t in zip(size, tensor.shape[2:], strict=True)))
        resized = F.interpolate(shrunk, size=size, mode="trilinear", align_corners=False)
        rows.append(resized.reshape(-1))
    if not rows:
        raise ConfigError(None, "no volumes given for MMD features")
    return torch.stack(rows).double()


def compute_mmd_volumes(real: Sequence[Volume], generated: Sequence[Volume],
                        size: int | Sequence[int] = DEFAULT_FEATURE_SIZE,
                        intensity_range: tuple[float, float] | None = None,
                        bandwidth: float | None = None) -> float:
    """Unbiased Gaussian MMD² between real and generated volumes on downsampled-volume features."""
    return compute_mmd(volume_features(real, size, intensity_range), volume_features(generated, size, intensity_range),
                       bandwidth)


class GaussianMMD:
    """Unbiased Gaussian-kernel MMD² on downsampled volumes; the bandwidth can be fixed from the real set.

    ``GaussianMMD(size=16, bandwidth="real")`` fixes σ to the median heuristic on the real volumes'
    features at the first call and keeps it, so several generated sets are scored with one kernel;
    ``bandwidth=None`` re-estimates σ on the pooled sample of every comparison.
    """

    def __init__(self, size: int | Sequence[int] = DEFAULT_FEATURE_SIZE,
                 intensity_range: tuple[float, float] | None = None, bandwidth: float | str | None = None) -> None:
        if isinstance(bandwidth, str) and bandwidth != "real":
            raise ConfigError(None, f"unknown bandwidth '{bandwidth}'", "use a number, 'real' or None")
        self.size = size
        self.intensity_range = intensity_range
        self.bandwidth = bandwidth

    def __call__(self, real: Sequence[Volume], generated: Sequence[Volume]) -> float:
        """MMD² of ``generated`` against ``real`` (may be slightly negative)."""
        x = volume_features(real, self.size, self.intensity_range)
        y = volume_features(generated, self.size, self.intensity_range)
        if self.bandwidth == "real":
            self.bandwidth = median_bandwidth(x)
        return compute_mmd(x, y, self.bandwidth)
