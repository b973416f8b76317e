import numpy as np
import pytest

from tests.conftest import make_case, oblique_direction
from volsynth.cli import main
from volsynth.data.phantom import generate_case
from volsynth.data.phantom.measure import max_extent_mm
from volsynth.errors import VolsynthError
from volsynth.io import LabelMap, make_affine, read_label, write_volume
from volsynth.pipelines.edit import insert_lesion, lesion_components, remove_lesions
from volsynth.pipelines.generate import SynthesisPipeline
from volsynth.pipelines.interpolate import interpolate


@pytest.fixture(scope="module")
def liver_mask():
    case = generate_case("abdomen-ct", seed=3, size=48, lesions=0)
    return LabelMap(case.labels, case.affine)


@pytest.mark.parametrize("diameter", [12.0, 24.0, 40.0])
def test_inserted_lesion_has_the_requested_diameter(liver_mask, diameter):
    edited, facts = insert_lesion(liver_mask, diameter, organ_id=1, lesion_id=4, seed=1)
    components, count = lesion_components(edited, 4)
    assert count == 1 and facts["inside_organ"]
    measured = max_extent_mm(components == 1, edited.spacing)
    assert abs(measured - diameter) <= float(np.max(edited.spacing))  # within one voxel
    assert facts["diameter_mm"] == pytest.approx(measured, abs=0.05)
    untouched = edited.array != 4
    np.testing.assert_array_equal(edited.array[untouched], liver_mask.array[untouched])


@pytest.mark.parametrize("size", [32, 40])
def test_coarse_grids_still_measure_within_one_voxel(size):
    case = generate_case("abdomen-ct", seed=3, size=size, lesions=0)
    mask = LabelMap(case.labels, case.affine)
    for diameter in (20.0, 24.0, 30.0):
        edited, facts = insert_lesion(mask, diameter, seed=1)
        assert abs(facts["diameter_mm"] - diameter) <= float(np.max(mask.spacing)), (size, diameter, facts)


def test_insertion_with_anisotropic_oblique_geometry_and_given_centre():
    affine = make_affine([1.0, 1.2, 2.5], [-30, -30, -40], oblique_direction(30))
    array = np.zeros((64, 56, 40), np.uint8)
    array[8:56, 8:48, 6:34] = 1
    mask = LabelMap(array, affine)
    centre = affine[:3, :3] @ np.array([32.0, 28.0, 20.0]) + affine[:3, 3]
    edited, facts = insert_lesion(mask, 20.0, centre_mm=centre)
    measured = max_extent_mm(edited.array == 4, edited.spacing)
    assert abs(measured - 20.0) <= 2.5 and facts["inside_organ"]


def test_lesion_that_does_not_fit_is_an_error(liver_mask):
    with pytest.raises(VolsynthError, match="does not fit"):
        insert_lesion(liver_mask, 400.0)
    with pytest.raises(VolsynthError, match="no organ voxels with id 42"):
        insert_lesion(liver_mask, 10.0, organ_id=42)


def test_remove_lesions_largest_first(liver_mask):
    one, _ = insert_lesion(liver_mask, 30.0, seed=1)
    two, _ = insert_lesion(one, 10.0, seed=7)
    assert lesion_components(two)[1] == 2
    without_largest = remove_lesions(two, [1])
    components, count = lesion_components(without_largest)
    assert count == 1 and max_extent_mm(components == 1, two.spacing) < 16
    assert lesion_components(remove_lesions(two))[1] == 0
    assert set(np.unique(remove_lesions(two).array)) == set(np.unique(liver_mask.array))
    with pytest.raises(Exception, match="lesion 3 does not exist"):
        remove_lesions(two, [3])


def test_cli_edit(liver_mask, tmp_path, capsys):
    path = write_volume(liver_mask, tmp_path / "mask.nii.gz")
    assert main(["edit", str(path), str(tmp_path / "edited.nii.gz"), "--insert-lesion", "24"]) == 0
    assert "diameter_mm" in capsys.readouterr().out
    assert lesion_components(read_label(tmp_path / "edited.nii.gz"))[1] == 1
    assert main(["edit", str(tmp_path / "edited.nii.gz"), str(tmp_path / "clean.nii.gz"), "--remove-lesion",
                 "all"]) == 0
    assert main(["edit", str(path), str(tmp_path / "x.nii.gz"), "--remove-lesion", "all"]) == 2
    err = capsys.readouterr().err
    assert "mask.nii.gz" in err and "no lesion voxels" in err
    assert not (tmp_path / "x.nii.gz").exists()


def test_interpolation_endpoints_equal_each_masks_generation(tiny_model):
    pipe = SynthesisPipeline.from_pretrained(tiny_model)
    _, a = make_case(seed=1, shape=(20, 18, 10))
    _, b = make_case(seed=2, shape=(20, 18, 10))
    frames = interpolate(pipe, a, b, frames=3, seed_a=4, seed_b=9, steps=2, prompt="liver")
    first = pipe(mask=a, seed=4, steps=2, prompt="liver")
    last = pipe(mask=b, seed=9, steps=2, prompt="liver")
    np.testing.assert_array_equal(frames[0].image.array, first.image.array)
    np.testing.assert_array_equal(frames[-1].image.array, last.image.array)
    assert not np.array_equal(frames[1].image.array, first.image.array)
