"""Every shipped model says what it is (model_index.json) and is rebuilt by one recipe in recipes/."""

import json
from pathlib import Path

import pytest

from volsynth.errors import ConfigError
from volsynth.models.checkpoint import sha256_file
from volsynth.models.index import MODEL_INDEX, read_model_index, write_model_index
from volsynth.training.recipe import load_recipe
from volsynth.training.recipe_schema import STAGE_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
MODELS = sorted(p.parent for p in (ROOT / "models").glob(f"*/{MODEL_INDEX}"))


def test_every_shipped_model_has_an_index():
    assert sorted(p.name for p in MODELS) == sorted(p.parent.name for p in (ROOT / "models").glob("*/meta.json"))


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.name)
def test_shipped_model_is_rebuilt_by_its_recipe(model, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name models/ and recipes/ from the repository root
    index = read_model_index(model)
    meta = json.loads((model / "meta.json").read_text())
    recipe_file = ROOT / index.provenance.recipe
    assert recipe_file.is_file() and recipe_file.parent == ROOT / "recipes"
    recipe = {k: v for k, v in load_recipe(recipe_file).items() if not k.startswith("_")}
    resolved = index.provenance.resolved_recipe
    assert recipe == resolved  # loading the recipe gives the recorded settings, stage blocks and steps included
    stages = STAGE_SETTINGS[index.kind]
    assert set(index.provenance.stages) == set(meta["steps"]) and set(index.provenance.stages) <= set(stages)
    for name, record in index.provenance.stages.items():
        assert record.steps == meta["steps"][name], name
        if record.trained:
            assert resolved[name]["train"]["steps"] == record.steps, name
            assert record.total_steps == record.steps + (record.init.steps if record.init else 0)
        else:
            assert record.pretrained is not None and record.pretrained.path.startswith("models/")
        for parent in (record.init, record.pretrained):
            if parent is None:
                continue
            assert not (parent.path or "").startswith("runs/"), name  # never a git-ignored run folder
            if parent.recipe:
                assert (ROOT / parent.recipe).is_file()
                assert load_recipe(ROOT / parent.recipe)[name]["train"]["steps"] == parent.steps
            else:
                assert json.loads((ROOT / parent.path / "meta.json").read_text())["files"][
                    "model.safetensors"] == parent.sha256
    digest = sha256_file(model / "model.safetensors")
    assert {c.sha256 for c in index.components.values()} == {digest} == {meta["files"]["model.safetensors"]}
    assert all(c.parameters > 0 for c in index.components.values())
    assert index.sampling == meta.get("sampling", {})
    assert index.name == meta["recipe"] == resolved["name"]


def test_abdomen_refined_64_records_its_12000_step_refiner():
    index = read_model_index(ROOT / "models" / "abdomen-refined-64")
    refiner = index.provenance.stages["refiner"]
    assert (refiner.steps, refiner.init.steps, refiner.total_steps) == (4000, 8000, 12000)
    assert refiner.init.recipe == "recipes/abdomen-refined-64-stage1.yaml"


def test_read_model_index_names_the_file_and_key(tmp_path):
    index = read_model_index(ROOT / "models" / "tiny-abdomen")
    write_model_index(tmp_path, index)
    assert read_model_index(tmp_path) == index
    data = json.loads((tmp_path / MODEL_INDEX).read_text())
    for change, message in ((lambda d: d.update(version=2), "written by a newer volsynth .* version 2"),
                            (lambda d: d.update(version=0), "version: expected 1"),
                            (lambda d: d.update(format="x"), "format: expected"),
                            (lambda d: d.update(kind="gan"), "kind: expected one of"),
                            (lambda d: d["provenance"]["stages"]["diffusion"].update(stpes=1),
                             "unknown key provenance.stages.diffusion.stpes"),
                            (lambda d: d["components"]["unet"].pop("sha256"), "missing key components.unet.sha256")):
        broken = json.loads(json.dumps(data))
        change(broken)
        (tmp_path / MODEL_INDEX).write_text(json.dumps(broken))
        with pytest.raises(ConfigError, match=message) as caught:
            read_model_index(tmp_path)
        assert str(tmp_path / MODEL_INDEX) in str(caught.value)


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.name)
def test_shipped_model_names_the_phantom_generator_its_recipe_pins(model):
    index = read_model_index(model)
    data = index.provenance.resolved_recipe["data"]["phantom"]
    entries = data if isinstance(data, list) else [data]
    assert all(entry.get("generator_version") == 1 for entry in entries)  # rebuilt on the phantoms it learnt from
    assert index.provenance.phantom_generators == [
        {"kind": kind, "version": 1} for kind in dict.fromkeys(entry["kind"] for entry in entries)]
    card = (model / "MODEL_CARD.md").read_text()
    assert "phantom generator version 1" in card
    assert all("--generator-version 1" in line for line in card.splitlines() if "volsynth phantom " in line)
