"""The evaluation segmentor: learns on tiny phantoms (better than untrained), checkpoint round trip,
predictions on the volume's own grid (oblique, anisotropic), 2D mode, bad settings; train segmentor's --config
(file values, command-line overrides, bad files) and --holdout (held-out Dice/NSD in holdout.json)."""

import json

import numpy as np
import pytest
import torch

from tests.conftest import make_case, oblique_direction
from volsynth.cli import main
from volsynth.data.dataset import load_dataset
from volsynth.data.phantom import write_phantom_dataset
from volsynth.errors import ConfigError
from volsynth.evaluation import compute_dice_per_class, segtrain
from volsynth.evaluation.segmentor import (
    Segmentor,
    SegmentorSettings,
    load_segmentor,
    make_segmentor_plan,
    plan_label_ids,
    predict,
    read_case,
)
from volsynth.evaluation.segtrain import SegmentationStage, stack_cases, train_segmentor_on_dataset
from volsynth.io import LabelMap
from volsynth.models.checkpoint import CheckpointError
from volsynth.models.registry import NETWORKS

TINY = dict(architecture="unet", size=[16, 16, 16], features=4, batch_size=2, labels="liver=1,spleen=5")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    return write_phantom_dataset("abdomen-ct", root / "ds", cases=3, size=16, seed=0, progress=False)


@pytest.fixture(scope="module")
def trained(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("segout")
    settings = SegmentorSettings(**TINY, steps=60, lr=3e-3)
    train_segmentor_on_dataset(phantoms, out, settings, case_ids=["abdomen_ct_0000", "abdomen_ct_0001"],
                               progress=False)
    return out


def liver_dice(segmentor: Segmentor, dataset, index: int) -> float:
    image, label = read_case(dataset.cases[index])
    reference = LabelMap(segmentor.plan.remap(label.array), label.affine, labels=segmentor.labels)
    return compute_dice_per_class(predict(segmentor, image), reference)["liver"]


def test_segmentor_learns(phantoms, trained):
    dataset = load_dataset(phantoms)
    segmentor = load_segmentor(trained)
    untrained = SegmentationStage(*stack_cases([read_case(dataset.cases[0])], segmentor.plan), segmentor.plan,
                                  SegmentorSettings(**TINY))
    baseline = Segmentor(untrained.networks["segmentor"], untrained.configs["segmentor"], segmentor.plan,
                         segmentor.settings)
    for index in (0, 2):  # a training case and the unseen one
        assert liver_dice(segmentor, dataset, index) > liver_dice(baseline, dataset, index) + 0.2


def test_segmentation_batches_follow_the_network_to_its_device(phantoms, trained):
    """On the "meta" device a batch left on the CPU would raise when it meets the network, as on a GPU."""
    from volsynth.training.engine import sample_generators

    dataset = load_dataset(phantoms)
    plan = load_segmentor(trained).plan
    stage = SegmentationStage(*stack_cases([read_case(case) for case in dataset.cases[:2]], plan), plan,
                              SegmentorSettings(**TINY))
    stage.to("meta")
    assert next(stage.networks["segmentor"].parameters()).device.type == "meta"
    losses = stage.losses([0, 1], sample_generators(0, 0, [0, 1]), 0)
    assert losses["segmentor"].device.type == "meta"


def test_checkpoint_round_trip(trained, phantoms):
    segmentor = load_segmentor(trained)
    again = load_segmentor(trained / "segmentor")
    meta = segmentor.meta
    assert meta["labels"] == {"background": 0, "liver": 1, "spleen": 2}
    assert meta["grid"]["size"] == [16, 16, 16] and len(meta["grid"]["spacing"]) == 3
    assert meta["normalisation"][0]["scheme"] == "ct_window"
    assert meta["training_cases"] == ["abdomen_ct_0000", "abdomen_ct_0001"]
    assert segmentor.config["class"] == "UNet" and segmentor.settings.steps == 60
    for key, value in segmentor.network.state_dict().items():
        assert torch.equal(value, again.network.state_dict()[key])
    image, _ = read_case(load_dataset(phantoms).cases[2])
    assert np.array_equal(predict(segmentor, image).array, predict(again, image).array)
    # a modified weights file is refused
    weights = trained / "segmentor" / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-8] + b"\0" * 8)
        with pytest.raises(CheckpointError, match="modified"):
            load_segmentor(trained)
    finally:
        weights.write_bytes(original)
    with pytest.raises(CheckpointError, match="not found"):
        load_segmentor(trained / "missing")


def test_predict_keeps_geometry(trained):
    segmentor = load_segmentor(trained)
    image, _ = make_case(shape=(24, 20, 12), spacing=(1.5, 1.6, 3.0), direction=oblique_direction())
    prediction = predict(segmentor, image)
    assert prediction.shape == image.shape
    assert np.allclose(prediction.affine, image.affine)
    assert prediction.labels == {"background": 0, "liver": 1, "spleen": 2}
    assert set(np.unique(prediction.array)) <= {0, 1, 2}


def test_two_dimensional_segmentor(phantoms, tmp_path):
    settings = SegmentorSettings(**{**TINY, "architecture": "segresnet"}, spatial_dims=2, steps=3)
    train_segmentor_on_dataset(phantoms, tmp_path, settings, progress=False)
    segmentor = load_segmentor(tmp_path)
    assert segmentor.config["spatial_dims"] == 2
    image, _ = read_case(load_dataset(phantoms).cases[0])
    assert predict(segmentor, image).shape == image.shape
    assert json.loads((tmp_path / "segmentor" / "meta.json").read_text())["segmentor"]["spatial_dims"] == 2


def test_patch_training_predicts_by_sliding_window(phantoms, tmp_path):
    settings = SegmentorSettings(**{**TINY, "size": [32, 32, 32]}, patch=[16, 16, 16], steps=3)
    train_segmentor_on_dataset(phantoms, tmp_path, settings, progress=False)
    segmentor = load_segmentor(tmp_path)
    assert segmentor.settings.patch == [16, 16, 16] and segmentor.plan.size == [32, 32, 32]
    image, _ = read_case(load_dataset(phantoms).cases[1])
    assert predict(segmentor, image).shape == image.shape


def test_training_again_into_the_same_folder(phantoms, trained):
    settings = SegmentorSettings(**TINY, steps=60, lr=3e-3)
    ids = ["abdomen_ct_0000", "abdomen_ct_0001"]
    if "UNet" in NETWORKS:  # the registry rebuilds the network: the engine resumes the finished run
        assert train_segmentor_on_dataset(phantoms, trained, settings, ids, progress=False) == trained / "segmentor"
    else:
        with pytest.raises(ConfigError, match="cannot be resumed"):
            train_segmentor_on_dataset(phantoms, trained, settings, ids, progress=False)


def test_bad_settings(phantoms):
    with pytest.raises(ConfigError, match="architecture"):
        SegmentorSettings(architecture="vnet").check()
    with pytest.raises(ConfigError, match="multiples of 16"):
        SegmentorSettings(architecture="basicunet", size=[24, 24, 24]).check()
    with pytest.raises(ConfigError, match="unknown segmentor setting"):
        SegmentorSettings.from_dict({"depth": 3})
    with pytest.raises(ConfigError, match="two increasing numbers"):
        SegmentorSettings(window=[300.0, -200.0]).check()
    with pytest.raises(ConfigError, match="larger than the grid"):
        SegmentorSettings(size=[16, 16, 16], patch=[32, 32, 32]).check()
    dataset = load_dataset(phantoms)
    with pytest.raises(ConfigError, match="neither an id nor a label name"):
        make_segmentor_plan(dataset, dataset.cases, SegmentorSettings(labels="liver=lung"))


# -- train segmentor --config and --holdout ---------------------------------------------------------------------------

def test_train_seg_config_holdout(phantoms, tmp_path, capsys):
    config = tmp_path / "seg.yaml"
    config.write_text("architecture: unet\nsize: [16, 16, 16]\nfeatures: 4\nsteps: 50\nlr: 0.002\n"
                      "labels: liver=1,spleen=5\n")
    out = tmp_path / "out"
    assert main(["train", "segmentor", "--data", str(phantoms), "--out", str(out), "--config", str(config),
                 "--steps", "2",
                 "--holdout", "1", "--no-progress"]) == 0
    settings = json.loads((out / "segmentor" / "meta.json").read_text())["segmentor"]
    assert settings["architecture"] == "unet" and settings["features"] == 4 and settings["lr"] == 0.002
    assert settings["steps"] == 2  # the option typed on the command line overrides the file
    holdout = json.loads((out / "holdout.json").read_text())
    ids = sorted(c.case_id for c in load_dataset(phantoms).cases)
    assert holdout["cases"] == ids[-1:] and holdout["training_cases"] == ids[:-1]
    assert "--config" in holdout["command"] and holdout["settings"]["steps"] == 2
    assert set(holdout["mean"]["dice"]) == {"liver", "spleen"}
    for value in [*holdout["mean"]["dice"].values(), *holdout["per_case"][0]["nsd"].values()]:
        assert value is None or 0.0 <= value <= 1.0
    assert "Dice" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [
    ("size: [16, 16\n", "invalid YAML"),
    ("depth: 3\n", "unknown segmentor setting(s): depth"),
    ("- unet\n", "must be a mapping"),
    (None, "segmentor settings not found"),
])
def test_train_seg_bad_config_exit_2(phantoms, tmp_path, capsys, text, message):
    config = tmp_path / "seg.yaml"
    if text is not None:
        config.write_text(text)
    assert main(["train", "segmentor", "--data", str(phantoms), "--out", str(tmp_path / "out"),
                 "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config}: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_train_seg_refuses_a_prepared_folder(prepared_tiny, tmp_path, capsys):
    # prepared images are normalised to [-1, 1]: a CT window would silently flatten them
    assert main(["train", "segmentor", "--data", str(prepared_tiny), "--out", str(tmp_path / "out"),
                 "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {prepared_tiny}: ") and "a prepared folder" in err
    assert not (tmp_path / "out").exists()
    # the augmentation study trains segmentors on its real dataset too
    from volsynth.errors import DatasetError
    from volsynth.evaluation.study import run_augmentation_study

    with pytest.raises(DatasetError, match="a prepared folder"):
        run_augmentation_study(prepared_tiny, tmp_path / "generated", tmp_path / "study", progress=False)
    assert not (tmp_path / "study").exists()


def test_evaluate_holdout_perfect_prediction(phantoms, trained, monkeypatch):
    segmentor = load_segmentor(trained)
    read = {}

    def remembering_read_case(case, labels=None):
        image, label = read_case(case, labels)
        read["label"] = label
        return image, label

    def perfect(segmentor, image):  # the reference itself, in the segmentor's classes
        return LabelMap(plan_label_ids(read["label"], segmentor.plan), image.affine, labels=segmentor.labels)

    monkeypatch.setattr(segtrain, "read_case", remembering_read_case)
    monkeypatch.setattr(segtrain, "predict", perfect)
    result = segtrain.evaluate_holdout(trained, phantoms, ["abdomen_ct_0002"], tolerance_mm=2.0)
    assert result["cases"] == ["abdomen_ct_0002"] and segmentor.labels == {"background": 0, "liver": 1, "spleen": 2}
    assert result["mean"]["dice"] == {"liver": 1.0, "spleen": 1.0}
    assert result["mean"]["nsd"] == {"liver": 1.0, "spleen": 1.0}
    with pytest.raises(ConfigError, match="not held out"):
        segtrain.evaluate_holdout(trained, phantoms, ["abdomen_ct_0000"])


def test_foreground_patches_see_small_structures():
    from volsynth.evaluation.segtrain import random_patch

    target = torch.zeros(40, 40, 40, dtype=torch.long)
    target[30:32, 5:7, 33:35] = 4  # a tiny "tumour" in a corner
    target[2:4, 30:32, 2:4] = 2
    image = torch.arange(target.numel(), dtype=torch.float32).reshape(1, 40, 40, 40)
    generator = torch.Generator().manual_seed(0)
    seen = {2: 0, 4: 0}
    for _ in range(40):
        patch_image, patch_target = random_patch(image, target, [16, 16, 16], generator, foreground=1.0)
        assert patch_target.shape == (16, 16, 16) and patch_image.shape == (1, 16, 16, 16)
        start = [int(v) for v in torch.nonzero(image[0] == patch_image[0, 0, 0, 0])[0]]  # image and labels agree
        assert torch.equal(patch_target, target[start[0]:start[0] + 16, start[1]:start[1] + 16, start[2]:start[2] + 16])
        present = set(torch.unique(patch_target).tolist()) - {0}
        assert present  # every patch holds a labelled voxel
        for c in present:
            seen[c] += 1
    assert seen[2] > 5 and seen[4] > 5  # both classes drawn, however small
    uniform = sum(bool((random_patch(image, target, [16, 16, 16], generator)[1] > 0).any()) for _ in range(40))
    assert uniform < 20  # without oversampling most patches miss them
    with pytest.raises(ConfigError, match="foreground must be a share"):
        SegmentorSettings(patch=[16, 16, 16], foreground=1.5).check()


def test_cases_seen_only_counts_the_segmentors_own_dataset(tmp_path):
    from types import SimpleNamespace

    from volsynth.evaluation.segmentor import cases_seen

    seg = SimpleNamespace(meta={"dataset": str(tmp_path / "a"), "training_cases": ["case_0", "case_1"]})
    assert cases_seen(seg, tmp_path / "a", ["case_1", "case_2"]) == ["case_1"]
    assert cases_seen(seg, tmp_path / "b", ["case_1", "case_2"]) == []  # the same ids in another dataset
    assert cases_seen(SimpleNamespace(meta={}), tmp_path / "a", ["case_1"]) == []


def test_lesion_size_bins_group_cases_by_their_largest_real_lesion():
    rows = [{"dice": {"tumour": 0.2}, "largest_lesion_mm": 10.0, "largest_found_mm": 0.0},
            {"dice": {"tumour": 0.6}, "largest_lesion_mm": 20.0, "largest_found_mm": 23.0},
            {"dice": {"tumour": 0.8}, "largest_lesion_mm": 40.0, "largest_found_mm": 38.0},
            {"dice": {"tumour": 0.4}, "largest_lesion_mm": 28.0, "largest_found_mm": 20.0},
            {"dice": {"tumour": None}, "largest_lesion_mm": 0.0, "largest_found_mm": 5.0}]  # no real lesion
    bins = segtrain.lesion_size_bins(rows, ["tumour"])
    assert [b["cases"] for b in bins] == [1, 2, 1]
    assert bins[0]["found"] == 0 and bins[0]["median_abs_size_error_mm"] == 10.0
    assert bins[1]["dice"] == pytest.approx(0.5) and bins[1]["median_abs_size_error_mm"] == pytest.approx(5.5)
    assert bins[2]["dice"] == pytest.approx(0.8) and bins[2]["found"] == 1
    assert bins[1]["dice_ci95"][0] >= 0.4 - 1e-9 and bins[1]["dice_ci95"][1] <= 0.6 + 1e-9  # within its cases
