"""Mask editing: insert a lesion of a given diameter into an organ, or remove lesions.

Diameters follow the phantom convention (``volsynth.data.phantom.measure``): the maximum 3D extent
of the lesion's connected component, voxel centres plus one voxel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from volsynth.data.phantom.measure import FULL_CONNECTIVITY, max_extent_mm
from volsynth.errors import ConfigError, VolsynthError
from volsynth.io.volume import LabelMap


def _world_grid(mask: LabelMap) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(s) for s in mask.shape], indexing="ij"), axis=-1).astype(np.float64)
    return index @ mask.affine[:3, :3].T + mask.affine[:3, 3]


def insert_lesion(mask: LabelMap, diameter_mm: float, organ_id: int = 1, lesion_id: int = 4,
                  centre_mm=None, seed: int = 0) -> tuple[LabelMap, dict]:
    """A copy of ``mask`` with a spherical lesion of ``diameter_mm`` inside the organ.

    The centre is ``centre_mm`` (world RAS) when given, else a random organ voxel (seeded) deep enough
    for the whole lesion to lie inside the organ. Returns the new mask and the lesion's facts.
    """
    organ = mask.array == organ_id
    if not organ.any():
        raise VolsynthError(None, f"mask has no organ voxels with id {organ_id}", "pass --organ-id")
    spacing = mask.spacing
    # the sphere radius that measures the requested diameter: centre-to-centre extent + one voxel
    radius = max(0.0, (diameter_mm - float(np.mean(spacing))) / 2)
    if centre_mm is None:
        depth = ndi.distance_transform_edt(organ, sampling=spacing)
        candidates = np.argwhere(depth > radius + float(np.max(spacing)))
        if len(candidates) == 0:
            raise VolsynthError(None, f"a {diameter_mm:g} mm lesion does not fit inside organ {organ_id}",
                                f"largest that fits: about {2 * float(depth.max()):.0f} mm")
        chosen = candidates[np.random.default_rng(seed).integers(len(candidates))]
        centre = mask.affine[:3, :3] @ chosen + mask.affine[:3, 3]
    else:
        centre = np.asarray(centre_mm, dtype=np.float64)
    distance = np.linalg.norm(_world_grid(mask) - centre, axis=-1)
    # On a coarse grid a sphere's measured extent moves in voxel steps: among radii around the estimate,
    # keep the one whose measured diameter is closest to the request.
    step = float(np.max(spacing))
    best = None
    for candidate in np.linspace(max(0.0, radius - step), radius + step, 9):
        trial = distance <= candidate + 1e-6 * max(1.0, candidate)
        error = abs(max_extent_mm(trial, spacing) - diameter_mm) if trial.any() else np.inf
        if best is None or error < best[0] - 1e-9:
            best = (error, trial)
    sphere = best[1]
    if not sphere.any():
        raise VolsynthError(None, f"lesion centre {np.round(centre, 1).tolist()} mm lies outside the mask")
    array = mask.array.copy()
    array[sphere] = lesion_id
    measured = max_extent_mm(sphere, spacing)
    facts = {"diameter_mm": round(measured, 1), "requested_mm": diameter_mm, "centre_mm": np.round(centre, 1).tolist(),
             "voxels": int(sphere.sum()), "inside_organ": bool(organ[sphere].all())}
    return mask.with_array(array), facts


def lesion_components(mask: LabelMap, lesion_id: int = 4) -> tuple[np.ndarray, int]:
    """Connected lesion components (26-connectivity), as a component-index array and their count."""
    return ndi.label(mask.array == lesion_id, structure=FULL_CONNECTIVITY)


def remove_lesions(mask: LabelMap, which: list[int] | None = None, lesion_id: int = 4,
                   fill_id: int = 1) -> LabelMap:
    """Replace lesions (1-based component numbers, largest first; None = all) by the organ label."""
    components, count = lesion_components(mask, lesion_id)
    if count == 0:
        raise VolsynthError(None, f"mask has no lesion voxels with id {lesion_id}")
    sizes = ndi.sum_labels(np.ones_like(components), components, index=np.arange(1, count + 1))
    order = [int(i) + 1 for i in np.argsort(-sizes, kind="stable")]  # component ids, largest first
    chosen = order if which is None else []
    for number in which or []:
        if not 1 <= number <= count:
            raise ConfigError(None, f"lesion {number} does not exist", f"the mask has {count} lesion(s)")
        chosen.append(order[number - 1])
    array = mask.array.copy()
    array[np.isin(components, chosen)] = fill_id
    return mask.with_array(array)
