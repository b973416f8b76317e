"""Classifier-free guidance as a wrapper around a denoiser (k-diffusion style), not a sampler branch."""

from __future__ import annotations

from collections.abc import Callable

import torch


def classifier_free(conditional: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    unconditional: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    scale: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``uncond + scale * (cond - uncond)``; scale 1 is the plain conditional model (one call only)."""
    if scale == 1.0:
        return conditional

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        uncond = unconditional(x, t)
        return uncond + scale * (conditional(x, t) - uncond)

    return guided
