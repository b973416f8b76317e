import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from volsynth.errors import ConfigError
from volsynth.evaluation.segmentor import SegmentorSettings, read_segmentor_settings
from volsynth.pipelines.generate import SynthesisPipeline
from volsynth.training.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]


def _train(out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "volsynth.cli", "train", "--recipe", str(ROOT / "recipes" / "tiny.yaml"),
               "--out", str(out), "--no-progress"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_tiny_recipe_survives_sigkill_and_resumes(tmp_path):
    out = tmp_path / "run"
    first = _train(out)
    deadline = time.time() + 900  # generous: the machine may be shared
    checkpoints = out / "autoencoder" / "checkpoints"
    while time.time() < deadline and not (checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*/meta.json"))):
        assert first.poll() is None, first.stdout.read()
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = sorted(p.name for p in checkpoints.glob("checkpoint-*"))
    assert killed_at and not (out / "model").exists()
    dataset_stamp = (out / "data" / "dataset.json").stat().st_mtime_ns
    second = _train(out)
    log, _ = second.communicate(timeout=600)
    assert second.returncode == 0, log[-3000:]
    assert "stage data" not in log and "stage prepare" not in log  # finished stages are skipped
    assert "stage autoencoder" in log and (out / "model" / "meta.json").is_file()
    assert (out / "data" / "dataset.json").stat().st_mtime_ns == dataset_stamp
    steps = [json.loads(line)["step"] for line in (out / "autoencoder" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 80  # one continuous curve, no repeated steps
    pipe = SynthesisPipeline.from_pretrained(out / "model")
    result = pipe(prompt="No focal liver lesion.", seed=0, steps=3)
    assert result.image.shape == (32, 32, 32)
    meta = json.loads((out / "model" / "meta.json").read_text())
    assert meta["recipe"] == "tiny" and meta["steps"] == {"autoencoder": 80, "diffusion": 100, "controlnet": 40}


def test_recipe_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {phantom: {kind: abdomen-ct}}\nfoo: 1\n")
    with pytest.raises(ConfigError, match="unknown key foo"):
        load_recipe(bad)
    bad.write_text("name: x\n")
    with pytest.raises(ConfigError, match="exactly one of 'phantom' or 'dataset'"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_reads(path):
    if path.parent.name == "segmentor":
        SegmentorSettings.from_dict(read_segmentor_settings(path)).check()
    else:
        assert load_recipe(path)["_path"] == str(path)


def test_recipes_hold_only_shipped_and_ci_recipes():
    """recipes/ holds the recipes of shipped models (and their chains and shared bases), the CI-sized tiny ones
    and the evaluation segmentors; experiments live in research/recipes."""
    for path in (ROOT / "recipes").glob("*.yaml"):
        text = path.read_text()
        assert "session" not in text.lower() and not any(f"seed 00{n}" in text for n in range(5)), path.name


def test_a_late_stage_typo_fails_when_the_recipe_is_read():
    """Every stage block is parsed up front: a typo in the ControlNet block must not wait for the autoencoder and
    UNet to train first."""
    tiny = ROOT / "recipes" / "tiny.yaml"
    for bad, message in (("controlnet.hide_clas=0.3", r"unknown key controlnet.hide_clas \(known: .*hide_class"),
                         ("diffusion.train.stesp=3", r"unknown key diffusion.train.stesp \(known: steps, batch_size"),
                         ("controlnet.train.steps=many", "controlnet.train.steps: expected int, got str"),
                         ("diffusion.num_train_timesteps=[1]", "diffusion.num_train_timesteps: expected int"),
                         ("autoencoder=3", "autoencoder: must be a mapping")):
        with pytest.raises(ConfigError, match=message):
            load_recipe(tiny, [bad])
    with pytest.raises(ConfigError, match="unknown key superres.factr"):
        load_recipe(ROOT / "recipes" / "tiny-hierarchical.yaml", ["superres.factr=2"])
    with pytest.raises(ConfigError, match="unknown key segguided.slice_axes"):
        load_recipe(ROOT / "recipes" / "tiny-sgd.yaml", ["segguided.slice_axes=axial"])
    with pytest.raises(ConfigError, match="unknown key segguided.init"):  # init: serves latent stages only
        load_recipe(ROOT / "recipes" / "tiny-sgd.yaml", ["segguided.init=models/tiny-sgd"])


def test_overrides_set_nested_values_and_report_bad_ones(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "tiny-sgd.yaml",
                         ["segguided.ablation=0", "segguided.train.steps=7", "model.dtype=bfloat16", "name=x"])
    assert recipe["segguided"]["ablation"] == 0 and recipe["segguided"]["train"]["steps"] == 7
    assert recipe["segguided"]["train"]["lr"] == 0.002  # untouched neighbours stay
    assert recipe["model"] == {"dtype": "bfloat16"} and recipe["name"] == "x"
    for bad, message in (("segguided.ablation", "bad override"), ("name.x=1", "is not a block"),
                         ("segguided.ablation=[", "bad value"), ("model.sampling.guidance=2", "model.sampling key"),
                         ("model.sampling=2", "model.sampling: expected dict, got int"),
                         ("model.sampling.with_mask.guidance=2", "model.sampling.with_mask key"),
                         ("model.sampling.with_mask=2", "with_mask must be a mapping")):
        with pytest.raises(ConfigError, match=message):
            load_recipe(ROOT / "recipes" / "tiny-sgd.yaml", [bad])
    from volsynth.cli import main

    assert main(["train", "--recipe", str(ROOT / "recipes" / "tiny.yaml"), "--out", str(tmp_path / "o"),
                 "--set", "autoencoder.train.steps"]) == 2
    assert not (tmp_path / "o").exists()


def test_resume_with_other_settings_is_refused_but_longer_training_is_allowed(tmp_path):
    from volsynth.training.recipe import RECIPE_FILE, pin_recipe, recipe_changes

    path = ROOT / "recipes" / "tiny-sgd.yaml"
    out = tmp_path / "run"
    out.mkdir()
    pin_recipe(load_recipe(path, ["segguided.ablation=0"]), out)
    assert yaml_load(out / RECIPE_FILE)["segguided"]["ablation"] == 0
    pin_recipe(load_recipe(path, ["segguided.ablation=0"]), out)  # same settings: fine
    pin_recipe(load_recipe(path, ["segguided.ablation=0", "segguided.train.steps=999", "model.dtype=float16"]), out)
    assert yaml_load(out / RECIPE_FILE)["segguided"]["train"]["steps"] == 999  # the longer run is pinned
    with pytest.raises(ConfigError, match="segguided.ablation") as caught:
        pin_recipe(load_recipe(path), out)  # the --set forgotten on resume
    assert str(out / RECIPE_FILE) in str(caught.value)
    (out / "model").mkdir()
    (out / "model" / "meta.json").write_text("{}")
    with pytest.raises(ConfigError, match="model.dtype"):  # the model is assembled: its settings are fixed
        pin_recipe(load_recipe(path, ["segguided.ablation=0", "segguided.train.steps=999", "model.dtype=bfloat16"]),
                   out)
    assert recipe_changes({"a": {"b": 1}}, {"a": {"b": 1, "c": None}}) == ["a.c"]
    from volsynth.cli import main

    assert main(["train", "--recipe", str(path), "--out", str(out), "--no-progress"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["model", RECIPE_FILE]  # nothing trained, nothing lost


def test_base_inheritance_merges_deeply_and_refuses_cycles(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("name: a\nseed: 3\ndata: {phantom: {kind: abdomen-ct, cases: 4}}\n"
                                     "prepare: {size: 32, margin_mm: 15}\ntext_encoder: 'tiny:32'\n")
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nname: b\nprepare: {size: 16}\n")
    (tmp_path / "c.yaml").write_text("base: sub/b.yaml\nname: c\ndiffusion: {size: tiny, train: {steps: 5}}\n")
    recipe = load_recipe(tmp_path / "c.yaml", ["diffusion.train.lr=0.01"])
    assert recipe["name"] == "c" and recipe["seed"] == 3 and "base" not in recipe
    assert recipe["prepare"] == {"size": 16, "margin_mm": 15}  # the child wins key by key
    assert recipe["diffusion"]["train"] == {"steps": 5, "lr": 0.01}
    (tmp_path / "a.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml: recipe not found"):
        load_recipe(tmp_path / "d.yaml")


def test_train_refuses_a_non_empty_folder_it_did_not_make(tmp_path, capsys):
    from volsynth.cli import main

    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["train", "--recipe", str(ROOT / "recipes" / "tiny.yaml"), "--out", str(out), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing deleted, nothing written


def test_resume_needs_a_run_and_reads_the_pinned_recipe(tmp_path, capsys):
    from volsynth.cli import main
    from volsynth.training.recipe import pin_recipe, pinned_recipe

    assert main(["train", "--resume", "--out", str(tmp_path / "none")]) == 2
    assert "no run here" in capsys.readouterr().err
    out = tmp_path / "run"
    out.mkdir()
    pin_recipe(load_recipe(ROOT / "recipes" / "tiny-sgd.yaml", ["segguided.ablation=0"]), out)
    recipe = pinned_recipe(out, ["segguided.train.steps=9"])
    assert recipe["segguided"]["ablation"] == 0 and recipe["segguided"]["train"]["steps"] == 9
    assert recipe["_source"].endswith("recipes/tiny-sgd.yaml")  # the index names the recipe file, not the pin
    assert main(["train", "--resume", "--out", str(out), "--set", "segguided.ablation=1"]) == 2
    assert "segguided.ablation" in capsys.readouterr().err
    assert "--resume" in __import__("subprocess").run(
        [sys.executable, "-m", "volsynth.cli", "train", "--help"], capture_output=True, text=True).stdout


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_assembled_model_stores_the_recipes_sampling_recommendation(tiny_model, tmp_path):
    from volsynth.training.recipe import assemble_model

    root = tiny_model.parent
    model = assemble_model(root / "ae" / "checkpoints" / "checkpoint-0000002",
                           root / "diffusion" / "checkpoints" / "checkpoint-0000002", tmp_path / "model",
                           {"name": "x", "model": {"sampling": {"mask_guidance": 2.0, "controlnet_scale": 2.0}}})
    meta = json.loads((model / "meta.json").read_text())
    assert meta["sampling"] == {"mask_guidance": 2.0, "controlnet_scale": 2.0}
    assert "sampling" not in json.loads((tiny_model / "meta.json").read_text())  # none recommended: none stored
