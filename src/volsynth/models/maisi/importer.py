"""``volsynth import maisi``: NV-Generate-CT's published files -> a volsynth model folder.

The folder is the usual one (``config.yaml`` with each network's constructor config, ``model.safetensors``,
``meta.json`` with the sha256 of every file, ``model_index.json`` of kind ``maisi``) plus a card (README.md). Every
network is built with MONAI's class from the published config and loaded strictly: one mismatching key in any file
is a ``WeightsMismatchError`` that lists every problem of every file, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import torch

from volsynth.data.plan import CT_SCHEME, Normalization, Plan
from volsynth.data.vocabularies import load_vocabulary
from volsynth.errors import ConfigError
from volsynth.io.atomic import atomic_output
from volsynth.models.checkpoint import CheckpointError, is_checkpoint_folder, save_checkpoint, sha256_file
from volsynth.models.index import ModelIndex, Provenance, model_components, plans_of, write_model_index
from volsynth.models.maisi.networks import (
    STATE_KEYS,
    WeightsMismatchError,
    build_maisi_network,
    load_strict,
    published_configs,
    read_published,
    variant,
)

SOURCE_URL = "https://github.com/NVIDIA-Medtech/NV-Generate-CTMR"
WEIGHTS_URL = "https://huggingface.co/nvidia/NV-Generate-CT"
# NV-Generate-CT's inference defaults (configs/config_infer.json): the grid of a volume generated without a mask,
# and the autoencoder's sliding-window decode (window in latent voxels, overlap).
DEFAULT_GRID = {"size": [256, 256, 256], "spacing": [1.5, 1.5, 2.0]}
DECODE = {"window": [48, 48, 48], "overlap": 0.6666}
CT_MODALITY = 1  # NV-Generate-CT's modality code for CT (the class label of rflow-ct's UNet)
HU_RANGE = [-1000.0, 1000.0]  # the autoencoder's [0, 1] output is this HU range


def maisi_plan(size: list[int], spacing: list[float]) -> Plan:
    """The plan of an imported model: MAISI's label vocabulary (body = 200), CT in [-1000, 1000] HU."""
    vocabulary = load_vocabulary("maisi")
    labels = {c.canonical: c.id for c in vocabulary.classes if c.canonical}
    return Plan(spacing=[float(s) for s in spacing], size=[int(s) for s in size],
                normalization=[Normalization(CT_SCHEME, list(HU_RANGE))], labels=labels,
                label_sources={name: [i] for name, i in labels.items()}, modality="CT", channel_names={"0": "CT"},
                source={"vocabulary": "maisi", **vocabulary.source})


def import_maisi(weights_dir: str | Path, variant_name: str, out: str | Path, overwrite: bool = False,
                 configs: dict[str, dict] | None = None, default_grid: dict | None = None) -> Path:
    """Import a published variant from ``weights_dir`` into the model folder ``out``; returns ``out``.

    ``configs`` replaces the published network configs (tests build small networks of the same classes);
    ``default_grid`` the grid of a volume generated without a mask.
    """
    weights_dir, out = Path(weights_dir), Path(out)
    spec = variant(variant_name)
    if not weights_dir.is_dir():
        raise ConfigError(weights_dir, "weights folder not found", f"download {WEIGHTS_URL} (see docs/maisi.md)")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(out, "output exists", "choose a new --out, or give --overwrite to replace a model folder")
    config_source = "given" if configs is not None else spec.config
    configs = dict(configs or published_configs(variant_name))
    files = {name: weights_dir / rel for name, rel in spec.files.items()}
    absent = [str(path) for path in files.values() if not path.is_file()]
    if absent:
        raise CheckpointError(weights_dir, f"published file(s) missing: {', '.join(absent)}",
                              f"the {variant_name} layout is {', '.join(spec.files.values())}")
    # 1. every network built from its config and loaded strictly; all problems of all files gathered
    networks, problems, extras = {}, [], {}
    for name in STATE_KEYS:
        state, extras[name] = read_published(files[name], name)
        network = build_maisi_network(configs[name])
        found = load_strict(network, state, f"{spec.files[name]}")
        problems += found
        networks[name] = network.eval()
        del state
    if problems:
        raise WeightsMismatchError(weights_dir, problems)
    scale = extras["unet"].get("scale_factor")
    if scale is None:
        raise CheckpointError(files["unet"], "no 'scale_factor' in the checkpoint",
                              f"it has: {', '.join(sorted(['unet_state_dict', *extras['unet']]))}")
    scale_factor = float(scale.item() if isinstance(scale, torch.Tensor) else scale)
    # 2. the model folder, written whole or not at all
    grid = default_grid or DEFAULT_GRID
    plan = maisi_plan(grid["size"], grid["spacing"])
    sources = {name: {"file": spec.files[name], "sha256": sha256_file(path)} for name, path in files.items()}
    sampling = {"steps": spec.steps, "sampler": spec.sampler}
    meta = {"kind": "maisi", "variant": variant_name, "plan": plan.to_dict(), "scale_factor": scale_factor,
            "scheduler": configs["scheduler"], "sampling": sampling,
            "maisi": {"modality": CT_MODALITY, "decode": dict(DECODE), "hu_range": list(HU_RANGE)},
            "source": {"repository": SOURCE_URL, "weights": WEIGHTS_URL, "files": sources,
                       "network_config": config_source}}
    network_configs = {name: configs[name] for name in networks}
    with atomic_output(out, overwrite=overwrite, replaceable=is_checkpoint_folder) as tmp:
        save_checkpoint(tmp, networks, network_configs, meta)
        index = ModelIndex(name=out.name, kind="maisi", components=model_components(tmp), plans=plans_of(meta),
                           sampling=sampling, provenance=Provenance(
                               recipe=None, resolved_recipe={"import": {"variant": variant_name, "files": sources}},
                               stages={}, data_fingerprint=None))
        write_model_index(tmp, index)
        (tmp / "README.md").write_text(model_card(variant_name, sources, index, scale_factor))
    return out


def model_card(variant_name: str, sources: dict, index: ModelIndex, scale_factor: float) -> str:
    """The card of an imported model: what it is, where its weights come from, what was and was not verified."""
    rows = "\n".join(f"| {name} | {component.cls} | {component.parameters:,} | `{sources[name]['file']}` | "
                     f"`{sources[name]['sha256'][:16]}…` |" for name, component in index.components.items())
    return f"""# {index.name}: MAISI {variant_name} (NV-Generate-CT), imported

NVIDIA's MAISI {variant_name} CT generator, imported with `volsynth import maisi --variant {variant_name}`. The
weights are NVIDIA's ({WEIGHTS_URL}), under NVIDIA's licence for them (see docs/maisi.md): this folder holds
the same numbers in another file format, so their licence applies to it.

| network | class | parameters | published file | sha256 of that file |
|---|---|---|---|---|
{rows}

Latent scale factor: {scale_factor:.6g}. Sampling: {index.sampling['steps']} steps, {index.sampling['sampler']}.

## Verified
- Every network was built with MONAI's own class from NVIDIA's published network config and every tensor of the
  published files loaded strictly (no key missing, none unexpected, every shape equal).

## Not verified
- The images these weights generate through volsynth were not compared with NV-Generate-CT's own outputs.

## Generate
`volsynth generate {index.name} --mask seg.nii.gz --mask-labels totalsegmentator --body-ct ct.nii.gz --out OUT`
(`--body-ct`: the mask's CT, for a body label when the mask has none). Add `--dry-run` to see the GPU memory and
time predicted for that grid before anything runs (see docs/maisi.md).
"""
