"""Per-plane slicing follows anatomy (RAS), whatever the stored axis order and orientation."""

import numpy as np
import pytest

from volsynth.errors import ConfigError
from volsynth.evaluation.planes import PLANES, extract_slices, scale_intensity, slice_indices
from volsynth.io import Volume, make_affine


def flipped(volume: Volume, axis: int) -> Volume:
    """The same image stored with one array axis reversed (affine adjusted: same world positions)."""
    n = volume.shape[axis]
    flip = np.eye(4)
    flip[axis, axis] = -1.0
    flip[axis, 3] = n - 1
    return volume.with_array(np.flip(volume.array, axis).copy(), volume.affine @ flip)


def permuted(volume: Volume, order: tuple[int, int, int]) -> Volume:
    """The same image stored with array axes in ``order`` (affine columns permuted accordingly)."""
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, list(order)]
    return volume.with_array(np.transpose(volume.array, order).copy(), affine)


@pytest.fixture
def ras_volume() -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.normal(size=(6, 7, 8)).astype(np.float32), make_affine([1.0, 1.5, 2.0], [-3, 4, 5]))


def test_planes_take_ras_axes(ras_volume):
    grid = np.indices(ras_volume.shape)
    for plane, axis, in_plane in (("sagittal", 0, (7, 8)), ("coronal", 1, (6, 8)), ("axial", 2, (6, 7))):
        slices = extract_slices(ras_volume.with_array(grid[axis].astype(np.float32)), plane)
        assert slices.shape == (ras_volume.shape[axis], *in_plane)
        for k, image in enumerate(slices):  # slice k of a plane is constant = its index along that axis
            assert np.all(image == k)


@pytest.mark.parametrize("store", ["lps", "permuted", "lps+permuted"])
def test_same_slices_for_any_stored_orientation(ras_volume, store):
    other = ras_volume
    if "lps" in store:
        other = flipped(flipped(other, 0), 1)
        assert other.orientation == "LPS"
    if "permuted" in store:
        other = permuted(other, (2, 0, 1))
        assert other.orientation != "RAS" and other.shape == (8, 6, 7)
    for plane in PLANES:
        np.testing.assert_array_equal(extract_slices(other, plane), extract_slices(ras_volume, plane))
        np.testing.assert_array_equal(extract_slices(other, plane, 3), extract_slices(ras_volume, plane, 3))


def test_slice_selection_and_errors(ras_volume):
    np.testing.assert_array_equal(slice_indices(8, None), np.arange(8))
    np.testing.assert_array_equal(slice_indices(8, 4), [1, 3, 5, 7])
    np.testing.assert_array_equal(slice_indices(8, 20), np.arange(8))
    assert extract_slices(ras_volume, "axial", 2).shape == (2, 6, 7)
    with pytest.raises(ConfigError, match="unknown plane"):
        extract_slices(ras_volume, "transverse")


def test_scale_intensity():
    array = np.array([-2000.0, -1000.0, 0.0, 1000.0, 3000.0])
    np.testing.assert_allclose(scale_intensity(array, (-1000, 1000)), [-1, -1, 0, 1, 1])
    robust = scale_intensity(np.arange(1001.0), None, (0, 100))
    assert robust.min() == -1 and robust.max() == 1
    assert np.all(scale_intensity(np.full(5, 7.0)) == 0)
    with pytest.raises(ConfigError):
        scale_intensity(array, (1, 1))
