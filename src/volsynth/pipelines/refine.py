"""Running a model's refiner (trained by ``volsynth.training.refiner``) on a decoded volume.

The refiner is a convolutional UNet trained on random patches, so a large grid is denoised by overlapping
windows (Gaussian-weighted blending, MONAI ``sliding_window_inference``) at every step: memory is bounded by the
window, not the volume. Grids up to ``REFINER_WINDOW`` voxels a side run whole, as before.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.inferers import sliding_window_inference

from volsynth.models.stages import RefinerSettings, degrade
from volsynth.sampling import classifier_free, sample
from volsynth.sampling.samplers import scheduler_for

REFINER_WINDOW = 128  # window side (voxels) above which the refiner runs by windows; a multiple of its downsampling
REFINER_OVERLAP = 0.25


def windowed(network, window: int = REFINER_WINDOW, overlap: float = REFINER_OVERLAP):
    """``call(x, t, cond)``: the refiner on the whole grid when every side fits ``window``, else by overlapping
    ``window``-sided windows of ``x`` and ``cond`` together, blended with Gaussian weights."""

    def call(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if all(s <= window for s in x.shape[2:]):
            return network(x, t, cond=cond)
        channels = x.shape[1]
        return sliding_window_inference(
            torch.cat([x, cond], dim=1), [min(window, s) for s in x.shape[2:]], 1,
            lambda patch: network(patch[:, :channels], t, cond=patch[:, channels:]), overlap=overlap,
            mode="gaussian", progress=False)

    return call


@torch.no_grad()
def run_refiner(refiner, image: torch.Tensor, features: torch.Tensor, settings: dict, seed: int,
                model_path: Path | None = None, steps: int | None = None, guidance: float = 1.0,
                window: int = REFINER_WINDOW) -> torch.Tensor:
    """Redraw ``image`` [1, C, ...] (normalised, on the plan grid) from its degraded copy and the mask features
    [1, 2K, ...] at the same resolution (all zeros: no mask). ``settings``: the model's ``meta["refiner"]``.
    Seeded; DDIM with the refiner's ``steps`` unless ``steps`` is given. ``guidance``: classifier-free scale on
    the mask (the refiner learnt to refine without one, ``hide_all``); 1 is the plain conditional refiner.
    ``window``: grids with a side above it are denoised by overlapping windows of that side."""
    refiner_settings = RefinerSettings.from_dict(settings)
    cond = degrade(image, refiner_settings.degrade_factor)
    residual_scale = refiner_settings.residual_scale
    # a residual's clean estimate is not bounded by [-1, 1]: clip only when the refiner predicts the image itself
    scheduler = scheduler_for(settings, "ddim", int(image[0, 0].numel()), model_path,
                              pixel_space=residual_scale is None)
    generator = torch.Generator().manual_seed(seed + 1)  # another stream than the latent noise of the same seed
    x = torch.randn(image.shape, generator=generator).to(image)
    features = features.to(image)
    with_mask = torch.cat([cond, features], dim=1)
    # the "no mask" condition exists only when guidance needs it (scale 1: one call a step, nothing more allocated)
    without_mask = torch.cat([cond, torch.zeros_like(features)], dim=1) if guidance != 1.0 else None
    network = windowed(refiner, window)
    denoiser = classifier_free(lambda x, t: network(x, t, with_mask), lambda x, t: network(x, t, without_mask),
                               guidance)
    x = sample(denoiser, x, scheduler, int(steps or refiner_settings.steps), generator=generator)
    if residual_scale is not None:
        x = cond + residual_scale * x
    return x.clamp(-1, 1)
