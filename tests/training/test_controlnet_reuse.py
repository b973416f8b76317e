"""A ControlNet trained on another model's frozen UNet (``diffusion: {pretrained: MODEL}``) whose learned
embedding reads the mask above the latent resolution (``controlnet.embedding_channels`` with more than one
entry: each further entry is a stride-2 stage)."""

import json

import numpy as np
import pytest
import torch

from tests.training.helpers import run_quietly, tiny_recipe
from volsynth.errors import ConfigError
from volsynth.io import read_label
from volsynth.models.checkpoint import load_checkpoint
from volsynth.pipelines.generate import SynthesisPipeline
from volsynth.training.controlnet import ControlNetSettings, ControlNetStage
from volsynth.training.latents import load_latent_cache


def _recipe(raw, model, text_encoder="tiny:16", embedding=(4, 8), **blocks) -> dict:
    return tiny_recipe(raw, text_encoder=text_encoder, diffusion={"pretrained": str(model)},
                       controlnet={"embedding_channels": list(embedding),
                                   "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2}}, **blocks)


@pytest.fixture(scope="module")
def reuse_run(prepared_tiny, tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse")
    return root / "run", run_quietly(_recipe(prepared_tiny.parent / "raw", tiny_model), root)


def test_recipe_trains_only_the_controlnet(reuse_run, tiny_model):
    run, model = reuse_run
    assert not (run / "autoencoder").exists() and not (run / "diffusion").exists()
    ours, theirs = load_checkpoint(model).networks, load_checkpoint(tiny_model).networks
    for name in ("autoencoder", "unet"):
        mine, reference = ours[name].state_dict(), theirs[name].state_dict()
        assert all(torch.equal(mine[k], reference[k]) for k in reference), name
    meta, their_meta = (json.loads((p / "meta.json").read_text()) for p in (model, tiny_model))
    assert meta["diffusion_from"] == meta["autoencoder_from"] == str(tiny_model)
    assert meta["steps"] == {**their_meta["steps"], "controlnet": 2}
    # the UNet sees latents scaled as in its own training
    assert load_latent_cache(run / "latents").scale_factor == their_meta["scale_factor"] == meta["scale_factor"]


def test_embedding_reads_the_mask_at_full_resolution(reuse_run, prepared_tiny):
    pipe = SynthesisPipeline.from_pretrained(reuse_run[1])
    latent_grid = pipe.latent_shape[1:]
    assert pipe.controlnet.downsampling == 2 and pipe.mask_pooling == pipe.plan.size[0] // latent_grid[0] // 2
    mask_path = sorted((prepared_tiny / "labelsTr").glob("*.nii.gz"))[0]
    features = pipe.prepare_mask(mask_path)[2]
    assert list(features.shape[2:]) == [s * 2 for s in latent_grid]
    assert list(pipe.controlnet.embed(features).shape[2:]) == latent_grid
    embedded = []
    embed = pipe.controlnet.embed
    pipe.controlnet.embed = lambda f: (embedded.append(f.shape), embed(f))[1]
    result = pipe(prompt="liver", mask=mask_path, seed=0, steps=2, mask_guidance=2.0)
    mask = read_label(mask_path)
    assert result.image.shape == mask.shape
    np.testing.assert_allclose(result.image.affine, mask.affine, atol=1e-5)
    assert len(embedded) == 2  # the mask and the "no mask" input, each embedded once per sample
    embedded.clear()
    assert pipe(prompt="liver", seed=0, steps=2).label is None and len(embedded) == 1


def test_stage_pools_label_maps_to_the_embedding_input(reuse_run, tiny_model):
    cache = load_latent_cache(reuse_run[0] / "latents")
    stage = ControlNetStage(cache, tiny_model, ControlNetSettings(embedding_channels=[4, 8]))
    known = torch.ones(2, cache.occupancy.shape[1])
    features = stage.mask_features([0, 1], known)
    # pooled twice more, the full-resolution occupancy is the cached latent-grid occupancy
    classes = cache.occupancy.shape[1]
    pooled = torch.nn.functional.avg_pool3d(features[:, :classes], 2)
    torch.testing.assert_close(pooled, cache.occupancy[[0, 1]].float())
    with pytest.raises(ConfigError, match="downsample the mask"):
        ControlNetStage(cache, tiny_model, ControlNetSettings(embedding_channels=[4, 8, 8]))


def test_init_trains_on_from_a_models_networks(prepared_tiny, tiny_model, tmp_path):
    """block: {init: MODEL} starts each stage from the model's networks: with a zero learning rate the new
    model's autoencoder, UNet and ControlNet are exactly the model's (fresh ones would be random)."""
    frozen = {"steps": 1, "batch_size": 2, "lr": 0.0, "checkpoint_every": 1}
    recipe = tiny_recipe(prepared_tiny.parent / "raw", model={"ema": False},
                         autoencoder={"size": "tiny", "adv_weight": 0.0, "init": str(tiny_model), "train": frozen},
                         diffusion={"size": "tiny", "num_train_timesteps": 100, "init": str(tiny_model),
                                    "train": frozen},
                         controlnet={"init": str(tiny_model), "train": frozen})
    model = run_quietly(recipe, tmp_path)
    ours, theirs = load_checkpoint(model).networks, load_checkpoint(tiny_model).networks
    for name in ("autoencoder", "unet", "controlnet"):
        for key, value in theirs[name].state_dict().items():
            torch.testing.assert_close(ours[name].state_dict()[key], value, msg=f"{name}.{key}")
    assert json.loads((model / "meta.json").read_text())["initialised_from"] == {
        "autoencoder": str(tiny_model), "diffusion": str(tiny_model), "controlnet": str(tiny_model)}


def test_reuse_errors(prepared_tiny, tiny_model, tmp_path):
    raw = prepared_tiny.parent / "raw"

    def run(name, **kwargs):
        folder = tmp_path / name
        folder.mkdir()
        run_quietly(_recipe(raw, **kwargs), folder)

    with pytest.raises(ConfigError, match="holds no unet"):
        run("no-unet", model=sorted((tiny_model.parent / "ae" / "checkpoints").iterdir())[-1])
    init = tiny_recipe(raw, autoencoder={"size": "tiny", "init": str(tiny_model), "network": {"latent_channels": 2}})
    with pytest.raises(ConfigError, match="autoencoder.init: the autoencoder of .* does not fit"):
        run_quietly(init, tmp_path / "init-shape")
    unet_init = tiny_recipe(raw, text_encoder="tiny:32", autoencoder={"pretrained": str(tiny_model)},
                            diffusion={"size": "tiny", "init": str(tiny_model)})
    with pytest.raises(ConfigError, match="diffusion.init: .* trained with text encoder 'tiny:16'"):
        run_quietly(unet_init, tmp_path / "init-encoder")
    init["autoencoder"] = {"init": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match="autoencoder.init: .* is not a model or checkpoint folder"):
        run_quietly(init, tmp_path / "init-missing")
    init["autoencoder"] = {"init": str(tiny_model), "pretrained": str(tiny_model)}
    with pytest.raises(ConfigError, match="exclude each other"):
        run_quietly(init, tmp_path / "init-pretrained")
    with pytest.raises(ConfigError, match="trained with text encoder 'tiny:16'"):
        run("encoder", model=tiny_model, text_encoder="tiny:32")
    with pytest.raises(ConfigError, match="brings its model's autoencoder"):
        run("autoencoder", model=tiny_model, autoencoder={"size": "tiny", "train": {"steps": 2}})
    folder = tmp_path / "extra"
    folder.mkdir()
    recipe = _recipe(raw, tiny_model)
    recipe["diffusion"]["train"] = {"steps": 5}
    with pytest.raises(ConfigError, match="can hold nothing else"):
        run_quietly(recipe, folder)
