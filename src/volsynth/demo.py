"""``volsynth demo``: the end-to-end path that exists today, on phantom data, timed step by step.

Today that path is data only: phantoms with reports -> verify -> prepare (plan) -> invert a prepared
case back to HU and the source geometry -> DICOM export -> preview montage. No generative model ships
yet; the demo says so rather than pretending.
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
from volsynth.data.prepare import PrepareOptions, load_manifest, prepare_dataset
from volsynth.data.verify import verify_dataset
from volsynth.errors import VolsynthError
from volsynth.io import read_label, read_volume, write_volume


def run_demo(out: Path, cases: int = 6, size: int = 48, console: Console | None = None) -> dict:
    """Run every step, print where the results are and how long each took; returns the summary."""
    console = console or Console()
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)  # the demo folder is the demo's own scratch space
    out.mkdir(parents=True)
    steps: list[tuple[str, float, str]] = []

    def step(name: str, fn, where: str):
        start = time.perf_counter()
        with console.status(f"{name} ..."):
            result = fn()
        steps.append((name, time.perf_counter() - start, where))
        return result

    phantoms = out / "phantoms"
    step(f"phantom abdomen-ct x{cases} ({size}^3)",
         lambda: write_phantom_dataset("abdomen-ct", phantoms, cases=cases, size=size, seed=0, progress=False,
                                       preview=True), str(phantoms))
    problems = step("verify", lambda: verify_dataset(phantoms), "(printed)")
    if problems:
        raise VolsynthError(problems[0].file, f"phantom dataset failed verification: {problems[0].problem}")
    prepared = out / "prepared"
    options = PrepareOptions(size=[32, 32, 32], spacing="fit", roi=["liver"], margin_mm=10.0)
    plan = step("prepare (liver ROI, 32^3)", lambda: prepare_dataset(phantoms, prepared, options, progress=False),
                str(prepared / "plan.json"))
    entry = load_manifest(prepared)["cases"][0]

    def invert_case() -> float:
        image = read_volume(prepared / entry["images"][0])
        label = read_label(prepared / entry["label"])
        back = plan.invert(image, entry["source_affine"], entry["source_shape"], window=entry["windows"][0])
        back_label = plan.invert(label, entry["source_affine"], entry["source_shape"])
        write_volume(back, out / "inverse" / f"{entry['case']}_image.nii.gz")
        write_volume(back_label, out / "inverse" / f"{entry['case']}_label.nii.gz")
        write_volume(back.with_array(back.array), out / "inverse" / f"{entry['case']}_dicom")
        return float(np.abs(back.affine - np.asarray(entry["source_affine"])).max())

    affine_error = step("invert to HU + source grid, DICOM export", invert_case, str(out / "inverse"))
    table = Table(title="volsynth demo (data path; no trained generator ships yet)")
    for column in ("step", "seconds", "output"):
        table.add_column(column)
    for name, seconds, where in steps:
        table.add_row(name, f"{seconds:.1f}", where)
    console.print(table)
    summary = {
        "steps": [{"step": n, "seconds": round(s, 2), "output": w} for n, s, w in steps],
        "plan": {"spacing": plan.spacing, "size": plan.size, "labels": plan.labels,
                 "window": plan.normalization[0].window},
        "inverse_affine_max_abs_error": affine_error,
        "preview": str(phantoms / "preview.png"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"preview montage: {phantoms / 'preview.png'}")
    console.print(f"round trip: inverse affine differs from the source by {affine_error:.2e} mm at most")
    console.print(f"summary: {out / 'summary.json'}  (total {sum(s for _, s, _ in steps):.1f} s)")
    return summary
