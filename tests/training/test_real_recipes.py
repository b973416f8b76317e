"""Real-data recipes: their smoke profiles run end to end at the recipe's grid; profiles, data overrides, a missing
dataset, partial labels and the CT window in HU."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import write_nnunet
from volsynth.cli import main
from volsynth.data.plan import CT_SCHEME, Normalization, Plan
from volsynth.data.prepare import PrepareOptions, prepare_dataset
from volsynth.errors import ConfigError
from volsynth.io import read_label, read_volume, write_volume
from volsynth.io.volume import Volume
from volsynth.training.data import load_prepared
from volsynth.training.latents import known_classes
from volsynth.training.recipe import load_recipe, pin_recipe
from volsynth.training.recipe_schema import prepare_options
from volsynth.training.runner import resolve_recipe, run_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
# recipe -> (--set values for the smoke test, grid the test expects, CT window or None for MR)
REAL = {
    "liver-ct-128": ([], 128, [-1000.0, 1000.0]),
    "abdomen-ct-256": ([], 256, [-1000.0, 1000.0]),  # autoencoder on 64^3 patches, windowed encode
    "liver-mr-128": ([], 128, None),
}


def _volsynth(log: Path, *args: str) -> tuple[int, str, str]:
    """Run the CLI from the repository root; its exit code, output, and wall time and peak memory as text."""
    start = time.perf_counter()
    with log.open("w") as stream:
        process = subprocess.Popen([sys.executable, "-m", "volsynth.cli", *args], stdout=stream,
                                   stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    cost = f"{time.perf_counter() - start:.0f} s, peak {usage.ru_maxrss / 1e6:.2f} GB"
    return process.returncode, log.read_text()[-3000:], cost


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL))
def test_smoke_profile_trains_every_stage_and_generates_at_the_grid(name, tmp_path):
    sets, grid, window = REAL[name]
    out = tmp_path / "run"
    code, log, train_cost = _volsynth(tmp_path / "train.log", "train", "--recipe", str(RECIPES / f"{name}.yaml"),
                                      "--profile", "smoke", "--out", str(out), "--no-progress",
                                      *[a for s in sets for a in ("--set", s)])
    assert code == 0, log
    pinned = yaml.safe_load((out / "recipe.yaml").read_text())
    assert pinned["profile"] == "smoke" and "profiles" not in pinned and "dataset" not in pinned["data"]
    meta = json.loads((out / "model" / "meta.json").read_text())
    plan = Plan.from_dict(meta["plan"])
    assert plan.size == [grid] * 3 and set(meta["steps"]) == {"autoencoder", "diffusion", "controlnet"}
    assert plan.partial_labels == pinned["prepare"].get("partial_labels")
    mask = sorted((out / "prepared" / "labelsTr").glob("*.nii.gz"))[0]
    code, log, generate_cost = _volsynth(tmp_path / "generate.log", "generate", str(out), "--mask", str(mask),
                                         "--steps", "2", "--out", str(tmp_path / "gen"), "--no-progress")
    assert code == 0, log
    image = read_volume(tmp_path / "gen" / "job000_00_image.nii.gz")
    assert image.shape == (grid,) * 3
    np.testing.assert_allclose(image.affine, read_label(mask).affine, atol=1e-4)
    if window is not None:  # CT: the plan holds the recipe's window and the output is in HU inside it
        assert plan.normalization[0].scheme == "ct_window" and plan.normalization[0].window == window
        assert window[0] - 1e-2 <= image.array.min() and image.array.max() <= window[1] + 1e-2
    else:
        assert plan.normalization[0].scheme == "mr_percentile" and plan.modality == "MR"
    print(f"{name}: train {train_cost}; generate {generate_cost}")


def test_generated_ct_is_written_back_in_hu_through_the_plan():
    """A network output of -1 is the window's lower bound in the written volume, +1 its upper bound."""
    options, _ = prepare_options(load_recipe(RECIPES / "liver-ct-128.yaml")["prepare"], "liver-ct-128.yaml")
    assert options.window == [-1000, 1000]
    plan = Plan(spacing=[1.5] * 3, size=[4] * 3, normalization=[Normalization(CT_SCHEME, options.window)],
                labels={"liver": 1}, label_sources={"liver": [1]}, modality="CT", channel_names={"0": "CT"})
    output = Volume(np.array([-1.0, 0.0, 1.0], dtype=np.float32).reshape(3, 1, 1), np.eye(4), modality="CT")
    np.testing.assert_allclose(plan.denormalize(output).array.ravel(), [-1000.0, 0.0, 1000.0])


def test_profiles_apply_before_set_and_replace_the_data_source():
    recipe = load_recipe(RECIPES / "liver-ct-128.yaml", ["autoencoder.train.steps=3"], profile="smoke")
    assert recipe["profile"] == "smoke" and "profiles" not in recipe
    assert recipe["data"] == {"phantom": {"kind": "abdomen-ct", "cases": 2, "size": 128, "seed": 0}}
    assert recipe["autoencoder"]["size"] == "tiny" and recipe["autoencoder"]["train"]["steps"] == 3
    assert recipe["autoencoder"]["adv_start"] == 5000  # what the profile does not say stays the recipe's
    assert recipe["prepare"]["labels"] == "liver=liver,tumour=tumour"  # a dotted profile key
    plain = load_recipe(RECIPES / "liver-ct-128.yaml")
    assert "profile" not in plain and plain["data"] == {"dataset": "data/Task03_Liver"}
    pointed = load_recipe(RECIPES / "tiny.yaml", ["data.dataset=/data/mine"])
    assert pointed["data"] == {"dataset": "/data/mine"}  # --set data.dataset drops the phantoms


def test_profile_errors_name_the_profile_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown profile 'smok' \(this recipe's profiles: smoke\)"):
        load_recipe(RECIPES / "abdomen-ct-256.yaml", profile="smok")
    with pytest.raises(ConfigError, match="unknown profile 'smoke' .*profiles: none"):
        load_recipe(RECIPES / "tiny.yaml", profile="smoke")
    recipe = yaml.safe_load((RECIPES / "tiny.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    for profile, message in (({"autoencoder.train.stpes": 1}, "profiles.fast: unknown key autoencoder.train.stpes"),
                             ({"diffusion": {"train": {"steps": "x"}}}, "profiles.fast: diffusion.train.steps: "
                                                                         "expected int")):
        bad.write_text(yaml.safe_dump({**recipe, "profiles": {"fast": profile}}))
        with pytest.raises(ConfigError, match=message):
            load_recipe(bad)  # checked even when another profile, or none, is run
    assert main(["train", "--recipe", str(RECIPES / "liver-mr-128.yaml"), "--profile", "nope",
                 "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_a_resumed_run_keeps_its_profile(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    recipe_file = RECIPES / "liver-mr-128.yaml"
    pin_recipe(load_recipe(recipe_file, profile="smoke"), out)
    assert resolve_recipe(recipe_file, out)["profile"] == "smoke"  # the same command without --profile
    assert resolve_recipe(None, out, resume=True)["profile"] == "smoke"
    with pytest.raises(ConfigError, match="started with profile smoke, not other"):
        resolve_recipe(None, out, resume=True, profile="other")


def test_missing_dataset_is_one_line_naming_it_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the recipe's data/Task03_Liver is relative to the working directory
    with pytest.raises(ConfigError, match=r"data.dataset: data/Task03_Liver not found .*--set data.dataset=PATH"):
        run_recipe(RECIPES / "liver-ct-128.yaml", tmp_path / "out", progress=False)
    assert main(["train", "--recipe", str(RECIPES / "liver-ct-128.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_case_lacking_a_partial_class_has_it_not_given(tmp_path):
    raw = write_nnunet(tmp_path / "raw", cases=3)
    lacking = raw / "labelsTr" / "case001.nii.gz"
    label = read_label(lacking)
    write_volume(label.with_array(np.where(label.array == 2, 1, label.array).astype(np.uint8)), lacking)
    names = ["liver", "tumour"]
    prepare_dataset(raw, tmp_path / "partial", PrepareOptions(size=[16] * 3, partial_labels=["tumour"]),
                    progress=False)
    data = load_prepared(tmp_path / "partial")
    assert data.plan.partial_labels == ["tumour"]
    assert data.case_ids == ["case000", "case001", "case002"]
    assert known_classes(data.facts, names).tolist() == [[1, 1], [1, 0], [1, 1]]
    assert data.facts[0]["n"] == 0  # the report's facts are kept
    prepare_dataset(raw, tmp_path / "full", PrepareOptions(size=[16] * 3), progress=False)
    # without partial_labels an absent class is known to be absent
    assert known_classes(load_prepared(tmp_path / "full").facts, names).tolist() == [[1, 1]] * 3
    assert main(["prepare", str(raw), str(tmp_path / "cli"), "--size", "16", "--partial-labels", "tumour",
                 "--no-progress"]) == 0
    assert known_classes(load_prepared(tmp_path / "cli").facts, names).tolist() == [[1, 1], [1, 0], [1, 1]]
    with pytest.raises(ConfigError, match=r"partial label\(s\) \['spleen'\]"):
        prepare_dataset(raw, tmp_path / "bad", PrepareOptions(size=[16] * 3, partial_labels=["spleen"]),
                        progress=False)
