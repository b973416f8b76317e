import numpy as np
import pytest
import torch
import yaml

from tests.training.helpers import run_quietly
from tests.training.test_recipe import ROOT
from volsynth.errors import ConfigError
from volsynth.io import read_label
from volsynth.pipelines import load_pipeline
from volsynth.pipelines.segguided import SegGuidedPipeline, from_slices, to_slices
from volsynth.training.denoising import hide_classes
from volsynth.training.engine import sample_generators
from volsynth.training.segguided import SegGuidedSettings


def _quick_recipe(**segguided) -> dict:
    recipe = yaml.safe_load((ROOT / "recipes" / "tiny-sgd.yaml").read_text())
    recipe["data"]["phantom"] = [{**p, "cases": 3, "size": 24} for p in recipe["data"]["phantom"]]
    recipe["prepare"]["size"] = 16
    recipe["segguided"].update(segguided)
    recipe["segguided"]["train"].update(steps=4, batch_size=2, checkpoint_every=4)
    return recipe


@pytest.fixture(scope="module")
def model_3d(tmp_path_factory):
    root = tmp_path_factory.mktemp("sgd3d")
    return run_quietly(_quick_recipe(), root)


def test_ablation_drops_classes_at_the_configured_rate():
    generators = sample_generators(0, 0, list(range(5000)))
    kept = hide_classes(torch.ones(5000, 3), generators, 0.5)
    assert abs(float(kept.mean()) - 0.5) < 0.02
    assert abs(float((kept.sum(1) == 0).float().mean()) - 0.125) < 0.02  # all three dropped: 0.5^3
    assert torch.all(hide_classes(torch.ones(10, 3), generators[:10], 0.0) == 1)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_restack_exactly(axis):
    volume = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 4, 5, 6)
    slices = to_slices(volume, axis)
    assert slices.shape[0] == volume.shape[1 + axis]
    assert torch.equal(slices[3], volume.select(1 + axis, 3))
    assert torch.equal(from_slices(slices, axis), volume)


def test_one_mask_gives_ct_and_mr_on_the_mask_grid(model_3d, tmp_path):
    pipe = load_pipeline(model_3d)
    assert isinstance(pipe, SegGuidedPipeline) and pipe.modalities == ["CT", "MR"]
    mask = read_label(next((model_3d.parent / "data-0" / "labelsTr").glob("*.nii.gz")))
    with pytest.warns(UserWarning):  # phantom ids 2..10 are not the model's: mapped by name
        ct = pipe(mask=mask, modality="CT", seed=0, steps=2, mask_labels={"liver": 1, "vessels": [2, 3], "tumour": 4})
    mr = pipe(mask=mask, modality="mr", seed=0, steps=2, mask_labels={"liver": 1, "vessels": 2, "tumour": 4})
    for result in (ct, mr):
        assert result.image.shape == mask.shape
        np.testing.assert_allclose(result.image.affine, mask.affine, atol=1e-6)
    assert ct.image.array.min() < -500 and mr.image.array.min() >= -1e-3  # HU vs MR units
    with pytest.raises(ConfigError, match="no modality 'PET'"):
        pipe(mask=mask, modality="PET", mask_labels={"liver": 1})


def test_any_class_subset_guides(model_3d):
    pipe = load_pipeline(model_3d)
    mask = read_label(next((model_3d.parent / "data-0" / "labelsTr").glob("*.nii.gz")))
    mapping = {"liver": 1, "vessels": 2, "tumour": 4}
    with pytest.warns(UserWarning):
        _, _, cond, known, _ = pipe.prepare_mask(mask, mapping, known=["liver"])
    assert known == ["liver"] and cond.shape == (1, 6, 16, 16, 16)
    assert float(cond[0, 1:3].abs().sum()) == 0 and float(cond[0, 3].mean()) == 1  # only liver given


def test_2d_slice_model_restacks_with_the_right_geometry(tmp_path):
    model = run_quietly(_quick_recipe(spatial_dims=2, slice_axis="coronal"), tmp_path)
    pipe = load_pipeline(model)
    assert pipe.settings["spatial_dims"] == 2
    mask = read_label(next((tmp_path / "run" / "data-0" / "labelsTr").glob("*.nii.gz")))
    with pytest.warns(UserWarning):
        result = pipe(mask=mask, modality="CT", seed=1, steps=2, mask_labels={"liver": 1})
    assert result.image.shape == mask.shape
    np.testing.assert_allclose(result.image.affine, mask.affine, atol=1e-6)
    _, grid, cond, _, _ = pipe.prepare_mask(mask, {"liver": 1}, modality="CT")
    assert cond.shape[0] == 16 and cond.shape[2:] == (16, 16)  # one condition per coronal slice


def test_options_a_model_does_not_take_are_refused_before_anything_is_written(model_3d, tmp_path, capsys):
    from volsynth.cli import main

    mask = next((model_3d.parent / "data-0" / "labelsTr").glob("*.nii.gz"))
    for option in (["--controlnet-scale", "2"], ["--refiner-guidance", "2"], ["--no-refine"]):
        assert main(["generate", str(model_3d), "--mask", str(mask), "--modality", "CT", *option,
                     "--out", str(tmp_path / "out"), "--steps", "2", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and option[0] in err and "not an option" in err, err
        assert not (tmp_path / "out").exists()


def test_settings_errors():
    with pytest.raises(ConfigError, match="spatial_dims"):
        SegGuidedSettings.from_dict({"spatial_dims": 4})
    with pytest.raises(ConfigError, match="slice axis"):
        SegGuidedSettings.from_dict({"slice_axis": "oblique"})
