"""The trunk shared by abdomen and chest: body outline with skin, fat and muscle, diaphragm domes,
spine (vertebral bodies, discs, canal, posterior elements), ribs and back muscles.

World millimetres in RAS+: +x patient right, +y anterior, +z superior; the grid is centred on 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volsynth.data.phantom.shapes import Grid, SmoothField
from volsynth.data.phantom.tissues import T

SKIN_MM = 2.0


@dataclass
class Torso:
    """Body outline (ellipse, flatter at the back, slowly varying along z) and wall thicknesses."""

    a: float  # lateral semi-axis (mm)
    b_ant: float  # anterior semi-axis
    b_post: float  # posterior semi-axis
    cy: float  # y of the body centre
    taper: float  # relative change of the outline per 100 mm in z
    fat: float  # subcutaneous fat thickness (mm)
    muscle: float  # abdominal / chest wall muscle thickness (mm)
    field: SmoothField

    def outline(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm) to the skin surface."""
        scale = 1.0 + self.taper * (z / 100.0)
        yy = y - self.cy
        b = np.where(yy > 0, self.b_ant, self.b_post)
        ax, by = self.a * scale, b * scale
        k0 = np.sqrt((x / ax) ** 2 + (yy / by) ** 2)
        k1 = np.sqrt((x / ax**2) ** 2 + (yy / by**2) ** 2)
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6) + 5.0 * self.field(x, y, z)

    def fat_thickness(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Subcutaneous fat (mm): thicker at the front and the flanks than at the back."""
        front = np.clip((y - self.cy) / self.b_ant, -1.0, 1.0)
        return self.fat * (0.75 + 0.35 * front + 0.3 * np.abs(x) / self.a)

    def cavity(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance (mm) to the inner surface of the muscle wall (negative inside the cavity)."""
        return self.outline(x, y, z) + SKIN_MM + self.fat_thickness(x, y) + self.muscle

    @property
    def back(self) -> float:
        """y of the skin at the back (mm)."""
        return self.cy - self.b_post


def sample_torso(rng: np.random.Generator, region: str) -> Torso:
    """A random torso; the chest is a little broader and less deep than the abdomen."""
    a = rng.uniform(140, 168)
    depth = rng.uniform(0.66, 0.78) if region == "abdomen" else rng.uniform(0.62, 0.72)
    b = a * depth
    field = SmoothField(rng, (-200, -200, -200), (200, 200, 200), step=90.0)
    return Torso(a=a, b_ant=b * rng.uniform(1.0, 1.1), b_post=b * rng.uniform(0.85, 0.95), cy=rng.uniform(-8, 8),
                 taper=rng.uniform(-0.04, 0.04), fat=rng.uniform(8, 30), muscle=rng.uniform(9, 14), field=field)


def paint_body_wall(grid: Grid, torso: Torso) -> tuple[np.ndarray, np.ndarray]:
    """Tissue map with air, skin, fat, muscle and the cavity (visceral fat); also the layer index map.

    Layer index: 0 air, 1 skin, 2 subcutaneous fat, 3 muscle wall, 4 cavity.
    """
    x, y, z = grid.open_axes(grid.full())
    depth = -torso.outline(x, y, z)
    fat = torso.fat_thickness(x, y)
    layer = (depth >= 0).astype(np.uint8)
    layer += depth >= SKIN_MM
    layer += depth >= SKIN_MM + fat
    layer += depth >= SKIN_MM + fat + torso.muscle
    lut = np.array([T["air"], T["skin"], T["fat"], T["muscle"], T["visceral_fat"]], dtype=np.uint8)
    return lut[layer], layer


@dataclass
class Diaphragm:
    """Two parabolic domes (right higher); ``above(x, y, z)`` is the signed height above the dome."""

    z_right: float
    z_left: float
    x_side: float
    y_top: float
    radius: float

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z of the diaphragm surface (mm) under each (x, y)."""
        ry = (y - self.y_top) ** 2 / (2 * self.radius * 0.8)
        right = self.z_right - (x - self.x_side) ** 2 / (2 * self.radius) - ry
        left = self.z_left - (x + self.x_side) ** 2 / (2 * self.radius) - ry
        return np.maximum(right, left)

    def above(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed vertical distance (mm) above the diaphragm (negative below, in the abdomen)."""
        return z - self.height(x, y)


@dataclass
class Spine:
    """Vertebral column along z with a sagittal curve; vertebrae repeat every ``pitch`` mm."""

    y0: float  # y of the vertebral body centre at z = 0
    curve: float  # mm of anterior shift at z = +-180
    rx: float
    ry: float
    pitch: float
    phase: float
    lateral: float  # half-width of the transverse processes

    def y(self, z: np.ndarray | float) -> np.ndarray:
        """y of the vertebral body centre at height z."""
        return self.y0 + self.curve * (z / 180.0) ** 2

    @property
    def canal_offset(self) -> float:
        """Distance (mm) from the body centre back to the canal centre."""
        return self.ry + 10.0


def sample_spine(rng: np.random.Generator, torso: Torso, region: str) -> Spine:
    """Lumbar-like (deep, wide, lordotic) for the abdomen, thoracic-like (kyphotic) for the chest."""
    lumbar = region == "abdomen"
    y0 = torso.back + torso.fat * 0.75 + rng.uniform(62, 72) + (4 if lumbar else 0)  # spinous tips under the fat
    return Spine(y0=y0, curve=rng.uniform(-12, -2) if lumbar else rng.uniform(2, 12),
                 rx=rng.uniform(21, 25) if lumbar else rng.uniform(16, 19), ry=rng.uniform(16, 19),
                 pitch=rng.uniform(34, 40) if lumbar else rng.uniform(25, 30), phase=rng.uniform(0, 40),
                 lateral=rng.uniform(38, 45) if lumbar else rng.uniform(28, 33))


def paint_spine(tissue: np.ndarray, grid: Grid, spine: Spine) -> None:
    """Vertebral bodies (cortex, marrow), discs, canal (CSF), arches, spinous and transverse processes."""
    lo = (-spine.lateral - 5, spine.y0 - 80 - abs(spine.curve), -1e4)
    hi = (spine.lateral + 5, spine.y0 + spine.ry + abs(spine.curve) + 5, 1e4)
    window = grid.window(lo, hi)
    if window is None:
        return
    x, y, z = grid.open_axes(window)
    dy = y - spine.y(z)
    phase = np.mod(z - spine.phase, spine.pitch) / spine.pitch
    r_body = np.sqrt((x / spine.rx) ** 2 + (dy / spine.ry) ** 2)
    body = r_body <= 1.0
    disc = body & (phase < 0.2)
    marrow = body & ~disc & (r_body < 1.0 - 2.5 / spine.rx)
    cy = dy + spine.canal_offset
    rc = np.sqrt(x**2 + cy**2)
    arch_level = (phase > 0.25) & (phase < 0.85)
    arch = arch_level & (rc >= 8.0) & (rc <= 15.0) & (cy < 5.0)
    spinous = arch_level & (np.abs(x) < 4.0) & (cy < -8.0) & (cy > -32.0)
    transverse = (phase > 0.35) & (phase < 0.7) & (np.abs(x) > 6.0) & (np.abs(x) < spine.lateral)
    transverse = transverse & (np.abs(cy - 3.0) < 5.0)
    region = tissue[window]
    region[(body & ~disc) | arch | spinous | transverse] = T["bone_cortex"]
    region[marrow] = T["bone_marrow"]
    region[disc] = T["disc"]
    region[rc < 8.0] = T["csf"]


def paint_back_muscles(tissue: np.ndarray, grid: Grid, torso: Torso, spine: Spine, layer: np.ndarray) -> None:
    """Paraspinal (erector spinae) muscles between the spine and the subcutaneous fat of the back."""
    window = grid.window((-90, torso.back - 5, -1e4), (90, spine.y0 + 20, 1e4))
    if window is None:
        return
    x, y, z = grid.open_axes(window)
    cy = y - (spine.y(z) - spine.canal_offset - 12.0)
    blob = ((np.abs(x) - (spine.rx + 12.0)) / 28.0) ** 2 + (cy / 26.0) ** 2 < 1.0
    region = tissue[window]
    region[blob & (layer[window] >= 3) & (region != T["csf"])] = T["muscle"]


def paint_ribs(tissue: np.ndarray, grid: Grid, torso: Torso, spine: Spine, layer: np.ndarray,
               rng: np.random.Generator, z_lowest: float) -> None:
    """Ribs inside the muscle wall: bands sloping down towards the front, shorter for the lowest ribs."""
    pitch, half_width = rng.uniform(26, 32), rng.uniform(4.0, 5.5)
    drop, slope = rng.uniform(70, 110), rng.uniform(12, 20)  # mm lower at the front; mm per radian
    z0 = rng.uniform(0, pitch)
    band = np.nonzero(layer == 3)
    x = grid.axis(0)[band[0]]
    y = grid.axis(1)[band[1]]
    z = grid.axis(2)[band[2]]
    theta = np.arctan2(x, -(y - spine.y(z)))  # 0 at the back, +-pi at the front
    u = (z + drop * (1 - np.cos(theta)) / 2 + slope * np.abs(theta) - z0) / pitch
    k = np.round(u)
    z_rib = z0 + k * pitch  # height of this rib at the back
    reach = np.deg2rad(150) - np.deg2rad(60) * np.clip((z_lowest + 3 * pitch - z_rib) / (3 * pitch), 0, 1)
    rib = (np.abs(u - k) * pitch < half_width) & (np.abs(theta) < reach) & (z_rib >= z_lowest)
    rib &= np.abs(x) > spine.rx * 0.6  # leave the midline at the back to the spine
    tissue[tuple(a[rib] for a in band)] = T["rib"]


def paint_sternum(tissue: np.ndarray, grid: Grid, torso: Torso, layer: np.ndarray,
                  z_range: tuple[float, float]) -> None:
    """A flat midline bone in the front wall of the chest."""
    window = grid.window((-16, torso.cy, z_range[0]), (16, torso.cy + torso.b_ant * 1.2, z_range[1]))
    if window is None:
        return
    region = tissue[window]
    region[layer[window] == 3] = T["rib"]
