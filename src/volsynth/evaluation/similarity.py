"""Image similarity in 3D: MS-SSIM (and sample diversity from it), PSNR and SSIM for paired volumes.

All use MONAI's implementations (``compute_ms_ssim``, ``PSNRMetric``, ``SSIMMetric``) with a Gaussian
window (σ = 1.5 voxels). ``data_range`` is the intensity span the constants of SSIM and the peak of PSNR
refer to: pass it in the volumes' units (e.g. 2000 for CT clipped to [-1000, 1000] HU); when None it is
the reference's max - min (the real set's, for diversity).

MS-SSIM window and scales are chosen from the volume size (``ms_ssim_settings``): the standard five
scales with an 11-voxel window need 176 voxels per axis, far more than the 32³-64³ volumes used here.
For the smallest axis we take the most scales (at most 5) at which a window of at least 5 voxels still
fits the coarsest scale, and the largest odd window (at most 11) that fits it; the standard weights
(0.0448, 0.2856, 0.3001, 0.2363, 0.1333) are truncated to that many scales and renormalised to sum 1.
This gives 64³: 4 scales, 7-voxel window; 32³: 3 scales, 7; 16³: 2 scales, 7; 128³: 5 scales, 7;
256³: 5 scales, 11 (the standard setting); 8³: 1 scale (plain SSIM); under 5 voxels: an error.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import PSNRMetric, SSIMMetric
from monai.metrics.regression import compute_ms_ssim

from volsynth.errors import ConfigError, GeometryError
from volsynth.evaluation._checks import require_same_geometry, require_same_shape
from volsynth.io.volume import Volume

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MIN_WINDOW = 5
MAX_WINDOW = 11
KERNEL_SIGMA = 1.5


def ms_ssim_settings(shape: Sequence[int]) -> tuple[int, tuple[float, ...]]:
    """(window size, per-scale weights) of MS-SSIM that fit a volume of ``shape`` (see module doc)."""
    smallest = int(min(shape))
    for scales in range(len(MS_SSIM_WEIGHTS), 0, -1):
        # MONAI checks size // (scales-1)² > window-1; the coarsest scale needs size // 2^(scales-1) >= window
        fits = min(smallest // max(1, (scales - 1) ** 2), smallest // 2 ** (scales - 1))
        window = min(MAX_WINDOW, fits)
        window -= 1 - window % 2  # largest odd number not above it
        if window >= MIN_WINDOW:
            weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
            return window, tuple(float(w) for w in weights / weights.sum())
    raise GeometryError(None, f"volume of shape {tuple(shape)} is too small for MS-SSIM",
                        f"every axis needs at least {MIN_WINDOW} voxels")


def _tensor(volume: Volume | np.ndarray) -> torch.Tensor:
    array = volume.array if isinstance(volume, Volume) else np.asarray(volume)
    if array.ndim != 3:
        raise GeometryError(None, f"expected a 3D volume, got an array of shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]


def _data_range(reference: Volume | np.ndarray, data_range: float | None) -> float:
    if data_range is None:
        array = reference.array if isinstance(reference, Volume) else np.asarray(reference)
        data_range = float(array.max() - array.min())
    if not data_range > 0:
        raise ConfigError(None, f"data_range must be positive, got {data_range}",
                          "pass the intensity span of the volumes, e.g. 2000 for CT in [-1000, 1000] HU")
    return float(data_range)


def _pair_check(pred: Volume | np.ndarray, ref: Volume | np.ndarray) -> None:
    if isinstance(pred, Volume) and isinstance(ref, Volume):
        require_same_geometry(pred, ref)
    elif np.shape(getattr(pred, "array", pred)) != np.shape(getattr(ref, "array", ref)):
        raise GeometryError(None, "volumes differ in shape")


def compute_ms_ssim_volumes(pred: Volume | np.ndarray, ref: Volume | np.ndarray,
                            data_range: float | None = None) -> float:
    """MS-SSIM of two volumes on one grid, window and scales chosen from their size."""
    _pair_check(pred, ref)
    window, weights = ms_ssim_settings(np.shape(getattr(ref, "array", ref)))
    value = compute_ms_ssim(_tensor(pred), _tensor(ref), spatial_dims=3, data_range=_data_range(ref, data_range),
                            kernel_size=window, kernel_sigma=KERNEL_SIGMA, weights=weights)
    return float(value.reshape(-1)[0])


def sample_pairs(count: int, max_pairs: int | None, seed: int = 0) -> list[tuple[int, int]]:
    """All index pairs i < j of ``count`` items, or ``max_pairs`` of them drawn without replacement (seeded)."""
    pairs = list(itertools.combinations(range(count), 2))
    if max_pairs is not None and len(pairs) > max_pairs:
        chosen = np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False)
        pairs = [pairs[i] for i in sorted(chosen)]
    return pairs


def compute_ms_ssim_diversity(volumes: Sequence[Volume], data_range: float | None = None, max_pairs: int | None = 200,
                              seed: int = 0, batch_size: int = 4) -> float:
    """Mean pairwise MS-SSIM within a set (lower = more diverse); volumes are compared in RAS.

    ``data_range=None`` uses this set's max - min: to compare a generated set with the real one, pass
    the same value to both (``MSSSIMDiversity`` does).
    """
    if len(volumes) < 2:
        raise ConfigError(None, f"MS-SSIM diversity needs at least 2 volumes, got {len(volumes)}")
    arrays = [v.reoriented("RAS") for v in volumes]
    shape = require_same_shape(arrays)
    window, weights = ms_ssim_settings(shape)
    if data_range is None:
        data_range = float(max(a.array.max() for a in arrays) - min(a.array.min() for a in arrays))
    data_range = _data_range(arrays[0], data_range)
    pairs = sample_pairs(len(arrays), max_pairs, seed)
    values = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        first = torch.cat([_tensor(arrays[i]) for i, _ in chunk])
        second = torch.cat([_tensor(arrays[j]) for _, j in chunk])
        values.append(compute_ms_ssim(first, second, spatial_dims=3, data_range=data_range, kernel_size=window,
                                      kernel_sigma=KERNEL_SIGMA, weights=weights).reshape(-1))
    return float(torch.cat(values).mean())


class MSSSIMDiversity:
    """Mean pairwise MS-SSIM among generated and among real volumes, on one data range (the real set's)."""

    def __init__(self, data_range: float | None = None, max_pairs: int | None = 200, seed: int = 0) -> None:
        self.data_range = data_range
        self.max_pairs = max_pairs
        self.seed = seed

    def __call__(self, real: Sequence[Volume], generated: Sequence[Volume]) -> dict[str, float]:
        """``{"generated": ..., "real": ...}``; a generated value well above the real one means mode collapse."""
        data_range = self.data_range
        if data_range is None:
            data_range = float(max(v.array.max() for v in real) - min(v.array.min() for v in real))
        options = dict(data_range=data_range, max_pairs=self.max_pairs, seed=self.seed)
        return {"generated": compute_ms_ssim_diversity(generated, **options),
                "real": compute_ms_ssim_diversity(real, **options)}


def compute_psnr(pred: Volume | np.ndarray, ref: Volume | np.ndarray, data_range: float | None = None) -> float:
    """PSNR in dB of ``pred`` against ``ref`` (same grid): 20·log10(data_range) - 10·log10(MSE); inf if equal."""
    _pair_check(pred, ref)
    metric = PSNRMetric(max_val=_data_range(ref, data_range), reduction="none")
    return float(metric(_tensor(pred), _tensor(ref)).reshape(-1)[0])


def ssim_window(shape: Sequence[int]) -> int:
    """SSIM window: 11 voxels, or the largest odd size that fits the smallest axis."""
    window = min(MAX_WINDOW, int(min(shape)))
    return window - (1 - window % 2)


def compute_ssim(pred: Volume | np.ndarray, ref: Volume | np.ndarray, data_range: float | None = None,
                 win_size: int | None = None) -> float:
    """Mean 3D SSIM of ``pred`` against ``ref`` (same grid), Gaussian window σ = 1.5."""
    _pair_check(pred, ref)
    shape = np.shape(getattr(ref, "array", ref))
    metric = SSIMMetric(spatial_dims=3, data_range=_data_range(ref, data_range),
                        win_size=win_size or ssim_window(shape), kernel_sigma=KERNEL_SIGMA, reduction="none")
    return float(metric(_tensor(pred), _tensor(ref)).reshape(-1)[0])


class _PairedMean:
    """Accumulates one number per (pred, ref) pair; ``aggregate`` gives their mean."""

    def __init__(self, data_range: float | None = None) -> None:
        self.data_range = data_range
        self.values: list[float] = []

    def _compute(self, pred: Volume, ref: Volume) -> float:
        raise NotImplementedError

    def __call__(self, pred: Volume, ref: Volume) -> float:
        """The metric of one pair, also kept for ``aggregate``."""
        value = self._compute(pred, ref)
        self.values.append(value)
        return value

    def aggregate(self) -> float:
        """Mean over the pairs seen so far (NaN if none)."""
        return float(np.mean(self.values)) if self.values else math.nan

    def reset(self) -> None:
        """Forget the pairs seen so far."""
        self.values = []


class VolumePSNR(_PairedMean):
    """PSNR per pair (``compute_psnr``) with a running mean."""

    def _compute(self, pred: Volume, ref: Volume) -> float:
        return compute_psnr(pred, ref, self.data_range)


class VolumeSSIM(_PairedMean):
    """3D SSIM per pair (``compute_ssim``) with a running mean."""

    def _compute(self, pred: Volume, ref: Volume) -> float:
        return compute_ssim(pred, ref, self.data_range)
