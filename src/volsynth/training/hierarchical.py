"""Hierarchical, anatomy-aware generation (MedSyn): stage 1 generates from text a
low-resolution volume **jointly with its anatomy** (image channel + one channel per class, background
included); stage 2 is a super-resolution diffusion model conditioned on the upsampled stage-1 channels
that outputs the high-resolution image and refined label channels. Pixel space, same engine.

Training data for both stages comes from one prepared (high-resolution) dataset: stage 1 sees it
average-pooled by ``factor``; stage 2 learns to undo exactly that pooling. With ``residual_scale`` set, stage 2
learns the residual ``(x0 - condition) / residual_scale`` instead of ``x0`` (residual diffusion, as in SR3's
successors): an untrained network already returns the upsampled condition, and the diffusion only adds detail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from volsynth.config import settings_from_dict
from volsynth.errors import ConfigError
from volsynth.models.registry import build_network, network_config
from volsynth.models.stages import DenoiserSettings, check_patch_settings, upsample
from volsynth.text import get_text_encoder
from volsynth.training.data import PreparedData, check_patch_fits, random_patches
from volsynth.training.denoising import denoising_loss, dropped, noised
from volsynth.training.placement import DevicePlacement


@dataclass
class HierarchicalSettings(DenoiserSettings):
    """A recipe's ``joint:`` or ``superres:`` block (less ``train:``)."""

    size: str = "tiny-pixel"
    network: dict = field(default_factory=dict)
    factor: int = 2  # super-resolution factor (2x or 4x)
    patch: list[int] | None = None  # superres only: train on random patches of this size (inference: whole grid)
    residual_scale: float | None = None  # superres only: learn (x0 - condition) / residual_scale

    @classmethod
    def from_dict(cls, data: dict | None) -> HierarchicalSettings:
        """Build from a dict, rejecting unknown keys."""
        settings = settings_from_dict(cls, data, "hierarchical")
        if settings.factor not in (2, 4):
            raise ConfigError(None, f"factor must be 2 or 4, got {settings.factor}")
        check_patch_settings(settings.patch, settings.residual_scale)
        return settings


def joint_channels(images: torch.Tensor, labels: torch.Tensor, label_ids: list[int]) -> torch.Tensor:
    """Image [B, 1, ...] and labels [B, ...] -> [B, 1 + K + 1, ...]: image, background, classes in [-1, 1]."""
    onehot = torch.stack([labels == 0, *[labels == i for i in label_ids]], dim=1).float()
    return torch.cat([images, onehot * 2 - 1], dim=1)


def low_resolution(x: torch.Tensor, factor: int) -> torch.Tensor:
    """What stage 1 makes: the joint channels average-pooled by ``factor``."""
    return F.avg_pool3d(x, factor)


class _HierarchicalStage(DevicePlacement):
    """Shared data handling of both stages."""

    def __init__(self, data: PreparedData, settings: HierarchicalSettings, seed: int, cond: bool) -> None:
        if data.labels is None:
            raise ConfigError(data.root, "hierarchical training needs label maps")
        unet = network_config("unet", settings.size, **settings.network)
        divisor = settings.factor * 2 ** (len(unet["channels"]) - 1)  # the low-resolution grid goes through the UNet
        if any(s % divisor for s in data.images.shape[2:]):
            raise ConfigError(data.root, f"grid {list(data.images.shape[2:])} must be divisible by {divisor}")
        check_patch_fits(data.root, settings.patch, list(data.images.shape[2:]), 2 ** (len(unet["channels"]) - 1))
        self.data, self.settings = data, settings
        self.label_names = sorted(data.plan.labels, key=data.plan.labels.get)
        self.label_ids = [data.plan.labels[n] for n in self.label_names]
        encoder = get_text_encoder(settings.text_encoder)
        self.tokens = encoder.encode(data.reports)[0]  # encoded once
        channels = 2 + len(self.label_ids)
        torch.manual_seed(seed)
        self.configs = {"unet": {"class": "ConditionedUNet", "latent_channels": channels,
                                 "cond_channels": channels if cond else 0, "context_dim": encoder.dim,
                                 "context_length": encoder.max_length,
                                 "unet": {"spatial_dims": 3, **unet}}}
        self.networks = {"unet": build_network(self.configs["unet"])}
        self.scheduler = settings.scheduler()
        self.text_encoder_id = encoder.identifier

    def num_items(self) -> int:
        """Number of prepared cases."""
        return len(self.data)

    def targets(self, indices: list[int]) -> torch.Tensor:
        """High-resolution joint channels of the cases."""
        return joint_channels(self.data.images[indices][:, :1], self.data.labels[indices], self.label_ids)

    def denoising_loss(self, x0, cond, indices, generators) -> torch.Tensor:
        """The shared epsilon / v / flow loss with text dropout."""
        noisy, noise, timesteps = noised(self.scheduler, x0, generators)
        drop = dropped(generators, self.settings.condition_dropout)
        x0, noisy, noise, timesteps, context, cond, drop = self.put(
            x0, noisy, noise, timesteps, self.tokens[indices], cond, drop)
        prediction = self.networks["unet"](noisy, timesteps, context=context, cond=cond, drop_context=drop)
        return denoising_loss(prediction, self.scheduler, self.settings.prediction_type, x0, noise, timesteps,
                              self.settings.loss)

    def param_groups(self) -> dict[str, list[str]]:
        """One optimizer for the UNet."""
        return {self.name: ["unet"]}

    def meta(self) -> dict:
        """What the hierarchical pipeline needs."""
        return {"kind": "hierarchical", "plan": self.data.plan.to_dict(), "label_names": self.label_names,
                "label_ids": self.label_ids,
                "text_encoder": self.text_encoder_id, "factor": self.settings.factor,
                "diffusion": {k: v for k, v in vars(self.settings).items() if k != "network"}}

    def preview(self, step: int, path: Path) -> None:
        """No preview for this stage yet."""


class JointStage(_HierarchicalStage):
    """Stage 1: text -> low-resolution image + anatomy channels."""

    name = "joint"

    def __init__(self, data: PreparedData, settings: HierarchicalSettings, seed: int = 0) -> None:
        super().__init__(data, settings, seed, cond=False)

    def losses(self, indices, generators, step):
        """Denoising loss on the pooled joint channels."""
        x0 = low_resolution(self.targets(indices), self.settings.factor)
        return {"joint": self.denoising_loss(x0, None, indices, generators)}


class SuperResolutionStage(_HierarchicalStage):
    """Stage 2: upsampled stage-1 channels (+ text) -> high-resolution image + refined labels."""

    name = "superres"

    def __init__(self, data: PreparedData, settings: HierarchicalSettings, seed: int = 0) -> None:
        super().__init__(data, settings, seed, cond=True)

    def losses(self, indices, generators, step):
        """Denoising loss on the high-resolution channels, conditioned on their pooled version."""
        x0 = self.targets(indices)
        cond = upsample(low_resolution(x0, self.settings.factor), self.settings.factor)
        if self.settings.patch is not None:  # the condition is made on the whole grid, then cropped with x0
            x0, cond = random_patches([x0, cond], self.settings.patch, generators, self.settings.factor)
        if self.settings.residual_scale is not None:
            x0 = (x0 - cond) / self.settings.residual_scale
        return {"superres": self.denoising_loss(x0, cond, indices, generators)}
