"""NIfTI readers under corrupted headers and truncated gzip data: a correct read or a one-line error, never a
traceback, a hang or a silently wrong geometry."""

from __future__ import annotations

import gzip
import struct
import tempfile
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hardening.fuzzing import FUZZ, outcome, reference_volume
from volsynth.cli import main
from volsynth.io import read_volume, write_volume

# nifti1 header fields: (byte offset, struct format, count)
FIELDS = {
    "dim": (40, "h", 8), "datatype": (70, "h", 1), "bitpix": (72, "h", 1), "pixdim": (76, "f", 8),
    "vox_offset": (108, "f", 1), "scl_slope": (112, "f", 1), "scl_inter": (116, "f", 1),
    "qform_code": (252, "h", 1), "sform_code": (254, "h", 1), "quatern": (256, "f", 6),
    "srow": (280, "f", 12),
}
GEOMETRY = {"dim", "pixdim", "qform_code", "sform_code", "quatern", "srow"}
ODD_FLOATS = [0.0, -0.0, -1.0, 1.0, float("nan"), float("inf"), float("-inf"), 1e-30, 1e30, 3.5, -2.0, 0.5]
DATATYPES = [0, 1, 2, 4, 8, 16, 64, 128, 256, 512, 768, 1024, 1536, 2304, 7, 3000, -1]

float_value = st.one_of(st.sampled_from(ODD_FLOATS), st.floats(width=32, allow_nan=True, allow_infinity=True))
int_value = st.one_of(st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 7, 8, 32767, -32768]), st.integers(-32768, 32767))


@st.composite
def mutation(draw) -> tuple[str, int, float | int]:
    """(field, element, new value) of one header change."""
    field = draw(st.sampled_from(sorted(FIELDS)))
    offset, kind, count = FIELDS[field]
    index = draw(st.integers(0, count - 1))
    if field == "datatype":
        value = draw(st.sampled_from(DATATYPES))
    else:
        value = draw(float_value if kind == "f" else int_value)
    return field, index, value


def _mutated(data: bytes, changes: list[tuple[str, int, float | int]]) -> bytes:
    data = bytearray(data)
    for field, index, value in changes:
        offset, kind, _ = FIELDS[field]
        struct.pack_into("<" + kind, data, offset + index * struct.calcsize(kind), value)
    return bytes(data)


def _reference_bytes(folder: Path) -> tuple[bytes, object]:
    volume = reference_volume()
    path = write_volume(volume, folder / "reference.nii")
    return path.read_bytes(), volume


def test_corrupted_nifti_headers():
    tally = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        original, volume = _reference_bytes(folder)

        @settings(FUZZ, max_examples=120)
        @given(changes=st.lists(mutation(), min_size=1, max_size=3), compress=st.booleans())
        def case(changes, compress):
            data = _mutated(original, changes)
            path = folder / ("case.nii.gz" if compress else "case.nii")
            path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
            read = outcome(lambda: read_volume(path), tally)
            if read is None:
                return
            header = nib.load(str(path))  # the reference reading of the same header
            assert read.shape == tuple(header.shape[:3])
            np.testing.assert_allclose(read.affine, header.affine, atol=1e-5)
            if not {field for field, _, _ in changes} & GEOMETRY:
                np.testing.assert_allclose(read.affine, volume.affine, atol=1e-4)  # a data field cannot move it

        case()
    print(f"nifti header fuzz: {dict(tally)}")
    assert tally["read"] and tally["error"]  # the fuzzing reaches both outcomes


def test_gzip_truncated_at_any_offset():
    tally = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        volume = reference_volume()
        path = write_volume(volume, folder / "reference.nii.gz")
        original = path.read_bytes()

        @settings(FUZZ, max_examples=60)
        @given(cut=st.integers(0, len(original) - 1))
        def case(cut):
            target = folder / "cut.nii.gz"
            target.write_bytes(original[:cut])
            read = outcome(lambda: read_volume(target), tally)
            if read is not None:  # only the gzip trailer cut off: every voxel is there
                assert cut >= len(original) - 8
                np.testing.assert_array_equal(read.array, volume.array)
                np.testing.assert_allclose(read.affine, volume.affine, atol=1e-5)

        case()
    print(f"gzip truncation fuzz: {dict(tally)}")
    assert tally["error"]


def test_a_corrupt_header_through_the_command_line(tmp_path, capsys):
    original, _ = _reference_bytes(tmp_path)
    bad = tmp_path / "bad.nii"
    bad.write_bytes(_mutated(original, [("sform_code", 0, 0), ("pixdim", 2, 0.0)]))  # the qform's voxel size 0
    assert main(["convert", str(bad), str(tmp_path / "out.nrrd")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: absurd spacing") and err.count("\n") == 1, err
    assert not (tmp_path / "out.nrrd").exists()
