"""The refiner: a pixel-space stage that redraws a latent model's decoded volume from its degraded copy and
the mask at full resolution (``refiner:`` block; ``controlnet: {pretrained: MODEL}`` reuses a model's
ControlNet so that a recipe can add a refiner to a finished model)."""

import json

import numpy as np
import pytest
import torch

from tests.training.helpers import run_quietly, tiny_recipe, write_recipe
from volsynth.errors import ConfigError
from volsynth.io import LabelMap, read_label
from volsynth.models.checkpoint import load_checkpoint
from volsynth.models.stages import RefinerSettings, degrade
from volsynth.pipelines.generate import SynthesisPipeline
from volsynth.training.data import load_prepared
from volsynth.training.recipe import run_recipe
from volsynth.training.refiner import RefinerStage, augmented_condition

REFINER = {"size": "tiny-pixel", "patch": [8, 8, 8], "steps": 3,
           "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2}}


def _recipe(raw, model, **refiner) -> dict:
    return tiny_recipe(raw, diffusion={"pretrained": str(model)}, controlnet={"pretrained": str(model)},
                       refiner={**REFINER, **refiner}, model={"ema": False})


@pytest.fixture(scope="module")
def refined_model(prepared_tiny, tiny_model, tmp_path_factory):
    return run_quietly(_recipe(prepared_tiny.parent / "raw", tiny_model), tmp_path_factory.mktemp("refined"))


def test_recipe_adds_a_refiner_to_a_finished_model(refined_model, tiny_model):
    ours, theirs = load_checkpoint(refined_model).networks, load_checkpoint(tiny_model).networks
    for name in ("autoencoder", "unet", "controlnet"):  # reused as they are
        mine, reference = ours[name].state_dict(), theirs[name].state_dict()
        assert all(torch.equal(mine[k], reference[k]) for k in reference), name
    meta = json.loads((refined_model / "meta.json").read_text())
    assert meta["steps"]["refiner"] == 2 and meta["controlnet_from"] == str(tiny_model)
    assert meta["refiner"]["degrade_factor"] == 2 and meta["refiner"]["steps"] == 3


def test_training_on_assembles_the_model_again(prepared_tiny, tiny_model, tmp_path):
    """A finished run resumed with more steps trains on, and the model must then hold the new weights, not the
    ones it was first assembled from."""
    raw = prepared_tiny.parent / "raw"
    model = run_quietly(_recipe(raw, tiny_model), tmp_path)
    first = load_checkpoint(model).networks["refiner"].state_dict()
    longer = write_recipe(tmp_path, _recipe(raw, tiny_model, train={**REFINER["train"], "steps": 4}))
    log = []
    assert run_recipe(longer, tmp_path / "run", progress=False, log=log.append) == model
    assert json.loads((model / "meta.json").read_text())["steps"]["refiner"] == 4
    assert any("refiner 2 -> 4 steps" in line for line in log), log
    second = load_checkpoint(model).networks["refiner"].state_dict()
    assert not all(torch.equal(first[k], second[k]) for k in first)
    stamp = (model / "meta.json").stat().st_mtime_ns
    log.clear()
    run_recipe(longer, tmp_path / "run", progress=False, log=log.append)  # nothing new: the model stays
    assert (model / "meta.json").stat().st_mtime_ns == stamp and "stage model" not in log, log


def test_refiner_redraws_the_decoded_volume_from_the_mask(refined_model, prepared_tiny):
    pipe = SynthesisPipeline.from_pretrained(refined_model)
    masks = sorted((prepared_tiny / "labelsTr").glob("*.nii.gz"))
    calls = []
    refiner = pipe.refiner
    pipe.refiner = lambda x, t, cond: (calls.append(cond), refiner(x, t, cond=cond))[1]
    refined = pipe(prompt="liver", mask=masks[0], seed=0, steps=2)
    assert len(calls) == 3 and refined.sidecar["refined"] is True  # the refiner's own step count
    plain = pipe(prompt="liver", mask=masks[0], seed=0, steps=2, refine=False)
    assert len(calls) == 3 and plain.sidecar["refined"] is False
    assert refined.image.shape == plain.image.shape == read_label(masks[0]).shape
    assert not np.allclose(refined.image.array, plain.image.array)
    # its condition: the decoded volume pooled 2x and upsampled, then the mask's one-hot and known flags at 16^3
    classes = len(pipe.plan.labels)
    cond = calls[0]
    assert cond.shape[1:] == (1 + 2 * classes, 16, 16, 16)
    label = torch.from_numpy(read_label(masks[0]).array.astype(np.int64))
    ids = sorted(pipe.plan.labels.values())
    for k, class_id in enumerate(ids):
        assert torch.equal(cond[0, 1 + k], (label == class_id).float())
        assert bool((cond[0, 1 + classes + k] == 1).all())
    # another mask: another condition, another volume (same seed)
    other = pipe(prompt="liver", mask=masks[1], seed=0, steps=2)
    assert not torch.equal(calls[-1][:, 1:], cond[:, 1:]) and not np.allclose(other.image.array, refined.image.array)


def test_partial_masks_and_no_mask(refined_model, prepared_tiny):
    pipe = SynthesisPipeline.from_pretrained(refined_model)
    mask = read_label(sorted((prepared_tiny / "labelsTr").glob("*.nii.gz"))[0])
    names = sorted(pipe.plan.labels, key=pipe.plan.labels.get)
    calls = []
    refiner = pipe.refiner
    pipe.refiner = lambda x, t, cond: (calls.append(cond), refiner(x, t, cond=cond))[1]
    only = LabelMap(np.where(mask.array == pipe.plan.labels[names[0]], mask.array, 0).astype(np.uint8), mask.affine,
                    labels=dict(pipe.plan.labels))
    pipe(prompt="liver", mask=only, known=names[:1], seed=0, steps=2)
    classes = len(names)
    flags = calls[-1][0, 1 + classes:].flatten(1).amax(1)
    assert flags.tolist() == [1.0] + [0.0] * (classes - 1)  # the other classes are "not given", not "absent"
    assert not calls[-1][0, 2:1 + classes].any()
    pipe(prompt="liver", seed=0, steps=2)  # no mask: the trained "no mask" input
    assert not calls[-1][0, 1:].any()


def test_interpolation_refines_middle_frames_without_a_mask(refined_model, prepared_tiny):
    from volsynth.pipelines.interpolate import interpolate

    pipe = SynthesisPipeline.from_pretrained(refined_model)
    masks = sorted((prepared_tiny / "labelsTr").glob("*.nii.gz"))
    calls = []
    refiner = pipe.refiner
    pipe.refiner = lambda x, t, cond: (calls.append(bool(cond[:, 1:].any())), refiner(x, t, cond=cond))[1]
    frames = interpolate(pipe, masks[0], masks[1], frames=3, steps=2)
    assert calls == [True] * 3 + [False] * 3 + [True] * 3
    alone = pipe(mask=masks[1], seed=0, steps=2)
    np.testing.assert_array_equal(frames[-1].image.array, alone.image.array)


def test_training_condition_is_the_pooled_image_with_per_class_offsets(prepared_tiny):
    data = load_prepared(prepared_tiny)
    image, labels = data.images[:2], data.labels[:2].long()
    ids = sorted(data.plan.labels.values())
    generators = [torch.Generator().manual_seed(n) for n in range(2)]
    plain = RefinerSettings(noise_aug=0.0, class_jitter=0.0, degrade_factor=2)
    torch.testing.assert_close(augmented_condition(image, labels, ids, plain, generators), degrade(image, 2))
    assert degrade(image, 2).shape == image.shape and not torch.equal(degrade(image, 2), image)
    jitter = RefinerSettings(noise_aug=0.0, class_jitter=0.2, degrade_factor=1)
    shift = augmented_condition(image, labels, ids, jitter, generators) - image
    for b in range(2):
        assert torch.all(shift[b, 0][labels[b] == 0] == 0)
        for class_id in ids:
            inside = shift[b, 0][labels[b] == class_id]
            if inside.numel():
                assert float(inside.max() - inside.min()) < 1e-6 and float(inside.abs().max()) <= 0.2
    noisy = RefinerSettings(noise_aug=0.2, class_jitter=0.0, degrade_factor=2)
    first, second = ([torch.Generator().manual_seed(n) for n in range(2)] for _ in range(2))
    drawn = augmented_condition(image, labels, ids, noisy, first)
    torch.testing.assert_close(drawn, augmented_condition(image, labels, ids, noisy, second))  # seeded per sample
    assert not torch.allclose(drawn, degrade(image, 2))


def test_stage_hides_classes_and_trains_on_patches(prepared_tiny):
    data = load_prepared(prepared_tiny)
    stage = RefinerStage(data, RefinerSettings(patch=[8, 8, 8], hide_class=1.0))
    seen = []
    network = stage.networks["refiner"]
    stage.networks["refiner"] = lambda x, t, cond: (seen.append((x.shape, cond)), network(x, t, cond=cond))[1]
    loss = stage.losses([0, 1], [torch.Generator().manual_seed(n) for n in range(2)], 0)["refiner"]
    assert torch.isfinite(loss)
    shape, cond = seen[0]
    classes = len(data.plan.labels)
    assert shape == (2, 1, 8, 8, 8) and cond.shape == (2, 1 + 2 * classes, 8, 8, 8)
    assert not cond[:, 1:].any()  # hide_class 1: every class "not given"


def test_refiner_errors(prepared_tiny, tiny_model, tmp_path):
    raw = prepared_tiny.parent / "raw"
    for bad, match in (({"degrade_factor": 3}, "degrade_factor must be 1, 2, 4 or 8"),
                       ({"hide_class": 1.5}, r"hide_class must be in \[0, 1\]"),
                       ({"noise_aug": -1}, "noise_aug must be >= 0"),
                       ({"shape_jitter": 0.5}, "unknown key refiner.shape_jitter"),
                       ({"colour": 1}, "colour")):
        with pytest.raises(ConfigError, match=match):
            run_quietly(_recipe(raw, tiny_model, **bad), tmp_path / str(len(list(tmp_path.iterdir()))))
    other = tmp_path / "other-unet"
    recipe = tiny_recipe(raw, autoencoder={"pretrained": str(tiny_model)},
                         diffusion={"size": "tiny", "num_train_timesteps": 100,
                                    "train": {"steps": 1, "batch_size": 2, "checkpoint_every": 1}},
                         controlnet={"pretrained": str(tiny_model)})
    with pytest.raises(ConfigError, match="steers that model's UNet only"):
        run_quietly(recipe, other)
    recipe["diffusion"] = {"pretrained": str(tiny_model)}
    recipe["controlnet"] = {"pretrained": str(tiny_model), "hide_class": 0.5}
    with pytest.raises(ConfigError, match="can hold nothing else"):
        run_quietly(recipe, tmp_path / "extra")
    data = load_prepared(prepared_tiny)
    with pytest.raises(ConfigError, match=r"grid \[16, 16, 16\] must be divisible by 32"):
        RefinerStage(data, RefinerSettings(degrade_factor=4, patch=None,
                                           network={"channels": [8, 8, 8, 8], "attention_levels": [False] * 4}))
    with pytest.raises(ConfigError, match=r"refiner patch \[32, 32, 32\] must fit the grid"):
        RefinerStage(data, RefinerSettings())


def test_cli_generates_with_and_without_the_refiner(refined_model, tiny_model, prepared_tiny, tmp_path, capsys):
    from volsynth.cli import main

    mask = sorted((prepared_tiny / "labelsTr").glob("*.nii.gz"))[0]
    for flag, refined in (("--refine", True), ("--no-refine", False)):
        assert main(["generate", str(refined_model), "--mask", str(mask), "--prompt", "liver", flag, "--steps", "2",
                     "--out", str(tmp_path / flag), "--no-progress"]) == 0
        sidecar = json.loads(next((tmp_path / flag).glob("*.json")).read_text())
        assert sidecar["refined"] is refined
    assert main(["generate", str(tiny_model), "--mask", str(mask), "--no-refine", "--steps", "2",
                 "--out", str(tmp_path / "plain"), "--no-progress"]) == 2
    assert "--no-refine: not an option" in capsys.readouterr().err and not (tmp_path / "plain").exists()
    assert main(["generate", str(tiny_model), "--mask", str(mask), "--refiner-guidance", "4", "--steps", "2",
                 "--out", str(tmp_path / "plain"), "--no-progress"]) == 2
    assert "--refiner-guidance: not an option of this latent model" in capsys.readouterr().err
    assert not (tmp_path / "plain").exists()


def test_refiner_guidance_on_the_mask(refined_model, prepared_tiny):
    pipe = SynthesisPipeline.from_pretrained(refined_model)
    mask = sorted((prepared_tiny / "labelsTr").glob("*.nii.gz"))[0]
    calls = []
    refiner = pipe.refiner
    pipe.refiner = lambda x, t, cond: (calls.append(bool(cond[:, 1:].any())), refiner(x, t, cond=cond))[1]
    plain = pipe(prompt="liver", mask=mask, seed=0, steps=2)
    assert calls == [True] * 3 and plain.sidecar["refiner_guidance"] == 1.0  # scale 1: one call per step
    calls.clear()
    guided = pipe(prompt="liver", mask=mask, seed=0, steps=2, refiner_guidance=3.0)
    assert sorted(calls) == [False] * 3 + [True] * 3  # with the mask and without it, each step
    assert guided.sidecar["refiner_guidance"] == 3.0
    assert not np.allclose(guided.image.array, plain.image.array)
    calls.clear()
    # no mask: nothing to guide by, so the scale is not applied (one call per step) nor recorded
    unguided = pipe(prompt="liver", seed=0, steps=2, refiner_guidance=3.0)
    assert calls == [False] * 3 and "refiner_guidance" not in unguided.sidecar
    np.testing.assert_array_equal(unguided.image.array, pipe(prompt="liver", seed=0, steps=2).image.array)


def test_model_recommends_a_refiner_guidance(refined_model, prepared_tiny, tmp_path):
    import shutil

    from volsynth.cli import main

    model = tmp_path / "model"
    shutil.copytree(refined_model, model)
    meta = json.loads((model / "meta.json").read_text())
    meta["sampling"] = {"with_mask": {"refiner_guidance": 2.5}}
    (model / "meta.json").write_text(json.dumps(meta))
    mask = sorted((prepared_tiny / "labelsTr").glob("*.nii.gz"))[0]
    for flags, scale in (([], 2.5), (["--refiner-guidance", "1.5"], 1.5)):
        out = tmp_path / f"out{len(flags)}"
        assert main(["generate", str(model), "--mask", str(mask), "--steps", "2", "--out", str(out),
                     "--no-progress", *flags]) == 0
        assert json.loads(next(out.glob("*.json")).read_text())["refiner_guidance"] == scale


def test_legacy_refiner_keys_of_shipped_models_are_ignored_at_their_inert_values():
    """Shipped models' meta.json still record the removed settings (shape_jitter, generated, generated_fraction)
    at their no-op values: reading them for generation works; a recipe that sets them to something else fails."""
    legacy = {"degrade_factor": 4, "shape_jitter": 0.0, "generated": None, "generated_fraction": 0.5}
    assert RefinerSettings.from_dict(legacy).degrade_factor == 4
    for key, value in (("generated", ["runs/x"]), ("generated_fraction", 0.9)):
        with pytest.raises(ConfigError, match=f"{key} was removed"):
            RefinerSettings.from_dict({**legacy, key: value})


def test_parent_recipe_runs_first_and_the_index_records_the_chain(prepared_tiny, tiny_model, tmp_path):
    """``init: {recipe: PARENT}``: the parent recipe runs into OUT/parents/ and the stage trains on from its model;
    model_index.json records both, the parent by sha256 and steps, and the steps in all."""
    from volsynth.models.index import read_model_index

    raw = prepared_tiny.parent / "raw"
    write_recipe(tmp_path / "parent", _recipe(raw, tiny_model))
    child = write_recipe(tmp_path / "child", _recipe(raw, tiny_model, init={"recipe": "../parent/recipe.yaml"}))
    model = run_recipe(child, tmp_path / "run", progress=False, log=lambda m: None)
    parent_model = tmp_path / "run" / "parents" / "recipe" / "model"
    refiner = read_model_index(model).provenance.stages["refiner"]
    assert (refiner.steps, refiner.init.steps, refiner.total_steps) == (2, 2, 4)
    assert refiner.init.sha256 == json.loads((parent_model / "meta.json").read_text())["files"]["model.safetensors"]
    assert refiner.init.recipe.endswith("parent/recipe.yaml")
    assert read_model_index(model).provenance.stages["controlnet"].trained is False


def test_a_large_grid_is_refined_by_windows_close_to_the_whole_grid(refined_model):
    from volsynth.pipelines.refine import run_refiner

    pipe = SynthesisPipeline.from_pretrained(refined_model)
    classes = len(pipe.plan.labels)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand([1, 1, 32, 32, 32], generator=generator) * 2 - 1
    features = torch.zeros([1, 2 * classes, 32, 32, 32])
    features[:, 0, 8:24, 8:24, 8:24] = features[:, classes] = 1
    seen = []
    refiner = pipe.refiner
    pipe.refiner = lambda x, t, cond: (seen.append(tuple(x.shape[2:])), refiner(x, t, cond=cond))[1]
    whole = run_refiner(pipe.refiner, image, features, pipe.refiner_settings, seed=0, steps=2)
    assert set(seen) == {(32, 32, 32)}
    seen.clear()
    windows = run_refiner(pipe.refiner, image, features, pipe.refiner_settings, seed=0, steps=2, window=16)
    assert set(seen) == {(16, 16, 16)} and windows.shape == whole.shape
    # GroupNorm statistics are per window, so windows differ a little from the whole grid: measured max
    # |difference| 2.4e-4 (images in [-1, 1], std 0.14) on this test refiner; unnormalised blending would be ~1
    assert float((windows - whole).abs().max()) < 0.01


def test_refiner_steps_are_a_request_option_recorded_in_the_sidecar(refined_model, prepared_tiny):
    pipe = SynthesisPipeline.from_pretrained(refined_model)
    mask = sorted((prepared_tiny / "labelsTr").glob("*.nii.gz"))[0]
    calls = []
    refiner = pipe.refiner
    pipe.refiner = lambda x, t, cond: (calls.append(1), refiner(x, t, cond=cond))[1]
    result = pipe(prompt="liver", mask=mask, seed=0, steps=2, refiner_steps=1)
    assert len(calls) == 1 and result.sidecar["refiner_steps"] == 1
    assert pipe(prompt="liver", mask=mask, seed=0, steps=2).sidecar["refiner_steps"] == 3  # the model's own
    with pytest.raises(ConfigError, match="refiner steps"):
        pipe(prompt="liver", mask=mask, seed=0, steps=2, refiner_steps=0)
