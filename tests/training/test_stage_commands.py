"""``volsynth train STAGE``: every stage kind trains alone from a prepared folder and a recipe's block, and writes
a checkpoint the next stage takes."""

import copy
from pathlib import Path

import pytest
import yaml

from volsynth.cli import main
from volsynth.models.checkpoint import latest_checkpoint
from volsynth.training.engine import Trainer, sample_generators

DATA = {"phantom": {"kind": "abdomen-ct", "cases": 2, "size": 16}}  # a recipe names its data; --data replaces it
TRAIN = {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "lr": 0.001}
BLOCKS = {
    "autoencoder": {"size": "tiny", "adv_weight": 0.0},
    "diffusion": {"size": "tiny", "num_train_timesteps": 100},
    "controlnet": {},
    "refiner": {"size": "tiny-pixel", "patch": [8, 8, 8]},
    "segguided": {"size": "tiny-pixel"},
    "joint": {"size": "tiny-pixel", "factor": 2},
    "superres": {"size": "tiny-pixel", "factor": 2, "patch": [8, 8, 8], "residual_scale": 0.1},
}


KIND = {"segguided": "segguided", "joint": "hierarchical", "superres": "hierarchical"}  # the rest: latent


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    """One recipe per kind (a recipe's kind fixes which stage blocks it may have)."""
    folder, paths = tmp_path_factory.mktemp("recipe"), {}
    for kind in ("latent", "segguided", "hierarchical"):
        blocks = {name: {**block, "train": TRAIN} for name, block in BLOCKS.items() if KIND.get(name, "latent") == kind}
        path = folder / f"{kind}.yaml"
        head = {"name": kind, **({} if kind == "latent" else {"kind": kind}), "seed": 0, "data": DATA}
        path.write_text(yaml.safe_dump({**head, "text_encoder": "tiny:16", **blocks}))
        paths.update({name: path for name in blocks})
    return paths


@pytest.fixture(autouse=True)
def placement(monkeypatch) -> dict[str, set[str]]:
    """Before each stage trains, a copy of it is moved to the "meta" device and computes its losses there: a tensor
    the stage leaves on the CPU meets the networks' device in some operation and raises, as it would on a GPU."""
    devices: dict[str, set[str]] = {}
    original = Trainer.__init__

    def probed(self, stage, out, config) -> None:
        probe = copy.deepcopy(stage)
        probe.to("meta")
        items = list(range(min(2, probe.num_items())))
        losses = probe.losses(items, sample_generators(0, 0, items), 0)
        devices[stage.name] = {value.device.type for value in losses.values()}
        original(self, stage, out, config)

    monkeypatch.setattr(Trainer, "__init__", probed)
    return devices


def _train(stage: str, out: Path, *args: str) -> Path:
    assert main(["train", stage, *args, "--out", str(out), "--no-progress"]) == 0
    checkpoint = latest_checkpoint(out / "checkpoints")
    assert checkpoint is not None and (checkpoint / "model.safetensors").is_file(), f"{stage}: no checkpoint"
    return checkpoint


def test_the_latent_chain_trains_stage_by_stage(prepared_tiny, configs, tmp_path, placement):
    data = ["--data", str(prepared_tiny), "--config", str(configs["diffusion"])]
    autoencoder = _train("autoencoder", tmp_path / "ae", *data)
    diffusion = _train("diffusion", tmp_path / "diffusion", *data, "--autoencoder", str(autoencoder))
    assert (tmp_path / "diffusion" / "latents").is_dir()  # the cache is encoded once, into OUT
    _train("controlnet", tmp_path / "controlnet", *data, "--diffusion", str(diffusion))
    assert placement == {name: {"meta"} for name in ("autoencoder", "diffusion", "controlnet")}


@pytest.mark.parametrize("stage", ["refiner", "segguided", "joint", "superres"])
def test_each_pixel_stage_trains_alone(stage, prepared_tiny, configs, tmp_path, placement):
    _train(stage, tmp_path / stage, "--data", str(prepared_tiny), "--config", str(configs[stage]))
    assert placement == {stage: {"meta"}}  # its batch follows its networks to their device


def test_a_stage_command_with_an_unknown_key_is_refused(prepared_tiny, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "data": DATA, "refiner": {"stpes": 3}}))
    assert main(["train", "refiner", "--data", str(prepared_tiny), "--config", str(bad), "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "refiner.stpes" in err and str(bad) in err
    assert not (tmp_path / "out").exists()


def test_controlnet_names_a_missing_autoencoder(prepared_tiny, configs, tmp_path, capsys):
    data = ["--data", str(prepared_tiny), "--config", str(configs["diffusion"])]
    autoencoder = _train("autoencoder", tmp_path / "ae", *data)
    diffusion = _train("diffusion", tmp_path / "diffusion", *data, "--autoencoder", str(autoencoder))
    (autoencoder / "meta.json").rename(autoencoder / "moved.json")
    assert main(["train", "controlnet", *data, "--diffusion", str(diffusion), "--out", str(tmp_path / "cn"),
                 "--no-progress"]) == 2
    assert "--autoencoder" in capsys.readouterr().err
