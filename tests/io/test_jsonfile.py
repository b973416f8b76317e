import pytest

from volsynth.errors import DatasetError, ReadError
from volsynth.io.jsonfile import read_json, write_json


def test_read_json_from_file_or_folder_and_its_errors(tmp_path):
    write_json(tmp_path / "doc.json", {"a": 1})
    assert read_json(tmp_path / "doc.json") == {"a": 1}
    assert read_json(tmp_path, name="doc.json") == {"a": 1}  # a folder holding it
    with pytest.raises(DatasetError, match="nope.json: gone \\(make it\\)"):
        read_json(tmp_path / "nope.json", error=DatasetError, missing="gone", hint="make it")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ReadError, match="bad.json: invalid JSON"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ReadError, match="expected a JSON object"):
        read_json(tmp_path / "list.json")
    assert read_json(tmp_path / "list.json", kind=None) == [1, 2]
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ReadError, match="invalid JSON"):
        read_json(tmp_path / "binary.json")
