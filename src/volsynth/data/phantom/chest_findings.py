"""Chest findings painted over the lungs: emphysema, pleural effusion and nodules.

Nodules (0-3 by default) are 2.5 voxels to 40 mm across (larger than 30 mm: a "mass" in reports),
solid, part-solid (ground-glass with a solid core) or ground-glass, and lie in one lobe; each is
measured from its final mask. Emphysema replaces a fraction of the lung with low-attenuation holes
(upper-lobe predominant); its extent is reported as the percentage of lung voxels. An effusion is a
dependent (posterior, basal) layer of fluid replacing lung on one or both sides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from volsynth.data.phantom.measure import largest_component, max_extent_mm
from volsynth.data.phantom.scene import describe_lesion
from volsynth.data.phantom.shapes import Grid, SmoothField, deform, ellipsoid, random_rotation
from volsynth.data.phantom.tissues import T

if TYPE_CHECKING:
    from volsynth.data.phantom.chest import Thorax

LOBES = {1: "RUL", 2: "RML", 3: "RLL", 4: "LUL", 5: "LLL"}
NODULE_COUNT_P = (0.4, 0.3, 0.2, 0.1)  # 0-3 nodules
NODULE_TYPES = ("solid", "part-solid", "ground-glass")
MAX_NODULE_MM = 40.0
EFFUSION_LABEL = 9
NODULE_LABEL = 8


def paint_findings(rng: np.random.Generator, tissue: np.ndarray, labels: np.ndarray, lobe_map: np.ndarray,
                   grid: Grid, thorax: Thorax, samples: np.ndarray, sample_lobes: np.ndarray,
                   lesion_count: int | None, emphysema: bool | None, effusion: str | None) -> tuple[list, dict]:
    """Paint emphysema, effusion and nodules; returns the measured nodules and other findings.

    Every random draw happens whatever the options say, so forcing one finding leaves the rest as is.
    """
    severity = rng.uniform(0.05, 0.35)
    has_emphysema = rng.uniform() < 0.3
    texture_rng = np.random.default_rng(rng.integers(2**63))
    if has_emphysema if emphysema is None else emphysema:
        _paint_emphysema(texture_rng, tissue, grid, severity)
    lung_voxels = int((lobe_map > 0).sum())
    findings = {"emphysema_percent": round(100.0 * int((tissue == T["emphysema"]).sum()) / max(lung_voxels, 1), 1)}
    sides = str(rng.choice(["none", "right", "left", "bilateral"], p=[0.7, 0.12, 0.08, 0.1]))
    depth, height = rng.uniform(15, 55), rng.uniform(40, 110)
    _paint_effusion(tissue, labels, lobe_map, grid, thorax, sides if effusion is None else effusion, depth, height)
    drawn = int(rng.choice(len(NODULE_COUNT_P), p=NODULE_COUNT_P))
    count = drawn if lesion_count is None else int(lesion_count)
    return _place_nodules(rng, tissue, labels, lobe_map, grid, thorax, samples, sample_lobes, count), findings


def _paint_effusion(tissue: np.ndarray, labels: np.ndarray, lobe_map: np.ndarray, grid: Grid, thorax: Thorax,
                    sides: str, depth: float, height: float) -> None:
    """Fluid in the dependent (posterior) part of the lung base, ``depth`` mm thick at the bottom."""
    x, y, z = grid.open_axes(grid.full())
    torso = thorax.torso
    for side in {"none": (), "right": (1,), "left": (-1,), "bilateral": (1, -1)}[sides]:
        lowest = thorax.diaphragm.z_right if side > 0 else thorax.diaphragm.z_left
        level = torso.back + torso.fat + torso.muscle + depth * np.clip(1 - (z - lowest + 30) / height, 0, 1)
        fluid = (lobe_map > 0) & ((x > thorax.x_mid) == (side > 0)) & (y < level)
        tissue[fluid] = T["effusion"]
        labels[fluid] = EFFUSION_LABEL


def _paint_emphysema(rng: np.random.Generator, tissue: np.ndarray, grid: Grid, fraction: float) -> None:
    """Low-attenuation holes (centrilobular, upper-lobe predominant) replacing ``fraction`` of the lung.

    Holes are where smoothed noise (feature size ~3 mm or one voxel) plus an upward trend is highest.
    """
    lung = tissue == T["lung"]
    if not lung.any():
        return
    window = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in
                   (np.flatnonzero(lung.any(axis=(1, 2))), np.flatnonzero(lung.any(axis=(0, 2))),
                    np.flatnonzero(lung.any(axis=(0, 1)))))
    sigma = max(0.7, 1.5 / min(grid.spacing))
    noise = ndi.gaussian_filter(rng.standard_normal(tissue[window].shape, dtype=np.float32), sigma)
    noise /= max(float(noise.std()), 1e-6)
    z = grid.axis(2)[window[2]]
    noise += (1.5 * (z - z.min()) / max(float(np.ptp(z)), 1.0))[None, None, :]
    inside = lung[window]
    score = noise[inside]
    holes = np.zeros_like(inside)
    holes[inside] = score > np.quantile(score, 1.0 - fraction)
    tissue[window][holes] = T["emphysema"]


def _place_nodules(rng: np.random.Generator, tissue: np.ndarray, labels: np.ndarray, lobe_map: np.ndarray, grid: Grid,
                   thorax: Thorax, samples: np.ndarray, sample_lobes: np.ndarray, count: int) -> list[dict]:
    """Place up to ``count`` nodules at sampled lung points, apart from each other; measured facts."""
    s_max = max(grid.spacing)
    d_min = max(4.0, 2.5 * s_max)
    out: list[dict] = []
    if d_min > MAX_NODULE_MM:
        return out
    depth = np.full(len(samples), -np.inf)
    points = [samples[:, i].astype(np.float32) for i in range(3)]
    common = thorax.boundary(*points)
    for side in (1, -1):
        depth = np.maximum(depth, -thorax.lung(side, *points, common))
    placed: list[tuple[np.ndarray, float]] = []
    allowed = np.zeros(256, dtype=bool)
    allowed[1:8] = True
    for _ in range(count):
        r = 0.5 * (d_min + (MAX_NODULE_MM - d_min) * rng.uniform() ** 2.5)
        ok = (sample_lobes > 0) & (depth > 0.6 * r + 2)
        for c, rc in placed:
            ok &= np.linalg.norm(samples - c, axis=1) > 1.3 * (r + rc) + 2 * s_max
        if not ok.any():
            continue
        centre = samples[rng.choice(np.flatnonzero(ok))]
        kind = str(rng.choice(NODULE_TYPES, p=[0.6, 0.2, 0.2]))
        shape = ellipsoid(centre, r * rng.uniform(0.85, 1.15, 3), random_rotation(rng, 90))
        shape = deform(shape, SmoothField(rng, shape.lo, shape.hi, max(r, 5.0)), 0.12 * r)
        window, sdf = shape.evaluate(grid)
        if window is None:
            continue
        mask = largest_component((sdf <= 0) & allowed[labels[window]] & (lobe_map[window] > 0))
        if max_extent_mm(mask, grid.spacing) < 2 * s_max:
            continue
        solid = {"solid": mask, "ground-glass": np.zeros_like(mask), "part-solid": mask & (sdf < -0.5 * r)}[kind]
        tissue[window][mask] = T["nodule_ggo"]
        tissue[window][solid] = T["nodule_solid"]
        labels[window][mask] = NODULE_LABEL
        lobe = int(np.bincount(lobe_map[window][mask], minlength=6)[1:].argmax() + 1)
        out.append({**describe_lesion(grid, window, mask), "lobe": LOBES[lobe], "type": kind})
        placed.append((centre, r))
    out.sort(key=lambda m: -m["diameter_mm"])
    return out
