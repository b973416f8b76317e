"""Branching tubes (vessels, airways): grown generation by generation, drawn on bounding boxes.

A tree is grown from root branches; each branch bifurcates with Murray's law for the radii
(r^3 = r1^3 + r2^3, a random flow split) and Murray's optimal angles, at a random azimuth. A branch
whose end would leave its organ is shortened, then bent towards the organ centre, then dropped.
Growth is vectorised over all branches of a generation; drawing touches each branch's box only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from volsynth.data.phantom.shapes import Grid, capsule


@dataclass
class Segments:
    """Tapered straight tube segments: ends (S,3) in mm, radii (S,) in mm, generation (S,)."""

    p0: np.ndarray
    p1: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    generation: np.ndarray

    @staticmethod
    def empty() -> Segments:
        """No segments."""
        z3, z1 = np.zeros((0, 3)), np.zeros(0)
        return Segments(z3, z3, z1, z1, np.zeros(0, dtype=int))

    @staticmethod
    def polyline(points: ArrayLike, radii: ArrayLike, generation: int = 0) -> Segments:
        """Consecutive segments along a polyline with a radius at every vertex."""
        p, r = np.asarray(points, dtype=float), np.asarray(radii, dtype=float)
        n = len(p) - 1
        return Segments(p[:-1], p[1:], r[:-1], r[1:], np.full(n, generation))

    def __len__(self) -> int:
        return len(self.r0)

    def __add__(self, other: Segments) -> Segments:
        pairs = zip(self._fields(), other._fields(), strict=True)
        return Segments(*(np.concatenate([a, b]) for a, b in pairs))

    def _fields(self) -> tuple[np.ndarray, ...]:
        return self.p0, self.p1, self.r0, self.r1, self.generation

    def select(self, keep: np.ndarray) -> Segments:
        """The segments where ``keep`` is true."""
        return Segments(*(a[keep] for a in self._fields()))


def _normalise(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _perpendicular_basis(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to each row of ``d`` and to each other."""
    ref = np.where(np.abs(d[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    u = _normalise(np.cross(d, ref))
    return u, np.cross(d, u)


def grow_tree(rng: np.random.Generator, starts: ArrayLike, directions: ArrayLike, radii: ArrayLike,
              inside: Callable[[np.ndarray, np.ndarray], np.ndarray], centres: ArrayLike, generations: int,
              min_radius: float, length_per_radius: tuple[float, float] = (6.0, 10.0), min_length: float = 4.0,
              first_generation: int = 1, tags: ArrayLike | None = None,
              split: tuple[float, float] = (0.25, 0.75)) -> Segments:
    """Grow bifurcating trees from root branches, all trees at once.

    ``split`` bounds the fraction of flow taken by one child (asymmetric splits keep a main trunk).
    ``tags`` (one int per root, inherited by every branch) say which region a branch belongs to:
    ``inside(points, tags)`` tells where branches may end and ``centres[tag]`` where to bend them.
    """
    pos = np.atleast_2d(np.asarray(starts, dtype=float))
    dirs = _normalise(np.atleast_2d(np.asarray(directions, dtype=float)))
    rad = np.atleast_1d(np.asarray(radii, dtype=float))
    tag = np.zeros(len(rad), dtype=int) if tags is None else np.asarray(tags, dtype=int)
    centres = np.atleast_2d(np.asarray(centres, dtype=float))
    out = [Segments.empty()]
    for gen in range(first_generation, first_generation + generations):
        if len(rad) == 0:
            break
        length = np.maximum(rad * rng.uniform(*length_per_radius, len(rad)), min_length)[:, None]
        end = pos + dirs * length
        ok = inside(np.concatenate([end, pos + dirs * length / 2]), np.concatenate([tag, tag]))
        ok = ok[: len(rad)] & ok[len(rad):]
        for attempt in (0, 1):  # shorten, then bend towards the region centre
            if ok.all():
                break
            if attempt == 1:
                dirs = np.where(ok[:, None], dirs, _normalise(dirs + _normalise(centres[tag] - pos)))
            trial = pos + dirs * length * (0.5 if attempt == 0 else 0.7)
            fixed = ~ok & inside(trial, tag)
            end = np.where(fixed[:, None], trial, end)
            ok |= fixed
        pos, dirs, rad, end, tag = pos[ok], dirs[ok], rad[ok], end[ok], tag[ok]
        tip = rad * 0.93
        out.append(Segments(pos, end, rad, tip, np.full(len(rad), gen)))
        # bifurcation: flow split a, Murray radii and angles, random azimuth
        a = rng.uniform(*split, len(rad))
        r1, r2 = tip * a ** (1 / 3), tip * (1 - a) ** (1 / 3)
        cos1 = np.clip((tip**4 + r1**4 - r2**4) / (2 * tip**2 * r1**2), -1, 1)
        cos2 = np.clip((tip**4 + r2**4 - r1**4) / (2 * tip**2 * r2**2), -1, 1)
        th1 = np.arccos(cos1) + rng.normal(0, 0.12, len(rad))
        th2 = np.arccos(cos2) + rng.normal(0, 0.12, len(rad))
        az = rng.uniform(0, 2 * np.pi, len(rad))
        u, v = _perpendicular_basis(dirs)
        axis = np.cos(az)[:, None] * u + np.sin(az)[:, None] * v
        d1 = np.cos(th1)[:, None] * dirs + np.sin(th1)[:, None] * axis
        d2 = np.cos(th2)[:, None] * dirs - np.sin(th2)[:, None] * axis
        pos, dirs, rad = np.concatenate([end, end]), _normalise(np.concatenate([d1, d2])), np.concatenate([r1, r2])
        tag = np.concatenate([tag, tag])
        keep = rad >= min_radius
        pos, dirs, rad, tag = pos[keep], dirs[keep], rad[keep], tag[keep]
    return _concat(out)


def _concat(parts: list[Segments]) -> Segments:
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def tube_distances(grid: Grid, segments: Segments, min_radius_vox: float = 0.6,
                   extra: float = 0.0) -> Iterator[tuple[int, tuple[slice, slice, slice], np.ndarray]]:
    """Per segment: (index, window, signed distance in mm to the tube surface) on its box.

    Radii below ``min_radius_vox`` voxels are drawn at that radius so thin branches stay connected;
    ``extra`` mm widens the box (for walls drawn around the tube).
    """
    floor = min_radius_vox * min(grid.spacing)
    for n in range(len(segments)):
        r0, r1 = max(segments.r0[n], floor), max(segments.r1[n], floor)
        tube = capsule(segments.p0[n], segments.p1[n], r0, r1)
        window, sdf = tube.evaluate(grid, pad=extra)
        if window is not None:
            yield n, window, sdf
