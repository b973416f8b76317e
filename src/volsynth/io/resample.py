"""Resampling between voxel grids given by affines: one mapping covers reorientation, spacing
change, crop and pad at once. Images are linear (anti-aliased when shrinking), label maps nearest."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from volsynth.io.volume import LabelMap, Volume


def grid_affine(spacing, shape, centre) -> np.ndarray:
    """RAS affine of a grid of ``shape`` voxels of ``spacing`` mm whose centre lies at ``centre`` (mm)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    shape = np.asarray(shape, dtype=np.float64)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.asarray(centre, dtype=np.float64) - spacing * (shape - 1) / 2
    return affine


def grid_centre(affine: np.ndarray, shape) -> np.ndarray:
    """World position (mm) of the centre of a grid."""
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    return (affine @ np.append(centre, 1.0))[:3]


def snap_to_lattice(centre, affine: np.ndarray, size, spacing) -> np.ndarray:
    """A grid centre (RAS mm) moved by less than one voxel of an image on ``affine``, so that the RAS-aligned
    grid of ``size`` voxels of ``spacing`` mm centred there has its voxels on the image's voxels.

    Only along image axes parallel to a RAS axis whose grid spacing is a whole number of image voxels (the same
    spacing, or 2x, 3x...); elsewhere there is no lattice to share and the centre stays. On the lattice, the image
    reaches the grid (and a volume on the grid comes back) by whole-voxel steps; off it, every voxel would be
    linearly interpolated, blurred by up to half a voxel along each axis.
    """
    affine = np.asarray(affine, dtype=np.float64)
    voxel = np.linalg.solve(affine, np.append(np.asarray(centre, dtype=np.float64), 1.0))
    for axis in range(3):
        column = affine[:3, axis]
        world = int(np.argmax(np.abs(column)))
        length = float(np.linalg.norm(column))
        if length == 0 or abs(column[world]) < length * (1 - 1e-6):
            continue  # oblique axis
        ratio = float(spacing[world]) / length  # image voxels per grid voxel
        if round(ratio) < 1 or abs(ratio - round(ratio)) > 1e-6:
            continue
        half = (int(size[world]) - 1) / 2 * round(ratio)  # grid centre to its first voxel, in image voxels
        voxel[axis] = np.round(voxel[axis] - half) + half
    return (affine @ voxel)[:3]


def resample_array(array: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape,
                   order: int, cval: float = 0.0, antialias: bool = True) -> np.ndarray:
    """Values of ``array`` (on ``src_affine``) sampled on the grid ``dst_affine``/``dst_shape``."""
    dst_shape = tuple(int(s) for s in dst_shape)
    mapping = np.linalg.solve(src_affine, dst_affine)  # destination voxel -> source voxel
    # snap float noise (a whole-voxel shift that came out as 14.9999999) so the edge voxels are not lost
    mapping = np.where(np.abs(mapping - np.round(mapping)) < 1e-6, np.round(mapping), mapping)
    matrix, offset = mapping[:3, :3], mapping[:3, 3]
    if _is_identity_grid(matrix, offset, array.shape, dst_shape):
        return array.copy()
    sigma = np.zeros(3)
    if antialias and order > 0:
        step = np.abs(matrix).max(axis=1)  # source voxels crossed per destination voxel
        sigma = np.maximum(0.0, (step - 1.0) / 2.0)
    # Only the part of the source that the destination grid touches is filtered and sampled.
    corners = np.array([[i, j, k] for i in (0, dst_shape[0] - 1) for j in (0, dst_shape[1] - 1)
                        for k in (0, dst_shape[2] - 1)], dtype=np.float64)
    touched = corners @ matrix.T + offset
    margin = np.ceil(3 * sigma) + 2
    lo = np.clip(np.floor(touched.min(axis=0) - margin), 0, np.array(array.shape) - 1).astype(int)
    hi = np.clip(np.ceil(touched.max(axis=0) + margin) + 1, 1, np.array(array.shape)).astype(int)
    if np.any(hi <= lo) or np.any(touched.max(axis=0) < -1) or np.any(touched.min(axis=0) > np.array(array.shape)):
        return np.full(dst_shape, cval, dtype=array.dtype)
    crop = array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if np.any(sigma > 0):
        # the filter's output is the one full-size copy (a float32 crop is read in place)
        crop = ndimage.gaussian_filter(np.asarray(crop, dtype=np.float32), sigma=sigma, mode="nearest")
    out = ndimage.affine_transform(crop, matrix, offset=offset - lo, output_shape=dst_shape, order=order,
                                   mode="constant", cval=cval, prefilter=False)
    return out.astype(array.dtype, copy=False)


def _is_identity_grid(matrix: np.ndarray, offset: np.ndarray, src_shape, dst_shape) -> bool:
    return (tuple(src_shape) == tuple(dst_shape) and np.allclose(matrix, np.eye(3), atol=1e-6)
            and np.allclose(offset, 0.0, atol=1e-4))


def resample_to(obj: Volume | LabelMap, dst_affine: np.ndarray, dst_shape, cval: float | None = None):
    """Resample a Volume (linear, anti-aliased) or LabelMap (nearest) onto another grid."""
    if isinstance(obj, LabelMap):
        array = resample_array(obj.array, obj.affine, dst_affine, dst_shape, order=0, cval=0)
    else:
        fill = float(obj.array.min()) if cval is None else cval
        array = resample_array(obj.array.astype(np.float32, copy=False), obj.affine, dst_affine, dst_shape,
                               order=1, cval=fill)
    return obj.with_array(array, np.asarray(dst_affine, dtype=np.float64))
