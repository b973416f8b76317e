"""A text-conditioned diffusion UNet: MONAI ``DiffusionModelUNet`` with cross-attention to report
tokens, a learned null context for classifier-free guidance and optional extra input channels
(masks concatenated to the noisy latent, used by segmentation-guided models)."""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn


class ConditionedUNet(nn.Module):
    """``forward(x, t, context=None, cond=None)``; ``context=None`` means the learned null context."""

    def __init__(self, latent_channels: int, context_dim: int, context_length: int, unet: dict,
                 cond_channels: int = 0, num_class_embeds: int | None = None) -> None:
        super().__init__()
        self.config = {"latent_channels": latent_channels, "context_dim": context_dim,
                       "context_length": context_length, "unet": dict(unet), "cond_channels": cond_channels,
                       "num_class_embeds": num_class_embeds}
        self.latent_channels, self.cond_channels = latent_channels, cond_channels
        self.unet = DiffusionModelUNet(
            in_channels=latent_channels + cond_channels, out_channels=latent_channels, with_conditioning=True,
            cross_attention_dim=context_dim, num_class_embeds=num_class_embeds, **unet)
        self.null_context = nn.Parameter(torch.zeros(context_length, context_dim))

    def null(self, batch: int) -> torch.Tensor:
        """The learned "no text" context for a batch."""
        return self.null_context.unsqueeze(0).expand(batch, -1, -1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, class_labels: torch.Tensor | None = None,
                drop_context: torch.Tensor | None = None, down_block_additional_residuals=None,
                mid_block_additional_residual=None) -> torch.Tensor:
        """Predict eps / v / flow for the noisy latent ``x`` at ``timesteps``.

        ``drop_context`` (bool [B]) swaps chosen samples' context for the null context (CFG training).
        """
        if context is None:
            context = self.null(x.shape[0]).to(x)
        elif drop_context is not None:
            context = torch.where(drop_context[:, None, None].to(x.device), self.null(x.shape[0]).to(context), context)
        if self.cond_channels:
            if cond is None or cond.shape[1] != self.cond_channels:
                raise ValueError(f"model expects {self.cond_channels} condition channels")
            x = torch.cat([x, cond.to(x)], dim=1)
        return self.unet(x, timesteps, context=context, class_labels=class_labels,
                         down_block_additional_residuals=down_block_additional_residuals,
                         mid_block_additional_residual=mid_block_additional_residual)
