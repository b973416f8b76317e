"""``volsynth train --recipe R --dry-run``: the planner measures every stage of a recipe without training it."""

import tempfile
from pathlib import Path

import pytest

from volsynth.cli import main
from volsynth.errors import ConfigError
from volsynth.models.index import read_model_index
from volsynth.training import plan_report, planner
from volsynth.training.planner import GenerationMeasurement, Probe, StageMeasurement
from volsynth.training.recipe_schema import load_recipe

ROOT = Path(__file__).resolve().parents[2]
MB = 1024 ** 2


@pytest.fixture(scope="module")
def tiny_probe(tmp_path_factory):
    """The tiny recipe measured once, from an empty working folder, with its own empty temporary folder."""
    cwd, scratch = tmp_path_factory.mktemp("cwd"), tmp_path_factory.mktemp("scratch")
    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(tempfile, "tempdir", str(scratch))
        found = planner.probe(recipe, planner.recipe_grid(recipe))
    return recipe, found, [cwd, scratch]


@pytest.mark.slow
def test_the_dry_run_measures_every_stage_with_the_real_networks(tiny_probe):
    recipe, found, folders = tiny_probe
    assert all(not any(folder.iterdir()) for folder in folders)  # nothing left behind
    assert [m.name for m in found.stages] == ["autoencoder", "diffusion", "controlnet"]
    shipped = {name: c.parameters for name, c in read_model_index(ROOT / "models" / "tiny-abdomen").components.items()}
    measured = {name: count for m in found.stages for name, count in m.parameters.items()}
    assert {name: measured[name] for name in shipped} == shipped  # the networks tiny.yaml trains into tiny-abdomen
    assert measured["discriminator"] > 0 and found.generation.parameters == shipped
    assert found.grid == [32, 32, 32]
    for stage in found.stages:
        assert stage.peak_rss >= stage.ready_rss > found.base_rss > 0 and stage.step_seconds > 0
    assert found.generation.peak_rss > found.base_rss and found.generation.seconds_per_step > 0


@pytest.mark.slow
def test_the_dry_run_command_prints_every_stage_and_whether_it_fits(tiny_probe, monkeypatch, capsys, tmp_path):
    recipe, found, _ = tiny_probe
    monkeypatch.setattr(plan_report, "probe", lambda recipe, grid: found)  # measured once, above
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    assert main(["train", "--recipe", "recipes/tiny.yaml", "--dry-run", "--gpu-memory", "1T", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for stage in found.stages:
        assert stage.name in text
        for network, count in stage.parameters.items():
            assert f"{network} {count:,}" in text
    assert "does not fit" not in text and "the recipe fits" in text and "measured" in text
    assert "generate 1 volume" in text and "device: cpu" in text
    assert not out.exists()  # a dry run writes nothing into --out
    assert main(["train", "--recipe", "recipes/tiny.yaml", "--dry-run", "--gpu-memory", "1K"]) == 0
    assert "the recipe does not fit" in capsys.readouterr().out


def _probe(grid, patch=None) -> Probe:
    stage = StageMeasurement("refiner" if patch else "diffusion", {"unet": 1000}, 4000, 2, patch, "float32",
                             ready_rss=500 * MB, peak_rss=600 * MB, step_seconds=2.0)
    generation = GenerationMeasurement({"unet": 1000}, 510 * MB, 560 * MB, 1.0, 0.1)
    return Probe(grid, 400 * MB, [stage], generation, [])


def _recipe(size: int, patch: bool = False) -> dict:
    name = "refiner" if patch else "diffusion"
    return {"_path": "r.yaml", "name": "r", "prepare": {"size": size}, name: {"train": {"steps": 100, "batch_size": 2}}}


def test_a_reduced_grid_is_extrapolated_linearly_in_voxels():
    plan = plan_report.plan_from_probe(_recipe(64), _probe([32, 32, 32]))
    (row,) = plan.stages
    assert row.source == "extrapolated from 32x32x32"
    assert row.peak_rss == 500 * MB + 8 * 100 * MB and row.step_seconds == pytest.approx(16.0)
    assert row.seconds == pytest.approx(1600.0) and plan.training_seconds == pytest.approx(1600.0)
    assert plan.generation.peak_rss == 510 * MB + 8 * 50 * MB
    assert plan.generation.seconds == pytest.approx(8 * (1.0 + 0.1 * 30))
    same = plan_report.plan_from_probe(_recipe(32), _probe([32, 32, 32]))
    assert same.stages[0].source == "measured" and same.stages[0].peak_rss == 600 * MB


def test_a_patch_stage_keeps_its_step_cost_on_a_larger_grid():
    row = plan_report.plan_from_probe(_recipe(64, patch=True), _probe([32, 32, 32], [16, 16, 16])).stages[0]
    assert row.peak_rss == 600 * MB and row.step_seconds == pytest.approx(2.0)


def test_gpu_memory_decides_fit_and_the_largest_batch():
    recipe, found = _recipe(32, patch=True), _probe([32, 32, 32], [16, 16, 16])
    big = plan_report.plan_from_probe(recipe, found, gpu_memory=plan_report.parse_memory("1G")).stages[0]
    small = plan_report.plan_from_probe(recipe, found, gpu_memory=plan_report.parse_memory("150M")).stages[0]
    # held 100 MB + optimizer 12 kB; activations (100 MB - 12 kB) / 2 per sample
    assert big.fits and big.max_batch == int((1024 * MB - big.gpu_fixed) // big.gpu_per_sample) > 2
    assert not small.fits and small.max_batch == 0 and small.max_patch < 16
    assert big.max_patch == 32  # capped by the grid


def test_parse_memory_reads_binary_units():
    assert plan_report.parse_memory("24G") == plan_report.parse_memory("24GiB") == 24 * 1024 ** 3
    assert plan_report.parse_memory("512MB") == 512 * MB and plan_report.parse_memory("2") == 2 * 1024 ** 3
    with pytest.raises(ConfigError, match="--gpu-memory"):
        plan_report.parse_memory("lots")


def test_the_dry_recipe_trains_a_few_steps_on_a_few_phantoms_at_the_grid():
    recipe = load_recipe(ROOT / "recipes" / "abdomen-refined-64.yaml")
    dry = planner.dry_recipe(recipe, [32, 32, 32])
    assert dry["data"]["phantom"]["cases"] == planner.DRY_CASES and dry["data"]["phantom"]["size"] == 32
    assert dry["prepare"]["size"] == [32, 32, 32] and dry["prepare"]["labels"] == recipe["prepare"]["labels"]
    assert "init" not in dry["refiner"] and dry["refiner"]["train"]["steps"] == 3
    assert dry["diffusion"] == recipe["diffusion"]  # reused as it is
    assert recipe["refiner"]["train"]["steps"] == 4000  # the recipe itself is left alone


def test_a_dataset_recipe_is_dry_run_on_phantoms():
    recipe = {"_path": "r.yaml", "data": {"dataset": "/nowhere"}, "prepare": {"size": 32, "labels": "a=1"},
              "autoencoder": {"size": "tiny", "train": {"steps": 10}}}
    dry = planner.dry_recipe(recipe, [32, 32, 32])
    assert dry["data"]["phantom"]["kind"] == "abdomen-ct" and "labels" not in dry["prepare"]


def test_reduced_grid_keeps_the_aspect_and_a_multiple_of_16():
    assert planner.reduced_grid([128, 128, 128], 64 ** 3) == [64, 64, 64]
    assert planner.reduced_grid([256, 256, 128], 64 ** 3) == [80, 80, 32]
    assert planner.reduced_grid([40, 40, 40], 8) == [16, 16, 16]


def test_dry_run_needs_a_recipe(capsys):
    assert main(["train", "--dry-run"]) == 2
    assert "--dry-run needs --recipe" in capsys.readouterr().err


def test_the_dry_run_plans_the_recipe_with_its_profile(monkeypatch):
    planned = []

    class Stop(Exception):
        pass

    def capture(recipe, memory):
        planned.append(recipe)
        raise Stop

    monkeypatch.setattr(plan_report, "plan_recipe", capture)
    with pytest.raises(Stop):
        main(["train", "--recipe", str(ROOT / "recipes" / "liver-ct-128.yaml"), "--profile", "smoke", "--dry-run"])
    assert planned[0]["data"]["phantom"]["size"] == 128 and planned[0]["autoencoder"]["size"] == "tiny"
