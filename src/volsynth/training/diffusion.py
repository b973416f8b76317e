"""The text-conditioned latent diffusion stage (dual-guided liver CT): ``ConditionedUNet`` on cached latents with
cross-attention to the reports' token embeddings, condition dropout for classifier-free guidance,
DDPM/DDIM (epsilon or v) or rectified-flow training, L1 (the seed's) or L2 loss.

With ``mask_concat: true`` the stage is segmentation-guided diffusion in latent space (that paper's method applied to
latents): the cache's pooled masks (occupancy + known flag per class, as the ControlNet gets them) are
concatenated to the noisy latent, each class is dropped with ``mask_ablation`` per sample and the whole
mask with ``mask_drop`` (so "no mask" is learned for mask guidance)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from volsynth.config import settings_from_dict
from volsynth.errors import ConfigError
from volsynth.models.checkpoint import load_checkpoint
from volsynth.models.controlnet import combine_features
from volsynth.models.registry import build_network, network_config
from volsynth.models.stages import DenoiserSettings
from volsynth.models.tiled import decode
from volsynth.sampling import build_scheduler, sample
from volsynth.training.denoising import denoising_loss, dropped, hide_classes, noised
from volsynth.training.latents import LatentCache
from volsynth.training.placement import DevicePlacement
from volsynth.viz import save_montage


@dataclass
class DiffusionSettings(DenoiserSettings):
    """A recipe's ``diffusion:`` block (less ``train:``)."""

    size: str = "small"
    network: dict = field(default_factory=dict)
    loss: str = "l1"  # the seed's
    preview_steps: int = 20
    mask_concat: bool = False  # concatenate the pooled mask to the noisy latent (segmentation-guided diffusion)
    mask_ablation: float = 0.5  # mask_concat: each class dropped with this probability per sample
    mask_drop: float = 0.1  # mask_concat: the whole mask dropped with this probability (mask guidance)

    @classmethod
    def from_dict(cls, data: dict | None) -> DiffusionSettings:
        """Build from a dict, rejecting unknown keys."""
        settings = settings_from_dict(cls, data, "diffusion")
        if settings.loss not in ("l1", "l2"):
            raise ConfigError(None, f"unknown diffusion loss '{settings.loss}'", "use l1 or l2")
        for name in ("mask_ablation", "mask_drop"):
            if not 0 <= getattr(settings, name) <= 1:
                raise ConfigError(None, f"{name} must be in [0, 1], got {getattr(settings, name)}")
        return settings


class DiffusionStage(DevicePlacement):
    """Trains the conditioned UNet on a latent cache."""

    name = "diffusion"

    def __init__(self, cache: LatentCache, settings: DiffusionSettings, seed: int = 0,
                 autoencoder: str | Path | None = None) -> None:
        self.cache, self.settings, self.autoencoder = cache, settings, autoencoder
        latent_channels = cache.mean.shape[1]
        if settings.mask_concat and cache.occupancy is None:
            raise ConfigError(cache.path, "mask_concat needs masks in the latent cache",
                              "prepare the dataset with label maps")
        torch.manual_seed(seed)
        unet = {"spatial_dims": 3, **network_config("unet", settings.size, **settings.network)}
        cond_channels = 2 * cache.occupancy.shape[1] if settings.mask_concat else 0
        self.configs = {"unet": {"class": "ConditionedUNet", "latent_channels": latent_channels,
                                 "context_dim": int(cache.info["text_dim"]),
                                 "context_length": int(cache.info["text_length"]), "unet": unet,
                                 **({"cond_channels": cond_channels} if cond_channels else {})}}
        self.networks = {"unet": build_network(self.configs["unet"])}
        factor = 2 ** (len(unet["channels"]) - 1)
        if any(s % factor for s in cache.mean.shape[2:]):
            raise ConfigError(cache.path, f"latent grid {list(cache.mean.shape[2:])} is not divisible by {factor}")
        self.scheduler = settings.scheduler(int(cache.mean[0, 0].numel()))

    def num_items(self) -> int:
        """Number of cached cases."""
        return len(self.cache)

    def param_groups(self) -> dict[str, list[str]]:
        """One optimizer for the UNet."""
        return {"diffusion": ["unet"]}

    def losses(self, indices: list[int], generators: list[torch.Generator], step: int) -> dict[str, torch.Tensor]:
        """Denoising loss for a batch of cached latents and their reports."""
        z0 = self.cache.sample(indices, generators)
        noisy, noise, timesteps = noised(self.scheduler, z0, generators)
        drop = dropped(generators, self.settings.condition_dropout)
        z0, noisy, noise, timesteps, drop, context, cond = self.put(
            z0, noisy, noise, timesteps, drop, self.cache.tokens[indices], self.mask_condition(indices, generators))
        prediction = self.networks["unet"](noisy, timesteps, context=context, drop_context=drop, cond=cond)
        return {"diffusion": denoising_loss(prediction, self.scheduler, self.settings.prediction_type, z0, noise,
                                            timesteps, self.settings.loss)}

    def mask_condition(self, indices: list[int], generators: list[torch.Generator]) -> torch.Tensor | None:
        """The ablated pooled masks of a batch [B, 2K, ...] for a mask-concat UNet, else None."""
        if not self.settings.mask_concat:
            return None
        known = hide_classes(self.cache.known[indices], generators, self.settings.mask_ablation,
                             self.settings.mask_drop)
        return combine_features(self.cache.occupancy[indices].float(), known)

    def meta(self) -> dict:
        """Scale factor, text encoder and data identity, stored beside the weights."""
        info = self.cache.info
        return {"scale_factor": self.cache.scale_factor, "text_encoder": info["text_encoder"],
                "latent_shape": info["latent_shape"], "autoencoder": str(self.autoencoder or info["autoencoder"]),
                "autoencoder_sha256": info["autoencoder_sha256"], "prepared": info["prepared"],
                "diffusion": {k: v for k, v in vars(self.settings).items() if k != "network"}}

    def preview(self, step: int, path: Path) -> None:
        """Decoded samples for the first reports (needs the autoencoder checkpoint)."""
        if self.autoencoder is None:
            return
        preview_samples(self.networks["unet"], self.autoencoder, self.cache, self.settings, path, step)


@torch.no_grad()
def preview_samples(unet, autoencoder_checkpoint, cache, settings, path: Path, step: int, count: int = 2) -> None:
    """Training preview: decode a few samples for the first reports of the cache."""
    autoencoder = load_checkpoint(autoencoder_checkpoint, use_ema=True).networks["autoencoder"].eval()
    unet.eval()
    scheduler = build_scheduler("ddim" if settings.sampler == "ddpm" else settings.sampler, settings.prediction_type,
                                settings.num_train_timesteps, settings.schedule, int(cache.mean[0, 0].numel()))
    arrays, titles = [], []
    device = next(unet.parameters()).device
    for index in range(min(count, len(cache))):
        generator = torch.Generator().manual_seed(index)
        z = torch.randn([1, *cache.mean.shape[1:]], generator=generator).to(device)
        context = cache.tokens[index:index + 1].to(device)
        cond = None
        if getattr(unet, "cond_channels", 0):  # mask-concat UNet: the case's own mask (it is the usual use)
            cond = combine_features(cache.occupancy[index:index + 1].float(),
                                    cache.known[index:index + 1]).to(device)
        z = sample(lambda x, t, c=context, m=cond: unet(x, t, context=c, cond=m), z, scheduler,
                   settings.preview_steps, generator)
        arrays.append(decode(autoencoder, z.cpu() / cache.scale_factor)[0, 0].numpy())
        titles.append(f"step {step} sample {index}")
    unet.train()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_montage(path, arrays, [None] * len(arrays), titles, window=(-1.0, 1.0))
