import numpy as np
import pytest
import torch
import yaml

from tests.training.helpers import run_quietly
from tests.training.test_recipe import ROOT
from volsynth.cli import main
from volsynth.errors import ConfigError
from volsynth.io import read_label, read_volume
from volsynth.io.volume import Volume
from volsynth.pipelines import load_pipeline
from volsynth.pipelines.hierarchical import HierarchicalPipeline
from volsynth.training.data import random_patches
from volsynth.training.hierarchical import (
    HierarchicalSettings,
    joint_channels,
    low_resolution,
    upsample,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("hier")
    recipe = yaml.safe_load((ROOT / "recipes" / "tiny-hierarchical.yaml").read_text())
    recipe["data"]["phantom"].update(cases=3, size=32)
    recipe["prepare"]["size"] = 16
    for stage in ("joint", "superres"):
        recipe[stage]["train"].update(steps=3, batch_size=2, checkpoint_every=3)
    recipe["superres"]["patch"] = [8, 8, 8]  # patches in training; the pipeline still makes the whole grid
    recipe["superres"]["residual_scale"] = 0.1  # as recipes/chest-hierarchical-64.yaml
    return run_quietly(recipe, root)


def test_joint_channels_and_resolution_helpers():
    labels = torch.tensor([[[[0, 1], [2, 0]]]]).repeat(1, 2, 1, 1)  # [1, 2, 2, 2]
    image = torch.zeros(1, 1, 2, 2, 2)
    x = joint_channels(image, labels, [1, 2])
    assert x.shape == (1, 4, 2, 2, 2)
    assert torch.equal((x[0, 1:] > 0).long().argmax(0), labels[0])  # background first, then classes
    low = low_resolution(torch.randn(1, 4, 8, 8, 8), 2)
    assert low.shape == (1, 4, 4, 4, 4) and upsample(low, 2).shape == (1, 4, 8, 8, 8)


def test_pipeline_returns_image_and_labels_at_the_plan_size_and_geometry(model):
    pipe = load_pipeline(model)
    assert isinstance(pipe, HierarchicalPipeline)
    result = pipe(prompt="Emphysema in both upper lobes.", seed=0, steps=2)
    assert result.image.shape == result.label.shape == tuple(pipe.plan.size) == (16, 16, 16)
    np.testing.assert_allclose(result.image.affine, pipe.plan.default_affine())
    np.testing.assert_allclose(result.label.affine, pipe.plan.default_affine())
    assert set(np.unique(result.label.array)) <= {0, 1, 2, 3}
    assert result.sidecar["low_resolution"] == [8, 8, 8]
    again = pipe(prompt="Emphysema in both upper lobes.", seed=0, steps=2)
    np.testing.assert_array_equal(again.image.array, result.image.array)


def test_cli_writes_image_and_label(model, tmp_path):
    assert main(["generate", str(model), "--out", str(tmp_path / "out"), "--prompt", "no nodule", "--steps", "2",
                 "--no-progress"]) == 0
    image = read_volume(tmp_path / "out" / "job000_00_image.nii.gz")
    label = read_label(tmp_path / "out" / "job000_00_label.nii.gz")
    assert image.shape == label.shape == (16, 16, 16)
    assert main(["generate", str(model), "--out", str(tmp_path / "bad"), "--mask", str(tmp_path / "out" /
                 "job000_00_label.nii.gz"), "--steps", "2", "--no-progress"]) == 2
    assert not (tmp_path / "bad").exists()


def test_settings_errors():
    with pytest.raises(ConfigError, match="factor must be 2 or 4"):
        HierarchicalSettings.from_dict({"factor": 3})
    with pytest.raises(ConfigError, match="residual_scale must be > 0"):
        HierarchicalSettings.from_dict({"residual_scale": 0})


def test_residual_superres_adds_its_output_to_the_upsampled_condition(model, monkeypatch):
    import volsynth.pipelines.hierarchical as hierarchical

    pipe = load_pipeline(model)
    assert pipe.stage_settings("superres")["residual_scale"] == 0.1
    assert not pipe.scheduler("ddim", "superres").clip_sample  # a residual is not bounded by [-1, 1]
    assert pipe.scheduler("ddim", "joint").clip_sample
    outputs = []

    def fake_sample(model_fn, x, scheduler, steps, generator=None):
        outputs.append(torch.full_like(x, 0.5) if not outputs else torch.ones_like(x))  # stage 1, then residual 1
        return outputs[-1]

    monkeypatch.setattr(hierarchical, "sample", fake_sample)
    result = pipe(prompt="", seed=0, steps=2)
    # stage 1 says 0.5 everywhere; upsampled, plus 0.1 x the residual 1: 0.6 in the normalised range
    expected = pipe.plan.denormalize(Volume(np.full(result.image.shape, 0.6, np.float32), result.image.affine,
                                            modality="CT"))
    np.testing.assert_allclose(result.image.array, expected.array, rtol=1e-5, atol=1e-3)


def test_random_patches_take_the_same_window_from_each_tensor():
    x = torch.arange(2 * 16**3, dtype=torch.float32).view(2, 1, 16, 16, 16)
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    a, b = random_patches([x, x * 10], [8, 8, 4], generators, step=2)
    assert a.shape == b.shape == (2, 1, 8, 8, 4)
    assert torch.equal(b, a * 10)
    for n in range(2):
        corner = [int(i) for i in np.argwhere((x[n, 0] == a[n, 0, 0, 0, 0]).numpy())[0]]
        assert all(c % 2 == 0 for c in corner)
        assert torch.equal(a[n, 0], x[n, 0, corner[0]:corner[0] + 8, corner[1]:corner[1] + 8, corner[2]:corner[2] + 4])
    with pytest.raises(ConfigError, match="patch must be 3"):
        HierarchicalSettings.from_dict({"patch": [8, 8]})
