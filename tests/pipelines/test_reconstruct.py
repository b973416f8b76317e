import json
import shutil

import numpy as np
import pytest
import torch

from volsynth.cli import main
from volsynth.data.plan import Plan
from volsynth.evaluation.inputs import read_generated, read_real
from volsynth.io import read_volume
from volsynth.models.checkpoint import load_checkpoint
from volsynth.pipelines.reconstruct import reconstruct_array


def test_reconstructions_are_autoencoder_round_trips_with_the_real_masks(tiny_model, prepared_tiny, tmp_path):
    out = tmp_path / "recon"
    assert main(["reconstruct", str(tiny_model), str(prepared_tiny), "--out", str(out), "--limit", "2",
                 "--no-progress"]) == 0
    sidecars = sorted(out.glob("*.json"))
    assert len(sidecars) == 2
    _, real, plan = read_real(prepared_tiny, limit=2, progress=False)
    items = read_generated(out, {}, progress=False)
    autoencoder = load_checkpoint(tiny_model, use_ema=True).networks["autoencoder"].eval()
    for item, case in zip(items, real, strict=True):
        assert item.id == case.id
        np.testing.assert_array_equal(item.label.array, case.label.array)  # the case's own mask
        assert item.label.labels == case.label.labels
        np.testing.assert_allclose(item.image.affine, case.image.affine, atol=1e-5)
        # the image is the autoencoder round trip of the prepared case, back in its units
        normalised = read_volume(prepared_tiny / "imagesTr" / f"{case.id}_0000.nii.gz").array
        with torch.no_grad():
            mu, _ = autoencoder.encode(torch.from_numpy(normalised)[None, None])
            expected = autoencoder.decode(mu)[0, 0].clamp(-1, 1).numpy()
        assert not np.allclose(item.image.array, case.image.array, atol=1.0)  # a barely trained AE changes it
        np.testing.assert_allclose(reconstruct_array(autoencoder, normalised), expected, atol=1e-5)
        low, high = plan.normalization[0].window
        assert low - 1e-3 <= item.image.array.min() and item.image.array.max() <= high + 1e-3
    sidecar = json.loads(sidecars[0].read_text())
    assert sidecar["reconstruction_of"].endswith("_0000.nii.gz") and sidecar["model_sha256"]


@pytest.mark.parametrize("case", ["other-grid", "not-prepared", "limit"])
def test_reconstruct_rejects_data_not_prepared_like_the_model(tiny_model, prepared_tiny, nnunet_dataset, tmp_path,
                                                              capsys, case):
    if case == "other-grid":
        data = tmp_path / "prepared"
        shutil.copytree(prepared_tiny, data)
        plan = Plan.load(data)
        plan.size = [8, 8, 8]
        plan.save(data / "plan.json")
        message = "prepare the raw dataset like the model"
    elif case == "not-prepared":
        data, message = nnunet_dataset, "not a prepared dataset"
    else:
        data, message = prepared_tiny, "--limit must be >= 1"
    extra = ["--limit", "0"] if case == "limit" else []
    assert main(["reconstruct", str(tiny_model), str(data), "--out", str(tmp_path / "out"), "--no-progress",
                 *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_reconstruct_needs_a_latent_model(prepared_tiny, tmp_path, capsys):
    from pathlib import Path

    pixel_model = Path(__file__).resolve().parents[2] / "models" / "tiny-sgd"
    assert main(["reconstruct", str(pixel_model), str(prepared_tiny), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 2
    assert "no autoencoder" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_reconstruct_takes_an_autoencoder_checkpoint(tiny_model, prepared_tiny, tmp_path):
    """An autoencoder stage's checkpoint (no UNet yet) reconstructs as the model built from it does."""
    checkpoint = sorted((tiny_model.parent / "ae" / "checkpoints").iterdir())[-1]
    for name, source in (("checkpoint", checkpoint), ("model", tiny_model)):
        assert main(["reconstruct", str(source), str(prepared_tiny), "--out", str(tmp_path / name), "--limit", "1",
                     "--no-progress"]) == 0
    images = [read_volume(next((tmp_path / name).glob("*_image.nii.gz"))).array for name in ("checkpoint", "model")]
    np.testing.assert_allclose(images[0], images[1], atol=1e-4)
    sidecar = json.loads(next((tmp_path / "checkpoint").glob("*.json")).read_text())
    assert sidecar["model"] == str(checkpoint) and len(sidecar["model_sha256"]) == 64
