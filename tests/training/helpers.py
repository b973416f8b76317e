"""Tiny stages for the engine tests."""

from __future__ import annotations

from pathlib import Path

from volsynth.training.autoencoder import AutoencoderSettings, AutoencoderStage
from volsynth.training.data import load_prepared
from volsynth.training.diffusion import DiffusionSettings, DiffusionStage
from volsynth.training.engine import TrainConfig, Trainer
from volsynth.training.latents import build_latent_cache

TINY_AE = {"size": "tiny", "adv_weight": 0.05, "adv_warmup": 2}
TINY_UNET = {"size": "tiny", "text_encoder": "tiny:16", "num_train_timesteps": 100}


def autoencoder_stage(prepared: Path, **settings) -> AutoencoderStage:
    """A tiny autoencoder stage on the prepared fixture."""
    return AutoencoderStage(load_prepared(prepared), AutoencoderSettings.from_dict({**TINY_AE, **settings}))


def train(stage, out: Path, **config) -> Path:
    """Train quietly; returns the final checkpoint."""
    defaults = {"steps": 4, "batch_size": 2, "lr": 2e-3, "checkpoint_every": 2, "log_every": 1, "progress": False}
    return Trainer(stage, out, TrainConfig(**{**defaults, **config})).fit()


def trained_autoencoder(prepared: Path, out: Path) -> Path:
    """A tiny autoencoder checkpoint trained for a few steps."""
    return train(autoencoder_stage(prepared), out, steps=4)


def diffusion_stage(prepared: Path, autoencoder: Path, cache_dir: Path, **settings) -> DiffusionStage:
    """A tiny diffusion stage on a latent cache of the prepared fixture (built once per folder)."""
    from volsynth.training.latents import CACHE_INFO, load_latent_cache

    merged = DiffusionSettings.from_dict({**TINY_UNET, **settings})
    if (cache_dir / CACHE_INFO).is_file():
        cache = load_latent_cache(cache_dir)
    else:
        cache = build_latent_cache(autoencoder, load_prepared(prepared), merged.text_encoder, cache_dir, progress=False)
    return DiffusionStage(cache, merged, autoencoder=autoencoder)
