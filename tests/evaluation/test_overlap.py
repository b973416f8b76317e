"""Dice and NSD per class on hand-made masks with exactly known values; spacing in mm; empty classes."""

import math

import numpy as np
import pytest

from volsynth.errors import ConfigError, GeometryError
from volsynth.evaluation import DicePerClass, SurfaceDicePerClass, compute_dice_per_class, compute_nsd_per_class
from volsynth.io import LabelMap, make_affine

SIDE = 6
RING = SIDE**2 - (SIDE - 2) ** 2  # boundary voxels of one cross-section of a cube
SHELL = SIDE**3 - (SIDE - 2) ** 3  # boundary voxels of a cube (6-neighbour erosion)


def cube_maps(shift_axis: int, spacing) -> tuple[LabelMap, LabelMap]:
    """Reference: a 6³ cube of label 1; prediction: the same cube moved by one voxel along ``shift_axis``."""
    affine = make_affine(spacing)
    ref = np.zeros((14, 14, 14), dtype=np.uint8)
    ref[4:10, 4:10, 4:10] = 1
    pred = np.roll(ref, 1, axis=shift_axis)
    labels = {"background": 0, "organ": 1, "lesion": 2}
    return LabelMap(pred, affine, labels=labels), LabelMap(ref, affine, labels=labels)


@pytest.mark.parametrize("axis", [0, 2])
def test_dice_and_nsd_of_shifted_cubes(axis):
    spacing = [3.0, 3.0, 3.0]
    spacing[axis] = 2.0  # the shift is 2 mm; every other boundary step is 3 mm
    pred, ref = cube_maps(axis, spacing)
    dice = compute_dice_per_class(pred, ref)
    assert dice["organ"] == pytest.approx((SIDE - 1) / SIDE)  # overlap 5x6x6 of two 6³ cubes
    assert dice["lesion"] == 1.0  # absent from both maps
    # Within 1.9 mm only coinciding boundary voxels count: the side rings of the 5 shared slices, on each side.
    exact_only = (SIDE - 1) * RING / SHELL
    assert compute_nsd_per_class(pred, ref, tolerance_mm=1.9)["organ"] == pytest.approx(exact_only)
    # Every other boundary voxel is exactly one 2 mm step away: all count at 2 mm.
    assert compute_nsd_per_class(pred, ref, tolerance_mm=2.0)["organ"] == pytest.approx(1.0)
    per_class = compute_nsd_per_class(pred, ref, tolerance_mm={"organ": 0.0, "lesion": 1.0})
    assert per_class == {"organ": pytest.approx(exact_only), "lesion": 1.0}


def test_identical_disjoint_and_empty_classes():
    affine = make_affine([1.0, 1.0, 1.0])
    ref = np.zeros((12, 12, 12), dtype=np.uint8)
    ref[1:4, 1:4, 1:4] = 1
    pred = np.zeros_like(ref)
    pred[8:11, 8:11, 8:11] = 1
    pred[5:7, 5:7, 5:7] = 2  # class 2 only in the prediction
    ref_map, pred_map = LabelMap(ref, affine), LabelMap(pred, affine)
    assert compute_dice_per_class(ref_map, ref_map, labels={"a": 1}) == {"a": 1.0}
    assert compute_nsd_per_class(ref_map, ref_map, 0.0, labels={"a": 1}) == {"a": 1.0}
    labels = {"a": 1, "b": 2, "c": 3}
    dice = compute_dice_per_class(pred_map, ref_map, labels=labels)
    nsd = compute_nsd_per_class(pred_map, ref_map, 1.0, labels=labels)
    assert dice == {"a": 0.0, "b": 0.0, "c": 1.0} and nsd == {"a": 0.0, "b": 0.0, "c": 1.0}
    ignored = compute_dice_per_class(pred_map, ref_map, labels=labels, ignore_empty=True)
    assert ignored["a"] == 0.0 and math.isnan(ignored["b"]) and math.isnan(ignored["c"])
    assert math.isnan(compute_nsd_per_class(pred_map, ref_map, 1.0, labels=labels, ignore_empty=True)["c"])
    assert set(compute_dice_per_class(pred_map, ref_map)) == {"1", "2"}  # no names known: ids present


def test_aggregate_over_cases():
    pred, ref = cube_maps(0, [2.0, 3.0, 3.0])
    dice = DicePerClass(ignore_empty=True)
    dice(pred, ref)
    dice(ref, ref)
    result = dice.aggregate()
    assert result["organ"] == pytest.approx(((SIDE - 1) / SIDE + 1.0) / 2)
    assert math.isnan(result["lesion"])
    nsd = SurfaceDicePerClass(tolerance_mm=2.0)
    nsd(pred, ref)
    assert nsd.aggregate() == {"organ": pytest.approx(1.0), "lesion": 1.0}


def test_geometry_must_match():
    pred, ref = cube_maps(0, [1.0, 1.0, 1.0])
    other = LabelMap(pred.array, make_affine([1.0, 1.0, 1.2]))
    with pytest.raises(GeometryError, match="differ in affine"):
        compute_dice_per_class(other, ref)
    with pytest.raises(GeometryError, match="differ in shape"):
        compute_nsd_per_class(LabelMap(pred.array[:10], pred.affine), ref)
    with pytest.raises(ConfigError, match="no NSD tolerance"):
        compute_nsd_per_class(pred, ref, tolerance_mm={"organ": 1.0})


def test_confusion_counts_and_where_errors_go():
    """A 4x4x4 organ (64 voxels): 8 of its voxels predicted as lesion, 4 as background; 6 background voxels
    predicted as organ. Every count is known, and the shares follow from them."""
    from volsynth.evaluation import confusion_counts, confusion_summary

    affine = make_affine([1.0, 1.0, 1.0])
    ref = np.zeros((8, 8, 8), dtype=np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    pred = ref.copy()
    pred[2:4, 2:4, 2:4] = 2  # 8 organ voxels as lesion
    pred[5, 5, 2:6] = 0  # 4 organ voxels missed as background
    pred[0, 0, :6] = 1  # 6 background voxels called organ
    labels = {"background": 0, "organ": 1, "lesion": 2}
    counts = confusion_counts(LabelMap(pred, affine, labels=labels), LabelMap(ref, affine, labels=labels), 3)
    assert counts.sum() == 8**3
    assert counts[1].tolist() == [4, 52, 8] and counts[0].tolist() == [8**3 - 64 - 6, 6, 0]
    summary = confusion_summary(counts + counts, ["background", "organ", "lesion"])  # two cases, summed
    organ = summary["organ"]
    assert organ["voxels"] == 128 and organ["missed"] == pytest.approx(12 / 64)
    assert list(organ["missed_as"]) == ["lesion", "background"]  # largest first
    assert organ["missed_as"]["lesion"] == pytest.approx(8 / 64) and organ["false"] == pytest.approx(6 / 64)
    assert organ["false_from"] == {"background": pytest.approx(6 / 64)}
    assert set(summary) == {"organ"}  # background left out; the lesion has no mask voxels
    with pytest.raises(ConfigError, match="ids outside 0..1"):
        confusion_counts(LabelMap(pred, affine), LabelMap(ref, affine), 2)
