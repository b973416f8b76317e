"""The liver: a deformed right/left/caudate lobe shape, portal and hepatic venous trees, approximate
Couinaud segments, and tumours placed in it.

Couinaud segments are approximated the way radiologists find them: the three hepatic veins define
vertical planes through the IVC (right hepatic vein: anterior 5/8 vs posterior 6/7; middle hepatic
vein: right vs left liver; left hepatic vein: medial 4 vs lateral 2/3), the portal bifurcation
defines a horizontal plane (superior 2, 4, 7, 8 vs inferior 3, 4, 5, 6), and segment 1 is the
caudate lobe next to the IVC. Tumours are placed at points of the liver and their segment is taken
at the centroid of their final mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from volsynth.data.phantom.body import Diaphragm, Spine, Torso
from volsynth.data.phantom.measure import largest_component, max_extent_mm
from volsynth.data.phantom.shapes import (
    Grid,
    SmoothField,
    Solid,
    deform,
    ellipsoid,
    intersect,
    random_rotation,
    smooth_union,
)
from volsynth.data.phantom.tissues import T, tissue_set
from volsynth.data.phantom.trees import Segments, grow_tree

PATTERNS = ("hypodense", "hyperdense", "rim-enhancing", "necrotic")
MAX_LESION_MM = 60.0  # largest measured diameter; shapes are drawn at most 0.9 of it (lobulation adds)


@dataclass
class Liver:
    """Liver shape and the landmarks that define its vessels and segments."""

    solid: Solid
    caudate: Solid
    right: np.ndarray  # right lobe centre (mm)
    left: np.ndarray  # left lobe centre
    hilum: np.ndarray  # portal bifurcation
    confluence: np.ndarray  # hepatic veins joining the IVC
    vein_dirs: dict[str, np.ndarray] = field(default_factory=dict)  # 'right', 'middle', 'left' (unit, 3D)

    def inside(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """True for points at least ``margin`` mm inside the liver."""
        return self.solid.at(points) < -margin

    def segment(self, points: np.ndarray) -> np.ndarray:
        """Approximate Couinaud segment (1-8) of world points (M, 3)."""
        p = np.atleast_2d(np.asarray(points, dtype=float))
        v = p[:, :2] - self.confluence[:2]

        def side(name: str) -> np.ndarray:  # z-component of (vein direction x v) in the axial plane
            d = self.vein_dirs[name]
            return d[0] * v[:, 1] - d[1] * v[:, 0]

        superior = p[:, 2] >= self.hilum[2]
        right_liver, anterior, lateral = side("middle") < 0, side("right") > 0, side("left") > 0
        seg = np.where(right_liver, np.where(anterior, np.where(superior, 8, 5), np.where(superior, 7, 6)),
                       np.where(lateral, np.where(superior, 2, 3), 4))
        return np.where(self.caudate.at(p) < 0, 1, seg)


def sample_liver(rng: np.random.Generator, torso: Torso, spine: Spine, diaphragm: Diaphragm, ivc_x: float,
                 ivc_y: float) -> Liver:
    """A liver under the right dome, with random size, lobe proportions and low-frequency deformation."""
    a, b = torso.a, 0.5 * (torso.b_ant + torso.b_post)
    size = rng.uniform(0.95, 1.3)
    top = diaphragm.z_right
    right = np.array([0.42 * a, torso.cy + 0.05 * b, top - 78 * size])
    left = np.array([-0.12 * a + rng.uniform(-10, 10), torso.cy + 0.42 * b, top - 50 * size])
    caudate_c = np.array([ivc_x - 12, ivc_y + 24, top - 70 * size])
    lobes = [
        ellipsoid(right, np.array([0.42 * a, 0.62 * b, 78.0]) * size * rng.uniform(0.9, 1.1, 3),
                  random_rotation(rng, 12)),
        ellipsoid(left, np.array([0.36 * a * rng.uniform(0.7, 1.2), 0.3 * b, 40.0]) * size,
                  random_rotation(rng, 15)),
    ]
    caudate = ellipsoid(caudate_c, (16.0, 16.0, 28.0))
    shape = smooth_union([*lobes, caudate], k=22.0)
    warp = SmoothField(rng, shape.lo, shape.hi, step=rng.uniform(45, 65))
    shape = deform(shape, warp, rng.uniform(6, 12))
    cavity = Solid(lambda x, y, z: torso.cavity(x, y, z) + 1.0, shape.lo, shape.hi)
    below = Solid(lambda x, y, z: diaphragm.above(x, y, z) + 4.0, shape.lo, shape.hi)
    solid = intersect(shape, cavity, below)
    hilum = np.array([ivc_x + 10, ivc_y + 40, top - 85 * size])
    for _ in range(8):  # pull the hilum into the liver if this shape left it outside
        if solid.at(hilum[None])[0] < -6:
            break
        hilum += 0.2 * (right - hilum)
    confluence = np.array([ivc_x, ivc_y, float(diaphragm.height(ivc_x, ivc_y)) - 20])
    targets = {"right": right + np.array([0.3 * a, -0.15 * b, -35]) * size,
               "middle": np.array([ivc_x + 12, torso.cy + 0.45 * b, top - 95 * size]),
               "left": left + np.array([-0.1 * a, 0.0, -10])}
    dirs = {k: (t - confluence) / np.linalg.norm(t - confluence) for k, t in targets.items()}
    return Liver(solid, caudate, right, left, hilum, confluence, dirs)


def liver_vessels(rng: np.random.Generator, liver: Liver, confluence_pv: np.ndarray, min_radius: float,
                  generations: int = 7) -> tuple[Segments, Segments]:
    """Portal tree (main trunk from the confluence to the hilum, then right/left branches) and the three
    hepatic vein trees draining to the IVC."""
    r_main = rng.uniform(6.5, 8.5)
    bend = 0.5 * (confluence_pv + liver.hilum) + rng.normal(0, 4, 3)
    portal = Segments.polyline([confluence_pv, bend, liver.hilum], [r_main, r_main, r_main * 0.95], 0)

    def inside(points: np.ndarray, tags: np.ndarray) -> np.ndarray:
        return liver.inside(points, margin=1.5)

    centre = 0.5 * (liver.right + liver.left)
    roots = np.stack([liver.right - liver.hilum, liver.left - liver.hilum])
    portal = portal + grow_tree(rng, [liver.hilum, liver.hilum], roots, [r_main * 0.8, r_main * 0.65], inside,
                                centre, generations, min_radius)
    dirs = np.stack([liver.vein_dirs[name] for name in ("right", "middle", "left")])
    radii = np.array([6.0, 5.5, 5.0]) * rng.uniform(0.85, 1.1, 3)
    hepatic = grow_tree(rng, liver.confluence + dirs * 6.0, dirs, radii, inside, centre, generations, min_radius,
                        length_per_radius=(6.0, 9.0))
    return portal, hepatic


@dataclass
class Lesion:
    """A placed liver lesion: its shape, enhancement pattern and final voxel mask."""

    solid: Solid
    radius: float
    pattern: str
    window: tuple[slice, slice, slice] | None = None
    mask: np.ndarray | None = None


def sample_lesions(rng: np.random.Generator, liver: Liver, count: int, min_diameter: float,
                   gap: float) -> list[Lesion]:
    """Up to ``count`` lesions at least ``gap`` mm apart, each mostly inside the liver; fewer if they do not fit."""
    lesions: list[Lesion] = []
    if min_diameter > 0.9 * MAX_LESION_MM:
        return lesions
    lo, hi = np.asarray(liver.solid.lo), np.asarray(liver.solid.hi)
    candidates = rng.uniform(lo, hi, size=(600, 3))
    depth = -liver.solid.at(candidates)
    centres: list[tuple[np.ndarray, float]] = []
    for _ in range(count):
        d = min_diameter + (0.9 * MAX_LESION_MM - min_diameter) * rng.uniform() ** 1.8
        r = d / 2
        ok = depth > max(0.6 * r, 3.0)
        for c, rc in centres:
            ok &= np.linalg.norm(candidates - c, axis=1) > 1.3 * (r + rc) + gap
        if not ok.any():
            continue
        centre = candidates[rng.choice(np.flatnonzero(ok))]
        radii = r * rng.uniform(0.8, 1.0, 3)
        shape = ellipsoid(centre, radii, random_rotation(rng, 90))
        shape = deform(shape, SmoothField(rng, shape.lo, shape.hi, step=max(r, 6.0)), 0.06 * r)
        pattern = str(rng.choice(PATTERNS, p=[0.45, 0.2, 0.2, 0.15]))
        lesions.append(Lesion(shape, r, pattern))
        centres.append((centre, r))
    return lesions


def paint_lesions(tissue: np.ndarray, grid: Grid, liver: Liver, lesions: list[Lesion]) -> list[Lesion]:
    """Paint lesions over liver parenchyma and intrahepatic vessels; keep those >= 2 voxels across."""
    allowed = tissue_set("liver", "portal_vein", "hepatic_vein")
    placed = []
    for lesion in lesions:
        window, sdf = lesion.solid.evaluate(grid)
        if window is None:
            continue
        region = tissue[window]
        x, y, z = grid.open_axes(window)
        mask = (sdf <= 0) & allowed[region] & (liver.solid(x, y, z) <= 0)
        mask = largest_component(mask)
        if max_extent_mm(mask, grid.spacing) < 2 * max(grid.spacing):
            continue
        rim = max(0.2 * lesion.radius, 0.4 * min(grid.spacing))
        inner = {"hypodense": "tumour_hypo", "hyperdense": "tumour_hyper", "rim-enhancing": "tumour_hypo",
                 "necrotic": "tumour_viable"}[lesion.pattern]
        region[mask] = T[inner]
        if lesion.pattern == "rim-enhancing":
            region[mask & (sdf > -rim)] = T["tumour_rim"]
        elif lesion.pattern == "necrotic":
            region[mask & (sdf < -0.45 * lesion.radius)] = T["tumour_core"]
        lesion.window, lesion.mask = window, mask
        placed.append(lesion)
    return placed
