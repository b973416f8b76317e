"""What a model's stages are, read alike by training and by generation: the settings every diffusion stage
shares, the refiner's settings, and the conditions the pixel-space stages build (the refiner's degraded copy,
the super-resolution stage's upsampled input, the slice axes of a 2D segmentation-guided model)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from volsynth.config import settings_from_dict
from volsynth.errors import ConfigError
from volsynth.sampling.samplers import build_scheduler

SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # array axis of RAS volumes


@dataclass
class DenoiserSettings:
    """What every diffusion stage's settings share: the noise schedule, the loss and the text condition."""

    sampler: str = "ddpm"  # training schedule: ddpm (epsilon / v_prediction) or rflow (flow)
    prediction_type: str = "epsilon"
    num_train_timesteps: int = 1000
    schedule: str = "scaled_linear_beta"
    loss: str = "l2"
    condition_dropout: float = 0.1  # text dropout for classifier-free guidance
    text_encoder: str = "minilm"

    def scheduler(self, spatial_numel: int = 32768):
        """The training noise schedule."""
        return build_scheduler(self.sampler, self.prediction_type, self.num_train_timesteps, self.schedule,
                               spatial_numel)


CONTEXT_DIM = 8  # the refiner takes no text: its UNet always sees its learned null context of this width
# Settings removed because they measured no gain (the condition's smooth warp, training on generated samples);
# shipped models' meta.json still carry them at these inert values, which reading ignores.
LEGACY_KEYS = {"shape_jitter": (0, 0.0), "generated": (None, []), "generated_fraction": (0.5,)}


@dataclass
class RefinerSettings(DenoiserSettings):
    """A latent recipe's ``refiner:`` block (less ``train:``)."""

    size: str = "tiny-pixel"
    network: dict = field(default_factory=dict)
    prediction_type: str = "v_prediction"
    degrade_factor: int = 2  # the condition keeps the volume average-pooled by this factor (1: no pooling)
    noise_aug: float = 0.1  # training: Gaussian noise of std U(0, noise_aug) at the pooled grid and at 2x its pooling
    class_jitter: float = 0.1  # training: each class's intensity moves by U(-class_jitter, class_jitter)
    hide_class: float = 0.3  # training: each known class is hidden with this probability (partial labels)
    hide_all: float = 0.1  # training: the whole mask is hidden with this probability (refining without a mask)
    residual_scale: float | None = 0.1  # learn (x0 - condition) / residual_scale
    patch: list[int] | None = field(default_factory=lambda: [32, 32, 32])  # training patches (inference: whole grid)
    steps: int = 20  # sampling steps at generation
    condition_dropout: float = 1.0  # no text

    @classmethod
    def from_dict(cls, data: dict | None) -> RefinerSettings:
        """Build from a dict, rejecting unknown keys and impossible values."""
        data = dict(data or {})
        for key, inert in LEGACY_KEYS.items():  # older models' meta.json carry them at their no-op values
            if key in data and data.pop(key) not in inert:
                raise ConfigError(None, f"refiner setting {key} was removed (it measured no gain)",
                                  f"drop {key} from the refiner block")
        settings = settings_from_dict(cls, data, "refiner")
        if settings.degrade_factor not in (1, 2, 4, 8):
            raise ConfigError(None, f"degrade_factor must be 1, 2, 4 or 8, got {settings.degrade_factor}")
        for name in ("noise_aug", "class_jitter"):
            if getattr(settings, name) < 0:
                raise ConfigError(None, f"{name} must be >= 0, got {getattr(settings, name)}")
        for name in ("hide_class", "hide_all"):
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


def check_patch_settings(patch: list[int] | None, residual_scale: float | None) -> None:
    """The settings of a patch-trained residual stage (super-resolution, refiner): 3 positive patch sizes and a
    positive residual scale, each when given."""
    if patch is not None and (len(patch) != 3 or any(p < 1 for p in patch)):
        raise ConfigError(None, f"patch must be 3 positive sizes, got {patch}")
    if residual_scale is not None and not residual_scale > 0:
        raise ConfigError(None, f"residual_scale must be > 0, got {residual_scale}")


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Stage 2's condition: stage-1 channels upsampled (trilinear) to the high resolution."""
    return F.interpolate(x, scale_factor=factor, mode="trilinear", align_corners=False)
