"""MS-SSIM (window/scales from size), diversity, PSNR and SSIM with known answers."""

import math

import numpy as np
import pytest

from tests.conftest import make_case
from volsynth.errors import GeometryError
from volsynth.evaluation import (
    MSSSIMDiversity,
    VolumePSNR,
    VolumeSSIM,
    compute_ms_ssim_diversity,
    compute_ms_ssim_volumes,
    compute_psnr,
    compute_ssim,
    ms_ssim_settings,
)
from volsynth.io import Volume, make_affine


def with_noise(volume: Volume, sigma: float, seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    return volume.with_array(volume.array + rng.normal(0, sigma, volume.shape).astype(np.float32))


def test_ms_ssim_settings_fit_the_size():
    assert ms_ssim_settings((64, 64, 64))[0] == 7 and len(ms_ssim_settings((64, 64, 64))[1]) == 4
    assert ms_ssim_settings((32, 32, 32))[0] == 7 and len(ms_ssim_settings((32, 32, 32))[1]) == 3
    assert len(ms_ssim_settings((32, 64, 64))[1]) == 3  # the smallest axis decides
    window, weights = ms_ssim_settings((256, 256, 256))
    assert window == 11 and len(weights) == 5 and sum(weights) == pytest.approx(1.0)
    assert ms_ssim_settings((8, 8, 8)) == (7, (1.0,))  # one scale: plain SSIM
    with pytest.raises(GeometryError, match="too small"):
        ms_ssim_settings((4, 16, 16))


def test_ms_ssim_is_one_for_itself_and_drops_with_noise():
    volume, _ = make_case(seed=0, shape=(32, 32, 32))
    assert compute_ms_ssim_volumes(volume, volume, data_range=1100.0) == pytest.approx(1.0, abs=1e-6)
    values = [compute_ms_ssim_volumes(with_noise(volume, s), volume, data_range=1100.0) for s in (20, 80, 300)]
    assert 1.0 > values[0] > values[1] > values[2]


def test_diversity():
    volumes = [make_case(seed=n, shape=(32, 32, 32))[0] for n in range(4)]
    copies = [volumes[0]] * 3
    assert compute_ms_ssim_diversity(copies, data_range=1100.0) == pytest.approx(1.0, abs=1e-6)
    diverse = compute_ms_ssim_diversity(volumes, data_range=1100.0, max_pairs=4, seed=0)
    assert diverse < 0.999
    result = MSSSIMDiversity(data_range=None)(real=volumes, generated=copies)
    assert result["generated"] == pytest.approx(1.0, abs=1e-6) and result["real"] < result["generated"]


def test_psnr_known_value():
    affine = make_affine([1.0, 1.0, 2.0])
    ref = Volume(np.zeros((8, 8, 8), dtype=np.float32), affine)
    pred = ref.with_array(np.full((8, 8, 8), 0.1, dtype=np.float32))  # MSE = 0.01
    assert compute_psnr(pred, ref, data_range=1.0) == pytest.approx(20.0, abs=1e-4)
    assert compute_psnr(pred, ref, data_range=2.0) == pytest.approx(20.0 + 20 * math.log10(2), abs=1e-4)
    assert compute_psnr(ref, ref, data_range=1.0) == math.inf
    metric = VolumePSNR(data_range=1.0)
    metric(pred, ref)
    metric(ref.with_array(np.full((8, 8, 8), 0.01, dtype=np.float32)), ref)  # MSE 1e-4: 40 dB
    assert metric.aggregate() == pytest.approx(30.0, abs=1e-3)


def test_ssim_and_geometry_checks():
    volume, _ = make_case(seed=1, shape=(16, 16, 16))
    assert compute_ssim(volume, volume, data_range=1100.0) == pytest.approx(1.0, abs=1e-6)
    assert compute_ssim(with_noise(volume, 100), volume, data_range=1100.0) < compute_ssim(
        with_noise(volume, 10), volume, data_range=1100.0) < 1.0
    assert VolumeSSIM(1100.0)(volume, volume) == pytest.approx(1.0, abs=1e-6)
    moved = volume.with_array(volume.array, volume.affine + np.diag([0.0, 0.0, 0.0, 0.0]) + _shift(5.0))
    with pytest.raises(GeometryError, match="differ in affine"):
        compute_psnr(moved, volume, data_range=1.0)
    with pytest.raises(GeometryError, match="differ in shape"):
        compute_ssim(volume.with_array(volume.array[:8]), volume, data_range=1.0)


def _shift(mm: float) -> np.ndarray:
    shift = np.zeros((4, 4))
    shift[0, 3] = mm
    return shift
