"""Shared fixtures: tiny CT/MR-like cases and datasets written in both layouts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from volsynth.io import LabelMap, Volume, make_affine, write_volume  # noqa: E402

LABELS = {"background": 0, "liver": 1, "tumour": 2}


def oblique_direction(angle_deg: float = 20.0) -> np.ndarray:
    """A rotation about z then a flip of x: an LPS-like, non-axis-aligned orientation."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return rot @ np.diag([-1.0, 1.0, 1.0])


def make_case(seed: int = 0, shape=(24, 20, 12), spacing=(1.5, 1.6, 3.0), direction=None, origin=(-20.0, 15.0, -30.0),
              modality: str = "CT") -> tuple[Volume, LabelMap]:
    """A small body-like volume: a body ellipse, a 'liver' blob and a 'tumour' inside it."""
    rng = np.random.default_rng(seed)
    affine = make_affine(spacing, origin, direction)
    idx = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    body = (idx[0] ** 2 + idx[1] ** 2) < 0.8
    centre = rng.uniform(-0.15, 0.15, 3)
    liver = ((idx - centre[:, None, None, None]) ** 2 / np.array([0.25, 0.2, 0.35])[:, None, None, None]).sum(0) < 1
    tumour = ((idx - centre[:, None, None, None]) ** 2).sum(0) < 0.05
    labels = np.where(tumour, 2, np.where(liver, 1, 0)).astype(np.uint8)
    if modality == "CT":
        image = np.where(body, 40.0, -1000.0) + np.where(liver, 60.0, 0.0) - np.where(tumour, 50.0, 0.0)
        image = image + rng.normal(0, 10, shape)
    else:
        image = np.where(body, 300.0, 0.0) + np.where(liver, 200.0, 0.0) + np.where(tumour, 400.0, 0.0)
        image = np.abs(image + rng.normal(0, 15, shape))
    return Volume(image.astype(np.float32), affine, modality=modality), LabelMap(labels, affine)


def write_nnunet(root: Path, cases: int = 3, modality: str = "CT", reports: bool = True, **kwargs) -> Path:
    """A small nnU-Net v2 dataset."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    lines = []
    for n in range(cases):
        image, label = make_case(seed=n, modality=modality, **kwargs)
        write_volume(image, root / "imagesTr" / f"case{n:03d}_0000.nii.gz")
        write_volume(label, root / "labelsTr" / f"case{n:03d}.nii.gz")
        lines.append(json.dumps({"case": f"case{n:03d}", "report": f"case {n}", "facts": {"n": n}}))
    meta = {"channel_names": {"0": modality}, "labels": LABELS, "numTraining": cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    if reports:
        (root / "reports.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_msd(root: Path, cases: int = 2, suffix: str = ".nii.gz", **kwargs) -> Path:
    """A small MSD dataset; ``suffix=''`` stores each volume as a DICOM series folder."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for n in range(cases):
        image, label = make_case(seed=n, **kwargs)
        write_volume(image, root / "imagesTr" / f"liver_{n}{suffix}")
        write_volume(label, root / "labelsTr" / f"liver_{n}{suffix}")
        training.append({"image": f"./imagesTr/liver_{n}{suffix}", "label": f"./labelsTr/liver_{n}{suffix}"})
    meta = {"name": "Task03_Liver", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "tumour"},
            "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def nnunet_dataset(tmp_path: Path) -> Path:
    """A clean 3-case CT dataset in the nnU-Net v2 layout with reports."""
    return write_nnunet(tmp_path / "Dataset001_Test")


@pytest.fixture
def msd_dataset(tmp_path: Path) -> Path:
    """A clean 2-case CT dataset in the MSD layout."""
    return write_msd(tmp_path / "Task03_Liver")


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory) -> Path:
    """Four 16^3 prepared CT cases with reports (shared by the training tests; do not modify)."""
    from volsynth.data.prepare import PrepareOptions, prepare_dataset

    root = tmp_path_factory.mktemp("prepared")
    dataset = write_nnunet(root / "raw", cases=4)
    prepare_dataset(dataset, root / "prepared", PrepareOptions(size=[16, 16, 16]), progress=False)
    return root / "prepared"


@pytest.fixture(scope="session")
def tiny_model(prepared_tiny, tmp_path_factory) -> Path:
    """A complete (barely trained) tiny text+mask-to-volume model folder built from ``prepared_tiny``."""
    from volsynth.training.autoencoder import AutoencoderSettings, AutoencoderStage
    from volsynth.training.controlnet import ControlNetSettings, ControlNetStage
    from volsynth.training.data import load_prepared
    from volsynth.training.diffusion import DiffusionSettings, DiffusionStage
    from volsynth.training.engine import TrainConfig, Trainer
    from volsynth.training.latents import build_latent_cache
    from volsynth.training.recipe import assemble_model

    root = tmp_path_factory.mktemp("tiny_model")
    data = load_prepared(prepared_tiny)
    config = TrainConfig(steps=2, batch_size=2, checkpoint_every=2, progress=False)
    ae = Trainer(AutoencoderStage(data, AutoencoderSettings(size="tiny", adv_weight=0.0)), root / "ae", config).fit()
    settings = DiffusionSettings(size="tiny", text_encoder="tiny:16", num_train_timesteps=100)
    cache = build_latent_cache(ae, data, settings.text_encoder, root / "latents", progress=False)
    diffusion = Trainer(DiffusionStage(cache, settings, autoencoder=ae), root / "diffusion", config).fit()
    controlnet = Trainer(ControlNetStage(cache, diffusion, ControlNetSettings()), root / "controlnet", config).fit()
    return assemble_model(ae, diffusion, root / "model", {"name": "tiny-test"}, controlnet=controlnet)
