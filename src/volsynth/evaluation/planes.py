"""Per-plane slicing of volumes for 2.5D metrics, and the intensity scaling every metric shares.

Slicing is anatomical, not by array axis: a volume is first reoriented to RAS (an exact axis
permutation and flips, no interpolation), so that for any stored orientation (LPS, permuted axes,
oblique) the same anatomical plane is taken:

- axial    = slices along z (S):  ``ras[:, :, k]``, in-plane axes (x, y)
- coronal  = slices along y (A):  ``ras[:, k, :]``, in-plane axes (x, z)
- sagittal = slices along x (R):  ``ras[k, :, :]``, in-plane axes (y, z)

An oblique volume is sliced along the RAS axes nearest to its own axes (no resampling).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from volsynth.errors import ConfigError, GeometryError
from volsynth.io.volume import Volume

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
PLANE_AXIS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}  # array axis of a RAS volume


def check_planes(planes: Sequence[str]) -> tuple[str, ...]:
    """The planes as a tuple, or a ConfigError naming the unknown one."""
    planes = tuple(planes)
    for plane in planes:
        if plane not in PLANE_AXIS:
            raise ConfigError(None, f"unknown plane '{plane}'", f"choose from {', '.join(PLANES)}")
    if not planes:
        raise ConfigError(None, "no plane given", f"choose from {', '.join(PLANES)}")
    return planes


def slice_indices(size: int, count: int | None) -> np.ndarray:
    """``count`` evenly spaced slice indices (bin centres) in ``range(size)``; all of them if None."""
    if count is None or count >= size:
        return np.arange(size)
    if count < 1:
        raise ConfigError(None, f"slices per volume must be at least 1, got {count}")
    return np.floor((np.arange(count) + 0.5) * size / count).astype(int)


def extract_slices(volume: Volume, plane: str, count: int | None = None) -> np.ndarray:
    """Slices ``[N, H, W]`` of one anatomical plane, taken from the RAS-reoriented volume."""
    check_planes([plane])
    if volume.array.ndim != 3:
        raise GeometryError(None, f"expected a 3D volume, got an array of shape {volume.array.shape}")
    ras = volume.reoriented("RAS").array
    axis = PLANE_AXIS[plane]
    picked = np.take(ras, slice_indices(ras.shape[axis], count), axis=axis)
    return np.ascontiguousarray(np.moveaxis(picked, axis, 0))


def scale_intensity(array: np.ndarray, intensity_range: tuple[float, float] | None = None,
                    percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Map intensities linearly to [-1, 1] and clip.

    ``intensity_range=(lo, hi)`` is a fixed window in the volume's units (e.g. (-1000, 1000) HU for CT),
    the same for every volume: prefer it when the units are absolute. ``None`` uses this array's own
    ``percentiles`` (robust min-max, the usual choice for MR whose units vary per scan).
    """
    array = np.asarray(array, dtype=np.float32)
    if intensity_range is None:
        lo, hi = (float(v) for v in np.percentile(array, percentiles))
    else:
        lo, hi = float(intensity_range[0]), float(intensity_range[1])
        if not hi > lo:
            raise ConfigError(None, f"intensity range must be increasing, got ({lo}, {hi})")
    if hi <= lo:  # a constant volume: map it to the middle of the range
        return np.zeros_like(array)
    return np.clip((array - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0)
