import gzip
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_case, oblique_direction
from volsynth.errors import ReadError, WriteError
from volsynth.io import LabelMap, Volume, make_affine, read_label, read_volume, write_volume
from volsynth.io.dicom import SYNTHETIC_MARK


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    """Rotation from three Euler angles."""
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


geometry = st.tuples(
    st.lists(st.floats(0.3, 6.0), min_size=3, max_size=3),
    st.lists(st.floats(-400, 400), min_size=3, max_size=3),
    st.lists(st.floats(-np.pi, np.pi), min_size=3, max_size=3),
    st.lists(st.booleans(), min_size=3, max_size=3),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(geometry, st.sampled_from([".nii.gz", ".nii", ".nrrd", ".mha"]))
def test_file_round_trip_keeps_affine_and_values(tmp_path, geom, suffix):
    spacing, origin, angles, flips = geom
    direction = _rotation(*angles) @ np.diag([-1.0 if f else 1.0 for f in flips])
    affine = make_affine(spacing, origin, direction)
    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(size=(5, 4, 3)).astype(np.float32), affine)
    path = write_volume(volume, tmp_path / f"v{suffix}")
    back = read_volume(path)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, volume.array)
    labels = LabelMap((volume.array > 0).astype(np.uint8) * 3, affine)
    back_labels = read_label(write_volume(labels, tmp_path / f"l{suffix}"))
    np.testing.assert_array_equal(back_labels.array, labels.array)
    assert np.issubdtype(back_labels.array.dtype, np.integer)


def _physically_equal(a, b, atol=1e-4):
    """Same image in the world: equal after exact reorientation to RAS."""
    a, b = a.reoriented("RAS"), b.reoriented("RAS")
    np.testing.assert_allclose(a.affine, b.affine, atol=atol)
    np.testing.assert_allclose(a.array, b.array, atol=1e-3)


@pytest.mark.parametrize("compression", [None, "jpeg2000"])
def test_dicom_series_round_trip(tmp_path, compression):
    image, label = make_case(shape=(40, 36, 6), direction=oblique_direction(25))
    image = image.with_array(np.rint(image.array))  # CT is stored in whole HU
    folder = write_volume(image, tmp_path / "series", compression=compression)
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 6  # one file per slice
    datasets = [pydicom.dcmread(f) for f in files]
    assert len({d.SeriesInstanceUID for d in datasets}) == 1
    assert len({d.StudyInstanceUID for d in datasets}) == 1
    assert len({d.FrameOfReferenceUID for d in datasets}) == 1
    assert len({d.SOPInstanceUID for d in datasets}) == 6
    first = datasets[0]
    assert first.Modality == "CT" and first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert first.ImageComments == SYNTHETIC_MARK and "synthetic" in first.SeriesDescription
    assert [float(v) for v in first.PixelSpacing] == pytest.approx([1.6, 1.5])
    if compression:
        assert first.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    back = read_volume(folder)
    assert back.modality == "CT"
    _physically_equal(back, image)


def test_dicom_label_series_and_flipped_slice_axis(tmp_path):
    # slice axis pointing against the image-plane normal: readers sort slices, the world image is unchanged
    _, label = make_case(shape=(12, 10, 5), direction=np.diag([1.0, 1.0, -1.0]))
    back = read_label(write_volume(label, tmp_path / "labels"))
    _physically_equal(back, label)


def test_dicom_rejects_sheared_affine(tmp_path):
    affine = np.eye(4)
    affine[0, 2] = 0.5
    with pytest.raises(Exception, match="perpendicular"):
        write_volume(Volume(np.zeros((4, 4, 3)), affine), tmp_path / "series")
    assert not (tmp_path / "series").exists()


def test_truncated_gzip_is_a_clear_error(tmp_path):
    image, _ = make_case()
    path = write_volume(image, tmp_path / "v.nii.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadError, match="truncated|unreadable") as info:
        read_volume(path)
    assert str(path) in str(info.value)


def test_not_3d_and_missing_and_unknown_suffix(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "four.nii.gz")
    with pytest.raises(ReadError, match="3D"):
        read_volume(tmp_path / "four.nii.gz")
    with pytest.raises(ReadError, match="not found"):
        read_volume(tmp_path / "nope.nii.gz")
    with pytest.raises(ReadError, match="unknown volume format"):
        read_volume(Path(__file__))


def test_failed_write_keeps_existing_file(tmp_path):
    image, _ = make_case()
    path = write_volume(image, tmp_path / "v.nii.gz")
    before = path.read_bytes()
    bad = Volume(np.zeros((2, 2, 2, 2), np.float32), np.eye(4))
    with pytest.raises(WriteError):
        write_volume(bad, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.nii.gz"]  # no partial file left


def test_nifti_writes_are_deterministic(tmp_path):
    image, _ = make_case()
    a = write_volume(image, tmp_path / "a.nii.gz").read_bytes()
    b = write_volume(image, tmp_path / "b.nii.gz").read_bytes()
    assert a == b
    assert gzip.decompress(a)  # a valid gzip stream


def test_dicom_folder_not_overwritten_without_permission(tmp_path):
    image, _ = make_case(shape=(8, 8, 3))
    folder = write_volume(image, tmp_path / "series")
    names = sorted(p.name for p in folder.iterdir())
    with pytest.raises(WriteError, match="not empty"):
        write_volume(image, folder, overwrite=False)
    assert sorted(p.name for p in folder.iterdir()) == names


def test_scaled_nifti_integers_are_read_as_float32_values(tmp_path):
    import nibabel as nib

    stored = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6) * 100
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(1.0, -1024.0)  # a CT stored as unsigned with an intercept
    nib.save(image, str(tmp_path / "ct.nii.gz"))
    volume = read_volume(tmp_path / "ct.nii.gz")
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, stored.astype(np.float32) - 1024.0)
