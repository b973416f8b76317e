"""Unbiased Gaussian MMD²: about 0 for one distribution, clearly positive for shifted ones, kept negative."""

import math

import numpy as np
import pytest
import torch

from tests.conftest import make_case
from volsynth.errors import ConfigError
from volsynth.evaluation import GaussianMMD, compute_mmd, compute_mmd_volumes, median_bandwidth, volume_features


def test_exact_value_and_negative_estimates_are_kept():
    x = torch.tensor([[0.0], [1.0]])
    # k(0,1) = exp(-1/2) with sigma = 1: MMD² = k01 + k01 - (2 + 2 k01) / 2 = k01 - 1 < 0
    assert compute_mmd(x, x.clone(), bandwidth=1.0) == pytest.approx(math.exp(-0.5) - 1.0)
    assert median_bandwidth(torch.tensor([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)  # distances 1, 2, 3


def test_same_distribution_near_zero_shifted_positive():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 8, generator=g), torch.randn(60, 8, generator=g)
    same = compute_mmd(x, y)
    shifted = compute_mmd(x, y + 1.0)
    assert abs(same) < 0.03
    assert shifted > 0.15 and shifted > 5 * abs(same)
    assert compute_mmd(x, y + 2.0, bandwidth=median_bandwidth(x)) > shifted  # larger shift, fixed kernel
    with pytest.raises(ConfigError, match="at least 2"):
        compute_mmd(x[:1], y)
    with pytest.raises(ConfigError, match="feature size"):
        compute_mmd(x, y[:, :4])


def test_volumes_mmd():
    real = [make_case(seed=n, shape=(16, 16, 16))[0] for n in range(6)]
    other = [make_case(seed=n + 50, shape=(16, 16, 16))[0] for n in range(6)]
    brighter = [v.with_array(v.array + 300.0) for v in other]
    window = (-1000.0, 400.0)
    assert volume_features(real, 8, window).shape == (6, 512)
    same = compute_mmd_volumes(real, other, size=8, intensity_range=window)
    shifted = compute_mmd_volumes(real, brighter, size=8, intensity_range=window)
    assert shifted > 0.1 and shifted > 5 * abs(same)
    metric = GaussianMMD(size=8, intensity_range=window, bandwidth="real")
    assert metric(real, brighter) > 0.1
    assert isinstance(metric.bandwidth, float) and np.isfinite(metric.bandwidth)
