"""Abdomen anatomy: body wall, spine, liver with portal/hepatic trees and tumours, spleen, kidneys,
aorta, IVC, pancreas, stomach and bowel with gas, lung bases and heart above the diaphragm.

Output labels (``LABELS``): 0 background, 1 liver, 2 portal_vein, 3 hepatic_vein, 4 tumour,
5 spleen, 6 kidney (both; cortex and medulla, not the sinus fat), 7 aorta, 8 ivc, 9 stomach_bowel
(wall and content, gas included), 10 spine (vertebral bone; discs and canal are background).
Vessels and tumours override liver; tumours override intrahepatic vessels.
"""

from __future__ import annotations

import numpy as np

from volsynth.data.phantom import lesions as lesions_v2
from volsynth.data.phantom.body import (
    Diaphragm,
    paint_back_muscles,
    paint_body_wall,
    paint_ribs,
    paint_spine,
    sample_spine,
    sample_torso,
)
from volsynth.data.phantom.liver import liver_vessels, paint_lesions, sample_lesions, sample_liver
from volsynth.data.phantom.scene import Scene, describe_lesion
from volsynth.data.phantom.shapes import (
    Grid,
    SmoothField,
    Solid,
    deform,
    ellipsoid,
    intersect,
    rotation,
    subtract,
)
from volsynth.data.phantom.tissues import TISSUES, T, tissue_set
from volsynth.data.phantom.trees import Segments, tube_distances

LABELS = {"background": 0, "liver": 1, "portal_vein": 2, "hepatic_vein": 3, "tumour": 4, "spleen": 5,
          "kidney": 6, "aorta": 7, "ivc": 8, "stomach_bowel": 9, "spine": 10}
_LABEL_OF = {"liver": 1, "portal_vein": 2, "hepatic_vein": 3, "tumour_hypo": 4, "tumour_hyper": 4,
             "tumour_rim": 4, "tumour_core": 4, "tumour_viable": 4, "spleen": 5, "kidney_cortex": 6,
             "kidney_medulla": 6, "aorta": 7, "ivc": 8, "bowel_wall": 9, "bowel_fluid": 9, "gas": 9,
             "bone_cortex": 10, "bone_marrow": 10}
LABEL_LUT = np.array([_LABEL_OF.get(name, 0) for name in TISSUES], dtype=np.uint8)
LESION_COUNT_P = (0.25, 0.3, 0.2, 0.15, 0.1)  # 0-4 tumours
ROMAN = ("", "I", "II", "III", "IV", "V", "VI", "VII", "VIII")


def paint_tubes(tissue: np.ndarray, grid: Grid, segments: Segments, value: int, allowed: np.ndarray | None = None,
                prune: float = 0.3) -> None:
    """Paint tubes; branches thinner than ``prune`` voxels are left out, thin ones drawn 0.6 voxel wide."""
    keep = segments.r0 >= prune * max(grid.spacing)
    for _, window, sdf in tube_distances(grid, segments.select(keep)):
        region = tissue[window]
        inside = sdf <= 0
        if allowed is not None:
            inside &= allowed[region]
        region[inside] = value


def _paint_solid(tissue: np.ndarray, grid: Grid, solid: Solid, value: int, allowed: np.ndarray | None = None) -> None:
    window, sdf = solid.evaluate(grid)
    if window is None:
        return
    region = tissue[window]
    inside = sdf <= 0
    if allowed is not None:
        inside &= allowed[region]
    region[inside] = value


def _paint_bowel(tissue: np.ndarray, grid: Grid, segments: Segments, gas_level: float | None, wall: float = 3.5,
                 into: np.ndarray | None = None) -> None:
    """Hollow tubes: wall, fluid content, gas above ``gas_level`` (y, mm; supine patient: gas is anterior)."""
    for _, window, sdf in tube_distances(grid, segments):
        region = tissue[window]
        ok = into[region] if into is not None else np.ones(region.shape, bool)
        region[(sdf <= 0) & ok] = T["bowel_wall"]
        content = (sdf <= -wall) & ok
        region[content] = T["bowel_fluid"]
        if gas_level is not None:
            y = grid.open_axes(window)[1]
            region[content & (y > gas_level)] = T["gas"]


def _chain(rng: np.random.Generator, start, steps: int, step: float, lo, hi) -> np.ndarray:
    """A random walk of bowel loop centres kept inside a box."""
    points = [np.asarray(start, float)]
    d = rng.normal(size=3)
    for _ in range(steps):
        d = d / np.linalg.norm(d) + rng.normal(0, 0.8, 3)
        p = np.clip(points[-1] + step * d / np.linalg.norm(d), lo, hi)
        points.append(p)
    return np.array(points)


def build_abdomen(rng: np.random.Generator, grid: Grid, lesion_count: int | None = None,
                  generator_version: int = 2) -> Scene:
    """Sample an abdomen and paint it on the grid (anatomy only; intensities come from the renderer).
    Generator version 1 draws the liver lesions of ``liver``, version 2 those of ``lesions``."""
    torso = sample_torso(rng, "abdomen")
    spine = sample_spine(rng, torso, "abdomen")
    a, b = torso.a, 0.5 * (torso.b_ant + torso.b_post)
    z_right = rng.uniform(95, 125)
    diaphragm = Diaphragm(z_right, z_right - rng.uniform(8, 25), 0.45 * a, torso.cy + 0.1 * b, rng.uniform(50, 75))
    tissue, layer = paint_body_wall(grid, torso)
    x, y, z = grid.open_axes(grid.full())

    # 1. thorax above the diaphragm: lung bases, heart, mediastinal fat; diaphragm muscle
    above = diaphragm.above(x, y, z)
    cavity = layer == 4
    tissue[cavity & (above >= 0)] = T["lung"]
    tissue[cavity & (above < 0) & (above > -5)] = T["muscle"]
    heart_z = float(diaphragm.height(-0.15 * a, torso.cy + 0.25 * b)) + 45
    heart = ellipsoid((-0.15 * a, torso.cy + 0.22 * b, heart_z), (65, 48, 52))
    thorax = tissue_set("lung")
    _paint_solid(tissue, grid, Solid(lambda x, y, z: np.abs(x + 5) - 28.0, (-40, torso.back, -200),
                                     (30, spine.y0 + 60, 200)), T["visceral_fat"], thorax)
    _paint_solid(tissue, grid, heart, T["myocardium"], thorax)
    _paint_solid(tissue, grid, ellipsoid((-0.15 * a, torso.cy + 0.22 * b, heart_z), (54, 38, 42)), T["blood"],
                 tissue_set("myocardium"))

    # 2. solid organs below the diaphragm
    ivc_x, ivc_y = spine.rx + rng.uniform(-2, 5), spine.y0 + spine.ry + 14
    ao_x, ao_y = -(0.6 * spine.rx + rng.uniform(0, 6)), spine.y0 + spine.ry + 12
    liver = sample_liver(rng, torso, spine, diaphragm, ivc_x, ivc_y)
    _paint_solid(tissue, grid, liver.solid, T["liver"])
    below = Solid(lambda x, y, z: np.maximum(diaphragm.above(x, y, z) + 4, torso.cavity(x, y, z)), (-200,) * 3,
                  (200,) * 3)
    spleen_scale = rng.uniform(1.3, 1.5) if rng.uniform() < 0.1 else rng.uniform(0.85, 1.1)
    sc = np.array([-0.62 * a, spine.y0 + 28, diaphragm.z_left - 60])
    rot = rotation(2, np.deg2rad(rng.uniform(-45, -25)))
    spleen = ellipsoid(sc, np.array([22, 55, 55]) * spleen_scale, rot)
    spleen = deform(subtract(spleen, ellipsoid(sc + (30, 25, 0), np.array([22, 30, 35]) * spleen_scale)),
                    SmoothField(rng, spleen.lo, spleen.hi, 40.0), 4.0)
    _paint_solid(tissue, grid, intersect(spleen, below), T["spleen"])
    kidneys = []
    for side in (1, -1):
        kc = np.array([side * (spine.rx + rng.uniform(42, 55)), spine.y0 + rng.uniform(5, 15),
                       (z_right - 150 if side > 0 else diaphragm.z_left - 125) + rng.uniform(-10, 10)])
        krot = rotation(2, side * np.deg2rad(rng.uniform(20, 40))) @ rotation(1, -side * np.deg2rad(rng.uniform(8, 18)))
        radii = np.array([26, 22, 54]) * rng.uniform(0.9, 1.1)
        kidney = intersect(ellipsoid(kc, radii, krot), below)
        _paint_solid(tissue, grid, kidney, T["kidney_cortex"])
        _paint_solid(tissue, grid, ellipsoid(kc, radii - 7, krot), T["kidney_medulla"], tissue_set("kidney_cortex"))
        hilum = kc + krot @ np.array([-side * 0.7 * radii[0], 0, 0])
        _paint_solid(tissue, grid, ellipsoid(hilum, (12, 10, 24), krot), T["visceral_fat"],
                     tissue_set("kidney_cortex", "kidney_medulla"))
        kidneys.append(hilum)
    gb_c = np.array([ivc_x + rng.uniform(5, 20), torso.cy + 0.4 * b, liver.hilum[2] - rng.uniform(5, 20)])
    if rng.uniform() < 0.85:
        gb = ellipsoid(gb_c, np.array([14, 16, 34]) * rng.uniform(0.8, 1.15), rotation(0, np.deg2rad(-50)))
        _paint_solid(tissue, grid, intersect(gb, below), T["bile"], tissue_set("liver", "visceral_fat"))

    # 3. pancreas, stomach and bowel into the remaining visceral fat
    fat_only = tissue_set("visceral_fat")
    zq = liver.hilum[2] - rng.uniform(35, 50)
    q = np.array([ivc_x - 18, ivc_y + 36, zq])
    pancreas = Segments.polyline([[0.17 * a, ivc_y + 40, zq - 25], q + (0, 8, 0), [-0.2 * a, ao_y + 32, zq + 10],
                                  sc + (38, 20, -20)], [16, 11, 10, 9])
    paint_tubes(tissue, grid, pancreas, T["soft_tissue"], fat_only)
    stomach = Segments.polyline(
        [[-0.33 * a, spine.y0 + 55, diaphragm.z_left - 35], [-0.3 * a, torso.cy + 0.3 * b, diaphragm.z_left - 80],
         [0.02 * a, torso.cy + 0.45 * b, diaphragm.z_left - 115], [0.17 * a, torso.cy + 0.25 * b, zq - 10],
         [0.25 * a, ivc_y + 35, zq - 25], [0.25 * a, ivc_y + 40, zq - 70], [-0.05 * a, ivc_y + 40, zq - 85]],
        np.array([38, 32, 22, 14, 13, 12, 12]) * rng.uniform(0.8, 1.15))
    gas_level = torso.cy + 0.45 * b - rng.uniform(0, 40)
    _paint_bowel(tissue, grid, stomach, gas_level, 4.0, fat_only)
    colon_r = rng.uniform(17, 24)
    colon_path = [[0.62 * a, spine.y0 + 35, -185], [0.62 * a, spine.y0 + 40, zq - 40],
                  [0.5 * a, torso.cy + 0.25 * b, zq - 45], [0.0, torso.cy + 0.55 * b, zq - rng.uniform(50, 90)],
                  [-0.55 * a, torso.cy + 0.1 * b, diaphragm.z_left - 100], [-0.62 * a, spine.y0 + 35, zq - 40],
                  [-0.62 * a, spine.y0 + 35, -185]]
    colon = Segments.polyline(colon_path, np.full(len(colon_path), colon_r))
    for n in range(len(colon)):
        level = torso.cy + b if rng.uniform() < 0.4 else torso.cy + rng.uniform(-0.2, 0.5) * b
        _paint_bowel(tissue, grid, colon.select(np.arange(len(colon)) == n), level, 3.0, fat_only)
    lo, hi = (-0.5 * a, spine.y0 + 25, -175), (0.5 * a, torso.cy + 0.65 * b, zq - 60)
    for _ in range(int(rng.integers(8, 15))):
        loop = _chain(rng, rng.uniform(lo, hi), int(rng.integers(3, 7)), rng.uniform(25, 40), lo, hi)
        level = torso.cy + b if rng.uniform() < 0.7 else float(np.mean(loop[:, 1]))
        _paint_bowel(tissue, grid, Segments.polyline(loop, np.full(len(loop), rng.uniform(11, 15))), level, 2.5,
                     fat_only)

    # 4. great vessels, splanchnic and renal vessels, then the hepatic trees
    zc = liver.confluence[2]
    ivc = Segments.polyline([[ivc_x + 5, float(spine.y(-185)) + spine.ry + 8, -185], [ivc_x, ivc_y, zq],
                             [ivc_x, ivc_y + 4, zc], [ivc_x - 8, ivc_y + 16, zc + 45]], [11, 11, 12, 13])
    aorta_r = rng.uniform(9.5, 13)
    z_bif = rng.uniform(-140, -100)
    aorta = Segments.polyline([[ao_x - 6 + 6 * (zz > 100), float(spine.y(zz)) + spine.ry + 12, zz]
                               for zz in (185.0, 60.0, z_bif)], [aorta_r, aorta_r, aorta_r * 0.85])
    for side in (1, -1):
        aorta = aorta + Segments.polyline([aorta.p1[-1], [side * 45 + ao_x * 0.3, ao_y + 10, -190]],
                                          [aorta_r * 0.6, aorta_r * 0.55])
    paint_tubes(tissue, grid, aorta, T["aorta"])
    paint_tubes(tissue, grid, ivc, T["ivc"])
    veins = Segments.polyline([sc + (30, 22, -15), [-0.2 * a, ao_y + 26, zq + 5], q], [5, 5.5, 6])
    veins = veins + Segments.polyline([q, q + (2, 10, -130)], [6, 5])
    arteries = Segments.polyline([[ao_x, ao_y + 5, zq - 5], [ao_x + 8, ao_y + 28, zq - 25],
                                  [ao_x + 10, ao_y + 38, -150]], [4, 4, 3.5])
    for side, hilum in zip((1, -1), kidneys, strict=True):
        cross = [ao_x, ao_y + 16, hilum[2]] if side < 0 else [ivc_x, ivc_y, hilum[2]]
        veins = veins + Segments.polyline([hilum, cross, [ivc_x, ivc_y, hilum[2]]], [5, 5, 5])
        arteries = arteries + Segments.polyline([[ao_x, ao_y, hilum[2] + 10], hilum + (0, -6, 0)], [3.5, 3.5])
    paint_tubes(tissue, grid, veins, T["splanchnic_vein"])
    paint_tubes(tissue, grid, arteries, T["blood"])
    portal, hepatic = liver_vessels(rng, liver, q, max(0.8, 0.3 * max(grid.spacing)))
    in_liver = tissue_set("liver")
    paint_tubes(tissue, grid, portal.select(portal.generation == 0), T["portal_vein"])
    paint_tubes(tissue, grid, portal.select(portal.generation > 0), T["portal_vein"], in_liver)
    paint_tubes(tissue, grid, hepatic, T["hepatic_vein"], tissue_set("liver", "portal_vein"))

    # 5. muscles and bones
    psoas = Segments.empty()
    for side in (1, -1):
        psoas = psoas + Segments.polyline([[side * spine.rx * 0.9, spine.y0 + 2, zq - 10],
                                           [side * 55, spine.y0 + 15, -190]], [6, 24])
    paint_tubes(tissue, grid, psoas, T["muscle"], tissue_set("visceral_fat", "bowel_wall", "bowel_fluid", "gas"))
    paint_back_muscles(tissue, grid, torso, spine, layer)
    paint_ribs(tissue, grid, torso, spine, layer, rng, z_lowest=rng.uniform(-40, -5))
    paint_spine(tissue, grid, spine)

    # 6. tumours (last: nothing paints over them)
    contrast = None
    if generator_version == 1:
        drawn = int(rng.choice(len(LESION_COUNT_P), p=LESION_COUNT_P))
        count = drawn if lesion_count is None else int(lesion_count)
        s_max = max(grid.spacing)
        lesions = sample_lesions(rng, liver, count, min_diameter=max(5.0, 2.5 * s_max), gap=2.0 * s_max)
        placed = [(lesion, {"pattern": lesion.pattern}) for lesion in paint_lesions(tissue, grid, liver, lesions)]
    else:
        drawn = lesions_v2.sample_count(rng)
        count = drawn if lesion_count is None else int(lesion_count)
        painted, contrast = lesions_v2.paint_lesions(tissue, grid, liver.solid,
                                                     lesions_v2.sample_lesions(rng, liver.solid, count))
        placed = [(lesion, {"pattern": lesion.type, "appearance": lesions_v2.appearance_facts(lesion, grid.spacing)})
                  for lesion in painted]
    measured = []
    for lesion, extra in placed:
        info = describe_lesion(grid, lesion.window, lesion.mask)
        segment = int(liver.segment(np.asarray([info["centre_mm"]]))[0])
        lobe = "caudate" if segment == 1 else ("right" if segment >= 5 else "left")
        measured.append({**info, "segment": segment, "segment_roman": ROMAN[segment], "lobe": lobe, **extra})
    measured.sort(key=lambda m: -m["diameter_mm"])
    findings = {"gallbladder": bool((tissue == T["bile"]).any())}
    return Scene(grid, tissue, LABEL_LUT[tissue], measured, findings, body_scale=torso.a / 155.0,
                 lesion_contrast=contrast)
