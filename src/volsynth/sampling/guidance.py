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


def dual_guidance(predict: Callable[[torch.Tensor, torch.Tensor, bool, bool], torch.Tensor], has_text: bool,
                  has_mask: bool, text_scale: float, mask_scale: float) -> Callable[[torch.Tensor, torch.Tensor],
                                                                                   torch.Tensor]:
    """Separate classifier-free scales for text and mask; ``predict(x, t, text_on, mask_on)``.

    e = e(-,-) + s_text * [e(text,-) - e(-,-)] + s_mask * [e(text,mask) - e(text,-)]
    With both scales 1 this is the plain conditional prediction e(text, mask) (one network call);
    a missing condition drops its term.
    """
    if (not has_text or text_scale == 1.0) and (not has_mask or mask_scale == 1.0):
        return lambda x, t: predict(x, t, has_text, has_mask)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        base = predict(x, t, False, False)
        text_only = predict(x, t, True, False) if has_text else base
        out = base + (text_scale if has_text else 0.0) * (text_only - base)
        if has_mask:
            out = out + mask_scale * (predict(x, t, has_text, True) - text_only)
        return out

    return guided
