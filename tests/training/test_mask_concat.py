"""Segmentation guidance in latent space: ``diffusion.mask_concat`` (the pooled mask concatenated to the noisy
latent, with mask ablation) and ``autoencoder.pretrained`` (a recipe reusing another model's autoencoder)."""

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
from volsynth.training.diffusion import DiffusionSettings, DiffusionStage
from volsynth.training.engine import sample_generators


def _recipe(raw, autoencoder, **diffusion) -> dict:
    return tiny_recipe(raw, autoencoder={"pretrained": str(autoencoder)},
                       diffusion={"size": "tiny", "num_train_timesteps": 100, "mask_concat": True,
                                  "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2}, **diffusion})


@pytest.fixture(scope="module")
def concat_run(prepared_tiny, tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("concat")
    return root / "run", run_quietly(_recipe(prepared_tiny.parent / "raw", tiny_model), root)


def test_recipe_reuses_the_pretrained_autoencoder(concat_run, tiny_model):
    run, model = concat_run
    assert not (run / "autoencoder").exists()  # nothing trained for it
    ours = load_checkpoint(model).networks["autoencoder"].state_dict()
    theirs = load_checkpoint(tiny_model).networks["autoencoder"].state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    meta = json.loads((model / "meta.json").read_text())
    assert meta["autoencoder_from"] == str(tiny_model)
    assert meta["steps"]["autoencoder"] == json.loads((tiny_model / "meta.json").read_text())["steps"]["autoencoder"]
    assert meta["diffusion"]["mask_concat"] is True


def test_mask_concat_model_generates_from_mask_and_from_text(concat_run, prepared_tiny):
    pipe = SynthesisPipeline.from_pretrained(concat_run[1])
    assert pipe.mask_concat and pipe.mask_guided and pipe.controlnet is None
    mask_path = sorted((prepared_tiny / "labelsTr").glob("*.nii.gz"))[0]
    seen = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda x, t, **kw: (seen.append(kw["cond"].clone()), forward(x, t, **kw))[1]
    result = pipe(prompt="liver", mask=mask_path, seed=0, steps=2, mask_guidance=2.0)
    mask = read_label(mask_path)
    assert result.label is not None and result.image.shape == mask.shape
    np.testing.assert_allclose(result.image.affine, mask.affine, atol=1e-5)
    # mask guidance 2: each step predicts with the mask and without it (every class "not given")
    with_mask = [c for c in seen if c.abs().sum() > 0]
    assert with_mask and len(with_mask) < len(seen)
    classes = with_mask[0].shape[1] // 2
    assert torch.all(with_mask[0][:, classes:] == 1)  # every class of the mask is known
    assert float(with_mask[0][:, 0].max()) > 0  # liver occupancy on the latent grid
    seen.clear()
    assert pipe(prompt="liver", seed=0, steps=2).label is None
    assert seen and all(c.abs().sum() == 0 for c in seen)  # text only: the trained "no mask" input


def test_stage_ablates_classes_and_drops_whole_masks(prepared_tiny, tiny_model, concat_run):
    from volsynth.training.latents import load_latent_cache

    cache = load_latent_cache(concat_run[0] / "latents")
    stage = DiffusionStage(cache, DiffusionSettings(size="tiny", text_encoder="tiny:16", num_train_timesteps=100,
                                                    mask_concat=True, mask_ablation=0.5, mask_drop=0.2))
    indices = [i % len(cache) for i in range(4000)]
    cond = stage.mask_condition(indices, sample_generators(0, 0, list(range(len(indices)))))
    classes = cache.occupancy.shape[1]
    known = cond[:, classes:].flatten(2)[:, :, 0]  # the known flag of each class
    assert cond.shape[1] == 2 * classes and stage.configs["unet"]["cond_channels"] == 2 * classes
    assert abs(float(known.mean()) - 0.5 * 0.8) < 0.03
    assert abs(float((known.sum(1) == 0).float().mean()) - (0.2 + 0.8 * 0.5 ** classes)) < 0.03
    assert torch.all(cond[:, :classes] * (1 - cond[:, classes:]) == 0)  # hidden classes show no occupancy


def test_controlnet_refuses_a_mask_concat_unet(concat_run):
    from volsynth.training.latents import load_latent_cache

    run = concat_run[0]
    checkpoint = sorted((run / "diffusion" / "checkpoints").iterdir())[-1]
    with pytest.raises(ConfigError, match="already takes the mask"):
        ControlNetStage(load_latent_cache(run / "latents"), checkpoint, ControlNetSettings())


def test_settings_and_pretrained_errors(prepared_tiny, tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="mask_ablation must be in"):
        DiffusionSettings.from_dict({"mask_ablation": 1.5})
    raw = prepared_tiny.parent / "raw"
    with pytest.raises(ConfigError, match="not a model or checkpoint folder"):
        run_quietly(_recipe(raw, tmp_path / "missing"), tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    recipe = _recipe(raw, tiny_model)
    recipe["prepare"]["size"] = 8  # the autoencoder was trained on a 16^3 grid
    with pytest.raises(ConfigError, match="was trained on"):
        run_quietly(recipe, other)
