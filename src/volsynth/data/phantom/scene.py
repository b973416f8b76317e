"""What an anatomy generator hands to the renderer and the report writer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from volsynth.data.phantom.measure import centroid, max_extent_mm
from volsynth.data.phantom.shapes import Grid


@dataclass
class LesionContrast:
    """Version-2 lesion appearance: per-voxel part ids (0 none; lesion k: body 2k+1, rim or core 2k+2) and per
    part the CT difference to the liver (HU) with and without contrast, and the MR signal ratio per sequence."""

    parts: np.ndarray  # uint8, the grid's shape
    ct_hu: np.ndarray  # per part id; 0 for id 0
    ct_hu_native: np.ndarray  # non-contrast phase: rims do not enhance
    mr_ratio: dict[str, np.ndarray]  # "T1"/"T2" -> per part id; 1 for id 0

    def ct_offset(self, phase: str) -> np.ndarray:
        """HU to add to a liver-valued image, per voxel, for a CT phase."""
        return (self.ct_hu_native if phase == "non-contrast" else self.ct_hu)[self.parts]

    def mr_offset(self, sequence: str, liver_signal: float) -> np.ndarray:
        """Signal to add to a liver-valued image, per voxel, for an MR sequence."""
        return (np.float32(liver_signal) * (self.mr_ratio[sequence] - np.float32(1.0)))[self.parts]


@dataclass
class Scene:
    """Tissue map (for rendering), label map (for training), measured lesions and other findings."""

    grid: Grid
    tissue: np.ndarray  # uint8 tissue classes (tissues.TISSUES)
    labels: np.ndarray  # uint8 output labels
    lesions: list[dict] = field(default_factory=list)  # measured, see describe_lesion
    findings: dict = field(default_factory=dict)  # other ground truth (effusion, emphysema, ...)
    hu_offset: np.ndarray | None = None  # extra CT attenuation (fissures, dependent lung density)
    body_scale: float = 1.0  # patient width relative to an average adult (drives CT noise)
    lesion_contrast: LesionContrast | None = None  # generator version 2: per-lesion appearance


def describe_lesion(grid: Grid, window: tuple[slice, slice, slice], mask: np.ndarray) -> dict:
    """Diameter (mm, rounded), centre in voxels and in world mm, measured from the final mask."""
    centre = centroid(mask, window)
    return {"diameter_mm": int(round(max_extent_mm(mask, grid.spacing))),
            "centre_voxel": [round(float(v), 2) for v in centre],
            "centre_mm": [round(float(v), 1) for v in grid.to_world(centre)],
            "voxels": int(mask.sum())}
