"""Build networks from their configs; named sizes (DiT-style registry) for each kind.

A network config is ``{"class": NAME, **constructor kwargs}``: the constructor *is* the config, so a
checkpoint rebuilds itself from ``config.yaml``.
"""

from __future__ import annotations

import copy

from monai.networks.nets import (
    AutoencoderKL,
    BasicUNet,
    ControlNet,
    DiffusionModelUNet,
    PatchDiscriminator,
    SegResNet,
    UNet,
)
from torch import nn

from volsynth.errors import ConfigError
from volsynth.models.conditioned import ConditionedUNet
from volsynth.models.controlnet import MaskControlNet

NETWORKS: dict[str, type[nn.Module]] = {
    "AutoencoderKL": AutoencoderKL,
    "PatchDiscriminator": PatchDiscriminator,
    "DiffusionModelUNet": DiffusionModelUNet,
    "ConditionedUNet": ConditionedUNet,
    "ControlNet": ControlNet,
    "MaskControlNet": MaskControlNet,
    "SegResNet": SegResNet,  # evaluation segmentors
    "UNet": UNet,
    "BasicUNet": BasicUNet,
}

# Sizes measured on a 2-core CPU: "small" autoencoder 1.35 M params (64^3 -> 16^3 x 4),
# "small" UNet 3.8 M params. "tiny" ones are for tests and CI (a few thousand parameters).
SIZES: dict[str, dict[str, dict]] = {
    "autoencoder": {
        "tiny": {"channels": [8, 8], "num_res_blocks": 1, "attention_levels": [False, False], "latent_channels": 4,
                 "norm_num_groups": 4, "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False},
        "small": {"channels": [32, 64, 64], "num_res_blocks": 1, "attention_levels": [False, False, False],
                  "latent_channels": 4, "norm_num_groups": 32, "with_encoder_nonlocal_attn": False,
                  "with_decoder_nonlocal_attn": False},
    },
    "discriminator": {
        "tiny": {"channels": 8, "num_layers_d": 2, "norm": "INSTANCE"},
        "small": {"channels": 32, "num_layers_d": 3, "norm": "INSTANCE"},
    },
    "unet": {
        "tiny": {"channels": [8, 16], "num_res_blocks": 1, "attention_levels": [False, True], "norm_num_groups": 8,
                 "num_head_channels": 8, "use_flash_attention": True},
        "small": {"channels": [32, 64, 64], "num_res_blocks": 1, "attention_levels": [False, True, True],
                  "norm_num_groups": 32, "num_head_channels": 16, "use_flash_attention": True},
        # pixel-space models (segmentation-guided, hierarchical) run on full-resolution grids:
        # attention only at the coarsest level keeps its token count small (8^3 for 32^3 inputs)
        "tiny-pixel": {"channels": [8, 16, 16], "num_res_blocks": 1, "attention_levels": [False, False, True],
                       "norm_num_groups": 8, "num_head_channels": 8, "use_flash_attention": True},
    },
}


def network_config(kind: str, size: str | None = None, **overrides) -> dict:
    """A size from the registry with overrides; the result is a plain dict of constructor kwargs."""
    if kind not in SIZES:
        raise ConfigError(None, f"unknown network kind '{kind}'", f"choose one of {sorted(SIZES)}")
    if size is not None and size not in SIZES[kind]:
        raise ConfigError(None, f"unknown {kind} size '{size}'", f"choose one of {sorted(SIZES[kind])}")
    config = copy.deepcopy(SIZES[kind][size]) if size else {}
    config.update(overrides)
    return config


def instantiate(config: dict, classes: dict[str, type], what: str = "network"):
    """``classes[config["class"]]`` built with the remaining keys as constructor arguments; an unknown class or bad
    arguments are a ConfigError (``what`` names the kind of class in it)."""
    config = dict(config)
    name = config.pop("class", None)
    if name not in classes:
        raise ConfigError(None, f"unknown {what} class '{name}'", f"known: {sorted(classes)}")
    try:
        return classes[name](**config)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(None, f"cannot build {name} ({exc})") from exc


def build_network(config: dict) -> nn.Module:
    """Instantiate ``config["class"]`` with the remaining keys as constructor arguments."""
    return instantiate(config, NETWORKS)
