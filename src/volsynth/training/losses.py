"""Losses of the autoencoder stage: KL, adversarial (hinge / least squares), pluggable perceptual."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from volsynth.errors import ConfigError


def kl_loss(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over latent voxels, averaged over the batch."""
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1)
    return kl.flatten(1).sum(1).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The autoencoder's adversarial term: fool the discriminator."""
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "least_squares":
        return (fake_logits - 1).pow(2).mean()
    raise ConfigError(None, f"unknown adversarial loss '{kind}'", "use hinge or least_squares")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The discriminator's loss on real images and (detached) reconstructions."""
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    if kind == "least_squares":
        return 0.5 * ((real_logits - 1).pow(2).mean() + fake_logits.pow(2).mean())
    raise ConfigError(None, f"unknown adversarial loss '{kind}'", "use hinge or least_squares")


class PerceptualLoss25D(torch.nn.Module):
    """2.5D perceptual distance with a user's local feature network (TorchScript file).

    The network maps [N, 1, H, W] slices to features [N, C, h, w]; the loss is the mean squared
    difference of channel-normalised features (LPIPS-style, unweighted) over axial, coronal and
    sagittal slices. Nothing is downloaded: without a file there is no perceptual term.
    """

    def __init__(self, path: str | Path, slices_per_axis: int = 4) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise ConfigError(path, "perceptual network file not found", "give a TorchScript file, or omit it")
        try:
            self.features = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as exc:
            raise ConfigError(path, f"not a TorchScript file ({str(exc).splitlines()[0]})") from exc
        for param in self.features.parameters():
            param.requires_grad_(False)
        self.slices_per_axis = slices_per_axis

    def _slices(self, volume: torch.Tensor, axis: int) -> torch.Tensor:
        size = volume.shape[2 + axis]
        index = torch.linspace(size * 0.2, size * 0.8, self.slices_per_axis).long()
        picked = volume.index_select(2 + axis, index)  # [B, 1, ..., k, ...]
        picked = picked.movedim(2 + axis, 1)  # [B, k, 1, ., .]
        return picked.reshape(-1, 1, *picked.shape[3:])

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean perceptual distance over the three slice directions."""
        total = prediction.new_zeros(())
        for axis in range(3):
            a = self.features(self._slices(prediction, axis))
            b = self.features(self._slices(target, axis))
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-8)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-8)
            total = total + (a - b).pow(2).sum(1).mean()
        return total / 3
