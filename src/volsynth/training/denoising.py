"""The pieces every diffusion stage shares: noising a batch with per-sample generators, condition
dropout, and the regression loss on the network's prediction."""

from __future__ import annotations

import torch

from volsynth.errors import ConfigError
from volsynth.sampling.samplers import sample_timesteps, training_target


def noised(scheduler, x0: torch.Tensor, generators: list[torch.Generator]):
    """(noisy sample, noise, timesteps) for clean samples ``x0``; each sample draws from its own generator."""
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators])
    timesteps = sample_timesteps(scheduler, x0, generators)
    return scheduler.add_noise(x0, noise, timesteps), noise, timesteps


def dropped(generators: list[torch.Generator], probability: float) -> torch.Tensor:
    """Bool [B]: which samples lose their text condition (classifier-free guidance training)."""
    return torch.stack([torch.rand((), generator=g) < probability for g in generators])


def hide_classes(known: torch.Tensor, generators: list[torch.Generator], hide_class: float,
                 hide_all: float = 0.0) -> torch.Tensor:
    """Turn known classes [B, K] into "not given" at random, per sample from its own generator: each class with
    ``hide_class`` (partial labels; mask ablation), the whole mask with ``hide_all`` (mask guidance)."""
    rows = []
    for flags, generator in zip(known, generators, strict=True):
        keep = torch.rand(flags.shape, generator=generator) >= hide_class
        if hide_all > 0 and torch.rand((), generator=generator) < hide_all:  # no draw when off: streams unchanged
            keep = torch.zeros_like(keep)
        rows.append(flags * keep)
    return torch.stack(rows)


def denoising_loss(prediction: torch.Tensor, scheduler, prediction_type: str, x0: torch.Tensor,
                   noise: torch.Tensor, timesteps: torch.Tensor, kind: str) -> torch.Tensor:
    """L1 (the seed's) or L2 between the prediction and its epsilon / v / flow target."""
    error = prediction.float() - training_target(scheduler, prediction_type, x0, noise, timesteps)
    if kind == "l1":
        return error.abs().mean()
    if kind == "l2":
        return error.pow(2).mean()
    raise ConfigError(None, f"unknown diffusion loss '{kind}'", "use l1 or l2")
