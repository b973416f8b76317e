"""Feature extractors from a network the user names and a state-dict file they have on disk.

Two weight layouts are supported, because published 2.5D FIDs use both:

- ``resnet18`` / ``resnet34`` / ``resnet50``: the torchvision layout (``conv1``, ``bn1``, ``layer1.0.conv1``,
  ``downsample.0``...), built with MONAI's ``ResNet`` (2D, 7x7 stride-2 stem, no classifier head).
  Inputs use ImageNet normalisation.
- ``radimagenet-resnet50``: the Keras-converted RadImageNet ResNet-50 that MAISI's 2.5D FID uses
  (biases on every conv, stride on the first 1x1 conv of a bottleneck, BN eps 1.001e-5), which MONAI's
  ResNet cannot hold. Inputs follow MAISI: [0, 1], BGR order, ImageNet means subtracted, no std.

Classifier-head keys (``fc.*``) in the file are ignored; any other missing, unexpected or mis-shaped
key is an error that lists them, so a wrong network name never silently yields random features.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from volsynth.errors import ConfigError, ReadError
from volsynth.evaluation.features import (
    FeatureExtractor,
    InceptionExtractor,
    RandomConvExtractor,
    TorchExtractor,
    resize_slices,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORED_PREFIXES = ("fc.",)
WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "net.", "encoder.")


class _KerasBottleneck(nn.Module):
    """Keras ResNet-50 bottleneck: stride on the first 1x1 conv, biases everywhere."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, stride=stride)
        self.bn1 = nn.BatchNorm2d(planes, eps=1.001e-5)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(planes, eps=1.001e-5)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4, eps=1.001e-5)
        self.downsample = None
        if stride != 1 or in_planes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes * 4, 1, stride=stride),
                                            nn.BatchNorm2d(planes * 4, eps=1.001e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual bottleneck."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class KerasResNet50(nn.Module):
    """RadImageNet's Keras-layout ResNet-50 without head; returns spatially averaged layer4 (2048-d)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64, eps=1.001e-5)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes, layers = 64, []
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = [_KerasBottleneck(in_planes, planes, stride)]
            stage += [_KerasBottleneck(planes * 4, planes) for _ in range(blocks - 1)]
            layers.append(nn.Sequential(*stage))
            in_planes = planes * 4
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[N, 2048]``."""
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))


def build_network(network: str) -> tuple[nn.Module, int, str]:
    """(module, feature dim, default input normalisation) for a network name."""
    if network == "radimagenet-resnet50":
        return KerasResNet50(), 2048, "radimagenet"
    if network in ("resnet18", "resnet34", "resnet50"):
        from monai.networks.nets import ResNet
        from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck

        block, layers = {"resnet18": (ResNetBlock, [2, 2, 2, 2]), "resnet34": (ResNetBlock, [3, 4, 6, 3]),
                         "resnet50": (ResNetBottleneck, [3, 4, 6, 3])}[network]
        module = ResNet(block, layers, [64, 128, 256, 512], spatial_dims=2, n_input_channels=3, conv1_t_size=7,
                        conv1_t_stride=2, shortcut_type="B", bias_downsample=False, feed_forward=False)
        return module, 512 * block.expansion, "imagenet"
    raise ConfigError(None, f"unknown network '{network}'",
                      "choose from resnet18, resnet34, resnet50, radimagenet-resnet50")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch (``.pt``/``.pth``/``.bin``) state-dict file, wrapper prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise ReadError(path, "weights file not found", "give the path of a local .pt/.pth/.safetensors state dict")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the same problem for the user
        raise ReadError(path, f"cannot read weights: {str(exc).splitlines()[0]}",
                        "expected a state dict saved with torch.save or safetensors") from exc
    for key in ("state_dict", "model", "network"):  # checkpoints that wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ReadError(path, "file holds no state dict of tensors", "save it with torch.save(model.state_dict())")
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, network: str) -> None:
    """Load ``state`` into ``module`` exactly (head keys aside), or raise a ReadError listing the misfits."""
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                 if k in own and v.shape != own[k].shape]
    if missing or unexpected or misshaped:
        parts = [f"{len(x)} {what} (e.g. {', '.join(x[:3])})"
                 for x, what in ((missing, "missing"), (unexpected, "unexpected"), (misshaped, "mis-shaped")) if x]
        raise ReadError(path, f"weights do not fit network '{network}': " + "; ".join(parts),
                        "check the network name (torchvision layout: resnet50; Keras RadImageNet layout: "
                        "radimagenet-resnet50)")
    module.load_state_dict(state, strict=False)


class LocalWeightsExtractor(TorchExtractor):
    """Pooled features of a named ResNet with weights from a local file; nothing is downloaded."""

    comparable_to_published = True

    def __init__(self, weights: str | Path, network: str = "resnet50", input_norm: str | None = None,
                 image_size: int | None = None, batch_size: int = 16) -> None:
        state = read_state_dict(weights)  # a missing or unreadable file fails before the network is built
        module, dim, default_norm = build_network(network)
        load_weights(module, state, weights, network)
        super().__init__(module, batch_size)
        self.input_norm = input_norm or default_norm
        if self.input_norm not in ("imagenet", "radimagenet"):
            raise ConfigError(None, f"unknown input normalisation '{self.input_norm}'", "use imagenet or radimagenet")
        self.image_size = image_size
        self.dim = dim
        self.name = f"{network}({Path(weights).name},{self.input_norm})"

    def preprocess(self, slices: torch.Tensor) -> torch.Tensor:
        """[-1, 1] grey -> 3 channels in the network's convention (optionally resized)."""
        x = resize_slices((slices.clamp(-1, 1) + 1) / 2, self.image_size).repeat(1, 3, 1, 1)
        if self.input_norm == "radimagenet":  # MAISI: BGR order, ImageNet means subtracted, no std division
            mean = torch.tensor(IMAGENET_MEAN[::-1]).view(1, 3, 1, 1)
            return x - mean
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std


EXTRACTORS = ("random-conv", "inception", "resnet18", "resnet34", "resnet50", "radimagenet-resnet50")


def get_extractor(spec: str = "random-conv", seed: int = 0) -> FeatureExtractor:
    """An extractor from a short spec: ``random-conv``, ``inception[:file]``, ``<network>:<weights file>``."""
    name, _, path = spec.partition(":")
    if name == "random-conv":
        return RandomConvExtractor(seed=seed)
    if name == "inception":
        return InceptionExtractor(path or None)
    if name in EXTRACTORS:
        if not path:
            raise ConfigError(None, f"extractor '{name}' needs a local weights file", f"use '{name}:/path/weights.pt'")
        return LocalWeightsExtractor(path, network=name)
    raise ConfigError(None, f"unknown feature extractor '{spec}'", f"choose from {', '.join(EXTRACTORS)}")
