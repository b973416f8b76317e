"""The augmentation study end to end on tiny data (2 seeds x 2 architectures), its bootstrap intervals,
and the study in the evaluation report."""

import json

import numpy as np
import pytest

from tests.evaluation.test_evaluate import write_generated
from volsynth.data.phantom import write_phantom_dataset
from volsynth.errors import ConfigError, DatasetError
from volsynth.evaluation.evaluate import EvaluationOptions, run_evaluation
from volsynth.evaluation.study import StudySettings, bootstrap_mean, load_study, run_augmentation_study, split_cases

SEGMENTOR = {"size": [16, 16, 16], "features": 4, "steps": 6, "labels": "liver=1,tumour=4"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    real = write_phantom_dataset("abdomen-ct", root / "real", cases=5, size=16, spacing=20.0, seed=0, progress=False)
    generated = write_generated(root / "generated", seeds=(200, 201, 202), unlabelled=1)
    settings = StudySettings(n_real=2, n_test=2, seeds=[0, 1], architectures=["segresnet", "unet"],
                             segmentor=SEGMENTOR, bootstrap=200)
    result = run_augmentation_study(real, generated, root / "out", settings, progress=False, command="volsynth study")
    return root, real, generated, result


def test_study_runs_and_summarises(study):
    root, real, generated, result = study
    saved = load_study(root / "out")
    assert saved["summary"] == result["summary"]
    assert saved["data"]["train_cases"] == ["abdomen_ct_0000", "abdomen_ct_0001"]
    assert saved["data"]["test_cases"] == ["abdomen_ct_0003", "abdomen_ct_0004"]
    assert saved["data"]["synthetic_cases"] == ["job000", "job001"]  # job002 has no label map
    assert len(saved["runs"]) == 8
    assert {(r["architecture"], r["seed"], r["setting"]) for r in saved["runs"]} == {
        (a, s, t) for a in ("segresnet", "unet") for s in (0, 1) for t in ("real", "real+synthetic")}
    for run in saved["runs"]:
        assert (root / "out" / "runs" / run["name"] / "segmentor" / "meta.json").is_file()
        assert set(run["scores"]["dice"]) == {"liver", "tumour"} and len(run["scores"]["dice"]["liver"]) == 2
    meta = json.loads((root / "out" / "runs" / "unet_real_synthetic_seed1" / "segmentor" / "meta.json").read_text())
    assert meta["synthetic_cases"] == ["job000", "job001"] and meta["segmentor"]["seed"] == 1
    assert set(saved["summary"]) == {"segresnet", "unet", "pooled"}
    for entry in saved["summary"].values():
        for part in ("real", "real+synthetic", "difference"):
            for metric in ("dice", "nsd"):
                value = entry[part][metric]
                assert value["ci"][0] <= value["mean"] <= value["ci"][1]
        assert len(entry["real"]["dice"]["per_run"]) in (2, 4)
    difference = saved["summary"]["unet"]["difference"]["dice"]["mean"]
    assert difference == pytest.approx(saved["summary"]["unet"]["real+synthetic"]["dice"]["mean"]
                                       - saved["summary"]["unet"]["real"]["dice"]["mean"])
    assert saved["provenance"]["command"] == "volsynth study"


def test_study_in_report(study, tmp_path):
    root, real, generated, _ = study
    options = EvaluationOptions(slices_per_volume=4, progress=False)
    metrics = run_evaluation(real, generated, tmp_path, study=root / "out" / "study.json", options=options)
    assert metrics["study"]["kind"] == "augmentation-study"
    text = (tmp_path / "report.html").read_text()
    assert "real+synthetic [95% CI]" in text and "two-level bootstrap" in text
    assert "Not computed: no study given" not in text


def test_bootstrap_mean():
    constant = np.full((3, 5), 0.7)
    result = bootstrap_mean(constant, replicates=100, confidence=0.95)
    assert result["mean"] == pytest.approx(0.7) and result["ci"] == pytest.approx([0.7, 0.7])
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.9, (4, 10))
    paired = bootstrap_mean(base + 0.05, replicates=200, confidence=0.95, baseline=base)
    assert paired["mean"] == pytest.approx(0.05) and paired["ci"] == pytest.approx([0.05, 0.05])
    spread = bootstrap_mean(base, replicates=500, confidence=0.95)
    assert spread["ci"][0] < spread["mean"] < spread["ci"][1]
    with_nan = bootstrap_mean(np.array([[np.nan, 1.0], [np.nan, 0.0]]), replicates=50, confidence=0.9)
    assert with_nan["mean"] == pytest.approx(0.5) and with_nan["per_run"] == [1.0, 0.0]


def test_split_and_bad_inputs(study, tmp_path):
    ids = [f"c{i}" for i in range(8)]
    assert split_cases(ids, StudySettings()) == (ids[:6], ids[6:])
    assert split_cases(ids, StudySettings(n_real=3, n_test=1)) == (ids[:3], ids[7:])
    with pytest.raises(ConfigError, match="n_real"):
        split_cases(ids, StudySettings(n_real=8, n_test=1))
    root, real, generated, _ = study
    (tmp_path / "unlabelled").mkdir()
    write_generated(tmp_path / "unlabelled", seeds=(300,), unlabelled=1)
    with pytest.raises(DatasetError, match="no generated volume has a label map"):
        run_augmentation_study(real, tmp_path / "unlabelled", tmp_path / "out",
                               StudySettings(n_test=2, segmentor=SEGMENTOR), progress=False)
    with pytest.raises(ConfigError, match="unknown segmentor architecture"):
        run_augmentation_study(real, generated, tmp_path / "out",
                               StudySettings(n_test=2, architectures=["vnet"], segmentor=SEGMENTOR), progress=False)
    with pytest.raises(ConfigError, match="study file not found"):
        load_study(tmp_path / "none.json")
