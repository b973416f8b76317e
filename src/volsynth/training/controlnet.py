"""The ControlNet stage: a multi-label ``MaskControlNet`` trained beside a frozen text-conditioned
UNet (dual-guided liver CT; 3D-LLDM). Classes are hidden at random during training (partial labels), all of them
sometimes (so "no mask" is learned for mask guidance), and the text is dropped as in the diffusion
stage. Same engine, schedulers, cache and checkpoint format as the other stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from volsynth.config import settings_from_dict
from volsynth.errors import ConfigError
from volsynth.models.checkpoint import load_checkpoint
from volsynth.models.controlnet import combine_features, mask_features
from volsynth.models.registry import build_network
from volsynth.training.denoising import denoising_loss, dropped, hide_classes, noised
from volsynth.training.diffusion import DiffusionSettings
from volsynth.training.latents import LatentCache
from volsynth.training.placement import DevicePlacement


@dataclass
class ControlNetSettings:
    """A recipe's ``controlnet:`` block (less ``train:``)."""

    hide_class: float = 0.3  # each known class is hidden with this probability
    hide_all: float = 0.1  # the whole mask is hidden with this probability (mask guidance)
    condition_dropout: float = 0.1  # text dropout, as in the diffusion stage
    # The mask embedding's channels; each entry after the first halves the grid, so [8, 16, 32] reads the
    # mask at 4x the latent resolution (full resolution for a 4x autoencoder), [16] at the latent grid.
    embedding_channels: list[int] = field(default_factory=lambda: [16])
    loss: str = "l1"

    @classmethod
    def from_dict(cls, data: dict | None) -> ControlNetSettings:
        """Build from a dict, rejecting unknown keys."""
        return settings_from_dict(cls, data, "controlnet")


class ControlNetStage(DevicePlacement):
    """Trains the ControlNet; the UNet comes frozen from a diffusion checkpoint."""

    name = "controlnet"
    helper_modules = ("unet",)  # moved to the device with the trained networks

    def __init__(self, cache: LatentCache, diffusion_checkpoint: str | Path, settings: ControlNetSettings,
                 seed: int = 0) -> None:
        if cache.occupancy is None:
            raise ConfigError(cache.path, "latent cache has no masks", "prepare the dataset with label maps")
        self.cache, self.settings = cache, settings
        diffusion = load_checkpoint(diffusion_checkpoint, use_ema=True)
        self.diffusion_checkpoint = Path(diffusion_checkpoint)
        self.unet = diffusion.networks["unet"].eval()
        if getattr(self.unet, "cond_channels", 0):
            raise ConfigError(diffusion_checkpoint, "this diffusion model already takes the mask as input "
                              "(diffusion.mask_concat)", "drop the controlnet block, or train without mask_concat")
        for param in self.unet.parameters():
            param.requires_grad_(False)
        self.diffusion_settings = DiffusionSettings.from_dict(diffusion.meta["diffusion"])
        unet_config = diffusion.config["networks"]["unet"]
        torch.manual_seed(seed)
        self.configs = {"controlnet": {"class": "MaskControlNet", "num_classes": cache.occupancy.shape[1],
                                       "latent_channels": unet_config["latent_channels"],
                                       "context_dim": unet_config["context_dim"], "unet": unet_config["unet"],
                                       "embedding_channels": settings.embedding_channels}}
        controlnet = build_network(self.configs["controlnet"])
        controlnet.init_from_unet(self.unet)
        # cached latent-grid occupancy serves an embedding that takes the mask on the latent grid; a finer one
        # pools the cached label maps
        self.pooling = controlnet.mask_pooling(int(cache.info["factor"]))
        self.cached_occupancy = self.pooling == int(cache.info["factor"])
        if not self.cached_occupancy and cache.labels is None:
            raise ConfigError(cache.path, "the latent cache holds no full-resolution label maps, which this "
                              "ControlNet embedding needs", "delete the latents folder so the recipe rebuilds it")
        self.networks = {"controlnet": controlnet}
        self.scheduler = self.diffusion_settings.scheduler(int(cache.mean[0, 0].numel()))

    def num_items(self) -> int:
        """Number of cached cases."""
        return len(self.cache)

    def param_groups(self) -> dict[str, list[str]]:
        """One optimizer for the ControlNet."""
        return {"controlnet": ["controlnet"]}

    def losses(self, indices: list[int], generators: list[torch.Generator], step: int) -> dict[str, torch.Tensor]:
        """Denoising loss of the frozen UNet steered by the ControlNet's residuals."""
        z0 = self.cache.sample(indices, generators)
        noisy, noise, timesteps = noised(self.scheduler, z0, generators)
        known = hide_classes(self.cache.known[indices], generators, self.settings.hide_class, self.settings.hide_all)
        features = self.mask_features(indices, known)
        drop = dropped(generators, self.settings.condition_dropout)
        z0, noisy, noise, timesteps, features, drop, tokens = self.put(
            z0, noisy, noise, timesteps, features, drop, self.cache.tokens[indices])
        context = torch.where(drop[:, None, None], self.unet.null(len(indices)), tokens)
        controlnet = self.networks["controlnet"]
        down, mid = controlnet(noisy, timesteps, controlnet.embed(features), context=context)
        prediction = self.unet(noisy, timesteps, context=context, down_block_additional_residuals=down,
                               mid_block_additional_residual=mid)
        return {"controlnet": denoising_loss(prediction, self.scheduler, self.diffusion_settings.prediction_type, z0,
                                             noise, timesteps, self.settings.loss)}

    def mask_features(self, indices: list[int], known: torch.Tensor) -> torch.Tensor:
        """The ControlNet's input: cached latent-grid occupancy, or occupancy pooled from the label maps."""
        if self.cached_occupancy:
            return combine_features(self.cache.occupancy[indices].float(), known)
        return mask_features(self.cache.labels[indices].long(), known, self.cache.info["label_ids"], self.pooling)

    def meta(self) -> dict:
        """Which diffusion model this ControlNet belongs to, and the class order of its input."""
        return {"diffusion_checkpoint": str(self.diffusion_checkpoint), "label_names": self.cache.info["label_names"],
                "label_ids": self.cache.info["label_ids"], "factor": self.cache.info["factor"]}

    def preview(self, step: int, path: Path) -> None:
        """No preview for this stage yet (generation with masks gives one)."""
