"""What an anatomy generator hands to the renderer and the report writer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from volsynth.data.phantom.measure import centroid, max_extent_mm
from volsynth.data.phantom.shapes import Grid


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


def describe_lesion(grid: Grid, window: tuple[slice, slice, slice], mask: np.ndarray) -> dict:
    """Diameter (mm, rounded), centre in voxels and in world mm, measured from the final mask."""
    centre = centroid(mask, window)
    return {"diameter_mm": int(round(max_extent_mm(mask, grid.spacing))),
            "centre_voxel": [round(float(v), 2) for v in centre],
            "centre_mm": [round(float(v), 1) for v in grid.to_world(centre)],
            "voxels": int(mask.sum())}
