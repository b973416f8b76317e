import numpy as np
import pytest

from tests.conftest import oblique_direction
from volsynth.errors import GeometryError
from volsynth.io import LabelMap, Volume, make_affine
from volsynth.io.volume import orthogonality_error


def test_geometry_properties():
    affine = make_affine([0.7, 0.8, 2.5], [-100, 20, 30], np.diag([-1.0, -1.0, 1.0]))
    volume = Volume(np.zeros((4, 5, 6), dtype=np.int16), affine)
    assert volume.array.dtype == np.float32  # images become float
    np.testing.assert_allclose(volume.spacing, [0.7, 0.8, 2.5])
    assert volume.orientation == "LPS"
    np.testing.assert_allclose(volume.origin, [-100, 20, 30])


def test_reorientation_is_exact_and_keeps_world_positions():
    affine = make_affine([1.0, 2.0, 3.0], [5, -6, 7], oblique_direction(10))
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    volume = Volume(array, affine)
    ras = volume.reoriented("RAS")
    assert ras.orientation == "RAS"
    # the voxel holding a given value lies at the same world position before and after
    for value in (0, 17, 119):
        before = affine @ np.append(np.argwhere(array == value)[0], 1)
        after = ras.affine @ np.append(np.argwhere(ras.array == value)[0], 1)
        np.testing.assert_allclose(before, after, atol=1e-9)


def test_label_map_rejects_fractional_values():
    with pytest.raises(GeometryError, match=r"1 voxel\(s\) that are not whole numbers \(e.g. 1.5\)"):
        LabelMap(np.array([[[0.0, 1.5]]]), np.eye(4))
    with pytest.raises(GeometryError, match=r"e.g. nan"):
        LabelMap(np.array([[[0.0, np.nan]]]), np.eye(4))
    labels = LabelMap(np.array([[[0.0, 2.0]]]), np.eye(4))
    assert labels.array.dtype == np.uint8 and labels.present() == [2]
    # ids stored as floats through scaling arithmetic (as some exporters write them) are the whole numbers they mean
    scaled = LabelMap(np.array([[[0.0, 0.9999999, 4.0000005, 299.99997]]], dtype=np.float32), np.eye(4))
    assert scaled.present() == [1, 4, 300] and scaled.array.dtype == np.int32


def test_orthogonality_error_detects_shear():
    sheared = np.eye(4)
    sheared[0, 1] = 0.3
    assert orthogonality_error(np.eye(4)) == 0
    assert orthogonality_error(sheared) > 0.2


def test_invalid_affine_rejected():
    with pytest.raises(GeometryError):
        Volume(np.zeros((2, 2, 2)), np.full((4, 4), np.nan))
