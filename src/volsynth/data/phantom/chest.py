"""Chest anatomy: lungs split into five lobes by fissure surfaces, airway tree, pulmonary vessels,
nodules, optional emphysema and pleural effusion, heart and mediastinum, ribs and spine.

Output labels (``LABELS``): 0 background, 1 right_upper_lobe, 2 right_middle_lobe,
3 right_lower_lobe, 4 left_upper_lobe, 5 left_lower_lobe, 6 airway (lumen, trachea to the smallest
drawn bronchi), 7 pulmonary_vessels (arteries and veins, mediastinal trunks included), 8 nodule,
9 pleural_effusion. Nodules override everything inside the lungs; airway lumen overrides vessels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volsynth.data.phantom.body import (
    Diaphragm,
    Spine,
    Torso,
    paint_back_muscles,
    paint_body_wall,
    paint_ribs,
    paint_spine,
    paint_sternum,
    sample_spine,
    sample_torso,
)
from volsynth.data.phantom.chest_findings import paint_findings
from volsynth.data.phantom.scene import Scene
from volsynth.data.phantom.shapes import (
    Grid,
    SmoothField,
    Solid,
    capsule,
    ellipsoid,
    rotation,
    smooth_union,
)
from volsynth.data.phantom.tissues import T, tissue_set
from volsynth.data.phantom.trees import Segments, grow_tree, tube_distances

LABELS = {"background": 0, "right_upper_lobe": 1, "right_middle_lobe": 2, "right_lower_lobe": 3,
          "left_upper_lobe": 4, "left_lower_lobe": 5, "airway": 6, "pulmonary_vessels": 7, "nodule": 8,
          "pleural_effusion": 9}


@dataclass
class Thorax:
    """Point-evaluable lung geometry: cavity, domes, apices, mediastinum and fissure surfaces."""

    torso: Torso
    diaphragm: Diaphragm
    mediastinum: Solid
    x_mid: float
    apex_z: float
    apex_r: float
    apex_x: float
    apex_y: float
    oblique: dict  # side -> (y1, z1, n_y, n_z, n_x)
    horizontal_z: float
    warp: SmoothField
    warp_minor: SmoothField

    def lung(self, side: int, x: np.ndarray, y: np.ndarray, z: np.ndarray,
             common: np.ndarray | None = None) -> np.ndarray:
        """Approximate signed distance (mm) to the right (side=+1) or left (side=-1) lung."""
        apex = self.apex_z - ((x - side * self.apex_x) ** 2 + (y - self.apex_y) ** 2) / (2 * self.apex_r)
        d = self.boundary(x, y, z) if common is None else common
        return np.maximum(np.maximum(d, z - apex), side * (self.x_mid - x))

    def boundary(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The part of the lung distance shared by both sides: chest wall, diaphragm, mediastinum."""
        d = np.maximum(self.torso.cavity(x, y, z) + 1.0, -self.diaphragm.above(x, y, z))
        return np.maximum(d, 2.0 - self.mediastinum(x, y, z))

    def fissure(self, side: int, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance-like value (mm) to the oblique fissure: > 0 on the upper(/middle) lobe side."""
        y1, z1, ny, nz, nx = self.oblique[side]
        return ny * (y - y1) + nz * (z - z1) + nx * x + 6.0 * self.warp(x, y, z)

    def minor_fissure(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed height (mm) above the horizontal fissure of the right lung."""
        return z - self.horizontal_z - 4.0 * self.warp_minor(x, y, z)

    def lobe(self, points: np.ndarray) -> np.ndarray:
        """Lobe id (1-5, 0 outside the lungs) of world points (M, 3)."""
        x, y, z = (np.asarray(points, dtype=np.float32)[:, i] for i in range(3))
        out = np.zeros(len(x), dtype=np.uint8)
        common = self.boundary(x, y, z)
        for side in (1, -1):
            inside = self.lung(side, x, y, z, common) < 0
            upper = self.fissure(side, x, y, z) > 0
            if side == 1:
                ids = np.where(upper, np.where(self.minor_fissure(x, y, z) > 0, 1, 2), 3)
            else:
                ids = np.where(upper, 4, 5)
            out[inside] = ids[inside]
        return out


def _sample_thorax(rng: np.random.Generator, torso: Torso, spine: Spine, trachea_y: float, carina_z: float,
                   heart: Solid, aorta: Segments) -> Thorax:
    a, b = torso.a, 0.5 * (torso.b_ant + torso.b_post)
    z_right = rng.uniform(-95, -60)
    diaphragm = Diaphragm(z_right, z_right - rng.uniform(8, 22), 0.45 * a, torso.cy + 0.05 * b, rng.uniform(35, 50))
    column = capsule((0, trachea_y - 4, carina_z - 40), (0, trachea_y + 2, 250), 24.0, 20.0)
    front = capsule((0, torso.cy + 0.55 * b, z_right + 50), (0, torso.cy + 0.45 * b, 150), 14.0, 10.0)
    spine_solid = capsule((0, spine.y0, -250), (0, spine.y0, 250), spine.rx + 10.0, spine.rx + 10.0)
    back = ellipsoid((0, spine.y0 - 35, 0), (spine.rx + 42, 42, 2000))  # posterior elements, back muscles
    vessels = [capsule(p0, p1, r0 + 5, r1 + 5)
               for p0, p1, r0, r1 in zip(aorta.p0, aorta.p1, aorta.r0, aorta.r1, strict=True)]
    mediastinum = smooth_union([heart, column, front, spine_solid, back, *vessels], k=8.0)
    oblique = {}
    for side in (1, -1):
        y1, z1 = spine.y0 + 5, carina_z + rng.uniform(5, 35) + (10 if side < 0 else 0)
        y2, z2 = torso.cy + 0.35 * b, (z_right if side > 0 else diaphragm.z_left) - 10
        n = np.array([z1 - z2, y2 - y1])
        n /= np.linalg.norm(n)
        oblique[side] = (y1, z1, float(n[0]), float(n[1]), float(rng.normal(0, 0.08)))
    warp, warp_minor = (SmoothField(rng, (-200, -200, -200), (200, 200, 200), step=rng.uniform(60, 90))
                        for _ in range(2))
    return Thorax(torso, diaphragm, mediastinum, x_mid=-0.05 * a, apex_z=rng.uniform(140, 165),
                  apex_r=rng.uniform(55, 80), apex_x=0.4 * a, apex_y=torso.cy - 0.15 * b, oblique=oblique,
                  horizontal_z=carina_z - rng.uniform(20, 40), warp=warp, warp_minor=warp_minor)


def _airway_roots(rng: np.random.Generator, trachea_y: float, carina_z: float) -> tuple[Segments, dict]:
    """Trachea, main and lobar bronchi (explicit); returns them and the lobar ends per lobe."""
    r_t = rng.uniform(7.5, 10)
    carina = np.array([0.0, trachea_y, carina_z])
    segs = Segments.polyline([[0, trachea_y + 3, 190], carina], [r_t, r_t], 0)

    def unit(*v: float) -> np.ndarray:
        w = np.asarray(v, float) + rng.normal(0, 0.08, 3)
        return w / np.linalg.norm(w)

    rm_end = carina + unit(0.45, -0.1, -0.9) * rng.uniform(18, 26)
    lm_end = carina + unit(-0.7, -0.15, -0.7) * rng.uniform(40, 50)
    bi_end = rm_end + unit(0.25, 0.05, -1) * rng.uniform(20, 28)
    segs = segs + Segments.polyline([carina, rm_end, bi_end], [0.7 * r_t, 0.65 * r_t, 0.6 * r_t], 1)
    segs = segs + Segments.polyline([carina, lm_end], [0.65 * r_t, 0.6 * r_t], 1)
    lobar = {1: (rm_end, unit(1, 0.1, 0.45)), 2: (bi_end, unit(0.4, 1, -0.5)), 3: (bi_end, unit(0.25, -0.5, -1)),
             4: (lm_end, unit(-0.5, 0.5, 0.7)), 5: (lm_end, unit(-0.3, -0.5, -1))}
    ends = {}
    for lobe, (start, d) in lobar.items():
        end = start + d * rng.uniform(10, 15)
        radius = 0.5 * r_t if lobe != 2 else 0.4 * r_t
        segs = segs + Segments.polyline([start, end], [radius, radius * 0.95], 2)
        ends[lobe] = (end, d, radius * 0.95)
    return segs, ends


def _paint_tubes(tissue: np.ndarray, labels: np.ndarray, grid: Grid, segs: Segments, value: int, label: int,
                 allowed: np.ndarray | None = None, wall: tuple[int, float] | None = None,
                 lobe_map: np.ndarray | None = None) -> None:
    """Paint tubes (and an optional wall of ``wall[1]`` x radius) into tissue and label maps.

    Branches thinner than 0.4 voxel are left out: in air-filled lung a thinner tube drawn at the
    minimum width would be far denser than its partial volume, and would not be labelled either.
    """
    keep = segs.r0 >= 0.4 * max(grid.spacing)
    segs = segs.select(keep)
    extra = 3.0 if wall else 0.0
    for n, window, sdf in tube_distances(grid, segs, extra=extra):
        region, lab = tissue[window], labels[window]
        ok = allowed[region] if allowed is not None else True
        if wall:
            thick = max(0.9, wall[1] * segs.r0[n])
            ring = (sdf <= thick) & (sdf > 0) & ok & (region != value)
            region[ring] = wall[0]
            lab[ring] = lobe_map[window][ring]
        inside = (sdf <= 0) & ok
        region[inside] = value
        lab[inside] = label


def _drop_overpainted_labels(tissue: np.ndarray, labels: np.ndarray) -> None:
    """Set to background the labelled voxels that later painting (bones, muscles) gave another tissue."""
    expected = {LABELS["airway"]: tissue_set("air"), LABELS["pulmonary_vessels"]: tissue_set("pulmonary_vessel")}
    lung = tissue_set("lung", "emphysema", "airway_wall")
    table = np.zeros((256, 256), dtype=bool)  # [label, tissue] -> consistent
    table[0] = True
    for lobe in range(1, 6):
        table[lobe] = lung
    for label, allowed in expected.items():
        table[label] = allowed
    labels[~table[labels, tissue]] = 0


def _lobe_centres(thorax: Thorax, points: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    lobes = thorax.lobe(points)
    return lobes, {k: points[lobes == k].mean(axis=0) for k in range(1, 6) if (lobes == k).any()}


def build_chest(rng: np.random.Generator, grid: Grid, lesion_count: int | None = None,
                emphysema: bool | None = None, effusion: str | None = None) -> Scene:
    """Sample a chest and paint it on the grid (anatomy only; intensities come from the renderer)."""
    torso = sample_torso(rng, "chest")
    spine = sample_spine(rng, torso, "chest")
    a, b = torso.a, 0.5 * (torso.b_ant + torso.b_post)
    trachea_y, carina_z = spine.y0 + spine.ry + rng.uniform(18, 26), rng.uniform(35, 60)
    heart_c = np.array([-0.12 * a, torso.cy + 0.18 * b, rng.uniform(-45, -25)])
    heart_r = np.array([62, 48, 55]) * rng.uniform(0.9, 1.15)
    heart_rot = rotation(2, np.deg2rad(rng.uniform(15, 35))) @ rotation(1, np.deg2rad(rng.uniform(-15, -5)))
    heart = ellipsoid(heart_c, heart_r, heart_rot)
    ao_x, ao_y = -(spine.rx + 8), spine.y0 + spine.ry * 0.6
    r_ao = rng.uniform(12, 16)
    asc = heart_c + heart_rot @ np.array([0, 0, 0.8 * heart_r[2]]) + (20, 0, 0)
    aorta = Segments.polyline([asc, [5, trachea_y + 22, carina_z + 25], [-10, trachea_y + 5, carina_z + 35],
                               [ao_x, ao_y, carina_z + 20], [ao_x, ao_y, -190]],
                              [r_ao, r_ao, r_ao * 0.9, r_ao * 0.85, r_ao * 0.8])
    thorax = _sample_thorax(rng, torso, spine, trachea_y, carina_z, heart, aorta)
    tissue, layer = paint_body_wall(grid, torso)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    x, y, z = grid.open_axes(grid.full())
    cavity = layer == 4

    # 1. abdomen under the domes (liver right, stomach/spleen left), diaphragm muscle
    above = thorax.diaphragm.above(x, y, z)
    tissue[cavity & (above < 0)] = np.where(np.broadcast_to(x > thorax.x_mid, grid.shape), T["liver"],
                                            T["spleen"])[cavity & (above < 0)]
    tissue[cavity & (above < 0) & (above > -5)] = T["muscle"]
    bubble = ellipsoid((-0.3 * a, torso.cy + 0.3 * b, thorax.diaphragm.z_left - 25), (35, 25, 18))
    window, sdf = bubble.evaluate(grid)
    if window is not None:
        tissue[window][(sdf <= 0) & (tissue[window] == T["spleen"])] = T["gas"]

    # 2. lungs and lobes
    lobe_map = np.zeros(grid.shape, dtype=np.uint8)
    hu_offset = np.zeros(grid.shape, dtype=np.float32)
    width = 0.35 * min(grid.spacing)
    for side in (1, -1):
        lo = (thorax.x_mid if side > 0 else -a - 5, torso.back, thorax.diaphragm.z_left - 60)
        hi = (a + 5 if side > 0 else thorax.x_mid, torso.cy + torso.b_ant, thorax.apex_z + 1)
        window = grid.window(lo, hi)
        if window is None:
            continue
        xs, ys, zs = grid.open_axes(window)
        lung = (thorax.lung(side, xs, ys, zs) < 0) & cavity[window]
        oblique = thorax.fissure(side, xs, ys, zs)
        if side > 0:
            minor = thorax.minor_fissure(xs, ys, zs)
            ids = np.where(oblique > 0, np.where(minor > 0, 1, 2), 3)
            ridge = np.exp(-0.5 * (oblique / width) ** 2) + (oblique > 0) * np.exp(-0.5 * (minor / width) ** 2)
        else:
            ids = np.where(oblique > 0, 4, 5)
            ridge = np.exp(-0.5 * (oblique / width) ** 2)
        lobe_map[window][lung] = ids[lung]
        tissue[window][lung] = T["lung"]
        dependent = 50.0 * np.clip(1.0 - (ys - torso.back) / (1.6 * b), 0.0, 1.0)  # supine gravity gradient
        hu_offset[window] += np.where(lung, 130.0 * ridge + dependent, 0.0).astype(np.float32)
    labels[:] = lobe_map

    # 3. mediastinum: heart (myocardium, blood pool, pericardial fat), aorta, SVC, oesophagus
    mediastinal = tissue_set("visceral_fat", "lung")
    window, sdf = heart.evaluate(grid, pad=6.0)
    if window is not None:
        region = tissue[window]
        region[(sdf > 0) & (sdf <= 5) & (lobe_map[window] == 0) & cavity[window]] = T["fat"]
        region[sdf <= 0] = T["myocardium"]
        region[sdf <= -9] = T["blood"]
        labels[window][sdf <= 0] = 0
    for segs, value in ((aorta, "blood"),
                        (Segments.polyline([[25, trachea_y + 25, 190], heart_c + (35, 10, 40)], [10, 11]), "blood"),
                        (Segments.polyline([[-6, spine.y0 + spine.ry + 6, 190], [-8, spine.y0 + spine.ry + 8, -190]],
                                           [7, 7]), "soft_tissue")):
        _paint_tubes(tissue, labels, grid, segs, T[value], 0, mediastinal)

    # 4. pulmonary arteries and veins, then airways
    samples = rng.uniform((-a, torso.back, thorax.diaphragm.z_left - 40), (a, torso.cy + torso.b_ant, 170),
                          size=(3000, 3))
    sample_lobes, centres = _lobe_centres(thorax, samples)
    airways, lobar_ends = _airway_roots(rng, trachea_y, carina_z)
    min_r = max(0.7, 0.3 * max(grid.spacing))
    rvot = heart_c + heart_rot @ np.array([0.2 * heart_r[0], 0.6 * heart_r[1], 0.7 * heart_r[2]])
    bif = np.array([-8, trachea_y + 14, carina_z - 12])
    hila = {1: np.array([0.22 * a, trachea_y - 2, carina_z - 18]),
            -1: np.array([-0.22 * a, trachea_y - 8, carina_z - 4])}
    atrium = heart_c + heart_rot @ np.array([0.1 * heart_r[0], -0.7 * heart_r[1], 0.2 * heart_r[2]])
    r_pa = rng.uniform(11, 14)
    vessels = Segments.polyline([rvot, bif], [r_pa, r_pa], 0)
    for side in (1, -1):
        vessels = vessels + Segments.polyline([bif, hila[side]], [0.75 * r_pa, 0.7 * r_pa], 0)
    centre_table = np.zeros((6, 3))
    roots: dict[str, list] = {"vessel": [], "airway": []}
    trees = Segments.empty()
    for lobe, centre in centres.items():
        side = 1 if lobe <= 3 else -1
        centre_table[lobe] = centre
        members = samples[sample_lobes == lobe]

        def entry(p: np.ndarray, members: np.ndarray = members) -> np.ndarray:  # the lobe's point nearest to p
            return members[np.argmin(np.linalg.norm(members - p, axis=1))]

        vein_hilum = np.array([side * 0.16 * a, trachea_y + 2, carina_z - 50])
        for start, via, r in ((hila[side], None, 6.0), (atrium, vein_hilum, 7.0)):
            path = [start] + ([via] if via is not None else [])
            path.append(entry(path[-1]))
            vessels = vessels + Segments.polyline(path, np.full(len(path), r), 0)
            far = members[rng.integers(len(members))]  # a second segmental branch towards another part
            for target in (centre, far):
                roots["vessel"].append((path[-1], target - path[-1], r * 0.8, lobe))
        end, d, r = lobar_ends[lobe]
        first = entry(end)
        airways = airways + Segments.polyline([end, first], [r, r], 2)
        roots["airway"].append((first, d + 0.6 * (centre - first) / np.linalg.norm(centre - first), r, lobe))

    def inside(p: np.ndarray, tags: np.ndarray) -> np.ndarray:
        return thorax.lobe(p) == tags

    for name, (gens, lengths, first_gen) in {"vessel": (9, (6.0, 10.0), 1), "airway": (7, (4.0, 7.0), 3)}.items():
        if not roots[name]:
            continue
        starts, dirs, radii, tags = (np.array(v) for v in zip(*roots[name], strict=True))
        tree = grow_tree(rng, starts, dirs, radii, inside, centre_table, gens, min_r, length_per_radius=lengths,
                         first_generation=first_gen, tags=tags, split=(0.1, 0.5))
        if name == "vessel":
            trees = tree
        else:
            airways = airways + tree
    vessel_ok = tissue_set("lung", "visceral_fat", "fat", "pulmonary_vessel", "blood", "myocardium")
    _paint_tubes(tissue, labels, grid, vessels, T["pulmonary_vessel"], LABELS["pulmonary_vessels"], vessel_ok)
    _paint_tubes(tissue, labels, grid, trees, T["pulmonary_vessel"], LABELS["pulmonary_vessels"],
                 tissue_set("lung", "pulmonary_vessel"))
    _paint_tubes(tissue, labels, grid, airways, T["air"], LABELS["airway"],
                 tissue_set("lung", "visceral_fat", "fat", "pulmonary_vessel", "soft_tissue", "airway_wall"),
                 wall=(T["airway_wall"], 0.2), lobe_map=lobe_map)

    # 5. bones and back muscles
    paint_back_muscles(tissue, grid, torso, spine, layer)
    paint_ribs(tissue, grid, torso, spine, layer, rng, z_lowest=-200.0)
    paint_sternum(tissue, grid, torso, layer, (carina_z - 170, carina_z + 60))
    paint_spine(tissue, grid, spine)
    _drop_overpainted_labels(tissue, labels)

    # 6. findings: emphysema, pleural effusion, nodules
    nodules, findings = paint_findings(rng, tissue, labels, lobe_map, grid, thorax, samples, sample_lobes,
                                       lesion_count, emphysema, effusion)
    hu_offset *= tissue == T["lung"]
    return Scene(grid, tissue, labels, nodules, findings, hu_offset, body_scale=torso.a / 155.0)
