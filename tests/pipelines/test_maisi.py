"""MAISI without the published weights: a tiny-width variant of the published configs (same MONAI classes, small
channels), saved in NV-Generate-CT's file layout, imported strictly and run through ``volsynth generate``."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from volsynth import GenerationRequest, load_pipeline
from volsynth.cli import main
from volsynth.data.vocabularies import LabelPreset
from volsynth.errors import ConfigError
from volsynth.io import read_label, read_volume
from volsynth.io.resample import grid_affine
from volsynth.io.volume import LabelMap, Volume
from volsynth.models.checkpoint import load_checkpoint
from volsynth.models.index import read_model_index
from volsynth.models.maisi.importer import import_maisi
from volsynth.models.maisi.networks import VARIANTS, WeightsMismatchError, build_maisi_network
from volsynth.pipelines.maisi_mask import BODY, add_body_label, bit_planes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from maisi_files import save_published, tiny_configs  # noqa: E402

from tests.pipelines.conftest import GRID  # noqa: E402


def test_import_writes_a_maisi_model_whose_weights_are_the_published_ones(published, model):
    index = read_model_index(model)
    assert index.kind == "maisi" and index.sampling == {"steps": 30, "sampler": "rflow"}
    assert {n: c.cls for n, c in index.components.items()} == {
        "autoencoder": "AutoencoderKlMaisi", "unet": "DiffusionModelUNetMaisi", "controlnet": "ControlNetMaisi"}
    loaded = load_checkpoint(model, builder=build_maisi_network).networks
    for name, network in published[1].items():
        assert index.components[name].parameters == sum(p.numel() for p in network.parameters())
        expected, got = network.state_dict(), loaded[name].state_dict()
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected), name
    assert json.loads((model / "meta.json").read_text())["scale_factor"] == pytest.approx(0.9)
    assert "Not verified" in (model / "README.md").read_text()


def test_every_mismatching_key_is_listed_and_nothing_is_written(published, tmp_path, capsys):
    weights = tmp_path / "weights"
    save_published(published[1], weights)
    files = {name: weights / rel for name, rel in VARIANTS["rflow-ct"].files.items()}
    state = torch.load(files["autoencoder"], weights_only=True)
    renamed = next(k for k in state if k.endswith(".weight"))
    state["old." + renamed] = state.pop(renamed)
    dropped = sorted(state)[-1]
    del state[dropped]
    torch.save(state, files["autoencoder"])
    content = torch.load(files["controlnet"], weights_only=True)
    resized = next(k for k, v in content["controlnet_state_dict"].items() if v.ndim == 5)
    content["controlnet_state_dict"][resized] = torch.zeros(1, 1, 1, 1, 1)
    torch.save(content, files["controlnet"])
    # the published configs' CLI path is exercised here with tiny networks: give the tiny configs directly
    with pytest.raises(WeightsMismatchError, match=r"4 problem\(s\)") as caught:
        import_maisi(weights, "rflow-ct", tmp_path / "out", configs=tiny_configs())
    problems = caught.value.problems
    assert f"models/autoencoder_v1.pt: missing key {renamed}" in problems
    assert f"models/autoencoder_v1.pt: missing key {dropped}" in problems
    assert f"models/autoencoder_v1.pt: unexpected key old.{renamed}" in problems
    assert any(p.startswith(f"models/controlnet_3d_rflow-ct.pt: shape of {resized} is [1, 1, 1, 1, 1]")
               for p in problems)
    assert not (tmp_path / "out").exists()
    # on the command line (published configs: every key of the tiny files mismatches): one line per problem, exit 2
    assert main(["import", "maisi", str(weights), "--variant", "rflow-ct", "--out", str(tmp_path / "cli")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "problem(s) loading the weights strictly" in lines[-1]
    assert len(lines) > 100 and all(line.startswith("models/") for line in lines[:-1])
    assert not (tmp_path / "cli").exists()


def test_missing_file_and_unknown_variant_are_errors(published, tmp_path, capsys):
    assert main(["import", "maisi", str(published[0]), "--variant", "ddpm-ct", "--out", str(tmp_path / "o")]) == 2
    assert "diff_unet_3d_ddpm-ct.pt" in capsys.readouterr().err
    assert main(["import", "maisi", str(published[0]), "--variant", "rflow-mr", "--out", str(tmp_path / "o")]) == 2
    assert "unknown MAISI variant" in capsys.readouterr().err


def test_generate_from_a_totalsegmentator_mask_keeps_its_geometry(model, ts_mask, tmp_path, capsys):
    args = ["generate", str(model), "--mask", str(ts_mask), "--mask-labels", "totalsegmentator", "--steps", "3",
            "--seed", "4", "--no-progress"]
    for run in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / run)]) == 0
    err = capsys.readouterr().err
    assert "no body label (200)" in err and "outside the sizes MAISI was trained on" in err
    mask = read_label(ts_mask)
    image = read_volume(tmp_path / "a" / "job000_00_image.nii.gz")
    label = read_label(tmp_path / "a" / "job000_00_label.nii.gz")
    assert image.shape == mask.shape and np.allclose(image.affine, mask.affine, atol=1e-5)
    assert label.shape == mask.shape and np.allclose(label.affine, mask.affine, atol=1e-5)
    # TotalSegmentator ids -> MAISI's: liver 5 -> 1, spleen 1 -> 3, right kidney 2 -> 5, aorta 52 -> 6,
    # inferior vena cava 63 -> 7, stomach 6 -> 12
    expected = {ts_to_maisi for ts, ts_to_maisi in {5: 1, 1: 3, 2: 5, 52: 6, 63: 7, 6: 12}.items()
                if ts in mask.present()}
    assert len(expected) >= 4 and set(label.present()) == expected | {BODY}
    assert np.array_equal(label.array[mask.array == 5], np.ones(int((mask.array == 5).sum())))
    assert image.array.min() >= -1000 - 1e-3 and image.array.max() <= 1000 + 1e-3
    assert np.all(image.array[label.array == 0] == -1000) and image.array[label.array > 0].std() > 0
    again = read_volume(tmp_path / "b" / "job000_00_image.nii.gz")
    assert np.array_equal(image.array, again.array)
    sidecar = json.loads((tmp_path / "a" / "job000_00.json").read_text())
    assert sidecar["body_label"] == "hull" and sidecar["grid_size"] == [64, 64, 64] and sidecar["sampler"] == "rflow"


def test_generate_writes_dicom(model, ts_mask, tmp_path):
    assert main(["generate", str(model), "--mask", str(ts_mask), "--mask-labels", "totalsegmentator", "--steps",
                 "2", "--format", "dicom", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    image = read_volume(tmp_path / "out" / "job000_00_image")
    assert image.shape == read_label(ts_mask).shape and image.modality == "CT"


def test_grid_limits_and_refused_options(model, tmp_path):
    pipe = load_pipeline(model)
    fine = LabelMap(np.pad(np.full((10, 10, 10), 5, np.uint8), 27), grid_affine([0.3] * 3, [64] * 3, [0, 0, 0]))
    with pytest.raises(ConfigError, match="outside MAISI's 0.5-3.0 mm"):
        pipe(mask=fine, mask_labels=LabelPreset("totalsegmentator"), steps=1)
    big = LabelMap(np.ones((8, 8, 800), np.uint8), grid_affine([1.5, 1.5, 1.5], [8, 8, 800], [0, 0, 0]))
    with pytest.raises(ConfigError, match="at most"):
        pipe(mask=big, mask_labels={"liver": [1]}, steps=1)
    for refused in ({"text_guidance": 2.0}, {"mask_guidance": 2.0}):
        with pytest.raises(ConfigError, match="not an option of this maisi model"):
            pipe(GenerationRequest(**refused))
    with pytest.raises(ConfigError, match="samples with 'rflow', not 'ddim'"):
        pipe(sampler="ddim", steps=1)
    with pytest.raises(ConfigError, match="no text prompt"):
        pipe(prompt="liver lesion", steps=1)


def test_generate_without_a_mask_on_the_default_grid(model):
    result = load_pipeline(model)(seed=1, steps=2)
    assert result.image.shape == tuple(GRID["size"]) and result.label is None
    assert np.allclose(np.linalg.norm(result.image.affine[:3, :3], axis=0), GRID["spacing"])


def test_body_label_keeps_every_class_and_fills_between_them():
    array = np.zeros((32, 32, 8), np.uint8)
    array[4:10, 4:10, :] = 1
    array[20:28, 20:28, :] = 3
    mask = LabelMap(array, np.diag([-1.5, -1.5, 2.0, 1.0]))  # LPS: the hull is taken along RAS axes
    body = add_body_label(mask)
    assert np.array_equal(body.array[array > 0], array[array > 0]) and np.allclose(body.affine, mask.affine)
    assert body.array[15, 15, 3] == BODY and body.array[4, 27, 3] == 0  # between the organs / off the hull
    ct = Volume(np.where(np.arange(32)[:, None, None] < 30, 40.0, -1000.0) * np.ones((32, 32, 8)), mask.affine)
    with_ct = add_body_label(mask, ct)
    assert with_ct.array[4, 27, 3] == BODY and with_ct.array[31, 27, 3] == 0


def test_bit_planes_spell_each_label_id():
    planes = bit_planes(torch.tensor([[[0, 1, 200, 132]]]))
    assert planes.shape == (1, 8, 1, 1, 4)
    weights = (2 ** torch.arange(8)).view(1, 8, 1, 1, 1)
    assert (planes * weights).sum(1).flatten().tolist() == [0, 1, 200, 132]


def test_windowed_decode_covers_the_whole_grid(model):
    pipe = load_pipeline(model)
    latents = torch.randn(1, 4, 16, 16, 24, generator=torch.Generator().manual_seed(0))
    whole = pipe.decode(latents)
    pipe.settings["decode"] = {"window": [12, 12, 12], "overlap": 0.5}
    windowed = pipe.decode(latents)
    assert windowed.shape == whole.shape == (1, 1, 64, 64, 96)
    # windows normalise with their own statistics: close to the whole decode, not equal to it
    assert torch.corrcoef(torch.stack([whole.flatten(), windowed.flatten()]))[0, 1] > 0.9
