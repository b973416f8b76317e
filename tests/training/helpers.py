"""Tiny stages for the engine tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from volsynth.training.autoencoder import AutoencoderSettings, AutoencoderStage
from volsynth.training.data import load_prepared
from volsynth.training.diffusion import DiffusionSettings, DiffusionStage
from volsynth.training.engine import TrainConfig, Trainer
from volsynth.training.latents import build_latent_cache
from volsynth.training.recipe import run_recipe

TINY_AE = {"size": "tiny", "adv_weight": 0.05, "adv_warmup": 2}
TINY_UNET = {"size": "tiny", "text_encoder": "tiny:16", "num_train_timesteps": 100}


def autoencoder_stage(prepared: Path, **settings) -> AutoencoderStage:
    """A tiny autoencoder stage on the prepared fixture."""
    return AutoencoderStage(load_prepared(prepared), AutoencoderSettings.from_dict({**TINY_AE, **settings}))


def train(stage, out: Path, **config) -> Path:
    """Train quietly; returns the final checkpoint."""
    # float32: the engine tests compare runs to the bit (resume, gradient accumulation, DDP), and bf16 kernels on a
    # CPU are not bit-reproducible from run to run (said explicitly, whatever auto means on this machine)
    defaults = {"steps": 4, "batch_size": 2, "lr": 2e-3, "checkpoint_every": 2, "log_every": 1, "progress": False,
                "bf16": False}
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


def tiny_recipe(raw: Path, **blocks) -> dict:
    """A recipe on the prepared fixture's raw dataset at 16^3 with the tiny text encoder; ``blocks`` add or replace."""
    return {"name": "tiny-test", "seed": 0, "data": {"dataset": str(raw)}, "prepare": {"size": 16},
            "text_encoder": "tiny:16", **blocks}


def write_recipe(folder: Path, recipe: dict) -> Path:
    """``recipe`` as folder/recipe.yaml (the folder made if need be)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_quietly(recipe: dict, folder: Path) -> Path:
    """Write ``recipe`` into ``folder`` and run it into folder/run, without progress bars or log; the model path."""
    return run_recipe(write_recipe(folder, recipe), folder / "run", progress=False, log=lambda m: None)
