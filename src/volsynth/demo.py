"""``volsynth demo``: every path volsynth has, end to end on CPU, timed step by step.

For each role it uses the best model shipped in ``models/`` (the 64^3 phantom-trained models when
present, else the CI-sized ``tiny-*`` ones; see each model card) to generate from a prompt alone, from
a prompt and a mask, from a mask with an inserted lesion, a CT and an MR from one mask, and a chest case
through the hierarchical pipeline. The masks are fresh phantoms (never seen in training) prepared
exactly as the abdomen model's plan (``prepare --like``), so generated and real volumes share a grid;
then it evaluates the generated volumes against those phantoms and writes the HTML report.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from volsynth.data.phantom import write_phantom_dataset
from volsynth.data.prepare import options_like, prepare_dataset
from volsynth.data.verify import verify_dataset
from volsynth.errors import ConfigError, VolsynthError
from volsynth.evaluation.evaluate import EvaluationOptions, run_evaluation
from volsynth.io import read_label, read_volume, write_volume
from volsynth.pipelines import load_pipeline
from volsynth.pipelines.edit import insert_lesion
from volsynth.pipelines.jobs import output_paths
from volsynth.pipelines.sidecar import sidecar_record, write_sidecar
from volsynth.viz import save_montage

MODELS = Path(__file__).resolve().parents[2] / "models"
# role -> (model folder, recipe) in order of preference
DEMO_MODELS = {
    "abdomen": [("abdomen-ct-64", "abdomen-ct-64"), ("tiny-abdomen", "tiny")],
    "sgd": [("abdomen-sgd-64", "abdomen-sgd-64"), ("tiny-sgd", "tiny-sgd")],
    "chest": [("chest-hierarchical-64", "chest-hierarchical-64"), ("tiny-hierarchical", "tiny-hierarchical")],
}
SHIPPED_PHANTOM_GENERATOR = 1  # the phantom generator version the shipped models learnt from
SGD_LABELS = {"liver": [1], "vessels": [2, 3], "tumour": [4]}  # phantom ids -> segmentation-guided classes
# A 2D slice model denoises every slice at every step (64 UNet images per step at 64^3): fewer steps keep
# the demo under two minutes on 2 cores.
SGD_STEPS = 10
# The hierarchical chest model denoises 32^3 and then 64^3 in pixel space, two network calls per step (text
# guidance): 10 steps keep its sample recognisable (body, lungs, lobes) in about 25 s on 2 cores.
CHEST_STEPS = 10
DEMO_MARKER = ".volsynth-demo"
# Everything the demo writes in its folder (an earlier demo's are replaced, nothing else is touched).
DEMO_OUTPUTS = ("phantoms", "phantoms-prepared", "generated", "generated-abdomen", "report", "edited_mask.nii.gz",
                "montage.png", "summary.json")


def pick_models(models: Path, tiny: bool = False) -> dict[str, Path | None]:
    """The preferred shipped model of each role (None when none is shipped); ``tiny``: the CI-sized ones."""
    return {role: next((models / name for name, _ in (choices[-1:] if tiny else choices)
                        if (models / name / "meta.json").is_file()), None)
            for role, choices in DEMO_MODELS.items()}


def _write(result, out: Path, name: str) -> list[str]:
    """Image, label map (when there is one) and sidecar of one generated volume."""
    paths = output_paths(out, name, "nifti")
    image = write_volume(result.image, paths["image"])
    label = write_volume(result.label, paths["label"]) if result.label is not None else None
    write_sidecar(paths["sidecar"], sidecar_record(result, name, image, label))
    return [p.name for p in (image, label) if p is not None]


def claim_output(out: Path) -> None:
    """Make ``out`` the demo's folder: a new or empty folder, or one an earlier demo wrote (its own outputs are
    replaced; anything else in it is left alone). Any other non-empty folder is refused."""
    if out.exists() and not out.is_dir():
        raise ConfigError(out, "demo output exists and is not a folder", "choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / DEMO_MARKER).is_file():
        raise ConfigError(out, "folder exists, is not empty and was not written by volsynth demo",
                          "choose a new --out; the demo deletes nothing it did not create")
    for name in DEMO_OUTPUTS:  # an earlier demo's outputs, by name
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by volsynth demo: a later demo replaces the outputs it lists\n"
                                   + "".join(f"{name}\n" for name in DEMO_OUTPUTS))


def run_demo(out: Path, cases: int = 6, size: int = 64, console: Console | None = None,
             models: Path = MODELS, steps: int = 20, tiny: bool = False) -> dict:
    """Run every step, print where the results are and how long each took; returns the summary.
    ``tiny`` uses the CI-sized models (seconds; they show the workflow only)."""
    console = console or Console()
    out = Path(out)
    chosen = pick_models(models, tiny)
    if not any(chosen.values()):
        raise ConfigError(models, "no shipped demo model found", "run from a volsynth checkout")
    claim_output(out)
    generated = out / "generated"
    generated.mkdir(parents=True)
    steps_done: list[tuple[str, float, str]] = []

    def step(name: str, where: str, fn):
        start = time.perf_counter()
        with console.status(f"{name} ..."):
            result = fn()
        steps_done.append((name, time.perf_counter() - start, where))
        return result

    phantoms = out / "phantoms"
    step(f"phantoms: abdomen CT x{cases} ({size}^3) with reports", str(phantoms / "preview.png"),
         lambda: write_phantom_dataset("abdomen-ct", phantoms, cases=cases, size=size, seed=123, progress=False,
                                       preview=True, generator_version=SHIPPED_PHANTOM_GENERATOR))
    problems = step("verify the phantom dataset", "(no problems)", lambda: verify_dataset(phantoms))
    if problems:
        raise VolsynthError(problems[0].file, f"phantom dataset failed verification: {problems[0].problem}")
    abdomen = load_pipeline(chosen["abdomen"]) if chosen["abdomen"] else None
    real = phantoms
    if abdomen is not None:  # the masks and the real side of the evaluation on the model's own grid
        real = out / "phantoms-prepared"
        step(f"prepare the phantoms like {chosen['abdomen'].name}'s plan", str(real),
             lambda: prepare_dataset(phantoms, real, options_like(abdomen.plan), progress=False))
    mask_path = sorted((real / "labelsTr").glob("*.nii.gz"))[0]
    mask = read_label(mask_path)
    edited, facts = insert_lesion(mask, 24.0, organ_id=1, lesion_id=4, seed=2)
    write_volume(edited, out / "edited_mask.nii.gz")
    skipped = [f"no {role} model is shipped: train one with volsynth train --recipe recipes/{choices[0][1]}.yaml "
               f"--out models/{choices[0][0]}" for role, choices in DEMO_MODELS.items() if chosen[role] is None]
    if abdomen is not None:
        prompt = "Two hypodense lesions in the right liver lobe, the largest 24 mm. Portal venous phase."
        # the model's recommended guidance scales, for text alone and with a mask (steps: the demo's)
        step("text -> CT (latent diffusion)", "generated/text_*",
             lambda: _write(abdomen(prompt=prompt, seed=0, steps=steps), generated, "text"))
        if "mask" in abdomen.options:
            step("text + mask -> CT", "generated/mask_*",
                 lambda: _write(abdomen(prompt=prompt, mask=mask, seed=1, steps=steps), generated, "mask"))
            step(f"mask + inserted {facts['diameter_mm']:.0f} mm lesion -> CT", "generated/lesion_*",
                 lambda: _write(abdomen(prompt="One hypodense lesion of 24 mm.", mask=edited, seed=2, steps=steps),
                                generated, "lesion"))
    if chosen["sgd"]:
        sgd = load_pipeline(chosen["sgd"])
        for modality in ("CT", "MR"):
            step(f"one mask -> {modality} (segmentation-guided)", f"generated/sgd_{modality.lower()}_*",
                 lambda m=modality: _write(sgd(mask=mask, modality=m, seed=3, steps=min(steps, SGD_STEPS),
                                               mask_labels=SGD_LABELS),
                                           generated, f"sgd_{m.lower()}"))
    if chosen["chest"]:
        chest = load_pipeline(chosen["chest"])
        step("text -> chest CT + lobes/airway/vessels (hierarchical)", "generated/chest_*",
             lambda: _write(chest(prompt="Mild emphysema, no pulmonary nodule.", seed=4,
                                  steps=min(steps, CHEST_STEPS)), generated, "chest"))
    step("montage of every generated volume", str(out / "montage.png"), lambda: save_demo_montage(generated,
                                                                                                  out / "montage.png"))
    report = _evaluate(out, real, generated, step)
    names = ", ".join(p.name for p in chosen.values() if p is not None)
    table = Table(title=f"volsynth demo ({names}; trained on phantoms, not for clinical use)")
    for column in ("step", "seconds", "output"):
        table.add_column(column)
    for name, seconds, where in steps_done:
        table.add_row(name, f"{seconds:.1f}", where)
    console.print(table)
    for line in skipped:
        console.print(f"[yellow]skipped:[/yellow] {line}")
    summary = {"models": {role: str(p) if p else None for role, p in chosen.items()},
               "steps": [{"step": n, "seconds": round(s, 2), "output": w} for n, s, w in steps_done],
               "inserted_lesion": facts, "report": report, "skipped": skipped,
               "total_seconds": round(sum(s for _, s, _ in steps_done), 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"outputs: {out}  (total {summary['total_seconds']} s; summary.json lists every file)")
    return summary


def save_demo_montage(generated: Path, path: Path) -> Path:
    """Axial, coronal and sagittal planes of each generated volume with its label map, one row each."""
    images, labels, titles, spacings = [], [], [], []
    for sidecar in sorted(generated.glob("*.json")):
        name = sidecar.stem
        image = read_volume(generated / f"{name}_image.nii.gz").reoriented("RAS")
        label_path = generated / f"{name}_label.nii.gz"
        label = read_label(label_path).reoriented("RAS") if label_path.is_file() else None
        modality = json.loads(sidecar.read_text()).get("modality") or ("MR" if "_mr" in name else "CT")
        array = image.array
        if modality != "CT":  # MR: its own 1-99 % range
            low, high = (float(v) for v in np.percentile(array, [1, 99]))
        else:  # lung or soft-tissue window
            low, high = (-1000.0, 400.0) if name.startswith("chest") else (-200.0, 300.0)
        images.append(np.clip((array - low) / max(high - low, 1e-6), 0, 1))
        labels.append(None if label is None else label.array)
        titles.append(f"{name} ({modality})")
        spacings.append(image.spacing)
    return save_montage(path, images, labels, titles, (0.0, 1.0), spacings=spacings)


def _evaluate(out: Path, phantoms: Path, generated: Path, step) -> str | None:
    """Evaluate the abdomen CT generations against the phantoms, when the evaluation suite is there."""
    abdomen = out / "generated-abdomen"
    abdomen.mkdir()
    for path in generated.iterdir():
        if path.name.startswith(("text", "mask", "lesion", "sgd_ct")):
            shutil.copy(path, abdomen / path.name)
    if not any(abdomen.iterdir()):
        return None
    step("evaluate (FID per plane, MMD, diversity, memorization) + HTML report", str(out / "report" / "report.html"),
         lambda: run_evaluation(phantoms, abdomen, out / "report", options=EvaluationOptions(progress=False)))
    return str(out / "report" / "report.html")
