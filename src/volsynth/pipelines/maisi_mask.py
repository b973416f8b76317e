"""A mask made ready for MAISI: the body label added when missing, the grid it is generated on (checked against the
sizes and spacings MAISI was trained on and the limits it works within), and its ControlNet input.

Limits as NV-Generate-CT documents them (scripts/infer_image_from_mask.py, docs/inference.md): spacing 0.5-3.0 mm
in-plane and 0.5-5.0 mm along z; sizes 256, 384 or 512 in-plane and 128-768 (steps of 128) along z were trained;
512 x 512 x 768 is the largest volume; an in-plane field of view under 256 mm is discouraged. Outside the spacing
limits, above the largest volume, or on a size the networks cannot divide, a request is refused; other sizes
and small fields of view are generated with a warning.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from scipy.spatial import Delaunay, QhullError

from volsynth.errors import ConfigError
from volsynth.io.formats import read_volume
from volsynth.io.resample import grid_affine, grid_centre, resample_to, snap_to_lattice
from volsynth.io.volume import LabelMap, Volume
from volsynth.pipelines.masks import MaskWarning

BODY = 200  # MAISI's body label: every body voxel no organ label claims
SPACING_LIMITS = ((0.5, 3.0), (0.5, 3.0), (0.5, 5.0))  # mm, per RAS axis
TRAINED_SIZES = ((256, 384, 512), (256, 384, 512), (128, 256, 384, 512, 640, 768))
MAX_SIZE = (512, 512, 768)
MIN_INPLANE_FOV = 256.0  # mm
BODY_THRESHOLD_HU = -500.0  # with a CT: voxels above this are body
AIR_HU = -1000.0  # outside the CT's field of view
# NV-Generate-CT's body regions (top and bottom region inputs of ddpm-ct): MAISI ids marking each region
REGIONS = ((22, 120), (28, 29, 30, 31, 32), (1, 2, 3, 4, 5, 14), (93, 94))


class GridWarning(UserWarning):
    """A MAISI generation grid outside the sizes and fields of view the model was trained on."""


def _slice_hull(labelled: np.ndarray) -> np.ndarray:
    """A 2D mask with its convex hull filled in (the mask itself when it has no area)."""
    edge = labelled & ~ndi.binary_erosion(labelled)
    points = np.argwhere(edge)
    if len(points) < 3:
        return labelled
    try:
        triangles = Delaunay(points)
    except QhullError:  # collinear points: no area to fill
        return labelled
    lo, hi = points.min(0), points.max(0)
    box = np.mgrid[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1].reshape(2, -1).T
    inside = box[triangles.find_simplex(box) >= 0]
    hull = labelled.copy()
    hull[inside[:, 0], inside[:, 1]] = True
    return hull


def add_body_label(mask: LabelMap, ct: Volume | None = None) -> LabelMap:
    """``mask`` with MAISI's body label (200) on every body voxel no class claims.

    With ``ct`` (on the mask's grid) the body is the largest connected region above -500 HU, holes filled slice by
    slice; without, per axial slice (RAS z) the convex hull of the labelled voxels.
    """
    ras = mask.reoriented("RAS")
    labelled = ras.array > 0
    if ct is not None:
        if ct.shape != mask.shape or not np.allclose(ct.affine, mask.affine, atol=1e-4):
            raise ConfigError(None, "the CT for the body label must be on the mask's grid")
        parts, count = ndi.label(ct.reoriented("RAS").array > BODY_THRESHOLD_HU)
        body = parts == (np.argmax(np.bincount(parts.ravel())[1:]) + 1) if count else np.zeros_like(labelled)
        body |= labelled
        for z in range(body.shape[2]):
            body[:, :, z] = ndi.binary_fill_holes(body[:, :, z])
    else:
        body = np.stack([_slice_hull(labelled[:, :, z]) for z in range(labelled.shape[2])], axis=2)
    array = ras.array.copy()
    array[body & ~labelled] = BODY
    return ras.with_array(array).reoriented(mask.orientation) if mask.orientation != "RAS" else ras.with_array(array)


def generation_grid(mask: LabelMap, factor: int) -> tuple[np.ndarray, list[int]]:
    """The RAS grid a mask is generated on: its voxel spacing, its field of view rounded up to a multiple of
    ``factor`` voxels, centred on it and on its voxel lattice (the mask's own grid when that is RAS and fits)."""
    ras = mask.reoriented("RAS")
    spacing = np.asarray(ras.spacing, dtype=np.float64)
    size = [int(math.ceil(n / factor) * factor) for n in ras.shape]
    centre = snap_to_lattice(grid_centre(ras.affine, ras.shape), ras.affine, size, spacing)
    return grid_affine(spacing, size, centre), size


def check_grid(size: list[int], spacing, factor: int, model_path=None) -> None:
    """Refuse a grid outside MAISI's limits; warn about one outside the sizes it was trained on."""
    spacing = [float(s) for s in spacing]
    for axis, (value, (lo, hi)) in enumerate(zip(spacing, SPACING_LIMITS, strict=True)):
        if not lo <= value <= hi:
            raise ConfigError(model_path, f"spacing {value:.3g} mm along {'RAS'[axis]} is outside MAISI's "
                              f"{lo}-{hi} mm", "resample the mask to a spacing in that range")
    if any(s % factor for s in size) or any(s > m for s, m in zip(size, MAX_SIZE, strict=True)):
        raise ConfigError(model_path, f"grid {size} is not generated: MAISI needs multiples of {factor} voxels, "
                          f"at most {list(MAX_SIZE)}", "crop the mask or give it a coarser spacing")
    untrained = [f"{'RAS'[axis]} {s}" for axis, s in enumerate(size) if s not in TRAINED_SIZES[axis]]
    if untrained:
        warnings.warn(f"grid {size} voxels: sizes {', '.join(untrained)} are outside the sizes MAISI was trained on "
                      f"(256/384/512 in-plane, 128-768 along z); expect lower quality", GridWarning, stacklevel=2)
    fov = [s * d for s, d in zip(size[:2], spacing[:2], strict=True)]
    if min(fov) < MIN_INPLANE_FOV:
        warnings.warn(f"in-plane field of view {[round(f) for f in fov]} mm is under the {MIN_INPLANE_FOV:.0f} mm "
                      "MAISI recommends", GridWarning, stacklevel=2)


def read_body_ct(ct: Volume | str | Path, mask: LabelMap) -> Volume:
    """The CT a body label is made from, in HU on the mask's grid (resampled when it is on another grid)."""
    name = str(ct) if isinstance(ct, (str, Path)) else "the body CT"
    volume = read_volume(ct) if isinstance(ct, (str, Path)) else ct
    if volume.modality not in (None, "CT"):
        raise ConfigError(name, f"the body label is made from a CT, not {volume.modality}", "give the CT in HU")
    on_grid = resample_to(volume, mask.affine, mask.shape, cval=AIR_HU)
    if not (on_grid.array < BODY_THRESHOLD_HU).any() or not (on_grid.array > BODY_THRESHOLD_HU).any():
        raise ConfigError(name, f"no voxels both below and above {BODY_THRESHOLD_HU:.0f} HU where it overlaps the "
                          "mask: not a CT in HU of the mask's body", "give the CT the mask was drawn on")
    return on_grid


def prepare_maisi_mask(mask: LabelMap, factor: int, model_path=None, source: str | None = None,
                       ct: Volume | None = None) -> tuple[LabelMap, np.ndarray, list[int], LabelMap, str]:
    """(mask with body, grid affine, grid size, mask on the grid, where its body label came from: "mask", "ct"
    (a threshold on ``ct``, on the mask's grid) or "hull" (the labels' convex hull per axial slice))."""
    body = "mask"
    if BODY not in set(mask.present()):
        body = "ct" if ct is not None else "hull"
        if ct is None:
            warnings.warn(f"{source or 'mask'}: no body label ({BODY}); added one: per axial slice the convex hull of "
                          "the labels (--body-ct with the mask's CT gives a better one)", MaskWarning, stacklevel=2)
        mask = add_body_label(mask, ct)
    affine, size = generation_grid(mask, factor)
    check_grid(size, np.linalg.norm(affine[:3, :3], axis=0), factor, model_path)
    return mask, affine, size, resample_to(mask, affine, size), body


def bit_planes(labels: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """[X, Y, Z] integer labels -> [1, bits, X, Y, Z]: bit k of each id as a 0/1 plane (MAISI's ControlNet input)."""
    planes = [((labels >> k) & 1).float() for k in range(bits)]
    return torch.stack(planes)[None]


def controlled_step(unet, controlnet, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
                    controlnet_scale: float = 1.0, class_labels: torch.Tensor | None = None, **extra) -> torch.Tensor:
    """One network pass of MAISI's denoiser: the ControlNet's residuals of the mask's bit-planes (``cond``; None:
    the UNet alone) into the UNet, with the class label and the UNet's other inputs (``extra``)."""
    residuals = {}
    if cond is not None:
        down, mid = controlnet(x, t, cond, conditioning_scale=controlnet_scale, class_labels=class_labels)
        residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    return unet(x, t, class_labels=class_labels, **residuals, **extra)


def body_regions(present: set[int] | None) -> tuple[list[float], list[float]]:
    """The top and bottom body regions (one-hot over head, thorax, abdomen, pelvis) the mask's ids span; without a
    mask, or with none of the region ids, thorax to abdomen (NV-Generate-CT's default)."""
    hits = [i for i, ids in enumerate(REGIONS) if present and set(ids) & present] or [1, 2]
    eye = np.eye(len(REGIONS)).tolist()
    return eye[min(hits)], eye[max(hits)]
