"""Text adherence of ``volsynth study run`` measured in the image: the lesion size a prompt states against the
diameter of the largest lesion the evaluation segmentor finds in the generated image (not in a label map).

Diameters follow the phantom convention (``adherence.measure_lesions``: the maximum 3D extent of a 26-connected
component of the lesion classes). A volume in which the segmentor finds no lesion counts as measured 0 mm (its
error is the stated size) and lowers the detection rate. The floor is the segmentor's own measurement error on
the held-out real test cases: its largest predicted lesion against the largest lesion of the real label map,
binned by the real size. Each measurement is a unit (DIR/adherence/ID.json), skipped when present.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from volsynth.errors import ConfigError
from volsynth.evaluation.adherence import lesion_class_ids, measure_lesions
from volsynth.evaluation.segmentor import Segmentor, cases_seen, load_segmentor, predict, read_case
from volsynth.evaluation.study_units import StudyFolder
from volsynth.io.formats import read_volume
from volsynth.io.jsonfile import read_json, write_json
from volsynth.io.volume import Volume

if TYPE_CHECKING:  # study_run imports this module
    from volsynth.evaluation.study_run import StudyRun


def largest_predicted_mm(segmentor: Segmentor, image: Volume) -> float:
    """Diameter (mm) of the largest lesion the segmentor finds in an image; 0 when it finds none."""
    prediction = predict(segmentor, image)
    sizes = measure_lesions(prediction, lesion_class_ids(segmentor.labels))
    return float(sizes[0]) if sizes else 0.0


def _measured(folder: StudyFolder, unit: str, segmentor: Callable[[], Segmentor],
              read: Callable[[], tuple[Volume, dict]]) -> dict:
    """One measurement unit: the record ``read`` gives with ``measured_mm`` added (in the image it gives), written
    once to DIR/adherence/UNIT.json (neither ``read`` nor ``segmentor`` is called when it is there)."""
    path = folder.path("adherence", f"{unit}.json")
    if not path.is_file():
        image, record = read()
        write_json(path, {**record, "measured_mm": largest_predicted_mm(segmentor(), image)})
        folder.finished(f"adherence/{unit}")
    return read_json(path)


def _generated(folder: StudyFolder, pair_id: str) -> tuple[Volume, dict]:
    """A text-guided volume and what its sidecar states."""
    record = read_json(folder.path("synthetic", "text", f"{pair_id}.json"))
    image = read_volume(folder.path("synthetic", "text", record["image"]))
    return image, {"id": pair_id, "prompt": record["prompt"], "stated_mm": record["stated_mm"]}


def bin_errors(rows: list[dict], edges: list[float]) -> list[dict]:
    """Median absolute error (mm), detection rate and n per bin of the stated (or real) size."""
    result = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = [r for r in rows if lo <= r["stated_mm"] < hi]
        errors = [abs(r["measured_mm"] - r["stated_mm"]) for r in inside]
        result.append({"bin_mm": [lo, hi], "n": len(inside),
                       "median_abs_error_mm": float(np.median(errors)) if errors else None,
                       "detected": float(np.mean([r["measured_mm"] > 0 for r in inside])) if inside else None})
    return result


def adherence_segmentor(study: StudyRun, path: str | Path) -> Segmentor:
    """The adherence segmentor, checked: it has a lesion class and never saw a test case."""
    segmentor = load_segmentor(path)
    if not lesion_class_ids(segmentor.labels):
        raise ConfigError(path, "the adherence segmentor has no lesion class",
                          "train it with a lesion class (e.g. segmentor labels 'liver=1,tumour=4')")
    trained_on = cases_seen(segmentor, study.dataset.root, study.test_ids)
    if trained_on:
        raise ConfigError(path, f"the adherence segmentor was trained on test case(s) {trained_on[:3]}",
                          "its floor on them would flatter it; give a segmentor that did not see them")
    return segmentor


def measure_adherence(study: StudyRun, segmentor_path: str | Path) -> dict:
    """Stated against measured lesion size of every text-guided volume, and the real test cases' floor. The
    segmentor is loaded (and checked) when a size is still to be measured: a study whose sizes are all measured
    (e.g. read back from its record) does not need it any more."""
    segmentor = cache(partial(adherence_segmentor, study, segmentor_path))
    folder, spec = study.folder, study.spec
    generated = [_measured(folder, pair_id, segmentor, partial(_generated, folder, pair_id))
                 for pair_id in study.synthetic.get("text", [])]
    floor = []
    lesion = lesion_class_ids(study.dataset.labels)
    for case_id in study.test_ids:
        image, label = read_case(study.cases[case_id])
        real = measure_lesions(label, lesion)
        if real:
            floor.append(_measured(folder, f"real-{case_id}", segmentor, lambda i=image, c=case_id, r=real: (
                i, {"id": c, "stated_mm": float(r[0])})))
    edges = [float(e) for e in spec.text.bins_mm]
    return {"segmentor": str(segmentor_path), "method": "largest lesion the segmentor finds in the image, maximum "
            "3D extent (mm); none found counts as 0 mm", "generated": bin_errors(generated, edges),
            "real_floor": bin_errors(floor, edges), "volumes": generated, "real_cases": floor}
