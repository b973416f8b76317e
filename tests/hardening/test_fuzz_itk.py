"""NRRD and MetaImage readers under wrong sizes, encodings, types, spacings and missing data files: a correct read or
a one-line error, never a traceback, a hang or a silently wrong geometry."""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hardening.fuzzing import FUZZ, outcome, reference_volume
from volsynth.cli import main
from volsynth.io import read_volume, write_volume

ODD_NUMBERS = ["0", "-1", "nan", "inf", "1e308", "1e-30", "2", "abc", "", "3.5", "-0"]
NRRD_VALUES = {
    "sizes": ["6 5 4", "6 5", "6 5 4 2", "7 5 4", "6 5 40", "0 5 4", "-6 5 4", "999999 999999 999999", "a b c"],
    "encoding": ["raw", "gzip", "bzip2", "ascii", "hex", "jpeg", ""],
    "type": ["float", "double", "short", "uchar", "int", "block", "complex", ""],
    "dimension": ["3", "2", "4", "0", "-1", "x"],
    "space directions": ["(0,0,0) (0,-2,0) (0,0,3)", "(nan,0,0) (0,-2,0) (0,0,3)", "(1,0,0) (1,0,0) (0,0,3)",
                         "(-1.5,0,0) (0,-2,0)", "none (0,-2,0) (0,0,3)", "(1e300,0,0) (0,1,0) (0,0,1)"],
    "space origin": ["(nan,0,0)", "(1,2)", "(inf,0,0)", "(1e308,1e308,1e308)"],
    "endian": ["big", "little", "middle"],
}
MHD_VALUES = {
    "DimSize": ["6 5 4", "6 5", "7 5 4", "0 5 4", "-6 5 4", "6 5 400", "99999 99999 99999"],
    "ElementSpacing": ["1.5 2 3", "0 2 3", "-1.5 2 3", "nan 2 3", "1.5 2", "inf 1 1"],
    "TransformMatrix": ["0 0 0 0 0 0 0 0 0", "1 0 0 1 0 0 0 0 1", "nan 0 0 0 1 0 0 0 1", "1 0 0"],
    "ElementType": ["MET_FLOAT", "MET_DOUBLE", "MET_SHORT", "MET_UCHAR", "MET_NONE", "MET_FLOAT_ARRAY"],
    "CompressedData": ["True", "False", "maybe"],
    "ElementDataFile": ["missing.zraw", "", "LOCAL"],
    "NDims": ["3", "2", "4", "0"],
}
GEOMETRY_KEYS = {"sizes", "space directions", "space origin", "dimension", "DimSize", "ElementSpacing",
                 "TransformMatrix", "NDims", "Offset"}


def _replace(header: str, key: str, value: str, separator: str) -> str:
    pattern = re.compile(rf"^{re.escape(key)}{re.escape(separator)}.*$", re.MULTILINE)
    return pattern.sub(lambda m: f"{key}{separator}{value}", header, count=1)


def header_changes(values: dict[str, list[str]], min_size: int):
    """Up to three (key, bad value) replacements of a header, keys from ``values``."""
    pair = st.sampled_from(sorted(values)).flatmap(lambda key: st.tuples(st.just(key), st.sampled_from(values[key])))
    return st.lists(pair, min_size=min_size, max_size=3)


def _check(read, volume, keys: set[str]) -> None:
    """A read from a changed header: its geometry is the original one unless a geometry key was changed."""
    if read is not None and not keys & GEOMETRY_KEYS:
        np.testing.assert_allclose(read.affine, volume.affine, atol=1e-4)
        assert read.shape == volume.shape


def test_corrupted_nrrd_headers():
    tally = Counter()
    volume = reference_volume()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = write_volume(volume, folder / "reference.nrrd").read_bytes()
        header, body = data.split(b"\n\n", 1)

        @settings(FUZZ, max_examples=80)
        @given(changes=header_changes(NRRD_VALUES, min_size=1),
            cut=st.one_of(st.none(), st.integers(0, len(body) - 1)))
        def case(changes, cut):
            text = header.decode()
            for key, value in changes:
                text = _replace(text, key, value, ": ")
            path = folder / "case.nrrd"
            path.write_bytes(text.encode() + b"\n\n" + (body if cut is None else body[:cut]))
            read = outcome(lambda: read_volume(path), tally)
            _check(read, volume, {key for key, _ in changes} | ({"sizes"} if cut is not None else set()))

        case()
    print(f"nrrd header fuzz: {dict(tally)}")
    assert tally["read"] and tally["error"]


def test_corrupted_metaimage_headers_and_missing_data_files():
    tally = Counter()
    volume = reference_volume()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        header = write_volume(volume, folder / "reference.mhd").read_text()
        raw = (folder / "reference.zraw").read_bytes()

        @settings(FUZZ, max_examples=60)
        @given(changes=header_changes(MHD_VALUES, min_size=0),
            data=st.sampled_from(["whole", "missing", "truncated"]))
        def case(changes, data):
            text = header.replace("reference.zraw", "case.zraw")
            for key, value in changes:
                text = _replace(text, key, value, " = ")
            (folder / "case.mhd").write_text(text)
            (folder / "case.zraw").unlink(missing_ok=True)
            if data != "missing":
                (folder / "case.zraw").write_bytes(raw if data == "whole" else raw[: len(raw) // 2])
            read = outcome(lambda: read_volume(folder / "case.mhd"), tally)
            if data != "whole" and "CompressedData" not in dict(changes):
                assert read is None  # no data, or half of it, is never a read
            _check(read, volume, {key for key, _ in changes})

        case()
    print(f"metaimage fuzz: {dict(tally)}")
    assert tally["read"] and tally["error"]


def test_metaimage_writes_leave_no_temporary_and_name_the_final_data_file(tmp_path):
    for name, data in (("a.mhd", "a.zraw"), ("b.nhdr", "b.raw.gz")):
        write_volume(reference_volume(), tmp_path / name)
        assert (tmp_path / data).is_file()
        assert data in (tmp_path / name).read_text(errors="replace")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mhd", "a.zraw", "b.nhdr", "b.raw.gz"]


def test_missing_raw_file_through_the_command_line(tmp_path, capsys):
    write_volume(reference_volume(), tmp_path / "a.mhd")
    (tmp_path / "a.zraw").unlink()
    assert main(["convert", str(tmp_path / "a.mhd"), str(tmp_path / "out.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'a.mhd'}: ") and err.count("\n") == 1, err
