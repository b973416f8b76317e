import copy
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_case, oblique_direction
from volsynth.cli import main
from volsynth.errors import GeometryError, ReadError, WriteError
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

    stored = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6) * 100
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(1.0, -1024.0)  # a CT stored as unsigned with an intercept
    nib.save(image, str(tmp_path / "ct.nii.gz"))
    volume = read_volume(tmp_path / "ct.nii.gz")
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, stored.astype(np.float32) - 1024.0)


def test_a_folder_of_several_series_names_them_and_one_is_picked(tmp_path):
    image, _ = make_case(shape=(12, 10, 4))
    image = image.with_array(np.rint(image.array))
    flat = tmp_path / "export"
    flat.mkdir()
    uids = {}
    for name, volume in (("arterial", image), ("venous", image.with_array(image.array + 100))):
        write_volume(volume, tmp_path / name, description=name)
        for path in sorted((tmp_path / name).glob("*.dcm")):
            uids[name] = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
            path.rename(flat / f"{name}_{path.name}")  # a study exported flat: every series in one folder
    with pytest.raises(ReadError, match="holds 2 DICOM series") as info:
        read_volume(flat)
    assert f"{uids['venous']} (CT, venous, 4 file(s))" in str(info.value) and "--series" in str(info.value)
    _physically_equal(read_volume(flat, series=uids["venous"]), image.with_array(image.array + 100))
    assert main(["convert", str(flat), str(tmp_path / "venous.nii.gz"), "--series", uids["venous"]]) == 0
    _physically_equal(read_volume(tmp_path / "venous.nii.gz"), image.with_array(image.array + 100))
    with pytest.raises(ReadError, match="not one"):  # a series UID for a single file is a mistake, not ignored
        read_volume(write_volume(image, tmp_path / "a.nii.gz"), series=uids["venous"])


def test_a_folder_above_the_series_says_where_they_are(tmp_path):
    image, _ = make_case(shape=(12, 10, 4))
    write_volume(image.with_array(np.rint(image.array)), tmp_path / "patient" / "study" / "series1")
    (tmp_path / "patient" / "notes.txt").write_text("not DICOM")
    with pytest.raises(ReadError, match=r"no DICOM series in this folder itself; 1 folder\(s\) below it hold one: "
                                        r"study/series1"):
        read_volume(tmp_path / "patient")
    masks = tmp_path / "segmentations"  # one mask per class, as TotalSegmentator writes by default
    for name in ("liver", "spleen", "kidney_left", "kidney_right"):
        write_volume(LabelMap((image.array > 0).astype(np.uint8), image.affine), masks / f"{name}.nii.gz")
    with pytest.raises(ReadError, match=r"a folder of 4 volume file\(s\) \(kidney_left.nii.gz, kidney_right.nii.gz, "
                                        r"liver.nii.gz, ...\), not a DICOM series"):
        read_volume(masks)


def test_a_folder_of_one_mask_per_class_reads_as_one_named_label_map(tmp_path):
    _, label = make_case(shape=(12, 10, 6))
    masks = tmp_path / "segmentations"
    for name, value in (("liver", 1), ("hepatic_tumor", 2)):
        write_volume(LabelMap((label.array == value).astype(np.uint8), label.affine), masks / f"{name}.nii.gz")
    write_volume(LabelMap(np.zeros(label.shape, np.uint8), label.affine), masks / "spleen.nii.gz")  # empty: absent
    read = read_label(masks)
    assert read.labels == {"hepatic_tumor": 1, "liver": 2, "spleen": 3}
    np.testing.assert_array_equal(read.array, np.where(label.array == 1, 2, np.where(label.array == 2, 1, 0)))
    write_volume(LabelMap((label.array > 0).astype(np.uint8), label.affine), masks / "organs.nii.gz")
    with pytest.raises(GeometryError, match=r"organs.nii.gz: mask overlaps liver"):
        read_label(masks)
    write_volume(label, masks / "organs.nii.gz")  # a multi-label file is not one class
    with pytest.raises(GeometryError, match=r"organs.nii.gz: not a binary mask \(ids \[1, 2"):
        read_label(masks)
    (masks / "organs.nii.gz").unlink()
    write_volume(LabelMap(np.zeros((4, 4, 4), np.uint8), label.affine), masks / "stomach.nii.gz")
    with pytest.raises(GeometryError, match=r"stomach.nii.gz: mask on another grid than hepatic_tumor.nii.gz"):
        read_label(masks)


def _enhanced_from_series(series: Path, path: Path, order: list[int]) -> Path:
    """An Enhanced CT file (one file, one frame a slice) holding a classic series' slices in ``order``: positions
    per frame, orientation and pixel spacing shared, each frame with a rescale of its own."""
    slices = [pydicom.dcmread(f) for f in sorted(series.glob("*.dcm"))]
    ds = copy.deepcopy(slices[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope",
                "RescaleIntercept"):
        delattr(ds, tag)
    shared, measures, plane = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
    measures.PixelSpacing, plane.ImageOrientationPatient = slices[0].PixelSpacing, slices[0].ImageOrientationPatient
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [plane]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, pixels = [], []
    for n, index in enumerate(order):
        hu = slices[index].pixel_array * float(slices[index].RescaleSlope) + float(slices[index].RescaleIntercept)
        slope, intercept = (1.0, -4096.0) if n % 2 else (2.0, -8192.0)
        pixels.append(np.round((hu - intercept) / slope).astype(np.uint16))
        frame, position, transform = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
        position.ImagePositionPatient = slices[index].ImagePositionPatient
        transform.RescaleSlope, transform.RescaleIntercept = slope, intercept
        frame.PlanePositionSequence, frame.PixelValueTransformationSequence = [position], [transform]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence, ds.NumberOfFrames = frames, len(frames)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.stack(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _compressed(path: Path, syntax: str) -> Path:
    """The file re-encoded in a compressed transfer syntax, as a PACS exports it (GDCM for JPEG Lossless)."""
    if syntax == "rle":
        ds = pydicom.dcmread(path)
        ds.compress(pydicom.uid.RLELossless)
        ds.save_as(path)
    elif syntax == "jpeg-lossless":
        import gdcm

        reader = gdcm.ImageReader()
        reader.SetFileName(str(path))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        assert change.Change()
        file = reader.GetFile()  # only the pixel data is replaced: GDCM's image writer would rewrite the geometry
        file.GetDataSet().Replace(change.GetOutput().GetDataElement())
        file.GetHeader().SetDataSetTransferSyntax(change.GetOutput().GetTransferSyntax())
        writer = gdcm.Writer()
        writer.SetFileName(str(path))
        writer.SetFile(file)
        assert writer.Write()
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
    return path


@pytest.mark.parametrize("syntax", ["none", "rle", "jpeg-lossless"])
def test_an_enhanced_multiframe_file_reads_like_its_classic_series(tmp_path, syntax):
    image, _ = make_case(shape=(12, 10, 5), direction=oblique_direction(20))
    image = image.with_array(np.rint(image.array) * 2)  # even HU: exact under a rescale slope of 2
    series = write_volume(image, tmp_path / "series")
    enhanced = _compressed(_enhanced_from_series(series, tmp_path / "enhanced.dcm", order=[3, 0, 4, 1, 2]), syntax)
    classic = read_volume(series)
    _physically_equal(read_volume(enhanced), classic)
    if syntax != "none":
        return  # the rest concerns the header, not the pixel encoding
    (tmp_path / "folder").mkdir()
    enhanced.rename(tmp_path / "folder" / "IM0001")  # as a scanner exports it: one file, no suffix, in a folder
    from_folder = read_volume(tmp_path / "folder")
    _physically_equal(from_folder, classic)
    assert from_folder.modality == "CT"
    twice = _enhanced_from_series(series, tmp_path / "twice.dcm", order=[0, 1, 1, 2, 3])  # two frames at one place
    with pytest.raises(ReadError, match="two slices at one position"):
        read_volume(twice)
    for damage, message in ((lambda d: delattr(d, "Rows"), "malformed multi-frame DICOM header"),
                            (lambda d: setattr(d, "NumberOfFrames", 9), "NumberOfFrames is 9 but 5"),
                            (lambda d: delattr(d.PerFrameFunctionalGroupsSequence[1], "PlanePositionSequence"),
                             "frame 2 has no ImagePositionPatient")):
        damaged = pydicom.dcmread(twice)
        damage(damaged)
        damaged.save_as(tmp_path / "damaged.dcm")
        with pytest.raises(ReadError, match=f"damaged.dcm: {message}"):
            read_volume(tmp_path / "damaged.dcm")


@pytest.mark.parametrize("unit, scale", [("micron", 1000.0), ("meter", 0.001), ("unknown", 1.0)])
def test_nifti_spatial_units_are_read_as_millimetres(tmp_path, unit, scale):
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-100.0, 20.0, 35.0]
    stored = affine.copy()
    stored[:3, :] *= scale
    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), stored)
    image.header.set_xyzt_units(unit)
    nib.save(image, tmp_path / "units.nii.gz")
    np.testing.assert_allclose(read_volume(tmp_path / "units.nii.gz").affine, affine, atol=1e-5)
