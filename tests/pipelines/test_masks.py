import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_case, oblique_direction
from volsynth.cli import main
from volsynth.errors import VolsynthError
from volsynth.io import LabelMap, Volume, make_affine, read_label, read_volume, write_volume
from volsynth.io.resample import resample_to
from volsynth.models.checkpoint import optional_sha256
from volsynth.pipelines.generate import SynthesisPipeline
from volsynth.pipelines.masks import MaskWarning, parse_mask_labels, place_mask


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return SynthesisPipeline.from_pretrained(tiny_model)


@pytest.fixture
def mask(tmp_path):
    _, label = make_case(seed=5, shape=(20, 18, 10), spacing=(1.5, 1.6, 3.0), direction=oblique_direction(15))
    return label


def test_output_takes_the_mask_geometry(pipe, mask):
    result = pipe(prompt="liver", mask=mask, seed=0, steps=2)
    assert result.image.shape == mask.shape
    np.testing.assert_allclose(result.image.affine, mask.affine, atol=1e-6)
    np.testing.assert_array_equal(result.label.array, mask.array)
    assert result.sidecar["mask_classes"] == ["liver", "tumour"]


@pytest.mark.parametrize("direction", [None, np.diag([-1.0, 1.0, 1.0])])
@pytest.mark.parametrize(("extent", "extra"), [(10, 7), (11, 8)])
def test_a_mask_on_the_model_spacing_is_not_interpolated(pipe, direction, extent, extra):
    """Whatever the centre of the grid on it (the ROI box's or the mask's centre, on a voxel or between two), a
    mask on the model's spacing reaches the model's grid by a whole-voxel shift, and a volume on that grid comes
    back onto the mask's voxels exactly, not blurred by a sub-voxel linear interpolation."""
    plan = pipe.plan
    liver = plan.labels[plan.roi["labels"][0]] if plan.roi else plan.labels["liver"]
    shape = tuple(int(n) + extra for n in plan.size)
    array = np.zeros(shape, np.uint8)
    start = [(n - extent) // 2 for n in shape]
    array[start[0]:start[0] + extent, start[1]:start[1] + extent, start[2]:start[2] + extent] = liver
    mask = LabelMap(array, make_affine(plan.spacing, (3.0, -7.0, 11.0), direction))
    _, grid, on_grid, _, _ = place_mask(mask, plan)
    mapping = np.linalg.solve(mask.affine, grid)  # grid voxel -> mask voxel
    np.testing.assert_allclose(mapping[:3, 3], np.round(mapping[:3, 3]), atol=1e-6)
    assert (on_grid.array == liver).sum() == extent ** 3
    values = np.random.default_rng(0).normal(size=plan.size).astype(np.float32)
    back = resample_to(Volume(values, grid), mask.affine, mask.shape, cval=np.nan).array
    inside = ~np.isnan(back)
    assert inside.sum() == values.size  # every voxel of the grid lands on one voxel of the mask
    np.testing.assert_allclose(np.sort(back[inside]), np.sort(values.ravel()), atol=1e-5)


@pytest.mark.parametrize("known", [[], ["liver"], ["tumour"], ["liver", "tumour"]])
def test_any_subset_of_classes_is_accepted(pipe, mask, known):
    result = pipe(mask=mask, known=known, seed=1, steps=2, mask_guidance=2.0)
    assert np.isfinite(result.image.array).all()


def test_subsets_change_the_condition(pipe, mask):
    _, _, all_known, _, _ = pipe.prepare_mask(mask)
    _, _, liver_only, _, _ = pipe.prepare_mask(mask, known=["liver"])
    assert all_known.shape == liver_only.shape == (1, 4, 8, 8, 8)
    assert float(all_known[0, 3].mean()) == 1.0 and float(liver_only[0, 3].mean()) == 0.0  # tumour flag
    assert float(liver_only[0, 1].abs().sum()) == 0.0  # tumour occupancy hidden when not given


@pytest.mark.parametrize("steps", [2, 5])
def test_embedding_computed_once_per_sample(pipe, mask, steps):
    calls = []
    handle = pipe.controlnet.embedding.register_forward_hook(lambda *args: calls.append(1))
    try:
        pipe(prompt="liver", mask=mask, seed=0, steps=steps, text_guidance=2.0, mask_guidance=2.0)
    finally:
        handle.remove()
    assert len(calls) == 2  # the mask and the "no mask" input, whatever the number of steps


def test_mask_labels_mapping_and_errors(pipe, mask):
    other = LabelMap(np.where(mask.array == 1, 5, np.where(mask.array == 2, 9, 0)), mask.affine)
    with pytest.raises(VolsynthError, match=r"unknown label ids \[5, 9\]"):
        pipe.prepare_mask(other)
    with pytest.warns(MaskWarning, match=r"\[9\] are not mapped"):
        mapped, _, _, given, _ = pipe.prepare_mask(other, mask_labels={"liver": 5})
    assert given == ["liver"] and set(np.unique(mapped.array)) == {0, 1}
    with pytest.raises(VolsynthError, match="empty"):
        pipe.prepare_mask(LabelMap(np.zeros((8, 8, 8), np.uint8), np.eye(4)))


def test_a_mask_that_names_its_classes_maps_by_name(pipe, mask):
    model = pipe.plan.labels
    assert {"liver", "tumour"} <= set(model)  # the tiny model's classes
    ids = np.where(mask.array == 1, 7, np.where(mask.array == 2, 3, 0))  # another tool's ids: 3 is not the model's 3
    named = LabelMap(ids, mask.affine, labels={"background": 0, "Liver": 7, "tumour": 3, "Gallbladder": 12})
    mapped, _, _, given, _ = pipe.prepare_mask(named)  # a named class the model lacks (and absent) is left out
    assert given == ["liver", "tumour"]  # tumour named: known, even where absent
    np.testing.assert_array_equal(mapped.array, np.where(ids == 7, model["liver"], np.where(ids == 3, model["tumour"],
                                                                                             0)))
    strangers = LabelMap(mask.array, mask.affine, labels={"spleen": 1, "stomach": 2})  # the model's ids, other names
    with pytest.raises(VolsynthError, match=r"names its classes \(spleen=1, stomach=2\) and none is a model class"):
        pipe.prepare_mask(strangers)


def test_a_folder_of_one_mask_per_class_maps_by_name_or_through_a_preset(pipe, mask, tmp_path):
    folder = tmp_path / "segmentations"  # TotalSegmentator's default output: one file per class, by its names
    for name, value in (("liver", 1), ("spleen", 2)):
        write_volume(LabelMap((mask.array == value).astype(np.uint8), mask.affine), folder / f"{name}.nii.gz")
    liver = pipe.plan.labels["liver"]
    with pytest.warns(MaskWarning, match="not mapped"):  # spleen: no model class
        by_name, _, _, given, _ = pipe.prepare_mask(folder)
    assert given == ["liver"] and set(np.unique(by_name.array)) == {0, liver}
    np.testing.assert_array_equal(by_name.array == liver, mask.array == 1)
    preset, _, _, given, _ = pipe.prepare_mask(folder, mask_labels=parse_mask_labels("totalsegmentator"))
    np.testing.assert_array_equal(preset.array, by_name.array)
    assert "liver" in given
    digest = optional_sha256(folder)  # the sidecar's mask_sha256 of a folder: its files' names and contents
    assert digest is not None and digest == optional_sha256(folder)
    (folder / "spleen.nii.gz").rename(folder / "spleen_renamed.nii.gz")
    assert optional_sha256(folder) != digest
    (folder / "spleen_renamed.nii.gz").rename(folder / "spleen.nii.gz")
    write_volume(LabelMap((mask.array == 2).astype(np.uint8), mask.affine), folder / "my_region.nii.gz")
    (folder / "spleen.nii.gz").unlink()
    with pytest.raises(VolsynthError, match=r"segmentations: mask class\(es\) \['my_region'\] are not in the "
                                            r"totalsegmentator vocabulary"):
        pipe.prepare_mask(folder, mask_labels=parse_mask_labels("totalsegmentator"))


def test_far_geometry_warns(pipe, mask):
    coarse = LabelMap(mask.array, mask.affine @ np.diag([4.0, 4.0, 4.0, 1.0]))
    with pytest.warns(MaskWarning, match="spacing"):
        pipe.prepare_mask(coarse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.prepare_mask(mask)


def test_cli_with_mask_writes_label_and_sidecar(tiny_model, mask, tmp_path):
    path = write_volume(mask, tmp_path / "mask.nii.gz")
    assert main(["generate", str(tiny_model), "--out", str(tmp_path / "out"), "--mask", str(path), "--prompt",
                 "one lesion", "--steps", "2", "--no-progress"]) == 0
    sidecar = json.loads((tmp_path / "out" / "job000_00.json").read_text())
    assert sidecar["mask"] == str(path) and len(sidecar["mask_sha256"]) == 64
    image = read_volume(tmp_path / "out" / sidecar["image"])
    label = read_label(tmp_path / "out" / sidecar["label"])
    np.testing.assert_allclose(image.affine, mask.affine, atol=1e-4)
    np.testing.assert_array_equal(label.array, mask.array)


@pytest.mark.parametrize("case", ["unknown_ids", "empty", "four_d"])
def test_cli_bad_masks_exit_2(tiny_model, mask, tmp_path, capsys, case):
    import nibabel as nib

    path = tmp_path / "mask.nii.gz"
    if case == "unknown_ids":
        write_volume(LabelMap(mask.array * 3, mask.affine), path)
        expected = "unknown label ids"
    elif case == "empty":
        write_volume(LabelMap(np.zeros_like(mask.array), mask.affine), path)
        expected = "empty"
    else:
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.uint8), np.eye(4)), str(path))
        expected = "3D"
    code = main(["generate", str(tiny_model), "--out", str(tmp_path / "out"), "--mask", str(path), "--steps", "2",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "mask.nii.gz" in err, err
    assert not (tmp_path / "out").exists()


def test_model_recommends_other_settings_when_a_mask_guides(tiny_model, mask, tmp_path):
    """model.sampling.with_mask applies to the jobs with a mask only; the command line still wins."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    meta = json.loads((model / "meta.json").read_text())
    meta["sampling"] = {"steps": 2, "text_guidance": 3.0, "mask_guidance": 2.0, "with_mask": {"text_guidance": 1.0}}
    (model / "meta.json").write_text(json.dumps(meta))
    path = write_volume(mask, tmp_path / "mask.nii.gz")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "liver", "id": "plain"}) + "\n"
                    + json.dumps({"prompt": "liver", "id": "masked", "mask": str(path)}) + "\n")
    assert main(["generate", str(model), "--out", str(tmp_path / "a"), "--jobs", str(jobs), "--no-progress"]) == 0
    plain, masked = (json.loads((tmp_path / "a" / f"{name}.json").read_text()) for name in ("plain", "masked"))
    assert (plain["text_guidance"], masked["text_guidance"]) == (3.0, 1.0)
    assert plain["steps"] == masked["steps"] == 2 and masked["mask_guidance"] == 2.0
    assert main(["generate", str(model), "--out", str(tmp_path / "b"), "--jobs", str(jobs), "--text-guidance", "2",
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "b" / "masked.json").read_text())["text_guidance"] == 2.0


TINY_ABDOMEN = Path(__file__).resolve().parents[2] / "models" / "tiny-abdomen"


@pytest.fixture(scope="module")
def totalsegmentator_mask(tmp_path_factory):
    """A TotalSegmentator-style mask: liver 5, portal vein 64, kidneys 2 and 3, a kidney cyst 23."""
    array = np.zeros((24, 22, 14), np.uint8)
    array[4:14, 5:17, 3:11] = 5
    array[8:10, 9:12, 5:8] = 64
    array[16:20, 4:8, 4:9] = 2
    array[16:20, 14:18, 4:9] = 3
    array[17:19, 15:17, 5:7] = 23
    return write_volume(LabelMap(array, make_affine((8.0, 8.0, 10.0), (-90.0, -80.0, -60.0))),
                        tmp_path_factory.mktemp("ts") / "ts.nii.gz")


@pytest.mark.parametrize(("spec", "classes", "ids"), [
    ("totalsegmentator", ["liver", "portal_vein", "spleen", "kidney", "aorta", "ivc", "stomach_bowel", "spine"],
     {5: 1, 64: 2, 2: 6, 3: 6, 23: 0}),
    ("totalsegmentator:liver,kidney_left", ["liver", "kidney"], {5: 1, 64: 0, 2: 6, 3: 6, 23: 0}),
])
def test_cli_mask_labels_preset(totalsegmentator_mask, tmp_path, capsys, spec, classes, ids):
    """A preset gives the model classes its vocabulary has (hepatic_vein and tumour are not given) or those
    selected; the label map written has the model's ids; the ids it does not use are named in a warning."""
    out = tmp_path / "out"
    assert main(["generate", str(TINY_ABDOMEN), "--out", str(out), "--mask", str(totalsegmentator_mask),
                 "--mask-labels", spec, "--steps", "2", "--no-progress"]) == 0
    ignored = sorted(i for i, model_id in ids.items() if model_id == 0)
    assert f"label ids {ignored} are not mapped" in capsys.readouterr().err
    sidecar = json.loads((out / "job000_00.json").read_text())
    assert sidecar["mask_classes"] == classes
    source = read_label(totalsegmentator_mask).array
    label = read_label(out / sidecar["label"]).array
    for source_id, model_id in ids.items():
        assert set(np.unique(label[source == source_id])) == {model_id}, source_id


@pytest.mark.parametrize(("spec", "expected"), [
    ("nope", "neither name=id nor a preset (presets: amos, maisi, msd-liver, totalsegmentator"),
    ("totalsegmentator:livr", "'livr' is not a class of the totalsegmentator vocabulary"),
    ("totalsegmentator:heart", "'heart' of the totalsegmentator vocabulary gives none of the model's classes"),
    ("msd-liver", "label ids [3, 5, 23, 64] in mask are not in the msd-liver vocabulary"),
])
def test_cli_mask_labels_preset_errors(totalsegmentator_mask, tmp_path, capsys, spec, expected):
    code = main(["generate", str(TINY_ABDOMEN), "--out", str(tmp_path / "out"), "--mask", str(totalsegmentator_mask),
                 "--mask-labels", spec, "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_an_id_outside_the_vocabulary_is_named(pipe, mask):
    odd = LabelMap(np.where(mask.array == 1, 5, np.where(mask.array == 2, 250, 0)).astype(np.uint8), mask.affine)
    with pytest.raises(VolsynthError, match=r"label ids \[250\] in mask are not in the totalsegmentator"):
        pipe.prepare_mask(odd, parse_mask_labels("totalsegmentator"))
    everything = LabelMap(np.arange(mask.array.size).reshape(mask.shape) % 118, mask.affine)
    shown = r"label ids \[1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13\] and 104 more are not mapped"  # 12 listed
    with pytest.warns(MaskWarning, match=shown):
        mapped, _, _, given, _ = pipe.prepare_mask(everything, parse_mask_labels("totalsegmentator"))
    assert given == ["liver"] and set(np.unique(mapped.array)) == {0, 1}  # the tiny model knows liver, tumour
