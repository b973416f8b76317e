"""``volsynth evaluate`` end to end on a tiny real phantom dataset against a "generated" folder written in
the layout of ``volsynth generate`` (images, label maps, sidecars); bad inputs; the typer commands."""

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from volsynth.data.phantom import generate_case, write_phantom_dataset
from volsynth.errors import DatasetError, ReadError
from volsynth.evaluation.commands import evaluate, study_augment, train_seg
from volsynth.evaluation.evaluate import EvaluationOptions, run_evaluation
from volsynth.evaluation.inputs import read_generated_folder, to_shape
from volsynth.evaluation.report import SECTIONS
from volsynth.evaluation.segmentor import SegmentorSettings
from volsynth.evaluation.segtrain import train_segmentor_on_dataset
from volsynth.io import LabelMap, Volume, read_label, read_volume, write_volume

SEG = dict(architecture="unet", size=[16, 16, 16], features=4, steps=30, lr=3e-3)
METRIC_KEYS = {"provenance", "fid", "mmd", "diversity", "mask_faithfulness", "text_adherence", "anatomy_volumes",
               "memorization", "intensity", "study"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_generated(folder: Path, seeds=(100, 101, 102, 103), size: int = 16, unlabelled: int = 1,
                    copies: list[tuple[Path, Path]] = ()) -> Path:
    """Phantoms as if generated: ``<id>_image``, ``<id>_label`` (all but the last ``unlabelled``) and sidecars;
    plus exact copies of real (image, label) files."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for seed in seeds:
        case = generate_case("abdomen-ct", seed, size=size, spacing=20.0)
        items.append((Volume(case.image, case.affine, modality="CT"), LabelMap(case.labels, case.affine), case.report,
                      seed))
    for image_path, label_path in copies:
        items.append((read_volume(image_path), read_label(label_path), "", 0))
    for n, (image, label, prompt, seed) in enumerate(items):
        name = f"job{n:03d}"
        write_volume(image, folder / f"{name}_image.nii.gz")
        with_label = n < len(seeds) - unlabelled or n >= len(seeds)
        if with_label:
            write_volume(label, folder / f"{name}_label.nii.gz")
        sidecar = {"prompt": prompt, "seed": seed, "steps": 30, "sampler": "ddim", "model": str(folder / "no-model"),
                   "model_sha256": "0" * 64, "id": name, "image": f"{name}_image.nii.gz",
                   "label": f"{name}_label.nii.gz" if with_label else None, "format": "nifti",
                   "job": {"prompt": prompt, "seed": seed, "n": 1, "id": None, "mask": "mask.nii.gz"}}
        (folder / f"{name}.json").write_text(json.dumps(sidecar))
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    real = write_phantom_dataset("abdomen-ct", root / "real", cases=8, size=16, spacing=20.0, seed=0,
                                 progress=False)
    copies = [(real / "imagesTr" / "abdomen_ct_0000_0000.nii.gz", real / "labelsTr" / "abdomen_ct_0000.nii.gz")]
    generated = write_generated(root / "generated", copies=copies)
    ids = [f"abdomen_ct_{n:04d}" for n in range(6)]  # the last two are held out
    train_segmentor_on_dataset(real, root / "seg", SegmentorSettings(**SEG), case_ids=ids, progress=False)
    return root, real, generated


@pytest.fixture(scope="module")
def evaluated(setup):
    root, real, generated = setup
    options = EvaluationOptions(slices_per_volume=8, progress=False, montage_cases=2, command="volsynth evaluate test")
    metrics = run_evaluation(real, generated, root / "report", segmentor=root / "seg", options=options)
    return root / "report", metrics


def test_metrics_json(evaluated):
    out, metrics = evaluated
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) == METRIC_KEYS
    assert set(saved["fid"]["fid"]) == {"axial", "coronal", "sagittal"}
    assert set(saved["fid"]["real_vs_real"]) == {"axial", "coronal", "sagittal"}
    assert saved["fid"]["extractor"].startswith("random-conv") and saved["fid"]["note"]
    assert saved["mmd"]["computed"] and saved["diversity"]["computed"]
    assert 0 < saved["diversity"]["real"] <= 1 and 0 < saved["diversity"]["generated"] <= 1
    provenance = saved["provenance"]
    assert provenance["command"] == "volsynth evaluate test"
    assert provenance["real"]["cases"] == 8 and len(provenance["real"]["sha256"]) == 64
    assert provenance["generated"]["count"] == 5
    assert provenance["generated"]["volumes"][0]["seed"] == 100
    assert provenance["segmentor"]["training_cases"] == [f"abdomen_ct_{n:04d}" for n in range(6)]


def test_mask_faithfulness(evaluated):
    faith = evaluated[1]["mask_faithfulness"]
    assert faith["held_out"] and faith["orig"]["cases"] == ["abdomen_ct_0006", "abdomen_ct_0007"]
    assert faith["gen"]["cases"] == ["job000", "job001", "job002", "job004"]  # job003 has no label map
    for key in ("orig", "gen"):
        assert 0 <= faith[key]["dice"]["liver"] <= 1 and 0 <= faith[key]["nsd"]["liver"] <= 1
        liver = faith[key]["confusion"]["liver"]
        assert liver["voxels"] > 0 and 0 <= liver["missed"] <= 1 and 0 <= liver["false"]
        assert sum(liver["missed_as"].values()) <= liver["missed"] + 1e-9 and "liver" not in liver["missed_as"]
        if faith[key]["dice"]["liver"] < 1.0:  # an imperfect liver has missed or false voxels in the counts
            assert liver["missed"] + liver["false"] > 0


def test_text_adherence(evaluated):
    adherence = evaluated[1]["text_adherence"]
    summary = adherence["summary"]
    assert {"generated / label map", "generated / segmentor", "real / label map", "real / segmentor"} <= set(summary)
    # phantom reports state what their own label maps show: the measurement floor is exact
    for group in ("real / label map", "generated / label map"):
        assert summary[group]["count_accuracy"] == 1.0
        assert summary[group]["diameter_mae_mm"] is None or summary[group]["diameter_mae_mm"] <= 0.5
    # the real floor of the segmentor uses held-out cases only
    assert {e["id"] for e in adherence["per_volume"]["real / segmentor"]} <= {"abdomen_ct_0006", "abdomen_ct_0007"}


def test_memorization_flags_the_copy(evaluated):
    memo = evaluated[1]["memorization"]
    assert memo["reference"] == "real"  # no training set given
    copy = next(e for e in memo["per_volume"] if e["id"] == "job004")
    assert copy["near_copy"] and copy["ssim"]["nearest"] == "abdomen_ct_0000"
    assert copy["ssim"]["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_report_html(evaluated):
    out, metrics = evaluated
    text = (out / "report.html").read_text()
    for _, title in SECTIONS:
        assert f">{title.replace('&', '&amp;')}</h2>" in text
    assert text.count("data:image/png;base64,") >= 5  # montages, FID, memorisation, intensities
    assert "Not computed: no study given" in text
    assert ">Where the errors go</h3>" in text
    assert "src='http" not in text and "href='http" not in text  # self-contained
    assert metrics["anatomy_volumes"]["computed"] and "liver" in metrics["anatomy_volumes"]["real"]
    assert metrics["intensity"]["per_tissue"]["liver"]["wasserstein"] >= 0


def test_to_shape_keeps_field_of_view():
    case = generate_case("abdomen-ct", 3, size=16)
    volume = Volume(case.image, case.affine)
    resized = to_shape(volume, (8, 8, 8))
    assert resized.shape == (8, 8, 8)
    assert np.allclose(resized.spacing * 8, volume.spacing * 16)
    assert to_shape(volume, (16, 16, 16)) is volume


def test_bad_inputs(setup, tmp_path):
    root, real, generated = setup
    with pytest.raises(ReadError, match="generated folder not found") as info:
        run_evaluation(real, tmp_path / "nowhere", tmp_path / "out", options=EvaluationOptions(progress=False))
    assert str(tmp_path / "nowhere") in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReadError, match="no generated volumes"):
        read_generated_folder(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.json").write_text(json.dumps({"image": "x_image.nii.gz"}))
    with pytest.raises(ReadError, match="x_image.nii.gz"):
        read_generated_folder(tmp_path / "broken")
    (tmp_path / "notadataset").mkdir()
    with pytest.raises(DatasetError, match="dataset.json"):
        run_evaluation(tmp_path / "notadataset", generated, tmp_path / "out", options=EvaluationOptions(progress=False))
    assert not (tmp_path / "out").exists()


def test_commands_through_typer(setup, tmp_path):
    root, real, generated = setup
    app = typer.Typer()
    app.command("evaluate")(evaluate)
    train = typer.Typer()
    train.command("segmentor")(train_seg)
    app.add_typer(train, name="train")
    study = typer.Typer()
    study.command("augment")(study_augment)
    app.add_typer(study, name="study")
    runner = CliRunner()
    result = runner.invoke(app, ["train", "segmentor", "--data", str(real), "--out", str(tmp_path / "seg"),
                                 "--architecture", "unet",
                                 "--size", "16", "--features", "4", "--steps", "2", "--labels", "liver=1",
                                 "--holdout", "2", "--no-progress"], prog_name="volsynth")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "seg" / "segmentor" / "meta.json").read_text())
    assert meta["command"].startswith("volsynth train segmentor --data ") and "--holdout 2" in meta["command"]
    assert len(meta["training_cases"]) == 6
    result = runner.invoke(app, ["evaluate", "--real", str(real), "--generated", str(generated), "--out",
                                 str(tmp_path / "report"), "--segmentor", str(tmp_path / "seg"), "--slices", "4",
                                 "--max-generated", "3", "--training", str(real), "--no-progress"],
                           prog_name="volsynth")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and (tmp_path / "report" / "report.html").is_file()
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved["provenance"]["command"].startswith("volsynth evaluate --real ")
    assert saved["provenance"]["generated"]["count"] == 3
    assert saved["memorization"]["reference"] == "training" and saved["memorization"]["reference_path"] == str(real)
    result = runner.invoke(app, ["study", "augment", "--real", str(real), "--generated", str(generated), "--out",
                                 str(tmp_path / "study"), "--n-real", "2", "--n-test", "2", "--seeds", "0",
                                 "--architectures", "unet", "--size", "16", "--features", "4", "--steps", "2",
                                 "--labels", "liver=1", "--bootstrap", "50", "--no-progress"], prog_name="volsynth")
    assert result.exit_code == 0, result.output
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    assert study["provenance"]["command"].startswith("volsynth study augment --real ")
    assert len(study["runs"]) == 2 and "unet: Dice real" in result.output
    result = runner.invoke(app, ["evaluate", "--real", str(real), "--generated", str(tmp_path / "nothing"),
                                 "--out", str(tmp_path / "r2"), "--no-progress"])
    assert isinstance(result.exception, ReadError) and str(tmp_path / "nothing") in str(result.exception)
