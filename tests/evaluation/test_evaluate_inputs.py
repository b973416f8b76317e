"""``volsynth evaluate`` on other generators' output: an nnU-Net dataset and plain folders of images (with and
without ``_seg`` / ``_label`` files, named by ``--generated-labels``) as the generated side, through the command
line; the layout rules; ambiguous or empty folders as one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from volsynth.cli import main
from volsynth.data.phantom import generate_case, write_phantom_dataset
from volsynth.errors import ReadError
from volsynth.evaluation.generated import scan_generated
from volsynth.evaluation.segmentor import SegmentorSettings
from volsynth.evaluation.segtrain import train_segmentor_on_dataset
from volsynth.io import LabelMap, Volume, write_volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MAISI = {1: 1, 5: 3}  # phantom liver, spleen -> MAISI's liver, spleen ids; other classes dropped


def phantom(seed: int) -> tuple[Volume, LabelMap]:
    case = generate_case("abdomen-ct", seed, size=16, spacing=20.0)
    return Volume(case.image, case.affine, modality="CT"), LabelMap(case.labels, case.affine)


def maisi_ids(label: LabelMap) -> LabelMap:
    """The label map in MAISI's ids (liver 1, spleen 3), as MAISI writes its samples."""
    out = np.zeros_like(label.array)
    for ours, theirs in MAISI.items():
        out[label.array == ours] = theirs
    return label.with_array(out)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_inputs")
    real = write_phantom_dataset("abdomen-ct", root / "real", cases=6, size=16, spacing=20.0, seed=0, progress=False)
    write_phantom_dataset("abdomen-ct", root / "nnunet", cases=3, size=16, spacing=20.0, seed=100, progress=False)
    bare = root / "bare"  # a.nii.gz + a_seg.nii.gz, b.nrrd + b_seg.nrrd, c.mha without a label
    for name, suffix, seed, labelled in (("a", ".nii.gz", 200, True), ("b", ".nrrd", 201, True),
                                         ("c", ".mha", 202, False)):
        image, label = phantom(seed)
        write_volume(image, bare / f"{name}{suffix}")
        if labelled:
            write_volume(label, bare / f"{name}_seg{suffix}")
    maisi = root / "maisi"  # sample_N_image.nii.gz + sample_N_label.nii.gz in MAISI's ids
    for n, seed in enumerate((300, 301)):
        image, label = phantom(seed)
        write_volume(image, maisi / f"sample_{n}_image.nii.gz")
        write_volume(maisi_ids(label), maisi / f"sample_{n}_label.nii.gz")
    seg = root / "seg"
    settings = SegmentorSettings(architecture="unet", size=[16, 16, 16], features=4, steps=4)
    train_segmentor_on_dataset(real, seg, settings, case_ids=[f"abdomen_ct_{n:04d}" for n in range(4)], progress=False)
    return root, real, seg


def evaluate(real: Path, generated: Path, out: Path, *extra: str) -> dict:
    assert main(["evaluate", "--real", str(real), "--generated", str(generated), "--out", str(out), "--slices", "4",
                 "--no-progress", *extra]) == 0
    assert (out / "report.html").is_file()
    return json.loads((out / "metrics.json").read_text())


def assert_all_metrics(metrics: dict, count: int) -> None:
    """Every section computed on ``count`` generated volumes."""
    assert metrics["provenance"]["generated"]["count"] == count
    assert set(metrics["fid"]["fid"]) == {"axial", "coronal", "sagittal"} and metrics["fid"]["real_vs_real"]
    assert metrics["mmd"]["computed"] and metrics["diversity"]["computed"]
    assert metrics["memorization"]["computed"] and len(metrics["memorization"]["per_volume"]) == count
    assert metrics["mask_faithfulness"]["computed"] and metrics["anatomy_volumes"]["computed"]


def test_nnunet_dataset_as_the_generated_side(setup, tmp_path):
    root, real, seg = setup
    metrics = evaluate(real, root / "nnunet", tmp_path / "report", "--segmentor", str(seg))
    assert_all_metrics(metrics, 3)
    generated = metrics["provenance"]["generated"]
    assert generated["layout"] == "dataset"
    assert [v["id"] for v in generated["volumes"]] == [f"abdomen_ct_{n:04d}" for n in range(3)]
    assert all(v["has_label"] and v["label_names_from"] == "dataset.json" for v in generated["volumes"])
    assert len(metrics["mask_faithfulness"]["gen"]["cases"]) == 3
    assert {"liver", "spleen", "tumour"} <= set(metrics["anatomy_volumes"]["generated"])
    # the dataset's reports.jsonl gives the prompts: text adherence is measured on the generated side too
    assert "generated / label map" in metrics["text_adherence"]["summary"]


def test_bare_files_with_and_without_seg_labels(setup, tmp_path):
    root, real, seg = setup
    assert [(e.id, e.label_path.name if e.label_path else None) for e in scan_generated(root / "bare").entries] == [
        ("a", "a_seg.nii.gz"), ("b", "b_seg.nrrd"), ("c", None)]
    metrics = evaluate(real, root / "bare", tmp_path / "report", "--segmentor", str(seg))
    assert_all_metrics(metrics, 3)
    volumes = metrics["provenance"]["generated"]["volumes"]
    assert metrics["provenance"]["generated"]["layout"] == "plain"
    assert [(v["id"], v["has_label"], v["label_names_from"]) for v in volumes] == [
        ("a", True, "real dataset"), ("b", True, "real dataset"), ("c", False, None)]
    assert all(v["prompt"] == "" and v["seed"] is None for v in volumes)  # no sidecar: nothing invented
    assert metrics["mask_faithfulness"]["gen"]["cases"] == ["a", "b"]
    assert metrics["text_adherence"]["computed"] is False or "generated / label map" not in metrics[
        "text_adherence"]["summary"]


def test_bare_images_without_labels(setup, tmp_path):
    root, real, seg = setup
    folder = tmp_path / "images"
    for n in range(2):
        write_volume(phantom(400 + n)[0], folder / f"volume{n}.nii.gz")
    metrics = evaluate(real, folder, tmp_path / "report", "--segmentor", str(seg))
    assert metrics["provenance"]["generated"]["count"] == 2
    assert metrics["mask_faithfulness"]["gen"]["cases"] == [] and "no generated volume" in metrics[
        "mask_faithfulness"]["note"]
    assert metrics["anatomy_volumes"]["computed"]  # from the segmentor's predictions
    assert metrics["mmd"]["computed"] and metrics["memorization"]["computed"]


def test_maisi_samples_named_by_a_preset(setup, tmp_path):
    root, real, _ = setup
    metrics = evaluate(real, root / "maisi", tmp_path / "report", "--generated-labels", "maisi")
    generated = metrics["provenance"]["generated"]
    assert generated["labels"] == "maisi" and generated["layout"] == "plain"
    assert [v["id"] for v in generated["volumes"]] == ["sample_0", "sample_1"]
    report = (tmp_path / "report" / "report.html").read_text()
    assert "(plain layout, classes from --generated-labels maisi)" in report
    assert all(v["label_names_from"] == "--generated-labels" for v in generated["volumes"])
    volumes = metrics["anatomy_volumes"]["generated"]
    assert {"liver", "spleen"} <= set(volumes) and "tumour" not in volumes  # MAISI id 3 read as spleen
    # the same files named by hand give the same liver and spleen volumes
    by_hand = evaluate(real, root / "maisi", tmp_path / "by_hand", "--generated-labels", "liver=1,spleen=3")
    for name in ("liver", "spleen"):
        assert by_hand["anatomy_volumes"]["generated"][name] == volumes[name]


def _write(folder: Path, names: list[str]) -> Path:
    image, label = phantom(500)
    for name in names:
        write_volume(label if "_seg" in name or "_label" in name else image, folder / name)
    return folder


@pytest.mark.parametrize("names, message", [
    ([], "no generated volumes found"),
    (["a.nii.gz", "a_image.nii.gz"], "two images for 'a'"),
    (["a.nii.gz", "a_seg.nii.gz", "a_label.nii.gz"], "two label files for 'a'"),
    (["a.nii.gz", "b_seg.nii.gz"], "label file has no image"),
    (["dataset.json", "a.nii.gz"], "ambiguous generated folder"),
    (["imagesTr/x_0000.nii.gz"], "imagesTr found but no dataset.json"),
])
def test_bad_layouts_are_one_line(setup, tmp_path, capsys, names, message):
    _, real, _ = setup
    folder = tmp_path / "generated"
    folder.mkdir()
    _write(folder, [n for n in names if n != "dataset.json"])
    if "dataset.json" in names:
        (folder / "dataset.json").write_text("{}")
    with pytest.raises(ReadError, match=message):
        scan_generated(folder)
    assert main(["evaluate", "--real", str(real), "--generated", str(folder), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec, message", [("liver=1,spleen=1", "its own ids"), ("nope", "bad label spec"),
                                           ("maisi", "the generated folder is a dataset")])
def test_bad_generated_labels_are_one_line(setup, tmp_path, capsys, spec, message):
    root, real, _ = setup
    assert main(["evaluate", "--real", str(real), "--generated", str(root / "nnunet"), "--out", str(tmp_path / "out"),
                 "--generated-labels", spec, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
