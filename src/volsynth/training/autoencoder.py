"""The autoencoder stage (dual-guided liver CT): MONAI ``AutoencoderKL`` trained with L1 reconstruction + KL +
patch adversarial loss (MONAI ``PatchDiscriminator``, warm-up of its weight) + an optional perceptual
term from a local feature network. Perceptual is off by default: MONAI's PerceptualLoss downloads
weights, which volsynth never does."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from volsynth.config import settings_from_dict
from volsynth.errors import ConfigError
from volsynth.models.registry import build_network, network_config
from volsynth.models.windowed import reconstruct
from volsynth.training.data import PreparedData, check_patch_fits, random_patches
from volsynth.training.losses import (
    PerceptualLoss25D,
    discriminator_loss,
    generator_adversarial_loss,
    kl_loss,
)
from volsynth.training.placement import DevicePlacement
from volsynth.viz import save_montage


@dataclass
class AutoencoderSettings:
    """A recipe's ``autoencoder:`` block (less ``train:``)."""

    size: str = "small"
    network: dict = field(default_factory=dict)  # overrides of the registry size
    kl_weight: float = 1e-6
    adv_weight: float = 0.01
    adv_loss: str = "least_squares"
    adv_start: int = 0  # steps before the adversarial term starts
    adv_warmup: int = 100  # steps over which its weight ramps up linearly
    discriminator_size: str | None = None  # default: same name as ``size``
    perceptual: str | None = None  # TorchScript feature network file
    perceptual_weight: float = 0.1
    patch: list[int] | None = None  # train on random patches of this size (memory bounded by the patch)

    @classmethod
    def from_dict(cls, data: dict | None) -> AutoencoderSettings:
        """Build from a dict, rejecting unknown keys."""
        settings = settings_from_dict(cls, data, "autoencoder")
        patch = settings.patch
        if patch is not None and (not isinstance(patch, list) or len(patch) != 3
                                  or any(not isinstance(p, int) or isinstance(p, bool) or p <= 0 for p in patch)):
            raise ConfigError(None, f"autoencoder.patch must be three positive integers, got {patch!r}",
                              "e.g. patch: [64, 64, 64]")
        return settings


class AutoencoderStage(DevicePlacement):
    """Trains the autoencoder (and its discriminator) on prepared images."""

    name = "autoencoder"
    helper_modules = ("perceptual",)  # moved to the device with the trained networks

    def __init__(self, data: PreparedData, settings: AutoencoderSettings, seed: int = 0) -> None:
        self.data, self.settings = data, settings
        channels = data.images.shape[1]
        torch.manual_seed(seed)  # identical initial weights on every rank and every run
        self.configs = {"autoencoder": {"class": "AutoencoderKL", "spatial_dims": 3, "in_channels": channels,
                                        "out_channels": channels,
                                        **network_config("autoencoder", settings.size, **settings.network)}}
        if settings.adv_weight > 0:
            self.configs["discriminator"] = {
                "class": "PatchDiscriminator", "spatial_dims": 3, "in_channels": channels,
                **network_config("discriminator", settings.discriminator_size or settings.size)}
        self.networks = {name: build_network(cfg) for name, cfg in self.configs.items()}
        self.perceptual = PerceptualLoss25D(settings.perceptual) if settings.perceptual else None
        factor = 2 ** (len(self.configs["autoencoder"]["channels"]) - 1)
        if any(s % factor for s in data.images.shape[2:]):
            raise ConfigError(data.root, f"grid {list(data.images.shape[2:])} is not divisible by {factor}",
                              "prepare with a --size divisible by the autoencoder's downsampling")
        check_patch_fits(data.root, settings.patch, list(data.images.shape[2:]), factor, "autoencoder.patch")
        if settings.patch is not None and "discriminator" in self.networks:
            try:  # one dry run: its strided convolutions need a large enough patch
                with torch.no_grad():
                    self.networks["discriminator"](torch.zeros(1, channels, *settings.patch))
            except (RuntimeError, ValueError) as error:
                raise ConfigError(data.root, f"autoencoder.patch {settings.patch} is too small for the discriminator",
                                  "use a larger patch or a smaller discriminator_size") from error

    def num_items(self) -> int:
        """Number of prepared cases."""
        return len(self.data)

    def param_groups(self) -> dict[str, list[str]]:
        """The autoencoder, then (when adversarial) the discriminator."""
        groups = {"generator": ["autoencoder"]}
        if "discriminator" in self.networks:
            groups["discriminator"] = ["discriminator"]
        return groups

    def adversarial_weight(self, step: int) -> float:
        """Zero before ``adv_start``, then a linear ramp to ``adv_weight`` over ``adv_warmup`` steps."""
        s = self.settings
        if s.adv_weight <= 0 or step < s.adv_start:
            return 0.0
        return s.adv_weight * min(1.0, (step - s.adv_start + 1) / max(1, s.adv_warmup))

    def losses(self, indices: list[int], generators: list[torch.Generator], step: int) -> dict[str, torch.Tensor]:
        """Reconstruction, KL, perceptual and adversarial terms for a batch."""
        images = self.data.images[indices]
        if self.settings.patch is not None:
            images = random_patches([images], self.settings.patch, generators)[0]
        (images,) = self.put(images)
        reconstruction, mu, sigma = self.networks["autoencoder"](images)
        recon = (reconstruction.float() - images).abs().mean()
        kl = kl_loss(mu.float(), sigma.float())
        generator = recon + self.settings.kl_weight * kl
        out = {"recon": recon.detach(), "kl": kl.detach()}
        if self.perceptual is not None:
            perceptual = self.perceptual(reconstruction.float(), images)
            generator = generator + self.settings.perceptual_weight * perceptual
            out["perceptual"] = perceptual.detach()
        weight = self.adversarial_weight(step)
        if "discriminator" in self.networks and weight > 0:  # before adv_start the discriminator is not run
            discriminator = self.networks["discriminator"]
            fake_logits = discriminator(reconstruction)[-1]
            adv = generator_adversarial_loss(fake_logits.float(), self.settings.adv_loss)
            generator = generator + weight * adv
            real_logits = discriminator(images)[-1]
            fake_detached = discriminator(reconstruction.detach())[-1]
            out["discriminator"] = discriminator_loss(real_logits.float(), fake_detached.float(),
                                                      self.settings.adv_loss)
            out["adv"] = adv.detach()
        out["generator"] = generator
        return out

    def meta(self) -> dict:
        """Plan and data identity, stored beside the weights."""
        meta = {"plan": self.data.plan.to_dict(), "dataset_sha256": self.data.plan.source.get("sha256"),
                "prepared": str(self.data.root)}
        if self.settings.patch is not None:  # the latent cache encodes large volumes by windows of this size
            meta["patch"] = self.settings.patch
        return meta

    @torch.no_grad()
    def preview(self, step: int, path: Path) -> None:
        """Input and reconstruction of the first case, three planes each (windowed / streamed when large)."""
        network = self.networks["autoencoder"]
        network.eval()
        image = self.data.images[:1]
        reconstruction = reconstruct(network, image.to(self.device)).cpu()
        network.train()
        arrays = [image[0, 0].numpy(), reconstruction[0, 0].float().numpy()]
        path.parent.mkdir(parents=True, exist_ok=True)
        save_montage(path, arrays, [None, None], [f"input {self.data.case_ids[0]}", f"reconstruction step {step}"],
                     window=(-1.0, 1.0))


def reconstruction_error(network, data: PreparedData) -> float:
    """Mean absolute reconstruction error over a prepared dataset (in [-1, 1] units)."""
    network.eval()
    errors = []
    with torch.no_grad():
        for index in range(len(data)):
            image = data.images[index:index + 1]
            errors.append(float((reconstruct(network, image) - image).abs().mean()))
    return float(np.mean(errors))
