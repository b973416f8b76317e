"""Input checks shared by the paired metrics: two objects must lie on the same voxel grid."""

from __future__ import annotations

import numpy as np

from volsynth.errors import GeometryError
from volsynth.io.volume import LabelMap, Volume

AFFINE_TOLERANCE_MM = 1e-3


def require_same_geometry(pred: Volume | LabelMap, ref: Volume | LabelMap, what: str = "volumes") -> None:
    """Raise GeometryError unless ``pred`` and ``ref`` have the same shape and affine."""
    if tuple(pred.shape) != tuple(ref.shape):
        raise GeometryError(None, f"{what} differ in shape: {tuple(pred.shape)} vs reference {tuple(ref.shape)}",
                            "resample one onto the other's grid first (volsynth.io.resample.resample_to)")
    if not np.allclose(pred.affine, ref.affine, atol=AFFINE_TOLERANCE_MM):
        diff = float(np.abs(pred.affine - ref.affine).max())
        raise GeometryError(None, f"{what} differ in affine (largest difference {diff:.4g} mm; "
                                  f"orientations {pred.orientation} vs {ref.orientation})",
                            "resample one onto the other's grid first (volsynth.io.resample.resample_to)")


def require_same_shape(volumes: list[Volume], what: str = "volumes") -> tuple[int, ...]:
    """The common shape of ``volumes`` (at least one), or a GeometryError naming the first odd one."""
    if not volumes:
        raise GeometryError(None, f"no {what} given")
    shape = tuple(volumes[0].shape)
    for n, volume in enumerate(volumes):
        if tuple(volume.shape) != shape:
            raise GeometryError(None, f"{what} differ in shape: #{n} is {tuple(volume.shape)}, #0 is {shape}",
                                "resample all of them to one grid first (volsynth.io.resample.resample_to)")
    return shape
