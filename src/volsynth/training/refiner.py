"""Mask-conditioned refiner: a pixel-space diffusion stage that a latent model runs after decoding.

The autoencoder and the latent diffusion model leave their mark on a generated volume: edges blurred by the
4x latent grid, organs a little too bright and mottled. The refiner redraws the volume at full resolution from
two conditions: a *degraded* copy of it (average-pooled by ``degrade_factor`` and upsampled again, so it keeps
layout and contrast but not texture) and the mask at full resolution (one-hot occupancy and known flags, the
ControlNet's input format, so partial labels work the same way). Training degrades real images; the degradation
is randomised (noise at the pooled grid and at twice its pooling, a random intensity offset per class) so that
the generated volumes' own flaws look like something the refiner has learnt to undo (cascaded diffusion's
noise-conditioning augmentation; per-class offsets stand for the generated organs' wrong brightness).

It is the hierarchical model's super-resolution stage at factor 1 with a mask: residual diffusion over the
degraded condition (``residual_scale``), random patches in training, the whole grid at inference; it takes
no text. Same engine, schedulers and checkpoint format as every other stage.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from volsynth.errors import ConfigError
from volsynth.models.controlnet import mask_features
from volsynth.models.registry import build_network, network_config
from volsynth.models.stages import CONTEXT_DIM, RefinerSettings, degrade
from volsynth.training.data import PreparedData, check_patch_fits, random_patches
from volsynth.training.denoising import denoising_loss, hide_classes, noised
from volsynth.training.latents import known_classes
from volsynth.training.placement import DevicePlacement


def augmented_condition(image: torch.Tensor, labels: torch.Tensor, label_ids: list[int],
                        settings: RefinerSettings, generators: list[torch.Generator]) -> torch.Tensor:
    """Training condition: per-class intensity offsets, then pooling, then noise at two scales (per sample)."""
    shifted = []
    for b, generator in enumerate(generators):
        offsets = (torch.rand(len(label_ids), generator=generator) * 2 - 1) * settings.class_jitter
        field_ = sum((labels[b] == i).float() * o for i, o in zip(label_ids, offsets.tolist(), strict=True))
        shifted.append(image[b] + field_)
    cond = degrade(torch.stack(shifted), settings.degrade_factor)
    if settings.noise_aug > 0:
        for scale in (settings.degrade_factor, 2 * settings.degrade_factor):
            grid = [s // scale for s in cond.shape[2:]]
            sigma = torch.stack([torch.rand((), generator=g) for g in generators]) * settings.noise_aug
            noise = torch.stack([torch.randn(cond.shape[1], *grid, generator=g) for g in generators])
            noise = F.interpolate(noise, size=cond.shape[2:], mode="trilinear", align_corners=False)
            cond = cond + sigma.view(-1, 1, 1, 1, 1) * noise
    return cond


class RefinerStage(DevicePlacement):
    """Trains the refiner on a prepared dataset's images and label maps (pixel space)."""

    name = "refiner"

    def __init__(self, data: PreparedData, settings: RefinerSettings, seed: int = 0) -> None:
        if data.labels is None:
            raise ConfigError(data.root, "the refiner needs label maps", "prepare the dataset with labels")
        unet = network_config("unet", settings.size, **settings.network)
        levels = 2 ** (len(unet["channels"]) - 1)
        grid = list(data.images.shape[2:])
        if any(s % (levels * settings.degrade_factor) for s in grid):
            raise ConfigError(data.root, f"grid {grid} must be divisible by {levels * settings.degrade_factor}",
                              "choose a network with fewer levels or another degrade_factor")
        check_patch_fits(data.root, settings.patch, grid, levels, "refiner patch")
        self.data, self.settings = data, settings
        self.label_names = sorted(data.plan.labels, key=data.plan.labels.get)
        self.label_ids = [data.plan.labels[n] for n in self.label_names]
        self.known = known_classes(data.facts, self.label_names)
        channels = data.images.shape[1]
        torch.manual_seed(seed)
        self.configs = {"refiner": refiner_config(channels, len(self.label_ids), unet)}
        self.networks = {"refiner": build_network(self.configs["refiner"])}
        self.scheduler = settings.scheduler()

    def num_items(self) -> int:
        """Number of prepared cases."""
        return len(self.data)

    def param_groups(self) -> dict[str, list[str]]:
        """One optimizer for the refiner."""
        return {"refiner": ["refiner"]}

    def losses(self, indices, generators, step):
        """Denoising loss of the clean image given its degraded copy and its (partly hidden) mask."""
        x0 = self.data.images[indices]
        labels = self.data.labels[indices].long()
        known = hide_classes(self.known[indices], generators, self.settings.hide_class, self.settings.hide_all)
        features = mask_features(labels, known, self.label_ids, 1)
        cond = augmented_condition(x0, labels, self.label_ids, self.settings, generators)
        if self.settings.patch is not None:  # pooling blocks stay aligned with the whole grid's
            x0, cond, features = random_patches([x0, cond, features], self.settings.patch, generators,
                                                2 * self.settings.degrade_factor)
        if self.settings.residual_scale is not None:
            x0 = (x0 - cond) / self.settings.residual_scale
        noisy, noise, timesteps = noised(self.scheduler, x0, generators)
        x0, noisy, noise, timesteps, cond = self.put(x0, noisy, noise, timesteps, torch.cat([cond, features], dim=1))
        prediction = self.networks["refiner"](noisy, timesteps, cond=cond)
        return {"refiner": denoising_loss(prediction, self.scheduler, self.settings.prediction_type, x0, noise,
                                          timesteps, self.settings.loss)}

    def meta(self) -> dict:
        """What the pipeline needs to run the refiner."""
        return {"kind": "refiner", "plan": self.data.plan.to_dict(), "label_names": self.label_names,
                "label_ids": self.label_ids,
                "refiner": {k: v for k, v in vars(self.settings).items() if k != "network"}}

    def preview(self, step: int, path: Path) -> None:
        """No preview for this stage (generation with a mask shows it)."""


def refiner_config(channels: int, num_classes: int, unet: dict) -> dict:
    """The refiner network's config: a ConditionedUNet over the image channels, conditioned on the degraded
    image and the mask features (2 channels per class), with a text context it never receives."""
    return {"class": "ConditionedUNet", "latent_channels": channels, "cond_channels": channels + 2 * num_classes,
            "context_dim": CONTEXT_DIM, "context_length": 1, "unet": {"spatial_dims": 3, **unet}}
