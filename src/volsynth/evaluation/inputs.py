"""The inputs of ``volsynth evaluate``: the real dataset (verified; a prepared folder mapped back to its units
with each case's window) and a generated folder (``<id>_image`` + ``<id>.json`` sidecar [+ ``<id>_label``]),
read into ``Item``s; and ``to_shape``, which puts a volume on the comparison shape over its own field of view.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from volsynth.data.dataset import load_dataset
from volsynth.data.plan import PLAN_FILE, Plan
from volsynth.data.prepare import MANIFEST_FILE, case_windows, dataset_digest
from volsynth.data.verify import verify_dataset
from volsynth.errors import DatasetError, ReadError
from volsynth.io.formats import read_label, read_volume
from volsynth.io.resample import grid_affine, grid_centre, resample_to
from volsynth.io.volume import LabelMap, Volume
from volsynth.parallel import progress_bar
from volsynth.pipelines.sidecar import read_sidecar


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


@dataclass
class GeneratedEntry:
    """A generated volume on disk: its files, sidecar and the class names of its label file."""

    id: str
    image_path: Path
    label_path: Path | None
    sidecar: dict
    label_names: dict[str, int] | None


def _model_labels(sidecar: dict) -> dict[str, int] | None:
    """Class names of a generated label file: the sidecar's ``labels``, else the model plan's labels."""
    if isinstance(sidecar.get("labels"), dict):
        return {str(k): int(v) for k, v in sidecar["labels"].items()}
    model = sidecar.get("model")
    meta = Path(model) / "meta.json" if model else None
    if meta is not None and meta.is_file():
        plan = json.loads(meta.read_text()).get("plan") or {}
        if plan.get("labels"):
            return {"background": 0, **{str(k): int(v) for k, v in plan["labels"].items()}}
    return None


def read_generated_folder(folder: str | Path) -> list[GeneratedEntry]:
    """Generated volumes of a ``volsynth generate`` folder (sidecars), or bare ``<id>_image`` files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReadError(folder, "generated folder not found")
    entries, seen = [], set()
    for path in sorted(folder.glob("*.json")):
        sidecar = read_sidecar(path)
        if sidecar is None:
            continue  # not a sidecar (e.g. a metrics file)
        image = folder / str(sidecar["image"])
        if not image.exists():
            raise ReadError(image, f"image named by sidecar {path.name} not found")
        label = folder / sidecar["label"] if sidecar.get("label") else None
        if label is not None and not label.exists():
            raise ReadError(label, f"label map named by sidecar {path.name} not found")
        entry_id = str(sidecar.get("id") or path.stem)
        entries.append(GeneratedEntry(entry_id, image, label, sidecar, _model_labels(sidecar)))
        seen.add(image.name)
    for image in sorted(folder.glob("*_image*")):  # volumes without a sidecar
        if image.name in seen:
            continue
        stem = image.name.split("_image")[0]
        labels = sorted(folder.glob(f"{stem}_label*"))
        entries.append(GeneratedEntry(stem, image, labels[0] if labels else None, {}, None))
    if not entries:
        raise ReadError(folder, "no generated volumes found",
                        "expected <id>_image.nii.gz files with <id>.json sidecars (volsynth generate output)")
    return entries


def read_generated(folder: str | Path, fallback_labels: dict[str, int], limit: int | None = None,
                   progress: bool = True) -> list[Item]:
    """Generated volumes with their label maps (class names from the model, else the real dataset's)."""
    entries = read_generated_folder(folder)[:limit]
    items = []
    with progress_bar(progress) as bar:
        task = bar.add_task("read generated", total=len(entries))
        for entry in entries:
            image = read_volume(entry.image_path)
            label = (read_label(entry.label_path, labels=entry.label_names or fallback_labels)
                     if entry.label_path else None)
            if label is not None and (label.shape != image.shape or not np.allclose(label.affine, image.affine,
                                                                                    atol=1e-3)):
                label = resample_to(label, image.affine, image.shape)  # nearest: onto the image's grid
            job = entry.sidecar.get("job") or {}
            facts = entry.sidecar.get("facts") or job.get("facts")
            items.append(Item(entry.id, image, label,
                              str(entry.sidecar.get("prompt", job.get("prompt", "")) or ""), facts, entry.sidecar))
            bar.advance(task)
    return items


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
