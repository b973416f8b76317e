"""Typed volumes: an intensity image or a label map, each carrying its voxel-to-world affine.

Conventions (the same everywhere in volsynth):
- arrays are indexed ``(i, j, k)`` with shape ``(X, Y, Z)``, as nibabel does;
- the affine maps voxel indices to world millimetres in **RAS+** (x to the patient's Right,
  y Anterior, z Superior). DICOM, NRRD and MHA store LPS; the readers and writers convert.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import nibabel as nib
import numpy as np

from volsynth.errors import GeometryError


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis (length of each affine column)."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def direction_of(affine: np.ndarray) -> np.ndarray:
    """Unit direction cosines of the array axes (affine columns divided by spacing)."""
    spacing = spacing_of(affine)
    if np.any(spacing <= 0):
        raise GeometryError(None, f"affine has a zero-length axis (spacing {spacing.tolist()})")
    return np.asarray(affine, dtype=np.float64)[:3, :3] / spacing


def orthogonality_error(affine: np.ndarray) -> float:
    """Largest |cos| between two different axis directions (0 for an orthogonal affine)."""
    d = direction_of(affine)
    gram = d.T @ d
    return float(np.abs(gram - np.eye(3)).max())


def axcodes_of(affine: np.ndarray) -> str:
    """Orientation letters of the array axes, e.g. ``'RAS'`` or ``'LPS'``."""
    return "".join(nib.aff2axcodes(np.asarray(affine, dtype=np.float64)))


def make_affine(spacing, origin=(0.0, 0.0, 0.0), direction=None) -> np.ndarray:
    """Build a RAS affine from spacing (mm), origin (world mm of voxel 0) and a direction matrix."""
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = d * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine


@dataclass(frozen=True, eq=False)
class _Spatial:
    """Shared geometry of images and label maps."""

    array: np.ndarray
    affine: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise GeometryError(None, f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape (X, Y, Z)."""
        return tuple(self.array.shape)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm per axis."""
        return spacing_of(self.affine)

    @property
    def orientation(self) -> str:
        """Axis codes such as ``'RAS'``."""
        return axcodes_of(self.affine)

    @property
    def origin(self) -> np.ndarray:
        """World position (RAS mm) of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    def with_array(self, array: np.ndarray, affine: np.ndarray | None = None):
        """A copy with a new array (and optionally a new affine), keeping type and metadata."""
        return replace(self, array=array, affine=self.affine if affine is None else affine)

    def oriented_view(self, axcodes: str = "RAS") -> tuple[np.ndarray, np.ndarray]:
        """The array permuted and flipped to ``axcodes`` as a view (no copy), and its affine."""
        start = nib.orientations.io_orientation(self.affine)
        target = nib.orientations.axcodes2ornt(tuple(axcodes))
        transform = nib.orientations.ornt_transform(start, target)
        array = nib.orientations.apply_orientation(self.array, transform)
        return array, self.affine @ nib.orientations.inv_ornt_aff(transform, self.array.shape)

    def reoriented(self, axcodes: str = "RAS"):
        """Exact reorientation (axis permutation and flips, no interpolation) to ``axcodes``."""
        array, affine = self.oriented_view(axcodes)
        return self.with_array(np.ascontiguousarray(array), affine)


@dataclass(frozen=True, eq=False)
class Volume(_Spatial):
    """An intensity image (CT in HU, MR in scanner units, or normalised) with its affine."""

    modality: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        array = np.asarray(self.array)
        if not np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32)
        object.__setattr__(self, "array", array)


LABEL_TOLERANCE = 1e-3  # label ids stored as floats through scaling arithmetic (0.9999999 is label 1)


@dataclass(frozen=True, eq=False)
class LabelMap(_Spatial):
    """An integer label map (0 = background) with its affine; never linearly interpolated."""

    labels: dict[str, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        array = np.asarray(self.array)
        if not np.issubdtype(array.dtype, np.integer):
            rounded = np.rint(array)
            off = ~(np.abs(array - rounded) <= LABEL_TOLERANCE)  # NaN counts as off
            if off.any():
                example = array[off].flat[0]
                raise GeometryError(None, f"label map has {int(off.sum())} voxel(s) that are not whole numbers (e.g. "
                                    f"{example:g})", "labels must be whole numbers: is this an image rather than a "
                                    "label map, or was it resampled with linear interpolation?")
            array = rounded.astype(np.int32 if rounded.min(initial=0) < 0 or rounded.max(initial=0) > 255
                                   else np.uint8)
        object.__setattr__(self, "array", array)

    def present(self) -> list[int]:
        """Sorted label ids present in the map, background excluded."""
        return [int(v) for v in np.unique(self.array) if v != 0]
