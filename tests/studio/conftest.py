"""Fixtures of the studio tests: an app over the shipped tiny models with its workdir in tmp_path, and masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from volsynth.io import LabelMap, make_affine, write_volume

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The studio's --workdir."""
    return tmp_path / "studio"


@pytest.fixture
def client(workdir: Path):
    """A TestClient of a studio offering the shipped models, 1 MB upload limit."""
    from fastapi.testclient import TestClient

    from volsynth.studio.server import create_app

    with TestClient(create_app(workdir, [MODELS], max_upload_mb=1)) as test_client:
        yield test_client


def liver_mask(shape=(20, 18, 16), spacing=(9.0, 9.0, 10.0)) -> LabelMap:
    """A box of liver with a tumour in it, in the tiny models' ids (liver 1, tumour 4), on an oblique-free grid."""
    array = np.zeros(shape, dtype=np.uint8)
    array[4:16, 4:14, 3:13] = 1
    array[8:11, 7:10, 6:9] = 4
    return LabelMap(array, make_affine(spacing, (-80.0, -70.0, -60.0)))


@pytest.fixture
def mask_file(tmp_path: Path) -> Path:
    """liver_mask() written as NIfTI."""
    return write_volume(liver_mask(), tmp_path / "mask.nii.gz")
