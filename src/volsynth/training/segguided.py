"""Segmentation-guided diffusion (also on AMOS, CT and MR): the mask is concatenated to the noisy image
(pixel space), each class is dropped independently with probability ``ablation`` per sample (mask
ablation: at inference any subset of classes guides generation), and a modality class embedding
lets one mask give a CT or an MR. Works on 3D volumes, or on 2D slices along one axis
(``slice_axis``: axial, coronal, sagittal) that the pipeline restacks into a volume."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from volsynth.config import settings_from_dict
from volsynth.errors import ConfigError
from volsynth.models.controlnet import combine_features
from volsynth.models.registry import build_network, network_config
from volsynth.models.stages import SLICE_AXES, DenoiserSettings
from volsynth.text import get_text_encoder
from volsynth.training.data import PreparedData
from volsynth.training.denoising import denoising_loss, dropped, hide_classes, noised
from volsynth.training.placement import DevicePlacement


@dataclass
class SegGuidedSettings(DenoiserSettings):
    """A recipe's ``segguided:`` block (less ``train:``)."""

    size: str = "tiny-pixel"
    network: dict = field(default_factory=dict)
    spatial_dims: int = 3
    slice_axis: str = "axial"
    ablation: float = 0.5  # each class dropped with this probability per sample (segmentation-guided diffusion)

    @classmethod
    def from_dict(cls, data: dict | None) -> SegGuidedSettings:
        """Build from a dict, rejecting unknown keys and impossible combinations."""
        settings = settings_from_dict(cls, data, "segguided")
        if settings.spatial_dims not in (2, 3):
            raise ConfigError(None, f"spatial_dims must be 2 or 3, got {settings.spatial_dims}")
        if settings.slice_axis not in SLICE_AXES:
            raise ConfigError(None, f"unknown slice axis '{settings.slice_axis}'", f"choose {sorted(SLICE_AXES)}")
        return settings


class SegGuidedStage(DevicePlacement):
    """Trains the concat-conditioned UNet on one prepared dataset per modality (same label set)."""

    name = "segguided"

    def __init__(self, datasets: list[PreparedData], settings: SegGuidedSettings, seed: int = 0) -> None:
        names = [sorted(d.plan.labels, key=d.plan.labels.get) for d in datasets]
        if any(n != names[0] for n in names) or any(d.labels is None for d in datasets):
            raise ConfigError(datasets[0].root, "all datasets need label maps with the same labels",
                              f"got {names}")
        self.datasets, self.settings = datasets, settings
        self.label_names = names[0]
        self.label_ids = [datasets[0].plan.labels[n] for n in self.label_names]
        self.modalities = [d.plan.modality for d in datasets]
        encoder = get_text_encoder(settings.text_encoder)
        self.text = [encoder.encode(d.reports)[0] for d in datasets]  # encoded once, not per step
        self.items = [(d, c) for d, data in enumerate(datasets) for c in range(len(data))]
        self.axis = SLICE_AXES[settings.slice_axis]
        if settings.spatial_dims == 2:
            depth = datasets[0].images.shape[2 + self.axis]
            self.items = [(d, c, s) for d, c in self.items for s in range(depth)]
        torch.manual_seed(seed)
        classes = len(self.label_names)
        self.configs = {"unet": {"class": "ConditionedUNet", "latent_channels": datasets[0].images.shape[1],
                                 "cond_channels": 2 * classes, "context_dim": encoder.dim,
                                 "context_length": encoder.max_length,
                                 "num_class_embeds": max(2, len(datasets)),
                                 "unet": {"spatial_dims": settings.spatial_dims,
                                          **network_config("unet", settings.size, **settings.network)}}}
        self.networks = {"unet": build_network(self.configs["unet"])}
        self.scheduler = settings.scheduler()

    def num_items(self) -> int:
        """Volumes (3D) or slices (2D) over all datasets."""
        return len(self.items)

    def param_groups(self) -> dict[str, list[str]]:
        """One optimizer for the UNet."""
        return {"segguided": ["unet"]}

    def _item(self, item) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        data = self.datasets[item[0]]
        image, labels = data.images[item[1]], data.labels[item[1]]
        if len(item) == 3:  # one slice along the axis: [C, X, Y, Z] -> [C, H, W]
            image = image.select(1 + self.axis, item[2])
            labels = labels.select(self.axis, item[2])
        return image, labels, self.text[item[0]][item[1]], item[0]

    def losses(self, indices: list[int], generators: list[torch.Generator], step: int) -> dict[str, torch.Tensor]:
        """Denoising loss with the ablated mask concatenated to the noisy image."""
        images, labels, context, modality = zip(*(self._item(self.items[i]) for i in indices), strict=True)
        x0 = torch.stack(images)
        onehot = torch.stack([torch.stack([(lab == i).float() for i in self.label_ids]) for lab in labels])
        known = hide_classes(torch.ones(len(indices), len(self.label_ids)), generators, self.settings.ablation)
        cond = combine_features(onehot, known)
        noisy, noise, timesteps = noised(self.scheduler, x0, generators)
        drop = dropped(generators, self.settings.condition_dropout)
        x0, noisy, noise, timesteps, context, cond, modality, drop = self.put(
            x0, noisy, noise, timesteps, torch.stack(context), cond, torch.tensor(modality), drop)
        prediction = self.networks["unet"](noisy, timesteps, context=context, cond=cond, class_labels=modality,
                                           drop_context=drop)
        return {"segguided": denoising_loss(prediction, self.scheduler, self.settings.prediction_type, x0, noise,
                                            timesteps, self.settings.loss)}

    def meta(self) -> dict:
        """Everything the pipeline needs: plans per modality, classes, slicing, schedule."""
        return {"kind": "segguided", "plans": {m: d.plan.to_dict() for m, d in zip(self.modalities, self.datasets,
                                                                                  strict=True)},
                "modalities": self.modalities, "label_names": self.label_names, "label_ids": self.label_ids,
                "text_encoder": get_text_encoder(self.settings.text_encoder).identifier,
                "diffusion": {k: v for k, v in vars(self.settings).items() if k != "network"}}

    def preview(self, step: int, path: Path) -> None:
        """No preview for this stage yet."""

