"""Turn a tissue map into a CT (HU) or MR image: tissue values with per-case jitter, fine texture,
partial-volume blur, then noise (Gaussian for CT, Rician for MR) and, for MR, a smooth bias field."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from volsynth.data.phantom.scene import Scene
from volsynth.data.phantom.shapes import SmoothField
from volsynth.data.phantom.tissues import TISSUES, TUMOUR_TISSUES, T, ct_table, ct_texture, mr_table

_TUMOUR_ROWS = np.array([T[n] for n in TUMOUR_TISSUES])
_FIXED_CT = np.array([T[n] for n in ("air", "gas", "lung", "emphysema", "bone_cortex")])


def blur_noise_factor(sigma: float) -> float:
    """Standard deviation left of unit white noise after ``gaussian_filter(sigma)`` in 3D."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    return float(np.sqrt((w**2).sum()) ** 3)


def _textured_blur(values: np.ndarray, texture: np.ndarray, tissue: np.ndarray, sigma: float,
                   rng: np.random.Generator, offset: np.ndarray | None = None) -> np.ndarray:
    """Tissue values (+ offset) plus white texture (scaled to keep its std after the blur), blurred."""
    image = values[tissue]
    if offset is not None:
        image += offset
    white = rng.standard_normal(tissue.shape, dtype=np.float32)
    white *= (texture / blur_noise_factor(sigma))[tissue]
    image += white
    return ndi.gaussian_filter(image, sigma, output=np.float32, truncate=3.0)


def render_ct(scene: Scene, rng: np.random.Generator, phase: str) -> np.ndarray:
    """CT in HU: tissue attenuation for ``phase``, texture, blur of 0.5-0.9 voxel, Gaussian noise."""
    base = ct_table(phase)
    nc = ct_table("non-contrast")
    values = nc + (base - nc) * np.float32(rng.uniform(0.8, 1.2))  # bolus timing / cardiac output
    values += rng.normal(0, 5, len(TISSUES)).astype(np.float32)
    values[_FIXED_CT] = base[_FIXED_CT] + rng.normal(0, 15, len(_FIXED_CT)).astype(np.float32)
    values[_TUMOUR_ROWS] = values[T["liver"]] + base[_TUMOUR_ROWS] * rng.uniform(0.8, 1.25, len(_TUMOUR_ROWS))
    sigma = rng.uniform(0.5, 0.9)
    offset = scene.hu_offset
    if scene.lesion_contrast is not None:  # generator version 2: each lesion's own contrast to the liver
        values[_TUMOUR_ROWS] = values[T["liver"]]
        lesions = scene.lesion_contrast.ct_offset(phase)
        offset = lesions if offset is None else offset + lesions
    image = _textured_blur(values, ct_texture(), scene.tissue, sigma, rng, offset)
    noise_sd = rng.uniform(6.0, 14.0) * scene.body_scale**2  # larger patients: fewer photons, more noise
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise_sd)
    return np.clip(image, -1024, 3071, out=image)


def render_mr(scene: Scene, rng: np.random.Generator, sequence: str) -> np.ndarray:
    """MR magnitude (>= 0): tissue signal for ``sequence``, texture, blur, bias field, Rician noise."""
    base = mr_table(sequence)
    values = base * rng.uniform(0.9, 1.1, len(TISSUES)).astype(np.float32)
    values[_TUMOUR_ROWS] = values[T["liver"]] * base[_TUMOUR_ROWS] * rng.uniform(0.85, 1.15, len(_TUMOUR_ROWS))
    sigma = rng.uniform(0.5, 0.9)
    offset = None
    if scene.lesion_contrast is not None:  # generator version 2: each lesion's own signal ratio to the liver
        values[_TUMOUR_ROWS] = values[T["liver"]]
        offset = scene.lesion_contrast.mr_offset(sequence, float(values[T["liver"]]))
    image = _textured_blur(values, 0.05 * values, scene.tissue, sigma, rng, offset)
    grid = scene.grid
    bias = SmoothField(rng, -np.asarray(grid.spacing) * grid.shape, np.asarray(grid.spacing) * grid.shape, 160.0)
    image *= np.exp(np.float32(rng.uniform(0.1, 0.25)) * bias(*grid.open_axes(grid.full())))
    noise_sd = np.float32(rng.uniform(0.02, 0.05) * values[T["liver"]])
    real = image + rng.standard_normal(image.shape, dtype=np.float32) * noise_sd
    imag = rng.standard_normal(image.shape, dtype=np.float32) * noise_sd
    return np.sqrt(real * real + imag * imag)
