"""MAISI (NVIDIA's NV-Generate-CT) networks built with MONAI's own classes from the published network configs, and
strict loading of the published checkpoints: every missing or unexpected key and every shape mismatch is listed,
none is dropped.

The published configs are JSON files beside this module (their source is named in README.md there). Two settings
change how a network runs, not its weights: flash attention (MONAI refuses it without CUDA) is used only when CUDA
is available, and the autoencoder's float16 GroupNorm output is off (CPU convolutions take no float16 input; float32
is the more precise of the two).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi
from monai.apps.generation.maisi.networks.controlnet_maisi import ControlNetMaisi
from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler
from torch import nn

from volsynth.errors import ConfigError
from volsynth.models.checkpoint import CheckpointError
from volsynth.models.registry import instantiate

NETWORKS: dict[str, type[nn.Module]] = {"AutoencoderKlMaisi": AutoencoderKlMaisi,
                                        "DiffusionModelUNetMaisi": DiffusionModelUNetMaisi,
                                        "ControlNetMaisi": ControlNetMaisi}
SCHEDULERS = {"RFlowScheduler": RFlowScheduler, "DDPMScheduler": DDPMScheduler}
CONFIG_KEYS = {"autoencoder": "autoencoder_def", "unet": "diffusion_unet_def", "controlnet": "controlnet_def",
               "scheduler": "noise_scheduler"}
# Where each network's weights sit in its published file (None: the file is the state dict itself).
STATE_KEYS = {"autoencoder": None, "unet": "unet_state_dict", "controlnet": "controlnet_state_dict"}


@dataclass(frozen=True)
class Variant:
    """A published model: its network config, its files (as NV-Generate-CT's download script lays them out under
    the weights folder) and its recommended sampling."""

    name: str
    config: str
    files: dict[str, str]
    sampler: str
    steps: int


VARIANTS = {
    "rflow-ct": Variant("rflow-ct", "config_network_rflow.json",
                        {"autoencoder": "models/autoencoder_v1.pt", "unet": "models/diff_unet_3d_rflow-ct.pt",
                         "controlnet": "models/controlnet_3d_rflow-ct.pt"}, "rflow", 30),
    "ddpm-ct": Variant("ddpm-ct", "config_network_ddpm.json",
                       {"autoencoder": "models/autoencoder_v1.pt", "unet": "models/diff_unet_3d_ddpm-ct.pt",
                        "controlnet": "models/controlnet_3d_ddpm-ct.pt"}, "ddpm", 1000),
}


class WeightsMismatchError(CheckpointError):
    """Published weights that do not match the network config: ``problems`` holds one line per key."""

    def __init__(self, path: str | Path | None, problems: list[str]) -> None:
        self.problems = list(problems)
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        super().__init__(path, f"{len(problems)} problem(s) loading the weights strictly: {problems[0]}{more}",
                         "each is listed above; the weights do not fit the published network config")


def variant(name: str) -> Variant:
    """The published variant ``name``; an unknown name is a ConfigError listing the variants."""
    if name not in VARIANTS:
        raise ConfigError(None, f"unknown MAISI variant '{name}'", f"choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def _resolve(value, top: dict):
    """A MONAI-bundle value with its ``@name`` references replaced by the file's top-level values."""
    if isinstance(value, str) and value.startswith("@"):
        return _resolve(top[value[1:]], top)
    if isinstance(value, dict):
        return {key: _resolve(item, top) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, top) for item in value]
    return value


def published_configs(name: str) -> dict[str, dict]:
    """The configs of a variant's networks and noise scheduler as ``{"class": NAME, **kwargs}``, from the published
    file (``_target_`` gives the class)."""
    raw = json.loads(resources.files(__package__).joinpath(variant(name).config).read_text())
    configs = {}
    for network, key in CONFIG_KEYS.items():
        entry = dict(_resolve(raw[key], raw))
        configs[network] = {"class": entry.pop("_target_").rsplit(".", 1)[1], **entry}
    return configs


def build_maisi_network(config: dict) -> nn.Module:
    """A MAISI network from ``{"class": NAME, **kwargs}`` (flash attention only with CUDA, float32 GroupNorm)."""
    config = dict(config)
    if "use_flash_attention" in config:
        config["use_flash_attention"] = bool(config["use_flash_attention"]) and torch.cuda.is_available()
    if "norm_float16" in config:
        config["norm_float16"] = False
    return instantiate(config, NETWORKS, "MAISI network")


def build_maisi_scheduler(config: dict):
    """The noise scheduler of a published config (``{"class": NAME, **kwargs}``)."""
    return instantiate(config, SCHEDULERS, "MAISI scheduler")


def strict_problems(network: nn.Module, state: dict, name: str) -> list[str]:
    """One line per key that keeps ``state`` from loading strictly into ``network`` (none: it loads)."""
    reference = network.state_dict()
    problems = [f"{name}: missing key {key}" for key in sorted(set(reference) - set(state))]
    problems += [f"{name}: unexpected key {key}" for key in sorted(set(state) - set(reference))]
    for key in sorted(set(reference) & set(state)):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"{name}: {key} is a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(reference[key].shape):
            problems.append(f"{name}: shape of {key} is {list(value.shape)} in the checkpoint, "
                            f"{list(reference[key].shape)} in the network")
    return problems


def read_published(path: Path, network: str) -> tuple[dict, dict]:
    """A published checkpoint file: (the network's state dict, the file's other entries)."""
    if not path.is_file():
        raise CheckpointError(path, "published weights file not found",
                              "lay the files out as NV-Generate-CT's download script does (models/...)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (torch.load raises many types; each is an unreadable file here)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"unreadable checkpoint ({first})") from exc
    if not isinstance(content, dict):
        raise CheckpointError(path, f"expected a dict in the checkpoint, found a {type(content).__name__}")
    key = STATE_KEYS[network]
    if key is None:  # a raw state dict (NV-Generate-CT also accepts one wrapped in "unet_state_dict")
        key = "unet_state_dict" if "unet_state_dict" in content else None
    if key is None:
        return content, {}
    if key not in content or not isinstance(content[key], dict):
        raise CheckpointError(path, f"no '{key}' in the checkpoint", f"it has: {', '.join(sorted(content))}")
    return content[key], {k: v for k, v in content.items() if k != key}


def load_strict(network: nn.Module, state: dict, name: str) -> list[str]:
    """Load ``state`` into ``network`` when it fits exactly; otherwise return the problems (nothing is loaded)."""
    problems = strict_problems(network, state, name)
    if not problems:
        reference = network.state_dict()
        network.load_state_dict({key: value.to(reference[key].dtype) for key, value in state.items()}, strict=True)
    return problems
