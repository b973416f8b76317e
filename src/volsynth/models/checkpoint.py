"""Checkpoints as self-describing folders, written atomically::

    config.yaml          network configs ({"class": ..., kwargs}) and the stage's settings
    model.safetensors    weights, keys prefixed by network name ("unet.conv_in.conv.weight")
    ema.safetensors      EMA weights of the trained networks (optional)
    training_state.pt    optimizer / LR-scheduler states and step (optional; only for resuming)
    meta.json            step, plan, latent scale factor, text encoder id, data fingerprint,
                         volsynth version and the sha256 of every file above

``load_checkpoint`` rebuilds every network from its own config and verifies the checksums, so a
truncated or mismatched file is a clear error rather than silently wrong weights.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from volsynth import __version__
from volsynth.errors import VolsynthError
from volsynth.io.atomic import atomic_output
from volsynth.io.jsonfile import read_json
from volsynth.models.registry import build_network

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(VolsynthError):
    """A checkpoint folder is incomplete, corrupted or does not match its config."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: rebuilt networks plus everything saved beside them."""

    path: Path
    networks: dict[str, nn.Module]
    config: dict
    meta: dict
    ema: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    training_state: dict | None = None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def optional_sha256(path: str | Path | None) -> str | None:
    """Hex sha256 of ``path`` when it names a file; of a folder (a DICOM series, one mask per class), the sha256 of
    its files' relative names and sha256s in name order; None when there is no file (a mask given as an array)."""
    if path is None or not Path(path).exists():
        return None
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{child.relative_to(path).as_posix()}\0{sha256_file(child)}\n".encode())
    return digest.hexdigest()


def _flatten(states: dict[str, dict[str, torch.Tensor]], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    flat = {}
    for name, state in states.items():
        for key, value in state.items():
            value = value.detach().cpu().contiguous()
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            flat[f"{name}.{key}"] = value
    return flat


def _unflatten(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, _, rest = key.partition(".")
        states.setdefault(name, {})[rest] = value
    return states


def save_checkpoint(path: str | Path, networks: dict[str, nn.Module], configs: dict[str, dict], meta: dict,
                    settings: dict | None = None, ema: dict[str, dict[str, torch.Tensor]] | None = None,
                    training_state: dict | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write a checkpoint folder atomically (an existing folder at ``path`` is replaced whole)."""
    path = Path(path)
    with atomic_output(path, replaceable=is_checkpoint_folder) as tmp:
        tmp.mkdir()
        (tmp / "config.yaml").write_text(yaml.safe_dump({"networks": configs, "settings": settings or {}},
                                                         sort_keys=False))
        save_file(_flatten({n: m.state_dict() for n, m in networks.items()}, dtype), str(tmp / "model.safetensors"))
        if ema:
            save_file(_flatten(ema, dtype), str(tmp / "ema.safetensors"))
        if training_state is not None:
            torch.save(training_state, tmp / "training_state.pt")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        full_meta = {**meta, "volsynth_version": __version__, "files": files}
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, default=str) + "\n")
    return path


def is_checkpoint_folder(path: Path) -> bool:
    """Whether a folder is a checkpoint or model folder volsynth wrote (it may then be replaced whole)."""
    return (path / "meta.json").is_file() and (path / "model.safetensors").is_file()


def _verify(path: Path) -> dict:
    meta_path = path / "meta.json"
    if not path.is_dir():
        raise CheckpointError(path, "checkpoint folder not found")
    meta = read_json(meta_path, error=CheckpointError, missing="incomplete checkpoint: meta.json is missing")
    for name, expected in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(file, "missing checkpoint file")
        if sha256_file(file) != expected:
            raise CheckpointError(file, "sha256 mismatch: the file is truncated or was modified",
                                  "re-download or re-train; do not edit checkpoint files")
    return meta


def network_configs(path: str | Path) -> dict[str, dict]:
    """The network configs in a checkpoint folder's ``config.yaml`` by name ({} when the folder has none)."""
    file = Path(path) / "config.yaml"
    if not file.is_file():
        return {}
    try:
        config = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(file, f"unreadable checkpoint config ({exc})") from exc
    networks = config.get("networks") if isinstance(config, dict) else None
    return networks if isinstance(networks, dict) else {}


def load_checkpoint(path: str | Path, verify: bool = True, use_ema: bool = False,
                    with_training_state: bool = False,
                    builder: Callable[[dict], nn.Module] = build_network) -> Checkpoint:
    """Rebuild every network from ``config.yaml`` and load its weights (EMA weights if asked and present).
    ``builder`` makes a network from its config (the model registry's by default)."""
    path = Path(path)
    meta = _verify(path) if verify else json.loads((path / "meta.json").read_text())
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
        weights = _unflatten(load_file(str(path / "model.safetensors")))
        ema = _unflatten(load_file(str(path / "ema.safetensors"))) if (path / "ema.safetensors").is_file() else {}
    except (OSError, SafetensorError, yaml.YAMLError) as exc:
        raise CheckpointError(path, f"unreadable checkpoint ({exc})") from exc
    networks: dict[str, nn.Module] = {}
    for name, net_config in config["networks"].items():
        network = builder(net_config)
        state = ema.get(name) if use_ema and name in ema else weights.get(name)
        if state is None:
            raise CheckpointError(path / "model.safetensors", f"no weights for network '{name}'")
        reference = network.state_dict()
        state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(path / "model.safetensors", f"weights do not match the config of '{name}' "
                                  f"({str(exc).splitlines()[0]})") from exc
        networks[name] = network.eval()
    training_state = None
    if with_training_state and (path / "training_state.pt").is_file():
        training_state = torch.load(path / "training_state.pt", map_location="cpu", weights_only=False)
    return Checkpoint(path, networks, config, meta, ema, training_state)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``folder`` (``checkpoint-N`` with meta.json)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := CHECKPOINT_PATTERN.match(p.name)) and (p / "meta.json").is_file()]
    return max(found)[1] if found else None
