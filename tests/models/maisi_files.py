"""Helpers of the MAISI tests: networks with random weights saved in NV-Generate-CT's published file layout, and a
tiny-width variant of the published configs (same classes, small channels)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from volsynth.models.maisi.networks import VARIANTS, build_maisi_network, published_configs


def tiny_configs(variant: str = "rflow-ct") -> dict[str, dict]:
    """The published configs of ``variant`` with small channel counts (a few hundred thousand parameters)."""
    configs = copy.deepcopy(published_configs(variant))
    configs["autoencoder"].update(num_channels=[8, 16, 16], num_res_blocks=[1, 1, 1], norm_num_groups=8)
    for name in ("unet", "controlnet"):
        configs[name].update(num_channels=[8, 8, 16, 16], num_head_channels=[0, 0, 8, 8], num_res_blocks=1,
                             norm_num_groups=8)
    configs["controlnet"].update(conditioning_embedding_num_channels=[8, 8, 8])
    return configs


def build(configs: dict[str, dict], seed: int = 0) -> dict[str, torch.nn.Module]:
    """The three networks of ``configs`` with seeded random weights."""
    torch.manual_seed(seed)
    return {name: build_maisi_network(configs[name]) for name in ("autoencoder", "unet", "controlnet")}


def save_published(networks: dict[str, torch.nn.Module], root: Path, variant: str = "rflow-ct",
                   scale_factor: float = 0.9) -> Path:
    """Write the networks as NV-Generate-CT's download script lays its files out under ``root``."""
    files = {name: root / rel for name, rel in VARIANTS[variant].files.items()}
    files["autoencoder"].parent.mkdir(parents=True, exist_ok=True)
    torch.save(networks["autoencoder"].state_dict(), files["autoencoder"])
    torch.save({"unet_state_dict": networks["unet"].state_dict(), "scale_factor": torch.tensor(scale_factor),
                "epoch": 10}, files["unet"])
    torch.save({"controlnet_state_dict": networks["controlnet"].state_dict(), "epoch": 10}, files["controlnet"])
    return root
