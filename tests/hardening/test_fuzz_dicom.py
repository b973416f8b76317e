"""DICOM series readers under missing tags, mixed series, uneven spacing, gantry tilt and duplicated slices: a
correct read (every slice where its ImagePositionPatient says) or a one-line error; never a traceback or a hang."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import generate_uid

from tests.hardening.fuzzing import FUZZ, outcome, reference_volume
from volsynth.cli import main
from volsynth.io import read_volume, write_volume

LPS = np.diag([-1.0, -1.0, 1.0])
TAGS = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "PixelData",
        "SeriesInstanceUID", "SOPInstanceUID", "Modality", "RescaleSlope", "BitsAllocated", "SliceThickness",
        "InstanceNumber", "StudyInstanceUID", "FrameOfReferenceUID"]
FAULTS = ["drop_tag", "duplicate", "remove_slice", "tilt", "second_series", "rotate_one", "shift_one", "resize_one"]


def _slices(folder: Path) -> list[Path]:
    return sorted(folder.glob("slice_*.dcm"))


def _apply(folder: Path, fault: str, which: int, tag: str, amount: float) -> None:
    slices = _slices(folder)
    path = slices[which % len(slices)]
    ds = pydicom.dcmread(path)
    if fault == "drop_tag":
        if tag in ds:
            delattr(ds, tag)
    elif fault == "duplicate":  # a second copy of one slice, as another instance
        ds.SOPInstanceUID = generate_uid()
        path = folder / "slice_9999.dcm"
    elif fault == "remove_slice":
        path.unlink()
        return
    elif fault == "tilt":  # every slice shifted along the rows in proportion to its index: a gantry tilt
        for index, other in enumerate(slices):
            each = pydicom.dcmread(other)
            position = np.asarray([float(v) for v in each.ImagePositionPatient])
            row = np.asarray([float(v) for v in each.ImageOrientationPatient[3:]])
            each.ImagePositionPatient = [f"{v:.6f}" for v in position + row * amount * index]
            each.save_as(other)
        return
    elif fault == "second_series":
        ds.SeriesInstanceUID = generate_uid()
    elif fault == "rotate_one":
        ds.ImageOrientationPatient = ["0", "1", "0", "1", "0", "0"]
    elif fault == "shift_one":  # one slice moved along the normal: uneven steps
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [f"{position[0]:.6f}", f"{position[1]:.6f}", f"{position[2] + amount:.6f}"]
    elif fault == "resize_one":
        ds.PixelSpacing = [f"{float(ds.PixelSpacing[0]) * (1 + abs(amount)):.6g}", str(ds.PixelSpacing[1])]
    ds.save_as(path)


def _positions_match(read, folder: Path) -> None:
    """A read series holds every slice's pixels at voxels (i, j, k) whose world position is where its
    ImagePositionPatient says: no slice moved, reordered or lost."""
    slices = _slices(folder)
    assert read.shape[2] == len(slices)
    inverse = np.linalg.inv(read.affine)
    for path in slices:
        ds = pydicom.dcmread(path)
        world = LPS @ np.asarray([float(v) for v in ds.ImagePositionPatient])
        index = (inverse @ np.append(world, 1.0))[:3]
        k = int(round(index[2]))
        np.testing.assert_allclose(index, [0.0, 0.0, k], atol=1e-3)
        pixels = ds.pixel_array.T * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        np.testing.assert_allclose(read.array[:, :, k], pixels, atol=1e-3)


def test_damaged_dicom_series():
    tally = Counter()
    volume = reference_volume()
    with tempfile.TemporaryDirectory() as tmp:
        reference = write_volume(volume, Path(tmp) / "reference")

        @settings(FUZZ, max_examples=60)
        @given(faults=st.lists(st.sampled_from(FAULTS), min_size=1, max_size=2), which=st.integers(0, 3),
               tag=st.sampled_from(TAGS), amount=st.sampled_from([0.5, 1.0, 2.5, -1.0, 1e-6]))
        def case(faults, which, tag, amount):
            folder = Path(tmp) / "case"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(reference, folder)
            for fault in faults:
                _apply(folder, fault, which, tag, amount)
            read = outcome(lambda: read_volume(folder), tally)
            if read is None:
                return
            _positions_match(read, folder)
            if "tilt" not in faults:
                assert read.shape[:2] == volume.shape[:2]

        case()
    print(f"dicom series fuzz: {dict(tally)}")
    assert tally["read"] and tally["error"]


def test_gantry_tilt_reads_with_the_slices_positions(tmp_path):
    volume = reference_volume()
    folder = write_volume(volume, tmp_path / "series")
    _apply(folder, "tilt", 0, "", 1.0)
    read = read_volume(folder)
    _positions_match(read, folder)  # each slice where its position says, with its own pixels
    columns = read.affine[:3, :3]
    normal = np.cross(columns[:, 0], columns[:, 1])
    cosine = abs(normal @ columns[:, 2]) / np.linalg.norm(normal) / np.linalg.norm(columns[:, 2])
    assert cosine < 0.99  # the slice axis leans as the tilt does: a sheared affine, not the normal


def test_uneven_spacing_through_the_command_line(tmp_path, capsys):
    folder = write_volume(reference_volume(), tmp_path / "series")
    _apply(folder, "remove_slice", 1, "", 0.0)
    assert main(["convert", str(folder), str(tmp_path / "out.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder}: uneven slice spacing") and err.count("\n") == 1, err
