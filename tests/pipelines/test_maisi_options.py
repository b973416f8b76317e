"""MAISI's options beyond the mask: the body label from the mask's CT, the dry run's cost prediction, the ddpm-ct
variant, and generation without any input."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from volsynth import load_pipeline
from volsynth.cli import main
from volsynth.data.vocabularies import LabelPreset
from volsynth.errors import ConfigError
from volsynth.io import read_label, read_volume, write_volume
from volsynth.io.volume import Volume
from volsynth.models.maisi.importer import import_maisi
from volsynth.models.maisi.networks import published_configs
from volsynth.pipelines.maisi_cost import estimate
from volsynth.pipelines.maisi_mask import BODY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from maisi_files import build, save_published, tiny_configs  # noqa: E402

from tests.pipelines.conftest import GRID  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _body_box(mask_path: Path) -> tuple[slice, ...]:
    """The organs' bounding box, 3 voxels wider in-plane (clipped to the grid), all slices."""
    organs = np.argwhere(read_label(mask_path).array > 0)
    lo, hi = np.maximum(organs.min(0) - 3, 0), organs.max(0) + 4
    return slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(None)


def _ct_of(mask_path: Path, path: Path, body_hu: float = 40.0, modality: str | None = "CT") -> Path:
    """A CT on the mask's grid: a box of soft tissue around the organs (wider than their hull) in air."""
    mask = read_label(mask_path)
    array = np.full(mask.shape, -1000.0, np.float32)
    array[_body_box(mask_path)] = body_hu
    write_volume(Volume(array, mask.affine, modality=modality), path)
    return path


def test_body_label_from_the_masks_ct(model, ts_mask, tmp_path, capsys):
    ct = _ct_of(ts_mask, tmp_path / "ct.nii.gz")
    args = ["generate", str(model), "--mask", str(ts_mask), "--mask-labels", "totalsegmentator", "--steps", "2",
            "--no-progress"]
    assert main([*args, "--body-ct", str(ct), "--out", str(tmp_path / "ct")]) == 0
    assert "no body label" not in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "hull")]) == 0
    with_ct, hull = (read_label(tmp_path / run / "job000_00_label.nii.gz") for run in ("ct", "hull"))
    organs = read_label(ts_mask).array > 0
    assert np.array_equal(with_ct.array[organs], hull.array[organs])  # the organs are the mask's either way
    body = np.zeros(organs.shape, bool)
    body[_body_box(ts_mask)] = True
    assert np.all(with_ct.array[body & ~organs] == BODY) and np.all(with_ct.array[~body] == 0)
    assert (hull.array[body & ~organs] != BODY).sum() > 1000  # the hull misses what the CT shows
    assert json.loads((tmp_path / "ct" / "job000_00.json").read_text())["body_label"] == "ct"


def test_body_ct_errors_name_the_file(model, ts_mask, tmp_path, capsys):
    base = ["generate", str(model), "--mask", str(ts_mask), "--mask-labels", "totalsegmentator", "--steps", "1",
            "--no-progress", "--out", str(tmp_path / "out")]
    mask = read_label(ts_mask)
    not_hu = tmp_path / "scaled.nii.gz"  # an MR, or a CT scaled to [0, 1]: nothing below -500
    write_volume(Volume(np.full(mask.shape, 200.0, np.float32), mask.affine), not_hu)
    for path, problem in ((not_hu, "not a CT in HU"), (tmp_path / "none.nii.gz", "not found")):
        assert main([*base, "--body-ct", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and problem in err[0] and str(path.name) in err[0]
    mr = Volume(np.zeros(mask.shape, np.float32), mask.affine, modality="MR")
    with pytest.raises(ConfigError, match="not MR"):
        load_pipeline(model)(mask=ts_mask, mask_labels=LabelPreset("totalsegmentator"), body_ct=mr, steps=1)
    assert main(["generate", str(model), "--body-ct", str(not_hu), "--out", str(tmp_path / "o")]) == 2
    assert "--body-ct goes with --mask" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_dry_run_predicts_and_writes_nothing(model, ts_mask, tmp_path, capsys):
    assert main(["generate", str(model), "--mask", str(ts_mask), "--mask-labels", "totalsegmentator",
                 "--dry-run", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "GPU memory (predicted peak)" in out and "64x64x64" in out and "16x16x16" in out
    assert not (tmp_path / "out").exists()
    assert main(["generate", str(ROOT / "models" / "tiny-abdomen"), "--prompt", "liver", "--dry-run"]) == 2
    assert "does not predict its cost" in capsys.readouterr().err


def test_published_networks_cost_at_256_and_512():
    configs = published_configs("rflow-ct")
    small, large = (estimate(configs, [s] * 3, 4, 30, True, {"window": [48] * 3, "overlap": 0.4}) for s in (256, 512))
    assert small.weights == large.weights == 4 * (20_944_897 + 180_500_868 + 72_037_072)
    assert small.latent == [64] * 3 and large.latent == [128] * 3
    # conv FLOPs grow with the voxels (x8); attention at the lowest levels faster
    assert 8 <= large.step_flops / small.step_flops < 12
    assert small.windows == 8 and large.windows == 64 and small.window_flops == large.window_flops
    assert small.peak_bytes < large.peak_bytes < 40e9
    assert large.seconds()["denoise"] == pytest.approx(30 * large.step_flops / 51e12)


def test_decode_overlap_follows_the_grid(model):
    pipe = load_pipeline(model)
    assert pipe.decode_settings([64, 64, 64])["overlap"] == pytest.approx(0.6666)
    assert pipe.decode_settings([128, 128, 64])["overlap"] == pytest.approx(0.4)


def test_ddpm_ct_imports_and_generates_with_body_regions(ts_mask, tmp_path):
    configs = tiny_configs("ddpm-ct")  # its autoencoder splits the latent into 8: too narrow for 64^3 at first
    weights = save_published(build(configs), tmp_path / "weights", variant="ddpm-ct")
    narrow = import_maisi(weights, "ddpm-ct", tmp_path / "narrow", configs=configs, default_grid=GRID)
    with pytest.raises(ConfigError, match="too narrow along A"):
        load_pipeline(narrow)(mask=ts_mask, mask_labels=LabelPreset("totalsegmentator"), steps=1)
    configs["autoencoder"]["num_splits"] = 4
    weights = save_published(build(configs), tmp_path / "weights", variant="ddpm-ct")
    model = import_maisi(weights, "ddpm-ct", tmp_path / "maisi-ddpm", configs=configs, default_grid=GRID)
    pipe = load_pipeline(model)
    assert pipe.trained_sampler == "ddpm" and pipe.unet.include_top_region_index_input
    assert main(["generate", str(model), "--mask", str(ts_mask), "--mask-labels", "totalsegmentator", "--steps",
                 "2", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    image = read_volume(tmp_path / "out" / "job000_00_image.nii.gz")
    assert image.shape == read_label(ts_mask).shape and image.array.std() > 0
    assert json.loads((tmp_path / "out" / "job000_00.json").read_text())["sampler"] == "ddpm"


def test_generate_with_no_input_makes_one_unconditional_volume(model, tmp_path):
    assert main(["generate", str(model), "--steps", "2", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert read_volume(tmp_path / "out" / "job000_00_image.nii.gz").shape == tuple(GRID["size"])
    assert main(["generate", str(model), "--steps", "2"]) == 2  # no --out
