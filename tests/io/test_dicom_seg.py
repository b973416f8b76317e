"""DICOM SEG: a label map written as a Segmentation object that references its image series, read back as the
same label map (voxels, affine, ids, names); the SEG's references checked with pydicom; bad SEGs are one line."""

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from tests.conftest import oblique_direction
from volsynth.cli import main
from volsynth.errors import ReadError, WriteError
from volsynth.io import LabelMap, Volume, make_affine, read_label, read_volume, write_volume
from volsynth.io.dicom_seg import LABEL_SCHEME, SEGMENTATION_STORAGE, read_dicom_seg, write_dicom_seg

NAMES = {"background": 0, "liver": 1, "spleen": 2, "tumour": 3, "kidney": 4}


def case(direction=None, shape=(14, 12, 6)) -> tuple[Volume, LabelMap]:
    """An image and a label map with liver, tumour and kidney present and spleen (id 2) absent."""
    affine = make_affine((1.5, 0.8, 3.0), (-20.0, 15.0, -30.0), direction)
    rng = np.random.default_rng(0)
    ids = rng.choice([0, 1, 3, 4], size=shape, p=[0.5, 0.2, 0.15, 0.15]).astype(np.uint8)
    image = Volume(rng.normal(0, 100, shape).astype(np.float32), affine, modality="CT")
    return image, LabelMap(ids, affine, labels=NAMES)


def write_pair(folder: Path, image: Volume, label: LabelMap) -> tuple[Path, Path]:
    """The image as a DICOM series and the label map as a SEG referencing it."""
    series = write_volume(image, folder / "ct_image")
    return series, write_dicom_seg(label, series, folder / "ct_label.dcm")


def test_round_trip_oblique_anisotropic_with_an_absent_class(tmp_path):
    image, label = case(direction=np.array([[np.cos(0.35), -np.sin(0.35), 0], [np.sin(0.35), np.cos(0.35), 0],
                                            [0, 0, 1]]))
    _, seg_path = write_pair(tmp_path, image, label)
    back = read_label(seg_path)
    np.testing.assert_array_equal(back.array, label.array)
    np.testing.assert_allclose(back.affine, label.affine, atol=1e-4)
    assert back.labels == {"background": 0, "liver": 1, "tumour": 3, "kidney": 4}  # spleen: no segment


def test_left_handed_seg_lies_on_the_image_series_grid(tmp_path):
    image, label = case(direction=oblique_direction(25))  # a flipped axis: slices are stored along the normal
    series, seg_path = write_pair(tmp_path, image, label)
    back, read_image = read_label(seg_path), read_volume(series)
    np.testing.assert_allclose(back.affine, read_image.affine, atol=1e-4)
    ras_back, ras_label = back.reoriented("RAS"), label.reoriented("RAS")
    np.testing.assert_array_equal(ras_back.array, ras_label.array)
    np.testing.assert_allclose(ras_back.affine, ras_label.affine, atol=1e-4)


def test_seg_references_the_image_series_and_is_marked_synthetic(tmp_path):
    image, label = case()
    series, seg_path = write_pair(tmp_path, image, label)
    seg = pydicom.dcmread(seg_path)
    slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.iterdir())]
    assert seg.SOPClassUID == SEGMENTATION_STORAGE and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == slices[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == slices[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != slices[0].SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for series_item in seg.ReferencedSeriesSequence
                  for item in series_item.ReferencedInstanceSequence}
    assert referenced == {s.SOPInstanceUID for s in slices}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == slices[0].SeriesInstanceUID
    assert seg.ContentLabel == "SYNTHETIC" and "SYNTHETIC" in seg.ContentDescription
    assert "synthetic" in seg.SeriesDescription
    segments = seg.SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["liver", "tumour", "kidney"]
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in segments] == ["1", "3", "4"]
    assert all(s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == LABEL_SCHEME for s in segments)
    assert all(s.SegmentAlgorithmType == "AUTOMATIC" and s.SegmentAlgorithmName == "volsynth" for s in segments)
    assert int(seg.NumberOfFrames) == 3 * image.shape[2]  # every slice of every segment: the full grid
    opened = hd.seg.segread(seg_path)  # highdicom opens it and finds each frame's source slice
    assert opened.get_source_image_uids()[0][1] == slices[0].SeriesInstanceUID


def test_same_label_map_gives_the_same_uids(tmp_path):
    image, label = case()
    first, second = (pydicom.dcmread(write_pair(tmp_path / name, image, label)[1]) for name in ("a", "b"))
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (second.SOPInstanceUID, second.SeriesInstanceUID)
    _, other = write_pair(tmp_path / "c", image, label.with_array(np.where(label.array == 4, 0, label.array)))
    assert pydicom.dcmread(other).SOPInstanceUID != first.SOPInstanceUID


def test_convert_reads_a_seg_file_and_a_folder_holding_one(tmp_path, capsys):
    image, label = case()
    _, seg_path = write_pair(tmp_path, image, label)
    assert main(["convert", str(seg_path), str(tmp_path / "seg.nii.gz")]) == 0
    np.testing.assert_array_equal(read_label(tmp_path / "seg.nii.gz").array, label.array)
    (tmp_path / "segfolder").mkdir()
    (tmp_path / "segfolder" / "seg.dcm").write_bytes(seg_path.read_bytes())
    assert main(["convert", str(tmp_path / "segfolder"), str(tmp_path / "seg.mha")]) == 0
    np.testing.assert_array_equal(read_label(tmp_path / "seg.mha").array, label.array)
    capsys.readouterr()


def _foreign_seg(tmp_path: Path, series: Path, pixels: np.ndarray, kind: str) -> Path:
    """A SEG written with highdicom directly, as another tool would."""
    sources = sorted((pydicom.dcmread(p) for p in series.iterdir()), key=lambda ds: int(ds.InstanceNumber))
    descriptions = [hd.seg.SegmentDescription(n, f"s{n}", codes.SCT.Tissue, codes.SCT.Tissue, "MANUAL")
                    for n in range(1, pixels.shape[-1] + 1)]
    seg = hd.seg.Segmentation(sources, pixels, kind, descriptions, hd.UID(), 3, hd.UID(), 1, "other", "other", "1",
                              "0", omit_empty_frames=False)
    path = tmp_path / f"{kind.lower()}.dcm"
    seg.save_as(path)
    return path


def test_foreign_seg_numbers_are_label_ids(tmp_path):
    image, label = case()
    series = write_volume(image, tmp_path / "ct_image")
    frames = label.array.transpose(2, 1, 0)  # (slices, rows, columns)
    stacked = np.stack([frames == 1, frames == 3], axis=-1).astype(np.uint8)
    back = read_label(_foreign_seg(tmp_path, series, stacked, "BINARY"))
    np.testing.assert_array_equal(back.array, np.where(label.array == 1, 1, np.where(label.array == 3, 2, 0)))
    assert back.labels == {"background": 0, "s1": 1, "s2": 2}


@pytest.mark.parametrize("kind, message", [("BINARY", "segments overlap"), ("FRACTIONAL", "FRACTIONAL")])
def test_overlapping_or_fractional_seg_is_one_line(tmp_path, capsys, kind, message):
    image, label = case()
    series = write_volume(image, tmp_path / "ct_image")
    frames = label.array.transpose(2, 1, 0)
    stacked = np.stack([frames > 0, frames == 3], axis=-1).astype(np.uint8)  # tumour inside both
    if kind == "FRACTIONAL":
        stacked = (frames == 3)[..., None].astype(np.float32) * 0.5
    path = _foreign_seg(tmp_path, series, stacked, kind)
    with pytest.raises(ReadError, match=message):
        read_label(path)
    assert main(["convert", str(path), str(tmp_path / "out.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.nii.gz").exists()


def test_refusals(tmp_path):
    image, label = case()
    series = write_volume(image, tmp_path / "ct_image")
    with pytest.raises(WriteError, match="no labelled voxel"):
        write_dicom_seg(label.with_array(np.zeros_like(label.array)), series, tmp_path / "empty.dcm")
    with pytest.raises(WriteError, match="only as a DICOM SEG"):
        write_volume(label, tmp_path / "x.dcm")
    with pytest.raises(ReadError, match="not a DICOM Segmentation"):
        read_dicom_seg(series)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct_image"]
