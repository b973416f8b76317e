"""Patch training of the autoencoder and the per-case latent cache on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.helpers import autoencoder_stage, diffusion_stage, train, trained_autoencoder
from volsynth.errors import ConfigError
from volsynth.models import windowed
from volsynth.models.checkpoint import load_checkpoint
from volsynth.models.registry import SIZES
from volsynth.training import latents
from volsynth.training.autoencoder import AutoencoderSettings
from volsynth.training.data import load_prepared
from volsynth.training.engine import sample_generators
from volsynth.training.latents import load_latent_cache


@pytest.fixture(scope="module")
def autoencoder(prepared_tiny, tmp_path_factory) -> Path:
    return trained_autoencoder(prepared_tiny, tmp_path_factory.mktemp("ae"))


def recorded_shapes(module: torch.nn.Module) -> list[tuple]:
    """Input shapes of every forward call of ``module`` from now on."""
    shapes: list[tuple] = []
    module.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    return shapes


def test_patch_stage_trains_on_patches_and_its_loss_decreases(prepared_tiny, monkeypatch):
    # the tiny discriminator needs 16 voxels a side; one layer fewer takes 8
    monkeypatch.setitem(SIZES["discriminator"], "tiny", {**SIZES["discriminator"]["tiny"], "num_layers_d": 1})
    stage = autoencoder_stage(prepared_tiny, patch=[8, 16, 8], adv_weight=0.05, adv_start=0, adv_warmup=1)
    ae_inputs = recorded_shapes(stage.networks["autoencoder"])
    d_inputs = recorded_shapes(stage.networks["discriminator"])
    optimizer = torch.optim.Adam(stage.networks["autoencoder"].parameters(), lr=5e-3)
    recon = []
    for step in range(25):
        out = stage.losses([0, 1], sample_generators(0, 0, [0, 1]), step)  # a fixed batch: the same patches
        optimizer.zero_grad()
        out["generator"].backward()
        optimizer.step()
        recon.append(float(out["recon"]))
    assert set(ae_inputs) == {(2, 1, 8, 16, 8)} and set(d_inputs) == {(2, 1, 8, 16, 8)}
    assert recon[-1] < 0.7 * recon[0]
    assert stage.meta()["patch"] == [8, 16, 8]


def test_patch_as_large_as_the_grid_trains_as_whole_volumes(prepared_tiny):
    """The patch path changes nothing else: a 16^3 patch of a 16^3 grid gives the losses of patch=None."""
    whole = autoencoder_stage(prepared_tiny).losses([2, 3], sample_generators(0, 5, [0, 1]), 5)
    patched = autoencoder_stage(prepared_tiny, patch=[16, 16, 16]).losses([2, 3], sample_generators(0, 5, [0, 1]), 5)
    for name in whole:
        torch.testing.assert_close(patched[name], whole[name], rtol=0, atol=0)
    assert "patch" not in autoencoder_stage(prepared_tiny).meta()


@pytest.mark.parametrize("patch", [[8, 8], [8, 8, 0], [8, 8, "8"], 8])
def test_patch_setting_is_three_positive_integers(patch):
    with pytest.raises(ConfigError, match="autoencoder.patch"):
        AutoencoderSettings.from_dict({"patch": patch})


@pytest.mark.parametrize("patch", [[7, 8, 8], [8, 8, 32]])
def test_patch_must_be_divisible_and_fit_the_grid(prepared_tiny, patch):
    with pytest.raises(ConfigError, match="autoencoder.patch"):
        autoencoder_stage(prepared_tiny, patch=patch)


def test_patch_must_suit_the_discriminator(prepared_tiny):
    with pytest.raises(ConfigError, match="too small for the discriminator"):
        autoencoder_stage(prepared_tiny, patch=[8, 8, 8])  # the tiny discriminator needs 16 a side
    assert autoencoder_stage(prepared_tiny, patch=[8, 8, 8], adv_weight=0.0).settings.patch == [8, 8, 8]


def test_cache_is_read_per_case_and_gives_the_in_memory_batch(prepared_tiny, autoencoder, tmp_path, monkeypatch):
    """Mean, log-variance and masks stay on disk (memory-mapped); a batch reads only its cases, and equals the
    batch the single-file cache gave: whole-volume encodes of every case, scale 1 / std(z) with generator seed 0."""
    stage = diffusion_stage(prepared_tiny, autoencoder, tmp_path / "latents", mask_concat=True)
    cache = stage.cache
    assert isinstance(cache.mean.case(0), np.memmap) and isinstance(cache.occupancy.case(3), np.memmap)
    assert sorted(p.name for p in (tmp_path / "latents" / "cases" / "00002").iterdir()) == [
        "labels.npy", "logvar.npy", "mean.npy", "occupancy.npy"]

    data = load_prepared(prepared_tiny)
    network = load_checkpoint(autoencoder, use_ema=True).networks["autoencoder"].eval()
    with torch.no_grad():
        posterior = [network.encode(data.images[i:i + 1]) for i in range(len(data))]
    mean = torch.cat([mu for mu, _ in posterior])
    logvar = torch.cat([torch.log(sigma.pow(2) + 1e-12) for _, sigma in posterior])
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    assert cache.scale_factor == pytest.approx(1.0 / float(z.std()), rel=1e-6)

    read: list[int] = []
    case = type(cache.mean).case
    monkeypatch.setattr(type(cache.mean), "case", lambda self, i: (read.append(i), case(self, i))[1])
    generators = sample_generators(0, 3, [0, 1])
    eps = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in sample_generators(0, 3, [0, 1])])
    expected = (mean[[3, 1]] + torch.exp(0.5 * logvar[[3, 1]]) * eps) * cache.scale_factor
    torch.testing.assert_close(cache.sample([3, 1], generators), expected)
    stage.losses([3, 1], sample_generators(0, 3, [0, 1]), 3)
    assert set(read) == {1, 3}


def test_scale_is_measured_on_a_sample_of_cases(prepared_tiny, autoencoder, tmp_path, monkeypatch):
    monkeypatch.setattr(latents, "SCALE_SAMPLE_CASES", 2)
    cache = diffusion_stage(prepared_tiny, autoencoder, tmp_path / "latents").cache
    eps = torch.randn([2, *cache.mean.shape[1:]], generator=torch.Generator().manual_seed(0))
    z = cache.mean[[0, 3]] + torch.exp(0.5 * cache.logvar[[0, 3]]) * eps  # the first and last case
    assert cache.scale_factor == pytest.approx(1.0 / float(z.std()), rel=1e-6)


def test_single_file_cache_asks_to_be_rebuilt(tmp_path):
    folder = tmp_path / "latents"
    folder.mkdir()
    (folder / "cache.json").write_text(json.dumps({"case_ids": ["a"], "scale_factor": 1.0}))
    (folder / "latents.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="older format") as error:
        load_latent_cache(folder)
    assert "delete" in str(error.value)


def test_cache_encodes_large_volumes_by_windows_of_the_training_patch(prepared_tiny, tmp_path, monkeypatch):
    """Above the threshold (lowered here to 8^3) each case is encoded by windows of ``autoencoder.patch``."""
    stage = autoencoder_stage(prepared_tiny, patch=[8, 8, 8], adv_weight=0.0)
    checkpoint = train(stage, tmp_path / "ae", steps=2)
    monkeypatch.setattr(windowed, "WINDOWED_ENCODE_THRESHOLD", 8**3)
    cache = diffusion_stage(prepared_tiny, checkpoint, tmp_path / "latents").cache
    network = load_checkpoint(checkpoint, use_ema=True).networks["autoencoder"].eval()
    image = load_prepared(prepared_tiny).images[2:3]
    by_patch = windowed.encode_posterior(network, image, windowed=True, window=8)[0]
    whole = windowed.encode_posterior(network, image, windowed=False)[0]
    torch.testing.assert_close(cache.mean[2:3], by_patch)
    assert float((cache.mean[2:3] - whole).abs().max()) > 1e-3
