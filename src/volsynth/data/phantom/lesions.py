"""Liver lesions of phantom generator version 2: hypodense, hyperdense, rim-enhancing and necrotic tumours whose
contrast against the liver is drawn per lesion, with long-tailed sizes and counts.

The model (every draw from the anatomy stream, so CT and MR of one seed share the lesions):

- count per case: 0 with probability 0.25, otherwise n = 1..9 with probability proportional to n^-1.5;
- diameter: a truncated power law p(d) ~ d^-2 on [5, 60] mm (about 73 % under 15 mm, 9 % over 30 mm); the
  longest axis of a near-spherical ellipsoid (the other two 0.85-1.0 of it) with a slight lobulation;
- type: hypodense 0.45, hyperdense 0.2, rim-enhancing 0.25, necrotic 0.1;
- contrast at CT: a strength u ~ U(0, 1) per lesion gives |contrast| = 30 + 50 u HU (below the liver for hypodense,
  rim-enhancing and necrotic bodies, above it for hyperdense); a rim-enhancing lesion's rim (outer 15 % of its
  radius, painted where that is at least half a voxel; otherwise the lesion shows as hypodense) is 15-40 HU above
  the liver in the contrast phases and like its body without contrast; a necrotic
  lesion's core (inner 45 %) is 25-45 HU below its viable part;
- MR analogues (pre-contrast T1, T2): signal ratios to the liver from the same strength: hypodense bodies
  T1 0.7-0.4, T2 1.5-3.0; hyperdense T1 1.3-1.7, T2 1.2-1.8; rims T1 0.9, T2 1.3; necrotic cores T1 0.25, T2 4.5.

Lesions are placed grid-independently; a lesion under two voxels across on the grid, one that keeps less than
``MIN_KEPT`` of its voxels inside the liver parenchyma and vessels, or one touching an already painted lesion, is
left out, so coarse grids show fewer (the larger) lesions of the same case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from volsynth.data.phantom.measure import FULL_CONNECTIVITY, largest_component, max_extent_mm
from volsynth.data.phantom.scene import LesionContrast
from volsynth.data.phantom.shapes import Grid, SmoothField, Solid, deform, ellipsoid, random_rotation
from volsynth.data.phantom.tissues import T, tissue_set

LESION_TYPES = ("hypodense", "hyperdense", "rim-enhancing", "necrotic")
TYPE_P = (0.45, 0.2, 0.25, 0.1)
DIAMETER_MM = (5.0, 60.0)
SIZE_EXPONENT = 2.0  # p(d) ~ d^-SIZE_EXPONENT
COUNT_P = np.array([0.0] + [n**-1.5 for n in range(1, 10)])
COUNT_P = tuple(np.concatenate([[0.25], 0.75 * COUNT_P[1:] / COUNT_P[1:].sum()]))  # 0..9 lesions
CONTRAST_HU = (30.0, 80.0)
MIN_KEPT = 0.85  # a lesion cut by more than this by the liver surface, gallbladder or IVC is left out
RIM_FRACTION, CORE_FRACTION = 0.15, 0.45  # of the radius
_BODY_TISSUE = {"hypodense": "tumour_hypo", "hyperdense": "tumour_hyper", "rim-enhancing": "tumour_hypo",
                "necrotic": "tumour_viable"}


@dataclass
class LiverLesion:
    """A version-2 lesion: shape, type, drawn diameter and appearance (body and second part: rim or core)."""

    solid: Solid
    type: str
    drawn_diameter_mm: float
    contrast_hu: float  # body, against the liver
    part_hu: float | None  # rim (contrast phases) or necrotic core, against the liver
    mr_ratio: dict[str, tuple[float, float]]  # sequence -> (body, part) signal ratio to the liver
    rim_resolved: bool = False  # a rim-enhancing lesion's rim is painted only where the grid resolves it
    window: tuple[slice, slice, slice] | None = None
    mask: np.ndarray | None = None


def sample_count(rng: np.random.Generator) -> int:
    """Number of lesions of a case (0-9, long-tailed)."""
    return int(rng.choice(len(COUNT_P), p=COUNT_P))


def sample_diameter(rng: np.random.Generator) -> float:
    """A diameter (mm) from the truncated power law on ``DIAMETER_MM`` (inverse CDF)."""
    lo, hi = DIAMETER_MM
    a = 1.0 - SIZE_EXPONENT
    return float((lo**a + rng.uniform() * (hi**a - lo**a)) ** (1.0 / a))


def _appearance(rng: np.random.Generator, kind: str) -> tuple[float, float | None, dict[str, tuple[float, float]]]:
    u = rng.uniform()
    magnitude = CONTRAST_HU[0] + u * (CONTRAST_HU[1] - CONTRAST_HU[0])
    if kind == "hyperdense":
        return magnitude, None, {"T1": (1.3 + 0.4 * u, 1.0), "T2": (1.2 + 0.6 * u, 1.0)}
    body = {"T1": 0.7 - 0.3 * u, "T2": 1.5 + 1.5 * u}
    if kind == "rim-enhancing":
        return -magnitude, rng.uniform(15, 40), {"T1": (body["T1"], 0.9), "T2": (body["T2"], 1.3)}
    if kind == "necrotic":
        return -magnitude, -magnitude - rng.uniform(25, 45), {"T1": (body["T1"], 0.25), "T2": (body["T2"], 4.5)}
    return -magnitude, None, {"T1": (body["T1"], 1.0), "T2": (body["T2"], 1.0)}


def sample_lesions(rng: np.random.Generator, liver_solid: Solid, count: int) -> list[LiverLesion]:
    """Up to ``count`` lesions, largest first, each mostly inside the liver and apart from the others."""
    lo, hi = np.asarray(liver_solid.lo), np.asarray(liver_solid.hi)
    candidates = rng.uniform(lo, hi, size=(800, 3))
    depth = -liver_solid.at(candidates)
    diameters = sorted((sample_diameter(rng) for _ in range(count)), reverse=True)
    lesions: list[LiverLesion] = []
    centres: list[tuple[np.ndarray, float]] = []
    for d in diameters:
        r = d / 2
        ok = depth > 0.9 * r + 3.0  # inside the liver but for a little lobulation
        for c, rc in centres:
            ok &= np.linalg.norm(candidates - c, axis=1) > 1.2 * (r + rc) + 4.0
        if not ok.any():
            continue
        centre = candidates[rng.choice(np.flatnonzero(ok))]
        radii = r * np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.85, 1.0)])
        shape = ellipsoid(centre, radii, random_rotation(rng, 180))
        shape = deform(shape, SmoothField(rng, shape.lo, shape.hi, step=max(r, 6.0)), 0.04 * r)
        kind = str(rng.choice(LESION_TYPES, p=TYPE_P))
        lesions.append(LiverLesion(shape, kind, d, *_appearance(rng, kind)))
        centres.append((centre, r))
    return lesions


def paint_lesions(tissue: np.ndarray, grid: Grid, liver_solid: Solid,
                  lesions: list[LiverLesion]) -> tuple[list[LiverLesion], LesionContrast]:
    """Paint lesions over liver parenchyma and intrahepatic vessels; keep those >= 2 voxels across that touch no
    lesion painted before. Returns the placed lesions and the per-voxel parts the renderer needs."""
    allowed = tissue_set("liver", "portal_vein", "hepatic_vein")
    parts = np.zeros(tissue.shape, dtype=np.uint8)
    placed: list[LiverLesion] = []
    for lesion in lesions:
        window, sdf = lesion.solid.evaluate(grid, pad=max(grid.spacing))
        if window is None:
            continue
        region = tissue[window]
        x, y, z = grid.open_axes(window)
        shape = sdf <= 0
        mask = largest_component(shape & allowed[region] & (liver_solid(x, y, z) <= 0))
        if (max_extent_mm(mask, grid.spacing) < 2 * max(grid.spacing) or mask.sum() < MIN_KEPT * shape.sum()
                or _touches(parts[window] > 0, mask)):
            continue
        radius = lesion.drawn_diameter_mm / 2
        lesion.rim_resolved = RIM_FRACTION * radius >= 0.5 * min(grid.spacing)
        if lesion.type == "rim-enhancing" and lesion.rim_resolved:
            second = mask & (sdf > -RIM_FRACTION * radius)
            region[mask] = T["tumour_hypo"]
            region[second] = T["tumour_rim"]
        else:
            second = mask & (sdf < -CORE_FRACTION * radius) if lesion.type == "necrotic" else np.zeros_like(mask)
            region[mask] = T[_BODY_TISSUE[lesion.type]]
            region[second] = T["tumour_core"]
        body_id = 2 * len(placed) + 1
        parts[window][mask] = body_id
        parts[window][second] = body_id + 1
        lesion.window, lesion.mask = window, mask
        placed.append(lesion)
    return placed, _contrast_tables(parts, placed)


def _touches(painted: np.ndarray, mask: np.ndarray) -> bool:
    return bool((ndi.binary_dilation(mask, FULL_CONNECTIVITY) & painted).any())


def _contrast_tables(parts: np.ndarray, placed: list[LiverLesion]) -> LesionContrast:
    n = 2 * len(placed) + 1
    ct, native = np.zeros(n, np.float32), np.zeros(n, np.float32)
    mr = {seq: np.ones(n, np.float32) for seq in ("T1", "T2")}
    for i, lesion in enumerate(placed):
        body, part = 2 * i + 1, 2 * i + 2
        second = lesion.part_hu if lesion.part_hu is not None else lesion.contrast_hu
        ct[body], ct[part] = lesion.contrast_hu, second
        native[body] = lesion.contrast_hu
        native[part] = lesion.contrast_hu if lesion.type == "rim-enhancing" else second
        for seq, (b, p) in lesion.mr_ratio.items():
            mr[seq][body], mr[seq][part] = b, p if lesion.type in ("rim-enhancing", "necrotic") else b
    return LesionContrast(parts, ct, native, mr)


def appearance_facts(lesion: LiverLesion, spacing: tuple[float, float, float]) -> dict:
    """What the facts record of a placed lesion's appearance, for every modality (see ``modality_facts``)."""
    volume = float(lesion.mask.sum()) * float(np.prod(spacing))
    return {"type": lesion.type, "rim": lesion.type == "rim-enhancing" and lesion.rim_resolved,
            "equivalent_diameter_mm": round((6.0 * volume / np.pi) ** (1 / 3), 1),
            "contrast_hu": round(lesion.contrast_hu, 1), "part_hu": None if lesion.part_hu is None else
            round(lesion.part_hu, 1),
            "mr_ratio": {k: [round(v, 3) for v in pair] for k, pair in lesion.mr_ratio.items()}}


def modality_facts(appearance: dict, modality: str, phase_or_sequence: str) -> dict:
    """A lesion's facts for one rendering: type, equivalent diameter and its contrast as this image shows it
    (CT: ``contrast_hu`` and the rim's or core's; MR: ``signal`` and ``contrast_ratio``)."""
    kind = appearance["type"]
    rim = appearance["rim"] and phase_or_sequence != "non-contrast"
    out = {"type": kind, "density": "hypodense" if kind == "rim-enhancing" and not rim else kind,
           "equivalent_diameter_mm": appearance["equivalent_diameter_mm"]}
    if modality == "CT":
        out["contrast_hu"] = appearance["contrast_hu"]
        if rim:
            out["rim_contrast_hu"] = appearance["part_hu"]
        elif kind == "necrotic":
            out["core_contrast_hu"] = appearance["part_hu"]
        return out
    ratio = appearance["mr_ratio"][phase_or_sequence][0]
    return {**out, "signal": "hyperintense" if ratio > 1.0 else "hypointense", "contrast_ratio": ratio}
