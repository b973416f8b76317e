import json
from pathlib import Path

from volsynth.data.plan import Plan
from volsynth.demo import MODELS, run_demo
from volsynth.io import read_volume
from volsynth.pipelines.hierarchical import HierarchicalPipeline


def test_demo_runs_every_path_on_the_tiny_models(tmp_path):
    assert all((MODELS / name / "meta.json").is_file() for name in ("tiny-abdomen", "tiny-sgd", "tiny-hierarchical"))
    (tmp_path / "demo").mkdir()
    summary = run_demo(tmp_path / "demo", cases=3, size=32, steps=2, tiny=True)
    assert summary["skipped"] == []
    assert [Path(p).name for p in summary["models"].values()] == ["tiny-abdomen", "tiny-sgd", "tiny-hierarchical"]
    names = sorted(p.name for p in (tmp_path / "demo" / "generated").iterdir())
    for prefix in ("text", "mask", "lesion", "sgd_ct", "sgd_mr", "chest"):
        assert f"{prefix}_image.nii.gz" in names and f"{prefix}.json" in names
    for prefix in ("mask", "lesion", "sgd_ct", "sgd_mr", "chest"):
        assert f"{prefix}_label.nii.gz" in names
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert saved["inserted_lesion"]["inside_organ"] and len(saved["steps"]) >= 8
    assert (tmp_path / "demo" / "montage.png").read_bytes()[:4] == b"\x89PNG"
    # the masks were prepared like the abdomen model's plan, so the mask-guided volume is on the model's grid
    plan = Plan.from_dict(json.loads((Path(saved["models"]["abdomen"]) / "meta.json").read_text())["plan"])
    image = read_volume(tmp_path / "demo" / "generated" / "mask_image.nii.gz")
    assert image.shape == tuple(plan.size)
    assert Plan.load(tmp_path / "demo" / "phantoms-prepared").spacing == plan.spacing


def test_shipped_hierarchical_model_samples_anatomy_not_noise():
    # an epsilon-prediction version of this model sampled noise: every class about equally frequent (25 % each)
    pipe = HierarchicalPipeline.from_pretrained(MODELS / "tiny-hierarchical")
    labels = pipe(prompt="", seed=0, steps=10).label.array
    background = float((labels == 0).mean())
    assert background > 0.6, f"background share {background:.2f}"


def test_demo_again_replaces_only_its_own_outputs(tmp_path):
    out = tmp_path / "demo"
    run_demo(out, cases=2, size=32, steps=1, tiny=True)
    (out / "notes.txt").write_text("mine")
    (out / "generated" / "stale.txt").write_text("from the first demo's generated folder")
    run_demo(out, cases=2, size=32, steps=1, tiny=True)
    assert (out / "notes.txt").read_text() == "mine"  # not the demo's: kept
    assert not (out / "generated" / "stale.txt").exists()  # inside a folder the demo made: replaced with it
