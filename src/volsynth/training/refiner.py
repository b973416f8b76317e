"""Mask-conditioned refiner: a pixel-space diffusion stage that a latent model runs after decoding.

The autoencoder and the latent diffusion model leave their mark on a generated volume: edges blurred by the
4x latent grid, organs a little too bright and mottled. The refiner redraws the volume at full resolution from
two conditions: a *degraded* copy of it (average-pooled by ``degrade_factor`` and upsampled again, so it keeps
layout and contrast but not texture) and the mask at full resolution (one-hot occupancy and known flags, the
ControlNet's input format, so partial labels work the same way). Training degrades real images; the degradation
is randomised (noise at the pooled grid and at twice its pooling, a random intensity offset per class) so that
the generated volumes' own flaws look like something the refiner has learnt to undo (cascaded diffusion's
noise-conditioning augmentation; per-class offsets stand for the generated organs' wrong brightness).
The refiner can also learn from the latent model's own flaws: ``generated`` names folders of unrefined samples
of the training masks (``volsynth generate MODEL --masks-from PREPARED --no-refine``), and a share
``generated_fraction`` of the training conditions is then such a sample, degraded, in place of the augmented
real image (the target stays the real image of that mask).

It is the hierarchical model's super-resolution stage at factor 1 with a mask: residual diffusion over the
degraded condition (``residual_scale``), random patches in training, the whole grid at inference; it takes
no text. Same engine, schedulers and checkpoint format as every other stage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from volsynth.config import settings_from_dict
from volsynth.data.prepare import load_manifest
from volsynth.errors import ConfigError
from volsynth.io.formats import read_label, read_volume
from volsynth.models.controlnet import mask_features
from volsynth.models.registry import build_network, network_config
from volsynth.training.data import PreparedData
from volsynth.training.denoising import DenoiserSettings, denoising_loss, hide_classes, noised
from volsynth.training.hierarchical import check_patch_fits, check_patch_settings, random_patches
from volsynth.training.latents import known_classes

CONTEXT_DIM = 8  # the refiner takes no text: its UNet always sees its learned null context of this width


@dataclass
class RefinerSettings(DenoiserSettings):
    """A latent recipe's ``refiner:`` block (less ``train:``)."""

    size: str = "tiny-pixel"
    network: dict = field(default_factory=dict)
    prediction_type: str = "v_prediction"
    degrade_factor: int = 2  # the condition keeps the volume average-pooled by this factor (1: no pooling)
    noise_aug: float = 0.1  # training: Gaussian noise of std U(0, noise_aug) at the pooled grid and at 2x its pooling
    class_jitter: float = 0.1  # training: each class's intensity moves by U(-class_jitter, class_jitter)
    shape_jitter: float = 0.0  # training: the condition's image is warped by a smooth field of up to this many voxels
    hide_class: float = 0.3  # training: each known class is hidden with this probability (partial labels)
    hide_all: float = 0.1  # training: the whole mask is hidden with this probability (refining without a mask)
    residual_scale: float | None = 0.1  # learn (x0 - condition) / residual_scale
    patch: list[int] | None = field(default_factory=lambda: [32, 32, 32])  # training patches (inference: whole grid)
    steps: int = 20  # sampling steps at generation
    condition_dropout: float = 1.0  # no text
    generated: list[str] | None = None  # folders of unrefined samples of the training masks (generate --no-refine)
    generated_fraction: float = 0.5  # training: share of conditions drawn from those samples, where a case has one

    def __post_init__(self) -> None:
        if isinstance(self.generated, (str, Path)):  # one folder
            self.generated = [str(self.generated)]

    @classmethod
    def from_dict(cls, data: dict | None) -> RefinerSettings:
        """Build from a dict, rejecting unknown keys and impossible values."""
        settings = settings_from_dict(cls, data, "refiner")
        if settings.degrade_factor not in (1, 2, 4, 8):
            raise ConfigError(None, f"degrade_factor must be 1, 2, 4 or 8, got {settings.degrade_factor}")
        for name in ("noise_aug", "class_jitter", "shape_jitter"):
            if getattr(settings, name) < 0:
                raise ConfigError(None, f"{name} must be >= 0, got {getattr(settings, name)}")
        for name in ("hide_class", "hide_all", "generated_fraction"):
            if not 0 <= getattr(settings, name) <= 1:
                raise ConfigError(None, f"{name} must be in [0, 1], got {getattr(settings, name)}")
        check_patch_settings(settings.patch, settings.residual_scale)
        if settings.steps < 1:
            raise ConfigError(None, f"steps must be >= 1, got {settings.steps}")
        return settings


def degrade(image: torch.Tensor, factor: int) -> torch.Tensor:
    """The refiner's image condition: ``image`` [B, C, ...] average-pooled by ``factor`` and upsampled back."""
    if factor == 1:
        return image
    low = F.avg_pool3d(image, factor)
    return F.interpolate(low, scale_factor=factor, mode="trilinear", align_corners=False)


def smooth_warp(image: torch.Tensor, max_shift: float, generator: torch.Generator, nodes: int = 4) -> torch.Tensor:
    """``image`` [C, ...] resampled through a smooth random displacement field (control points on a ``nodes``^3
    grid, upsampled trilinearly) whose largest component is U(0, ``max_shift``) voxels; edges are clamped."""
    shape = image.shape[1:]
    coarse = torch.randn(1, 3, nodes, nodes, nodes, generator=generator)
    field_ = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0]
    field_ = field_ * (torch.rand((), generator=generator) * max_shift / field_.abs().max().clamp_min(1e-6))
    axes = [torch.linspace(-1, 1, n) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # [3, D, H, W] in (d, h, w) order
    grid = grid + field_ * torch.tensor([2 / max(n - 1, 1) for n in shape]).view(3, 1, 1, 1)
    grid = grid.flip(0).permute(1, 2, 3, 0)[None]  # grid_sample wants (x, y, z) = (w, h, d) last
    return F.grid_sample(image[None].float(), grid.to(image.device), mode="bilinear", padding_mode="border",
                         align_corners=True)[0].to(image.dtype)


def augmented_condition(image: torch.Tensor, labels: torch.Tensor, label_ids: list[int],
                        settings: RefinerSettings, generators: list[torch.Generator],
                        replacements: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Training condition: per-class intensity offsets, a smooth warp (the mask no longer agrees exactly with the
    image, as it does not with a generated volume), then pooling, then noise at two scales (per sample).
    ``replacements[b]``, where given, is a generated volume of sample b's mask: it is pooled and noised in place
    of the shifted image (it has its own flaws)."""
    shifted = []
    for b, generator in enumerate(generators):
        if replacements is not None and replacements[b] is not None:
            shifted.append(replacements[b].to(image))
            continue
        offsets = (torch.rand(len(label_ids), generator=generator) * 2 - 1) * settings.class_jitter
        field_ = sum((labels[b] == i).float() * o for i, o in zip(label_ids, offsets.tolist(), strict=True))
        moved = image[b] + field_
        if settings.shape_jitter > 0:
            moved = smooth_warp(moved, settings.shape_jitter, generator)
        shifted.append(moved)
    cond = degrade(torch.stack(shifted), settings.degrade_factor)
    if settings.noise_aug > 0:
        for scale in (settings.degrade_factor, 2 * settings.degrade_factor):
            grid = [s // scale for s in cond.shape[2:]]
            sigma = torch.stack([torch.rand((), generator=g) for g in generators]) * settings.noise_aug
            noise = torch.stack([torch.randn(cond.shape[1], *grid, generator=g) for g in generators])
            noise = F.interpolate(noise, size=cond.shape[2:], mode="trilinear", align_corners=False)
            cond = cond + sigma.view(-1, 1, 1, 1, 1) * noise
    return cond


class RefinerStage:
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
        self.generated = load_generated_conditions(settings.generated or [], data)

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
        cond = augmented_condition(x0, labels, self.label_ids, self.settings, generators,
                                   self._generated_conditions(indices, generators))
        if self.settings.patch is not None:  # pooling blocks stay aligned with the whole grid's
            x0, cond, features = random_patches([x0, cond, features], self.settings.patch, generators,
                                                2 * self.settings.degrade_factor)
        if self.settings.residual_scale is not None:
            x0 = (x0 - cond) / self.settings.residual_scale
        noisy, noise, timesteps = noised(self.scheduler, x0, generators)
        prediction = self.networks["refiner"](noisy, timesteps, cond=torch.cat([cond, features], dim=1))
        return {"refiner": denoising_loss(prediction, self.scheduler, self.settings.prediction_type, x0, noise,
                                          timesteps, self.settings.loss)}

    def _generated_conditions(self, indices, generators) -> list[torch.Tensor | None] | None:
        """Per sample: one of its case's generated volumes (with probability ``generated_fraction``), or None."""
        if not self.generated:
            return None  # no draw: recipes without generated samples keep their random streams
        chosen = []
        for index, generator in zip([int(i) for i in indices], generators, strict=True):
            take = float(torch.rand((), generator=generator)) < self.settings.generated_fraction
            pick = int(torch.randint(1 << 30, (), generator=generator))
            samples = self.generated.get(index)
            chosen.append(samples[pick % len(samples)] if take and samples else None)
        return chosen

    def meta(self) -> dict:
        """What the pipeline needs to run the refiner."""
        return {"kind": "refiner", "plan": self.data.plan.to_dict(), "label_names": self.label_names,
                "label_ids": self.label_ids,
                "refiner": {k: v for k, v in vars(self.settings).items() if k != "network"}}

    def preview(self, step: int, path: Path) -> None:
        """No preview for this stage (generation with a mask shows it)."""


def load_generated_conditions(folders: list[str | Path], data: PreparedData) -> dict[int, list[torch.Tensor]]:
    """Unrefined generated volumes of ``data``'s masks, normalised like the prepared images: {case index: [C, ...]
    tensors}. Each sample is matched to its case by the generation job's id and must sit on the plan grid and,
    where its sidecar records the mask's checksum, come from that case's prepared label map."""
    from volsynth.evaluation.inputs import read_generated_folder  # evaluation imports training: import late

    if not folders:
        return {}
    if len(data.plan.normalization) != 1:
        raise ConfigError(folders[0], "generated conditions need a one-channel plan",
                          f"the plan has {len(data.plan.normalization)} channels")
    norm = data.plan.normalization[0]
    index = {case: i for i, case in enumerate(data.case_ids)}
    label_files = {e["case"]: data.root / e["label"] for e in load_manifest(data.root)["cases"] if e.get("label")}
    found: dict[int, list[torch.Tensor]] = {}
    for folder in folders:
        for entry in read_generated_folder(folder):
            job = entry.sidecar.get("job") or {}
            case = str(job.get("id") or entry.id)
            if case not in index:
                raise ConfigError(entry.image_path, f"generated for case {case!r}, which {data.root} lacks",
                                  "generate with --masks-from the prepared training folder")
            if entry.sidecar.get("refined"):
                raise ConfigError(entry.image_path, "already refined", "generate the conditions with --no-refine")
            digest = entry.sidecar.get("mask_sha256")
            if digest and digest != hashlib.sha256(label_files[case].read_bytes()).hexdigest():
                raise ConfigError(entry.image_path, f"generated from another mask than {label_files[case]}",
                                  "generate with --masks-from the prepared training folder")
            volume = read_volume(entry.image_path)
            if list(volume.shape) != list(data.images.shape[2:]):
                raise ConfigError(entry.image_path, f"shape {list(volume.shape)} is not the plan grid "
                                  f"{list(data.images.shape[2:])}", "generate with --masks-from the prepared folder")
            reference = read_label(label_files[case])
            if not np.allclose(volume.affine, reference.affine, atol=1e-3):
                raise ConfigError(entry.image_path, f"not on the grid of {label_files[case]}",
                                  "generate with --masks-from the prepared training folder")
            window = tuple(norm.window)  # generated volumes are written with the plan's window (MR: the median)
            found.setdefault(index[case], []).append(torch.from_numpy(norm.forward(volume.array, window))[None])
    return found


def refiner_config(channels: int, num_classes: int, unet: dict) -> dict:
    """The refiner network's config: a ConditionedUNet over the image channels, conditioned on the degraded
    image and the mask features (2 channels per class), with a text context it never receives."""
    return {"class": "ConditionedUNet", "latent_channels": channels, "cond_channels": channels + 2 * num_classes,
            "context_dim": CONTEXT_DIM, "context_length": 1, "unet": {"spatial_dims": 3, **unet}}
