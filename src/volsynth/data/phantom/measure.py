"""Measurements taken from the final masks, so that reports and facts agree with the label map.

Lesion diameter (used for every ``diameter_mm`` in facts and reports): the maximum 3D extent of the
lesion's connected component, i.e. the largest distance between the centres of two of its voxels
plus one voxel (the mean spacing), so that a single voxel measures one voxel.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity for lesion components


def max_extent_mm(mask: np.ndarray, spacing: ArrayLike) -> float:
    """Maximum 3D extent (mm) of a boolean mask: largest centre-to-centre distance + mean spacing."""
    spacing = np.asarray(spacing, dtype=np.float64)
    if not mask.any():
        return 0.0
    padded = np.pad(mask, 1)
    boundary = padded & ~ndi.binary_erosion(padded)
    points = (np.argwhere(boundary) - 1) * spacing
    if len(points) > 800:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:  # flat or degenerate: all points are fine to compare
            pass
    longest = float(pdist(points).max()) if len(points) > 1 else 0.0
    return longest + float(spacing.mean())


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (empty stays empty)."""
    labelled, count = ndi.label(mask, structure=FULL_CONNECTIVITY)
    if count <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def centroid(mask: np.ndarray, window: tuple[slice, slice, slice]) -> np.ndarray:
    """Centre of mass (voxel indices of the full grid) of a mask given on a window."""
    offset = np.array([s.start for s in window], dtype=np.float64)
    return np.argwhere(mask).mean(axis=0) + offset


def label_volumes_ml(labels: np.ndarray, label_ids: dict[str, int], spacing: ArrayLike) -> dict[str, float]:
    """Volume (ml) of every named label except background, from voxel counts."""
    counts = np.bincount(labels.ravel(), minlength=max(label_ids.values()) + 1)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {name: round(float(counts[i]) * voxel_ml, 1) for name, i in label_ids.items() if i != 0}


def lesion_contrasts(image: np.ndarray, labels: np.ndarray, spacing: ArrayLike, organ_id: int = 1,
                     lesion_id: int = 4) -> list[dict]:
    """Per lesion (26-connected component of ``lesion_id``): its maximum extent (mm), the median of its voxels
    minus the organ's median (all voxels, and interior voxels one voxel in from its border: partial volume and
    blur lower the first for small lesions), largest lesion first. Interior is None for lesions without one."""
    organ = labels == organ_id
    if not organ.any():
        return []
    reference = float(np.median(image[organ]))
    components, count = ndi.label(labels == lesion_id, structure=FULL_CONNECTIVITY)
    out = []
    for index, window in enumerate(ndi.find_objects(components), start=1):
        mask = components[window] == index
        inner = ndi.binary_erosion(np.pad(mask, 1), FULL_CONNECTIVITY)[1:-1, 1:-1, 1:-1]
        values = image[window]
        out.append({"diameter_mm": round(max_extent_mm(mask, spacing), 1), "voxels": int(mask.sum()),
                     "contrast": round(float(np.median(values[mask])) - reference, 1),
                     "interior_contrast": round(float(np.median(values[inner])) - reference, 1) if inner.any()
                     else None})
    return sorted(out, key=lambda lesion: -lesion["diameter_mm"])
