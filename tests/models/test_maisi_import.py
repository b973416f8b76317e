"""Full-size MAISI networks (NVIDIA's published rflow-ct and ddpm-ct configs, random weights) in the published file
layout, imported and loaded strictly: the architecture and file layout volsynth expects are the published ones."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from volsynth.models.index import read_model_index
from volsynth.models.maisi.importer import import_maisi
from volsynth.models.maisi.networks import VARIANTS, WeightsMismatchError, published_configs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from maisi_files import build, save_published  # noqa: E402

# Parameters of the published networks, counted by MONAI 1.6.1's classes
PARAMETERS = {"rflow-ct": {"autoencoder": 20_944_897, "unet": 180_500_868, "controlnet": 72_037_072},
              "ddpm-ct": {"autoencoder": 20_944_897, "unet": 169_370_884, "controlnet": 68_644_944}}


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """The published networks with random weights, saved as NV-Generate-CT lays its files out (built once)."""
    networks = build(published_configs("rflow-ct"))
    root = save_published(networks, tmp_path_factory.mktemp("maisi-full") / "weights", scale_factor=1.03)
    samples = {name: {k: v.clone() for k, v in list(network.state_dict().items())[::97]}
               for name, network in networks.items()}
    counts = {name: sum(p.numel() for p in network.parameters()) for name, network in networks.items()}
    del networks
    return root, samples, counts


@pytest.mark.slow
def test_published_ddpm_ct_networks_import_strictly(tmp_path):
    networks = build(published_configs("ddpm-ct"))
    assert {name: sum(p.numel() for p in n.parameters()) for name, n in networks.items()} == PARAMETERS["ddpm-ct"]
    root = save_published(networks, tmp_path / "weights", variant="ddpm-ct", scale_factor=1.0)
    sample = {k: v.clone() for k, v in list(networks["unet"].state_dict().items())[::41]}
    del networks
    out = import_maisi(root, "ddpm-ct", tmp_path / "maisi-ddpm-ct")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["scheduler"]["class"] == "DDPMScheduler" and read_model_index(out).kind == "maisi"
    assert {name: c.parameters for name, c in read_model_index(out).components.items()} == PARAMETERS["ddpm-ct"]
    with safe_open(str(out / "model.safetensors"), framework="pt") as weights:
        assert all(torch.equal(weights.get_tensor(f"unet.{key}"), value) for key, value in sample.items())


@pytest.mark.slow
def test_published_rflow_ct_networks_import_strictly(full_size, tmp_path):
    root, samples, counts = full_size
    assert counts == PARAMETERS["rflow-ct"]
    out = import_maisi(root, "rflow-ct", tmp_path / "maisi-rflow-ct")
    index = read_model_index(out)
    assert {name: c.parameters for name, c in index.components.items()} == PARAMETERS["rflow-ct"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["scale_factor"] == pytest.approx(1.03) and meta["scheduler"]["class"] == "RFlowScheduler"
    assert meta["source"]["network_config"] == "config_network_rflow.json"
    with safe_open(str(out / "model.safetensors"), framework="pt") as weights:
        for name, tensors in samples.items():
            for key, value in tensors.items():
                assert torch.equal(weights.get_tensor(f"{name}.{key}"), value), f"{name}.{key}"
    # a renamed key in the published UNet file is listed (and the missing original with it)
    content = torch.load(root / VARIANTS["rflow-ct"].files["unet"], weights_only=True)
    state = content["unet_state_dict"]
    state["renamed.time_embed.0.weight"] = state.pop("time_embed.0.weight")
    broken = tmp_path / "broken"
    (broken / "models").mkdir(parents=True)
    for rel in VARIANTS["rflow-ct"].files.values():
        if "diff_unet" not in rel:
            (broken / rel).symlink_to(root / rel)
    torch.save(content, broken / VARIANTS["rflow-ct"].files["unet"])
    del content, state
    with pytest.raises(WeightsMismatchError) as caught:
        import_maisi(broken, "rflow-ct", tmp_path / "never")
    assert caught.value.problems == ["models/diff_unet_3d_rflow-ct.pt: missing key time_embed.0.weight",
                                     "models/diff_unet_3d_rflow-ct.pt: unexpected key renamed.time_embed.0.weight"]
    assert not (tmp_path / "never").exists()
