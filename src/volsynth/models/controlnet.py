"""Multi-label ControlNet with partial labels (dual-guided liver CT; 3D-LLDM), on MONAI's ``ControlNet``.

The mask input has two channels per class: the class's occupancy, and a constant "known" flag. So
"absent" (known, empty) and "not given" (unknown) differ, and any subset of classes can guide
generation. The learned conditioning embedding resizes the mask to the latent grid: with one entry
in ``embedding_channels`` the occupancy is average-pooled onto the latent grid first; each further
entry adds a stride-2 stage, so with ``[8, 16, 32]`` and a 4x autoencoder the embedding reads the
mask at full image resolution (MAISI's layout, dual-guided liver CT). The embedding is split out of MONAI's
ControlNet so that it runs **once per sample**, not at every denoising step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import ControlNet
from torch import nn

from volsynth.errors import ConfigError


def mask_features(labels: torch.Tensor, known: torch.Tensor, label_ids: list[int], factor: int) -> torch.Tensor:
    """[B, X, Y, Z] integer labels + [B, K] known flags -> [B, 2K, X/f, Y/f, Z/f] ControlNet input.

    Occupancy is the fraction of each latent cell covered by the class (average pooling), zero for
    classes not given; the second K channels hold the known flags.
    """
    # one class at a time: a pooled mask never holds all K classes at full resolution (132 classes at 256^3
    # would be 8.9 GB in float32); pooling is per channel, so the result equals pooling the stacked one-hot
    if factor > 1:
        occupancy = torch.cat([F.avg_pool3d((labels == i).float().unsqueeze(1), factor) for i in label_ids], dim=1)
    else:
        occupancy = torch.stack([(labels == i).float() for i in label_ids], dim=1)
    return combine_features(occupancy, known)


def combine_features(occupancy: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Pooled occupancy [B, K, ...] and known flags [B, K] -> [B, 2K, ...] (unknown classes zeroed)."""
    flags = known.float().to(occupancy.device).view(*known.shape[:2], *[1] * (occupancy.ndim - 2))
    return torch.cat([occupancy * flags, flags.expand_as(occupancy)], dim=1)


class MaskControlNet(nn.Module):
    """``embed(features)`` once per sample, then ``forward(x, t, embedding, context, scale)`` per step."""

    def __init__(self, num_classes: int, latent_channels: int, context_dim: int, unet: dict,
                 embedding_channels: list[int] | None = None) -> None:
        super().__init__()
        embedding_channels = list(embedding_channels or [16])
        self.config = {"num_classes": num_classes, "latent_channels": latent_channels, "context_dim": context_dim,
                       "unet": dict(unet), "embedding_channels": embedding_channels}
        self.num_classes = num_classes
        controlnet = ControlNet(in_channels=latent_channels, with_conditioning=True, cross_attention_dim=context_dim,
                                conditioning_embedding_in_channels=2 * num_classes,
                                conditioning_embedding_num_channels=embedding_channels, **unet)
        # The embedding lives here; MONAI's forward then adds the precomputed embedding as given.
        self.embedding = controlnet.controlnet_cond_embedding
        controlnet.controlnet_cond_embedding = nn.Identity()
        self.controlnet = controlnet

    @property
    def downsampling(self) -> int:
        """How many times smaller (per axis) the embedding's output is than its input mask features."""
        return 2 ** (len(self.config["embedding_channels"]) - 1)

    def mask_pooling(self, factor: int) -> int:
        """Average-pooling factor of the mask features for an autoencoder that downsamples by ``factor``."""
        if factor % self.downsampling:
            raise ConfigError(None, f"controlnet.embedding_channels {self.config['embedding_channels']} downsample "
                              f"the mask {self.downsampling}x, which does not divide the autoencoder's {factor}x",
                              "give at most log2(factor) + 1 channel entries")
        return factor // self.downsampling

    def init_from_unet(self, unet: nn.Module) -> None:
        """Start from the diffusion UNet's weights (ControlNet convention); new layers keep their init."""
        source = unet.unet.state_dict() if hasattr(unet, "unet") else unet.state_dict()
        own = self.controlnet.state_dict()
        shared = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
        self.controlnet.load_state_dict(shared, strict=False)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The learned conditioning embedding of mask features (compute once per sample)."""
        return self.embedding(features)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, embedding: torch.Tensor,
                context: torch.Tensor | None = None, scale: float = 1.0):
        """Residuals (down blocks, mid block) for the UNet."""
        return self.controlnet(x, timesteps, controlnet_cond=embedding.to(x), conditioning_scale=scale,
                               context=context)
