"""Encode large volumes within bounded memory: overlapping windows blended with Gaussian weights.

The encoder runs on windows of ``window`` voxels (MONAI ``sliding_window_inference``); each window's posterior
mean and log-variance are blended into the latent grid with a Gaussian importance map. Windows start on
multiples of the downsampling factor, so every window's latents land on the cells of a whole-volume encode.
This is not exact: GroupNorm normalises each window with its own statistics (unlike the streamed decoder in
``tiled.py``, which is exact); tests/models/test_windowed.py states the error measured on a small model. Below
``WINDOWED_ENCODE_THRESHOLD`` voxels a volume is encoded whole, exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference

from volsynth.models.tiled import decode

# Above this many voxels per channel a volume is encoded by windows (a 128^3 volume is encoded whole).
WINDOWED_ENCODE_THRESHOLD = 128**3
ENCODE_WINDOW = 128  # window edge in voxels when the autoencoder was not trained on patches
ENCODE_OVERLAP = 0.25


def downsampling_factor(autoencoder) -> int:
    """How many input voxels one latent cell spans along each axis."""
    return 2 ** (len(autoencoder.encoder.channels) - 1)


def aligned_overlap(edge: int, overlap: float, factor: int) -> float:
    """An overlap near ``overlap`` whose stride (MONAI's ``int(edge * (1 - overlap))``) is a multiple of ``factor``."""
    if edge % factor:
        raise ValueError(f"window edge {edge} is not a multiple of the downsampling factor {factor}")
    if edge == factor:
        return 0.0
    stride = min(edge - factor, max(factor, factor * int(edge * (1 - overlap) / factor)))
    return 1 - (stride + 0.5) / edge  # the half voxel keeps int() from rounding the stride down


def _posterior(autoencoder):
    def predict(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, sigma = autoencoder.encode(x)
        return mu, torch.log(sigma.pow(2) + 1e-12)
    return predict


@torch.no_grad()
def encode_posterior(autoencoder, x: torch.Tensor, windowed: bool | None = None,
                     window: int | Sequence[int] = ENCODE_WINDOW,
                     overlap: float = ENCODE_OVERLAP) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and log-variance of ``x`` [B, C, X, Y, Z]; ``windowed=None`` uses windows above the threshold.

    An axis shorter than the window is covered by one window of its length (no padding).
    """
    if windowed is None:
        windowed = x[0, 0].numel() > WINDOWED_ENCODE_THRESHOLD
    factor = downsampling_factor(autoencoder)
    if any(s % factor for s in x.shape[2:]):
        raise ValueError(f"grid {list(x.shape[2:])} is not divisible by the downsampling factor {factor}")
    edges = [window] * 3 if isinstance(window, int) else list(window)
    roi = [min(edge, s) for edge, s in zip(edges, x.shape[2:], strict=True)]
    if not windowed or roi == list(x.shape[2:]):
        return _posterior(autoencoder)(x)
    overlaps = [aligned_overlap(edge, overlap, factor) for edge in roi]
    mean, logvar = sliding_window_inference(x, roi, 1, _posterior(autoencoder), overlap=overlaps, mode="gaussian")
    return mean, logvar


@torch.no_grad()
def reconstruct(autoencoder, x: torch.Tensor) -> torch.Tensor:
    """Decode the posterior mean (``AutoencoderKL.reconstruct``), windowed / streamed for large volumes."""
    return decode(autoencoder, encode_posterior(autoencoder, x)[0])
