"""The inputs of ``volsynth evaluate``: the real dataset (verified; a prepared folder mapped back to its units
with each case's window) and a generated folder (volsynth output, a dataset or a plain folder of images, see
``generated.py``), read into ``Item``s; and ``to_shape``, which puts a volume on the comparison shape over its own
field of view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from volsynth.data.dataset import load_dataset
from volsynth.data.plan import PLAN_FILE, Plan
from volsynth.data.prepare import MANIFEST_FILE, case_windows, dataset_digest
from volsynth.data.verify import verify_dataset
from volsynth.errors import DatasetError
from volsynth.evaluation.generated import GeneratedEntry, GeneratedFolder, check_generated_labels, scan_generated
from volsynth.io.dicom_seg import seg_file
from volsynth.io.formats import read_label, read_volume
from volsynth.io.resample import grid_affine, grid_centre, resample_to
from volsynth.io.volume import LabelMap, Volume
from volsynth.parallel import progress_bar


@dataclass
class Item:
    """One real case or generated volume, with what is known about it."""

    id: str
    image: Volume
    label: LabelMap | None = None  # class names in label.labels
    prompt: str = ""
    facts: dict | None = None
    sidecar: dict = field(default_factory=dict)
    prediction: LabelMap | None = None  # the segmentor's, when one is given
    label_names_from: str | None = None  # where a generated label map's class names come from


def named_label(label: LabelMap, classes: dict[str, list[int]]) -> LabelMap:
    """The label map with these class names; a class given several ids has them merged onto its first."""
    array = label.array
    for ids in classes.values():
        for extra in ids[1:]:
            array = np.where(array == extra, ids[0], array)
    return LabelMap(array.astype(label.array.dtype, copy=False), label.affine,
                    labels={"background": 0, **{name: ids[0] for name, ids in classes.items()}})


def read_named_label(path: Path, classes: dict[str, list[int]]) -> LabelMap:
    """A generated label file with class names: a DICOM SEG's own, else ``classes``."""
    label = read_label(path)
    return label if seg_file(path) is not None else named_label(label, classes)


def read_generated_folder(folder: str | Path) -> list[GeneratedEntry]:
    """Generated volumes of a folder in any layout ``scan_generated`` knows (volsynth output, a dataset, a plain
    folder of images with optional label files)."""
    return scan_generated(folder).entries


def read_generated_set(folder: str | Path, fallback_labels: dict[str, int], limit: int | None = None,
                       progress: bool = True, generated_labels: dict[str, list[int]] | None = None
                       ) -> tuple[GeneratedFolder, list[Item]]:
    """The generated folder's layout and its volumes with their label maps. Class names of a label file: the
    folder's own (sidecar, dataset.json), else ``generated_labels``, else the real dataset's (``fallback_labels``);
    a DICOM SEG names its own classes."""
    scanned = scan_generated(folder)
    check_generated_labels(generated_labels, scanned.layout)
    entries = scanned.entries[:limit]
    fallback = {name: [i] for name, i in fallback_labels.items()}
    items = []
    with progress_bar(progress) as bar:
        task = bar.add_task("read generated", total=len(entries))
        for entry in entries:
            image = read_volume(entry.image_path)
            label, names_from = None, None
            if entry.label_path is not None:
                names_from, classes = next((source, c) for source, c in (
                    ("dataset.json" if scanned.layout == "dataset" else "sidecar", entry.label_classes),
                    ("--generated-labels", generated_labels), ("real dataset", fallback)) if c is not None)
                label = read_named_label(entry.label_path, classes)
                names_from = "DICOM SEG" if seg_file(entry.label_path) is not None else names_from
            if label is not None and (label.shape != image.shape or not np.allclose(label.affine, image.affine,
                                                                                    atol=1e-3)):
                label = resample_to(label, image.affine, image.shape)  # nearest: onto the image's grid
            items.append(Item(entry.id, image, label, entry.prompt, entry.facts, entry.sidecar,
                              label_names_from=names_from))
            bar.advance(task)
    return scanned, items


def read_generated(folder: str | Path, fallback_labels: dict[str, int], limit: int | None = None,
                   progress: bool = True, generated_labels: dict[str, list[int]] | None = None) -> list[Item]:
    """Generated volumes with their label maps (see ``read_generated_set``)."""
    return read_generated_set(folder, fallback_labels, limit, progress, generated_labels)[1]


def read_real(root: str | Path, limit: int | None = None,
              progress: bool = True) -> tuple[dict, list[Item], Plan | None]:
    """Real cases (verified) in their units; a prepared folder's cases are mapped back with their windows."""
    root = Path(root)
    problems = verify_dataset(root, progress=progress)
    if problems:
        raise DatasetError(problems[0].file, problems[0].problem,
                           f"{len(problems)} problem(s) in the real dataset; run volsynth verify {root}")
    dataset = load_dataset(root)
    prepared = (root / PLAN_FILE).is_file() and (root / MANIFEST_FILE).is_file()
    plan = Plan.load(root) if prepared else None
    windows = case_windows(root) if prepared else {}
    items = []
    cases = dataset.cases[:limit]
    with progress_bar(progress) as bar:
        task = bar.add_task("read real", total=len(cases))
        for case in cases:
            image = read_volume(case.images[0])
            if plan is not None:
                image = plan.denormalize(image, window=windows.get(case.case_id))
            label = read_label(case.label, labels=dataset.labels) if case.label and case.label.exists() else None
            items.append(Item(case.case_id, image, label, case.report or "", case.facts))
            bar.advance(task)
    info = {"path": str(root), "name": dataset.name, "layout": dataset.layout, "modality": dataset.modality,
            "labels": dataset.labels, "cases": len(items), "prepared": prepared, "sha256": dataset_digest(dataset)}
    return info, items, plan


def to_shape(volume: Volume, shape: tuple[int, ...]) -> Volume:
    """The volume itself if it has ``shape``, else resized to it over its own field of view (RAS)."""
    if tuple(volume.shape) == tuple(shape):
        return volume
    ras = volume.reoriented("RAS")
    spacing = ras.spacing * np.asarray(ras.shape) / np.asarray(shape)
    return resample_to(ras, grid_affine(spacing, shape, grid_centre(ras.affine, ras.shape)), shape)
