"""Fixtures of the MAISI tests: a tiny-width variant of the published configs (same MONAI classes, small channels)
saved in NV-Generate-CT's file layout and imported, and a phantom abdomen mask in TotalSegmentator's ids."""

import sys
from pathlib import Path

import numpy as np
import pytest

from volsynth.data.phantom import write_phantom_dataset
from volsynth.io import read_label, write_volume
from volsynth.io.resample import grid_affine
from volsynth.io.volume import LabelMap
from volsynth.models.maisi.importer import import_maisi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from maisi_files import build, save_published, tiny_configs  # noqa: E402

GRID = {"size": [64, 64, 64], "spacing": [1.5, 1.5, 1.5]}
# phantom abdomen ids -> TotalSegmentator ids (liver, spleen, right kidney, aorta, inferior vena cava, stomach)
TO_TOTALSEGMENTATOR = {1: 5, 5: 1, 6: 2, 7: 52, 8: 63, 9: 6}


@pytest.fixture(scope="package")
def published(tmp_path_factory) -> tuple[Path, dict]:
    networks = build(tiny_configs())
    return save_published(networks, tmp_path_factory.mktemp("maisi") / "weights"), networks


@pytest.fixture(scope="package")
def model(published, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "maisi-tiny"
    return import_maisi(published[0], "rflow-ct", out, configs=tiny_configs(), default_grid=GRID)


@pytest.fixture(scope="package")
def ts_mask(tmp_path_factory) -> Path:
    """A phantom abdomen's label map in TotalSegmentator's ids, on a 64^3 grid at 1.5 mm off the origin."""
    root = write_phantom_dataset("abdomen-ct", tmp_path_factory.mktemp("ph") / "ds", cases=1, size=64, spacing=1.5,
                                 seed=3, progress=False)
    label = read_label(next((root / "labelsTr").glob("*.nii.gz")))
    array = np.zeros(label.shape, dtype=np.uint8)
    for own, ts in TO_TOTALSEGMENTATOR.items():
        array[label.array == own] = ts
    path = tmp_path_factory.mktemp("mask") / "seg.nii.gz"
    write_volume(LabelMap(array, grid_affine([1.5] * 3, [64] * 3, [12.0, -30.0, 5.0])), path)
    return path


