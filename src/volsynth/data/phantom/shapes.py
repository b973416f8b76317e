"""Small composable shapes in world millimetres, evaluated on a voxel grid or at scattered points.

Every shape is a ``Solid``: an approximate signed distance in mm (negative inside) plus a world
bounding box, so rasterising touches only the voxels inside that box. The same function works on
an open grid (``x`` of shape (X,1,1), ``y`` (1,Y,1), ``z`` (1,1,Z)) and on point arrays of shape (M,),
which is what keeps anatomy independent of the grid: trees and lesions are placed by evaluating
shapes at points, and the voxel grid only samples the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage as ndi

Sdf = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Grid:
    """A cubic-index voxel grid with a diagonal RAS+ affine centred on the world origin."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def origin(self) -> np.ndarray:
        """World position (mm) of voxel (0, 0, 0): the grid is centred on 0."""
        return -np.asarray(self.spacing) * (np.asarray(self.shape) - 1) / 2.0

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-to-world matrix (RAS+ mm)."""
        affine = np.diag([*map(float, self.spacing), 1.0])
        affine[:3, 3] = self.origin
        return affine

    def axis(self, dim: int) -> np.ndarray:
        """World coordinates (mm, float32) of the voxel centres along one axis."""
        return (self.origin[dim] + self.spacing[dim] * np.arange(self.shape[dim])).astype(np.float32)

    def window(self, lo: ArrayLike, hi: ArrayLike) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie in the world box [lo, hi]; None when empty."""
        o, s = self.origin, np.asarray(self.spacing)
        start = np.maximum(np.ceil((np.asarray(lo) - o) / s), 0).astype(int)
        stop = np.minimum(np.floor((np.asarray(hi) - o) / s) + 1, self.shape).astype(int)
        if np.any(stop <= start):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))  # type: ignore[return-value]

    def open_axes(self, window: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world coordinates of a window: shapes (X,1,1), (1,Y,1), (1,1,Z)."""
        x, y, z = (self.axis(d)[window[d]] for d in range(3))
        return x[:, None, None], y[None, :, None], z[None, None, :]

    def full(self) -> tuple[slice, slice, slice]:
        """The window covering the whole grid."""
        return tuple(slice(0, n) for n in self.shape)  # type: ignore[return-value]

    def to_world(self, ijk: ArrayLike) -> np.ndarray:
        """Voxel indices (…,3) to world mm."""
        return self.origin + np.asarray(ijk, dtype=np.float64) * np.asarray(self.spacing)


@dataclass(frozen=True)
class Solid:
    """A shape: approximate signed distance (mm, negative inside) and its world bounding box."""

    sdf: Sdf
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return self.sdf(x, y, z)

    def at(self, points: np.ndarray) -> np.ndarray:
        """Signed distance at world points of shape (M, 3)."""
        p = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        return np.asarray(self.sdf(p[:, 0], p[:, 1], p[:, 2]))

    def evaluate(self, grid: Grid, pad: float = 0.0) -> tuple[tuple[slice, slice, slice] | None, np.ndarray | None]:
        """(window, sdf values) of this shape on the grid, restricted to its box; window None if outside."""
        window = grid.window(np.subtract(self.lo, pad), np.add(self.hi, pad))
        if window is None:
            return None, None
        axes = grid.open_axes(window)
        shape = tuple(len(a.ravel()) for a in axes)
        return window, np.broadcast_to(self.sdf(*axes), shape)


def _f(values) -> tuple[float, ...]:
    """Plain Python floats (numpy float64 scalars would promote float32 arrays)."""
    return tuple(float(v) for v in np.ravel(values))


def random_rotation(rng: np.random.Generator, max_angle_deg: float) -> np.ndarray:
    """A rotation about a random axis by a random angle of at most ``max_angle_deg``."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def rotation(axis: int, angle: float) -> np.ndarray:
    """Rotation matrix by ``angle`` radians about world axis 0 (x), 1 (y) or 2 (z)."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def ellipsoid(centre: ArrayLike, radii: ArrayLike, rotation: np.ndarray | None = None) -> Solid:
    """Ellipsoid; columns of ``rotation`` are its axes in world coordinates."""
    c, r = _f(centre), _f(radii)
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    rt = [_f(rot[:, a]) for a in range(3)]

    def sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        q = [rt[a][0] * dx + rt[a][1] * dy + rt[a][2] * dz for a in range(3)]
        k0 = np.sqrt((q[0] / r[0]) ** 2 + (q[1] / r[1]) ** 2 + (q[2] / r[2]) ** 2)
        k1 = np.sqrt((q[0] / r[0] ** 2) ** 2 + (q[1] / r[1] ** 2) ** 2 + (q[2] / r[2] ** 2) ** 2)
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)  # Quilez's first-order ellipsoid distance

    extent = np.abs(rot) @ np.asarray(r)
    return Solid(sdf, _f(np.subtract(c, extent)), _f(np.add(c, extent)))


def capsule(p0: ArrayLike, p1: ArrayLike, r0: float, r1: float) -> Solid:
    """Tapered tube between two points with radii ``r0`` at ``p0`` and ``r1`` at ``p1``."""
    a, b = np.asarray(p0, float), np.asarray(p1, float)
    d = b - a
    length2 = float(max(d @ d, 1e-9))
    ax, dd, ra, rb = _f(a), _f(d), float(r0), float(r1)

    def sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        px, py, pz = x - ax[0], y - ax[1], z - ax[2]
        t = np.clip((px * dd[0] + py * dd[1] + pz * dd[2]) / length2, 0.0, 1.0)
        dist = np.sqrt((px - t * dd[0]) ** 2 + (py - t * dd[1]) ** 2 + (pz - t * dd[2]) ** 2)
        return dist - (ra + t * (rb - ra))

    rmax = max(ra, rb)
    return Solid(sdf, _f(np.minimum(a, b) - rmax), _f(np.maximum(a, b) + rmax))


def smooth_union(solids: list[Solid], k: float) -> Solid:
    """Union with a blend of width ``k`` mm (polynomial smooth minimum); k = 0 is a plain union."""

    def sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        d = solids[0](x, y, z)
        for s in solids[1:]:
            e = s(x, y, z)
            if k <= 0:
                d = np.minimum(d, e)
            else:
                h = np.clip(0.5 + 0.5 * (e - d) / k, 0.0, 1.0)
                d = e + (d - e) * h - k * h * (1.0 - h)
        return d

    lo = np.min([s.lo for s in solids], axis=0) - k
    hi = np.max([s.hi for s in solids], axis=0) + k
    return Solid(sdf, _f(lo), _f(hi))


def intersect(a: Solid, *others: Solid) -> Solid:
    """Intersection (maximum of distances); the box is the intersection of the boxes."""

    def sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        d = a(x, y, z)
        for s in others:
            d = np.maximum(d, s(x, y, z))
        return d

    lo = np.max([a.lo, *[s.lo for s in others]], axis=0)
    hi = np.min([a.hi, *[s.hi for s in others]], axis=0)
    return Solid(sdf, _f(lo), _f(np.maximum(hi, lo)))


def subtract(a: Solid, b: Solid) -> Solid:
    """``a`` with ``b`` cut away."""
    return Solid(lambda x, y, z: np.maximum(a(x, y, z), -b(x, y, z)), a.lo, a.hi)


def deform(a: Solid, field: SmoothField, amplitude: float) -> Solid:
    """Perturb the surface by ``amplitude`` mm times a smooth random field (low-frequency warp)."""
    amp = float(amplitude)
    return Solid(lambda x, y, z: a(x, y, z) + amp * field(x, y, z), _f(np.subtract(a.lo, 2 * amp)),
                 _f(np.add(a.hi, 2 * amp)))


def _bspline_weights(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline: index of the first of four lattice nodes and their weights for coordinates u."""
    i = np.floor(u).astype(np.int64)
    t = (u - i)[..., None]
    w = np.concatenate([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], axis=-1)
    return i - 1, (w / 6.0).astype(np.float32)


class SmoothField:
    """Gaussian-like random field on a coarse world lattice, interpolated with cubic B-splines.

    Unit standard deviation; ``step`` mm sets the feature size. Evaluated separably on open grids
    (three small matrix products) and gathered at scattered points, giving the same values both ways.
    """

    _NORM = 2.9  # 1 / std of a cubic B-spline interpolant of unit white noise in 3D

    def __init__(self, rng: np.random.Generator, lo, hi, step: float) -> None:
        self.lo = np.asarray(lo, dtype=np.float64) - 2 * step
        self.step = float(step)
        n = np.ceil((np.asarray(hi) - self.lo) / step).astype(int) + 4
        self.values = (rng.standard_normal(tuple(n)) * self._NORM).astype(np.float32)

    def _matrix(self, coords: np.ndarray, dim: int) -> np.ndarray:
        u = (np.asarray(coords, dtype=np.float64).ravel() - self.lo[dim]) / self.step
        n = self.values.shape[dim]
        i0, w = _bspline_weights(np.clip(u, 1.0, n - 3.0 - 1e-6))
        m = np.zeros((u.size, n), dtype=np.float32)
        rows = np.arange(u.size)
        for k in range(4):
            m[rows, i0 + k] = w[:, k]
        return m

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        if x.ndim == 3 and x.shape[1:] == (1, 1) and y.shape[::2] == (1, 1) and z.shape[:2] == (1, 1):
            mx, my, mz = self._matrix(x, 0), self._matrix(y, 1), self._matrix(z, 2)
            nx, ny, nz = self.values.shape
            out = (mx @ self.values.reshape(nx, -1)).reshape(len(mx), ny, nz)
            return np.matmul(my, out) @ mz.T  # (X, Y, nz) @ (nz, Z)
        x, y, z = np.broadcast_arrays(x, y, z)
        coords = np.stack([(np.asarray(c, dtype=np.float64).ravel() - self.lo[d]) / self.step
                           for d, c in enumerate((x, y, z))])
        upper = np.array(self.values.shape, dtype=np.float64)[:, None] - 3.0 - 1e-6
        coords = np.clip(coords, 1.0, upper)
        # the lattice values are the cubic B-spline coefficients: no prefilter
        out = ndi.map_coordinates(self.values, coords, order=3, prefilter=False, mode="nearest", output=np.float32)
        return out.reshape(x.shape)
