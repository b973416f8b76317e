"""``volsynth study run`` on test-sized data (16^3 phantoms, a tiny generator, tiny segmentors): splits never leak,
a study killed by SIGKILL continues without redoing a unit, the balance arm's composition, the study outputs, and
the statistics (interval coverage on a known distribution, the paired test on a known shift and a null one)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

import volsynth
from volsynth.cli import main
from volsynth.data.phantom import write_phantom_dataset
from volsynth.errors import ConfigError
from volsynth.evaluation.adherence import measure_lesions
from volsynth.evaluation.study_run import balance_count, run_study
from volsynth.evaluation.study_spec import load_study_spec, parse_study
from volsynth.evaluation.study_stats import bootstrap_interval, paired_comparison
from volsynth.evaluation.study_units import (
    StudyFolder,
    StudyRecord,
    edit_mask,
    generate_pair,
    largest_equivalent_diameter_mm,
)
from volsynth.io.formats import read_label
from volsynth.io.volume import LabelMap
from volsynth.models.checkpoint import sha256_file
from volsynth.training.recipe_schema import load_recipe

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = {"recipe": str(ROOT / "recipes" / "tiny.yaml"), "sampling": {"steps": 2},
             "set": ["prepare.size=16", "prepare.roi=null"] + [f"{stage}.train.{key}=2" for stage in
                                                                ("autoencoder", "diffusion", "controlnet")
                                                                for key in ("steps", "checkpoint_every")]}
SEGMENTOR = {"size": [16, 16, 16], "features": 4, "steps": 4, "labels": "liver=1,tumour=4"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def study_file(path: Path, real: Path, **changes) -> Path:
    """A test-sized study file."""
    spec = {"name": "tiny-study", "dataset": str(real), "n_real": 3, "n_test": 3, "seeds": [0, 1],
            "architectures": ["unet"], "segmentor": SEGMENTOR, "generator": GENERATOR,
            "synthetic": {"ratios": [1, 2], "lesions": "insert", "diameter_mm": [60, 80],
                          "prompt": "A {diameter} mm hypodense lesion."},
            "balance": {"min_diameter_mm": 45, "share": 0.75, "diameter_mm": [90, 110]},
            "text": {"sizes_mm": [40, 80], "per_size": 1, "bins_mm": [0, 60, 1000]}, "bootstrap": 200, **changes}
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    # generator version 1: at 20 mm voxels its lesions are large enough for the balance arm's test cases
    return write_phantom_dataset("abdomen-ct", root / "real", cases=7, size=16, spacing=20.0, seed=0, progress=False,
                                 generator_version=1)


@pytest.fixture(scope="module")
def study(tmp_path_factory, real):
    root = tmp_path_factory.mktemp("study")
    spec = study_file(root / "study.yaml", real)
    result = run_study(spec, root / "out", progress=False, log=lambda m: None, command="volsynth study run")
    return root / "out", result


def test_splits_never_leak(study, real):
    out, result = study
    split = json.loads((out / "split.json").read_text())
    train, test = split["train"], split["test"]
    assert train == ["abdomen_ct_0000", "abdomen_ct_0001", "abdomen_ct_0002"] and not set(train) & set(test)
    # the generator learnt from DIR/train-data only, which holds the training cases only
    pinned = yaml.safe_load((out / "generator" / "recipe.yaml").read_text())
    assert Path(pinned["data"]["dataset"]) == out / "train-data"
    subset = sorted(p.name.removesuffix("_0000.nii.gz") for p in (out / "train-data" / "imagesTr").iterdir())
    assert subset == train
    for case in train:  # the very files of the real training cases
        assert sha256_file(out / "train-data" / "labelsTr" / f"{case}.nii.gz") == split["label_sha256"][case]
    # every mask-guided pair's source mask is a training case's label file; text-guided ones have no source
    sidecars = sorted((out / "synthetic").glob("*/*.json"))
    assert len(sidecars) >= 6 + 2
    for path in sidecars:
        record = json.loads(path.read_text())
        if path.parent.name == "text":
            assert record["source_case"] == "" and record["label"] is None
            continue
        assert record["source_case"] in train
        assert record["source_label_sha256"] == split["label_sha256"][record["source_case"]]
    # each segmentor saw the training cases and synthetic pairs only
    for run in (out / "runs").iterdir():
        meta = json.loads((run / "segmentor" / "meta.json").read_text())
        assert all(s.split("/", 1)[1] in train if s.startswith("real/") else s.split("/")[0] in ("mask", "large")
                   for s in meta["training_set"])


def test_study_outputs(study):
    out, result = study
    saved = json.loads((out / "study.json").read_text())
    assert saved["kind"] == "augmentation-study-run" and saved["study_version"] == 1
    arms = ["real", "real+synthetic x1", "real+synthetic x2", "synthetic x1", "synthetic x2", "balance"]
    assert list(saved["summary"]["pooled"]) == arms and set(saved["summary"]) == {"unet", "pooled"}
    sizes = {r["name"]: r["training_set_size"] for r in saved["runs"]}
    assert sizes["real_unet_seed0"] == 3 and sizes["real_synthetic_x2_unet_seed1"] == 9
    assert sizes["synthetic_x1_unet_seed0"] == 3
    for arm in arms[1:]:
        for metric in ("dice", "nsd"):
            for name, entry in saved["comparisons"]["pooled"][arm][metric].items():
                assert name in ("liver", "tumour")
                if entry["mean"] is not None:
                    assert entry["ci"][0] <= entry["mean"] <= entry["ci"][1] and 0 <= entry["p_bootstrap"] <= 1
    liver = saved["comparisons"]["pooled"]["real+synthetic x1"]["dice"]["liver"]
    assert liver["mean"] == pytest.approx(saved["summary"]["pooled"]["real+synthetic x1"]["dice"]["liver"]["mean"]
                                          - saved["summary"]["pooled"]["real"]["dice"]["liver"]["mean"])
    large = saved["large_lesion"]
    expected = [c for c in saved["data"]["test_cases"] if largest_equivalent_diameter_mm(
        read_label(Path(saved["data"]["dataset"]) / "labelsTr" / f"{c}.nii.gz"), 4) >= 45]
    assert large["test_cases"] == expected and expected, "the fixture should hold large-lesion test cases"
    assert list(large["summary"]["pooled"]["balance"]["dice"]) == ["tumour"]
    adherence = saved["adherence"]
    assert [b["n"] for b in adherence["generated"]] == [1, 1] and sum(b["n"] for b in adherence["real_floor"]) >= 1
    page = (out / "study.html").read_text()
    assert "data:image/png;base64," in page and "p Wilcoxon" in page and "Large lesions" in page
    markdown = (out / "study.md").read_text()
    assert "![Dice per arm with its 95 % interval](study-dice.png)" in markdown
    assert (out / "study-dice.png").read_bytes().startswith(b"\x89PNG")
    rows = [line for line in markdown.splitlines() if line.startswith("| real+synthetic x1 | liver |")]
    pooled = saved["comparisons"]["pooled"]["real+synthetic x1"]["dice"]["liver"]
    assert len(rows) == 1 + len(saved["spec"]["architectures"])  # each architecture and pooled
    assert f"{pooled['mean']:+.3f}" in rows[-1] and "median \\|error\\| mm" in markdown  # | escaped in a cell


def test_balance_arm_composition(study):
    out, result = study
    split = json.loads((out / "split.json").read_text())
    real = Path(result["data"]["dataset"])

    def large(label_path: Path, labels=None) -> bool:
        label = read_label(label_path, labels=labels)
        return largest_equivalent_diameter_mm(label, int((label.labels or {"tumour": 4}).get("tumour", 4))) >= 45

    large_real = sum(large(real / "labelsTr" / f"{c}.nii.gz") for c in split["train"])
    meta = json.loads((out / "runs" / "balance_unet_seed0" / "segmentor" / "meta.json").read_text())
    synthetic = [s.split("/")[1] for s in meta["training_set"] if s.startswith("large/")]
    assert len(synthetic) == balance_count(3, large_real, 0.75) > 0
    for pair in synthetic:
        record = json.loads((out / "synthetic" / "large" / f"{pair}.json").read_text())
        assert large(out / "synthetic" / "large" / record["label"], record["labels"])
    total = 3 + len(synthetic)
    assert (large_real + len(synthetic)) / total >= 0.75 > (large_real + len(synthetic) - 1) / (total - 1)
    assert [balance_count(8, n, 0.5) for n in (0, 1, 4, 6)] == [8, 6, 0, 0]


def test_study_resumes_after_sigkill(tmp_path, real):
    spec = study_file(tmp_path / "study.yaml", real, seeds=[0, 1, 2], arms=["real", "real+synthetic"],
                      text={"sizes_mm": []})
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(volsynth.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "volsynth.cli", "study", "run", str(spec), "--out", str(out),
                                "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if log.is_file() and "/segmentor" in log.read_text():
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "study.json").exists(), "the study finished before it was killed"
    before = log.read_text().splitlines()
    finished = {json.loads(line)["unit"] for line in before}
    assert "generator" in finished and len(finished) < 3 + 6 + 2 * 6
    stamps = {p: p.stat().st_mtime_ns for p in (out / "synthetic").glob("*/*.json")}
    result = run_study(spec, out, progress=False, log=lambda m: None)
    units = [json.loads(line)["unit"] for line in log.read_text().splitlines()]
    assert units[:len(before)] == [json.loads(line)["unit"] for line in before]
    counts = Counter(units)
    assert max(counts.values()) == 1, [u for u, n in counts.items() if n > 1]  # no unit redone
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(result["runs"]) == 3 * 3 and all(f"runs/{r['name']}/scores" in counts for r in result["runs"])
    run_study(spec, out, progress=False, log=lambda m: None)  # a finished study: nothing is redone
    assert Counter(json.loads(line)["unit"] for line in log.read_text().splitlines()) == counts


def test_resume_refuses_other_settings_and_split(study, tmp_path, real):
    out, _ = study
    with pytest.raises(ConfigError, match="started with other settings: n_real"):
        run_study(study_file(tmp_path / "other.yaml", real, n_real=2), out, progress=False, log=lambda m: None)
    split = out / "split.json"
    saved = split.read_text()
    try:
        split.write_text(saved.replace("abdomen_ct_0000", "abdomen_ct_0003"))
        with pytest.raises(ConfigError, match="split differs"):
            run_study(study_file(tmp_path / "same.yaml", real), out, progress=False, log=lambda m: None)
    finally:
        split.write_text(saved)


def test_study_file_schema(tmp_path, real):
    good = yaml.safe_load(study_file(tmp_path / "s.yaml", real).read_text())
    assert load_study_spec(tmp_path / "s.yaml").synthetic.ratios == [1, 2]
    for change, message in (({"n_reel": 3}, "unknown key n_reel"),
                            ({"synthetic": {"ratio": [1]}}, "unknown key synthetic.ratio"),
                            ({"n_real": "eight"}, "n_real: expected int"),
                            ({"arms": ["real", "fake"]}, "arms"),
                            ({"synthetic": {"lesions": "paint"}}, "synthetic.lesions"),
                            ({"balance": {"share": 1.5}}, "balance.share"),
                            ({"segmentor": {"size": [15, 15, 15]}}, "segmentor: segmentor grid"),
                            ({"generator": {"sampling": {"stesp": 2}}}, "unknown generator.sampling")):
        with pytest.raises(ConfigError, match=message):
            parse_study({**good, **change}, "s.yaml")
    with pytest.raises(ConfigError, match="dataset: required"):
        parse_study({k: v for k, v in good.items() if k != "dataset"}, "s.yaml")
    shipped = load_study_spec(ROOT / "studies" / "liver-lesions-8.yaml")  # the study docs/evidence.md describes
    assert (shipped.n_real, len(shipped.seeds), shipped.architectures) == (8, 3, ["segresnet", "unet"])
    assert load_recipe(ROOT / shipped.generator.recipe, [*shipped.generator.set, "data.dataset=x"])["data"] == {
        "dataset": "x"}
    (tmp_path / "bad.yaml").write_text("dataset: x\nn_real: 1\nn_test: 1\ncolour: red\n")
    assert main(["study", "run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_intervals_cover_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(7)
    hits, trials = 0, 200
    for trial in range(trials):  # 6 runs x 8 test cases: case effects, run effects and noise around 0.7
        values = (0.7 + rng.normal(0, 0.1, 8)[None] + rng.normal(0, 0.03, 6)[:, None]
                  + rng.normal(0, 0.05, (6, 8)))
        interval = bootstrap_interval(values, replicates=500, confidence=0.95, seed=trial)["ci"]
        hits += interval[0] <= 0.7 <= interval[1]
    assert 0.88 <= hits / trials <= 0.99  # measured 0.93: the percentile bootstrap is a little narrow at 8 cases


def test_paired_test_detects_a_shift_and_not_a_null():
    rng = np.random.default_rng(3)
    rejected_null = rejected_shift = 0
    for trial in range(100):
        base = 0.7 + rng.normal(0, 0.1, 12)[None] + rng.normal(0, 0.05, (6, 12))
        null = paired_comparison(base + rng.normal(0, 0.05, (6, 12)), base, replicates=300, seed=trial)
        shift = paired_comparison(base + 0.05 + rng.normal(0, 0.05, (6, 12)), base, replicates=300, seed=trial)
        rejected_null += null["p_wilcoxon"] < 0.05
        rejected_shift += shift["p_wilcoxon"] < 0.05 and shift["ci"][0] > 0
    assert rejected_null <= 10 and rejected_shift >= 90
    constant = paired_comparison(np.full((3, 5), 0.8), np.full((3, 5), 0.7), replicates=100)
    assert constant["mean"] == pytest.approx(0.1)
    assert constant["p_bootstrap"] == pytest.approx(2 / 101)  # no replicate at 0: the smallest p of 100 replicates
    assert constant["p_wilcoxon"] == pytest.approx(0.0625)  # 5 cases all up: the smallest two-sided exact p
    empty = paired_comparison(np.full((2, 3), np.nan), np.full((2, 3), 0.5), replicates=100)
    assert empty["mean"] is None and empty["p_wilcoxon"] is None


def test_edit_mask_keeps_inserts_and_moves(real):
    mask = read_label(real / "labelsTr" / "abdomen_ct_0000.nii.gz")
    rng = np.random.default_rng(0)
    kept, facts = edit_mask(mask, "keep", [60, 80], 1, 4, rng)
    assert kept is mask and facts == []
    inserted, facts = edit_mask(mask, "insert", [60, 80], 1, 4, rng)
    assert len(facts) == 1 and (inserted.array == 4).sum() > (mask.array == 4).sum()
    assert np.array_equal(inserted.array[mask.array != 1], mask.array[mask.array != 1])  # only liver changes
    moved, facts = edit_mask(mask, "move", [60, 80], 1, 4, rng)
    assert len(facts) == len(measure_lesions(mask, [4])) >= 1
    assert not np.array_equal(moved.array == 4, mask.array == 4)
    assert np.array_equal(np.isin(moved.array, (1, 4)), np.isin(mask.array, (1, 4)))  # the liver's outline stays


def test_segmentor_settings_may_change_until_a_segmentor_starts(study, tmp_path, real):
    out, _ = study
    changed = {"segmentor": {**SEGMENTOR, "steps": SEGMENTOR["steps"] + 1}}
    with pytest.raises(ConfigError, match="started with other settings: segmentor.steps"):  # segmentors ran
        run_study(study_file(tmp_path / "late.yaml", real, **changed), out, progress=False, log=lambda m: None)
    folder = StudyFolder(tmp_path / "fresh", log=lambda m: None)  # a study whose generator is still training
    folder.pin_spec(load_study_spec(study_file(tmp_path / "a.yaml", real)))
    folder.pin_spec(load_study_spec(study_file(tmp_path / "b.yaml", real, **changed)))
    assert json.loads((tmp_path / "fresh" / "log.jsonl").read_text().splitlines()[-1])["changed"] == [
        "segmentor.steps"]
    with pytest.raises(ConfigError, match="started with other settings: n_real"):
        folder.pin_spec(load_study_spec(study_file(tmp_path / "c.yaml", real, n_real=2, **changed)))
    (tmp_path / "fresh" / "runs" / "real-unet-seed0").mkdir(parents=True)  # a segmentor has started
    with pytest.raises(ConfigError, match="started with other settings: segmentor.steps"):
        folder.pin_spec(load_study_spec(study_file(tmp_path / "d.yaml", real)))
    text = {"text": {"sizes_mm": [40, 80], "per_size": 1, "bins_mm": [0, 60, 1000], "segmentor": "elsewhere"}}
    folder.pin_spec(load_study_spec(study_file(tmp_path / "e.yaml", real, **changed, **text)))  # not measured yet
    (tmp_path / "fresh" / "adherence").mkdir()
    (tmp_path / "fresh" / "adherence" / "x.json").write_text("{}")
    with pytest.raises(ConfigError, match="started with other settings: text.segmentor"):
        folder.pin_spec(load_study_spec(study_file(tmp_path / "f.yaml", real, **changed)))


def test_generator_settings_may_change_until_a_pair_is_generated(tmp_path, real):
    folder = StudyFolder(tmp_path / "fresh", log=lambda m: None)
    folder.pin_spec(load_study_spec(study_file(tmp_path / "a.yaml", real)))
    longer = {**GENERATOR, "set": [*GENERATOR["set"], "controlnet.train.steps=3"]}
    folder.pin_spec(load_study_spec(study_file(tmp_path / "b.yaml", real, generator=longer)))
    assert json.loads((tmp_path / "fresh" / "log.jsonl").read_text().splitlines()[-1])["changed"] == ["generator.set"]
    (tmp_path / "fresh" / "synthetic" / "mask").mkdir(parents=True)  # the first pair is under way
    with pytest.raises(ConfigError, match="started with other settings: generator.set"):
        folder.pin_spec(load_study_spec(study_file(tmp_path / "c.yaml", real)))


def test_segmentors_in_worker_processes_score_as_one_process_does(study, tmp_path, real):
    out, result = study
    spec = study_file(tmp_path / "study.yaml", real)
    parallel = tmp_path / "parallel"
    shutil.copytree(out, parallel, ignore=shutil.ignore_patterns("runs", "study.json", "study.html"))
    before = len((parallel / "log.jsonl").read_text().splitlines())
    again = run_study(spec, parallel, progress=False, log=lambda m: None, workers=2)
    assert [r["name"] for r in again["runs"]] == [r["name"] for r in result["runs"]]
    for one, two in zip(result["runs"], again["runs"], strict=True):
        assert one["scores"] == two["scores"], one["name"]
    units = [json.loads(line)["unit"] for line in (parallel / "log.jsonl").read_text().splitlines()[before:]]
    expected = [f"runs/{r['name']}/{part}" for r in again["runs"] for part in ("segmentor", "scores")]
    assert sorted(units) == sorted(expected)


def test_a_new_study_with_workers_trains_the_real_arm_beside_the_generator(tmp_path, real):
    spec = study_file(tmp_path / "study.yaml", real, seeds=[0], arms=["real", "real+synthetic"],
                      text={"sizes_mm": []}, synthetic={"ratios": [1], "lesions": "insert", "diameter_mm": [60, 80]})
    result = run_study(spec, tmp_path / "out", progress=False, log=lambda m: None, workers=2)
    units = [json.loads(line)["unit"] for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert "generator" in units and max(Counter(units).values()) == 1
    assert {r["arm"] for r in result["runs"]} == {"real", "real+synthetic x1"}
    assert all(f"runs/{r['name']}/scores" in units for r in result["runs"])


def test_a_mask_pair_keeps_the_generators_classes_and_leaves_the_others_out(study, tmp_path, real):
    out, _ = study
    pipeline = volsynth.load_pipeline(out / "generator" / "model")
    label = read_label(sorted((real / "labelsTr").glob("*.nii.gz"))[0])
    extra = label.array.copy()
    extra[:2, :2, :2] = 13  # a class the generator does not make
    mask = LabelMap(extra, label.affine, labels={"liver": 1, "tumour": 4, "gallbladder": 13})
    folder = StudyFolder(tmp_path / "pairs", log=lambda m: None)
    sidecar = generate_pair(folder, pipeline, "mask", "p0", ("case", None), mask, "", 0, {"steps": 1}, {})
    record = json.loads(sidecar.read_text())
    written = read_label(sidecar.parent / record["label"])
    assert "gallbladder" not in pipeline.plan.labels and "gallbladder" not in record["labels"]
    assert 13 not in written.present() and 1 in written.present()


def test_a_study_continues_from_its_record_in_a_new_folder(study, tmp_path, real):
    out, result = study
    record, spec = tmp_path / "record", study_file(tmp_path / "study.yaml", real)
    shutil.copytree(out, tmp_path / "copy")
    shutil.copytree(out / "generator" / "model", record / "generator" / "model")  # a record that has the model
    run_study(spec, tmp_path / "copy", progress=False, log=lambda m: None, record=record)  # a study under way
    assert (record / "split.json").is_file() and (record / "synthetic.json").is_file()
    assert (record / "generator" / "model" / "meta.json").is_file()
    assert (record / "generator" / "controlnet" / "metrics.jsonl").is_file()  # the training curves
    assert not list(record.rglob("*.nii.gz"))  # no volumes: the pairs are remade from the generator
    weights = {p.parts[-3] for p in record.glob("runs/*/segmentor/*") if p.name != "meta.json"}
    assert weights == {"real_unet_seed0"}  # the study's own adherence segmentor only
    # the study as a new checkout finds it: one synthetic arm's segmentor and one text measurement not done
    name = next(r["name"] for r in result["runs"] if r["arm"] == "real+synthetic x1")
    shutil.rmtree(record / "runs" / name)
    measured = sorted((record / "adherence").glob("text-*.json"))[0]
    measured.unlink()
    new = tmp_path / "new"
    again = run_study(spec, new, progress=False, log=lambda m: None, record=record)
    assert [r["scores"] for r in again["runs"]] == [r["scores"] for r in result["runs"]]
    assert again["adherence"]["volumes"] == result["adherence"]["volumes"]
    assert sorted(p.name for p in (new / "generator").iterdir()) == ["model"]  # not trained again
    lines = [json.loads(line) for line in (new / "log.jsonl").read_text().splitlines()]
    added = lines[len((out / "log.jsonl").read_text().splitlines()):]
    mask_pairs = [f"synthetic/mask/{p}" for p in result["data"]["synthetic"]["mask"]]
    assert sorted(u["unit"] for u in added) == sorted(["train-data", f"runs/{name}/segmentor", f"runs/{name}/scores",
                                                       f"synthetic/text/{measured.stem}",
                                                       f"adherence/{measured.stem}", *mask_pairs])
    assert all(u["same_as_record"] for u in added if u["unit"].startswith("synthetic/"))
    assert (record / "runs" / name / "scores.json").is_file()
    assert all((record / output).is_file() for output in ("study.json", "study.html", "study.md", "study-dice.png"))
    assert not (new / "synthetic" / "large").exists()  # the balance arm was done: its pairs are not remade
    for weights in (new / "runs" / "real_unet_seed0" / "segmentor").glob("*.safetensors"):
        weights.unlink()  # every size is measured: the adherence segmentor is not needed any more
    assert run_study(spec, new, progress=False, log=lambda m: None, record=record)["adherence"] == again["adherence"]
    not_a_study = tmp_path / "mine"
    not_a_study.mkdir()
    (not_a_study / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no study"):
        run_study(spec, not_a_study, progress=False, log=lambda m: None, record=record)
    assert [p.name for p in not_a_study.iterdir()] == ["notes.txt"]
    other = study_file(tmp_path / "other.yaml", real, n_real=2)  # the record's study may not continue with it
    with pytest.raises(ConfigError, match="started with other settings: n_real"):
        run_study(other, tmp_path / "elsewhere", progress=False, log=lambda m: None, record=record)
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(ConfigError, match="not a folder"):
        run_study(spec, tmp_path / "elsewhere", progress=False, log=lambda m: None, record=not_a_study / "notes.txt")
    assert not (tmp_path / "elsewhere").exists()


def test_a_record_keeps_the_spec_in_force_after_a_late_change(tmp_path, real):
    first = parse_study(yaml.safe_load(study_file(tmp_path / "a.yaml", real).read_text()), "a.yaml")
    later = parse_study(yaml.safe_load(study_file(tmp_path / "b.yaml", real, seeds=[3]).read_text()), "b.yaml")
    folder = StudyFolder(tmp_path / "out", log=lambda m: None, record=StudyRecord(tmp_path / "record"))
    folder.pin_spec(first)
    folder.pin_spec(later)  # seeds may change: no segmentor has started
    for root in (tmp_path / "out", tmp_path / "record"):
        assert yaml.safe_load((root / "study.yaml").read_text())["seeds"] == [3]
    assert [json.loads(line)["changed"] for line in (tmp_path / "record" / "log.jsonl").read_text().splitlines()] \
        == [["seeds"]]


def test_sizes_are_measured_before_the_segmentors_when_the_study_names_its_segmentor(study, tmp_path, real):
    out, _ = study
    text = {"sizes_mm": [40], "per_size": 1, "bins_mm": [0, 60, 1000],
            "segmentor": str(out / "runs" / "real_unet_seed0" / "segmentor")}
    spec = study_file(tmp_path / "study.yaml", real, seeds=[0], arms=["real"], text=text)
    run_study(spec, tmp_path / "out", progress=False, log=lambda m: None)
    units = [json.loads(line)["unit"] for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    first_run = min(i for i, u in enumerate(units) if u.startswith("runs/"))
    assert "adherence/text-40mm-0" in units[:first_run]
