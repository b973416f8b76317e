"""The generated side of ``volsynth evaluate``: which layout a folder is in, and the files of its volumes.

A folder is read by the first rule that applies:

1. ``dataset.json`` in it: an nnU-Net v2 or MSD dataset (``imagesTr`` [+ ``labelsTr``]; channel ``_0000`` is the
   image), read with the dataset contract; class names from dataset.json, prompts from ``reports.jsonl`` if any;
2. a ``volsynth generate`` sidecar (``<id>.json`` naming an image) in it: volsynth output; ``<id>_image`` files
   without a sidecar beside them are read too;
3. volume files (NIfTI, NRRD, MHA/MHD) in it: a plain folder. ``<id>_label.*`` or ``<id>_seg.*`` (a DICOM SEG
   ``.dcm`` too) is the label file of the image ``<id>.*`` or ``<id>_image.*`` (e.g. MAISI's
   ``sample_1_image.nii.gz`` + ``sample_1_label.nii.gz``).

A folder that fits two rules (dataset.json beside sidecars or loose volumes), an ``imagesTr`` without
dataset.json, two images or two label files of one id, a label file without its image, or no volume at all is a
``ReadError`` naming the folder or file. Volumes without a sidecar carry no prompt; their geometry is the file's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from volsynth.data.dataset import load_dataset
from volsynth.data.labelspec import parse_label_spec
from volsynth.errors import ConfigError, ReadError
from volsynth.io.formats import ITK_SUFFIXES, NIFTI_SUFFIXES
from volsynth.pipelines.sidecar import read_sidecar

LAYOUTS = ("volsynth", "dataset", "plain")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
LABEL_SUFFIXES = VOLUME_SUFFIXES + (".dcm",)
LABEL_TAGS = ("_label", "_seg")
IMAGE_TAG = "_image"
EXPECTED = ("expected volsynth generate output (<id>_image + <id>.json), an nnU-Net/MSD dataset (dataset.json + "
            "imagesTr) or image files with optional <id>_label / <id>_seg files")


@dataclass
class GeneratedEntry:
    """A generated volume on disk: its files, sidecar, prompt and facts, and the class names of its label file
    (class -> ids; None: not known from the folder)."""

    id: str
    image_path: Path
    label_path: Path | None
    sidecar: dict = field(default_factory=dict)
    label_classes: dict[str, list[int]] | None = None
    prompt: str = ""
    facts: dict | None = None


@dataclass
class GeneratedFolder:
    """The volumes of a generated folder and the layout they were read in."""

    path: Path
    layout: str  # one of LAYOUTS
    entries: list[GeneratedEntry]


def _suffix(name: str, suffixes: tuple[str, ...]) -> str | None:
    lower = name.lower()
    return next((s for s in suffixes if lower.endswith(s)), None)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _model_labels(sidecar: dict) -> dict[str, list[int]] | None:
    """Class names of a generated label file: the sidecar's ``labels``, else the model plan's labels."""
    if isinstance(sidecar.get("labels"), dict):
        return {str(k): [int(v)] for k, v in sidecar["labels"].items()}
    model = sidecar.get("model")
    meta = Path(model) / "meta.json" if model else None
    if meta is not None and meta.is_file():
        plan = json.loads(meta.read_text()).get("plan") or {}
        if plan.get("labels"):
            return {"background": [0], **{str(k): [int(v)] for k, v in plan["labels"].items()}}
    return None


def _sidecars(folder: Path) -> list[tuple[Path, dict]]:
    found = []
    for path in _visible(folder):
        if path.is_file() and path.suffix == ".json" and path.name != "dataset.json":
            record = read_sidecar(path)
            if record is not None:  # not a sidecar (e.g. a metrics file) otherwise
                found.append((path, record))
    return found


def _volsynth_entries(folder: Path, sidecars: list[tuple[Path, dict]]) -> list[GeneratedEntry]:
    entries, seen = [], set()
    for path, sidecar in sidecars:
        image = folder / str(sidecar["image"])
        if not image.exists():
            raise ReadError(image, f"image named by sidecar {path.name} not found")
        label = folder / sidecar["label"] if sidecar.get("label") else None
        if label is not None and not label.exists():
            raise ReadError(label, f"label map named by sidecar {path.name} not found")
        job = sidecar.get("job") or {}
        entries.append(GeneratedEntry(str(sidecar.get("id") or path.stem), image, label, sidecar,
                                      _model_labels(sidecar), str(sidecar.get("prompt", job.get("prompt", "")) or ""),
                                      sidecar.get("facts") or job.get("facts")))
        seen.add(image.name)
    for image in sorted(folder.glob(f"*{IMAGE_TAG}*")):  # volumes without a sidecar
        if image.name in seen or image.name.startswith("."):
            continue
        stem = image.name.split(IMAGE_TAG)[0]
        labels = sorted(p for p in folder.glob(f"{stem}_label*") if not p.name.startswith("."))
        entries.append(GeneratedEntry(stem, image, labels[0] if labels else None))
    return entries


def _dataset_entries(folder: Path) -> list[GeneratedEntry]:
    dataset = load_dataset(folder)
    classes = {name: [i] for name, i in dataset.labels.items()}
    return [GeneratedEntry(case.case_id, case.images[0], case.label if case.label and case.label.exists() else None,
                           label_classes=classes, prompt=case.report or "", facts=case.facts)
            for case in dataset.cases]


def _plain_entries(folder: Path, files: list[Path]) -> list[GeneratedEntry]:
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for path in files:
        suffix = _suffix(path.name, LABEL_SUFFIXES)
        stem = path.name[: -len(suffix)]
        tag = next((t for t in LABEL_TAGS if stem.endswith(t)), None)
        if tag is not None:
            key, found = stem[: -len(tag)], labels
        elif suffix == ".dcm":
            continue  # a lone DICOM file is not an image of this layout
        else:
            key, found = stem.removesuffix(IMAGE_TAG), images
        if key in found:
            kind = "label files" if found is labels else "images"
            raise ReadError(path, f"two {kind} for '{key}': {found[key].name} and {path.name}",
                            "keep one file per volume in the generated folder")
        found[key] = path
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise ReadError(labels[orphans[0]], f"label file has no image ({len(orphans)} such file(s))",
                        f"name the image {orphans[0]}.nii.gz or {orphans[0]}{IMAGE_TAG}.nii.gz")
    return [GeneratedEntry(key, images[key], labels.get(key)) for key in sorted(images)]


def scan_generated(folder: str | Path) -> GeneratedFolder:
    """The layout of a generated folder and its volumes' files, by the rules above."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReadError(folder, "generated folder not found")
    sidecars = _sidecars(folder)
    loose = [p for p in _visible(folder) if p.is_file() and _suffix(p.name, LABEL_SUFFIXES)]
    if (folder / "dataset.json").is_file():
        if sidecars or loose:
            what = "volsynth sidecars" if sidecars else f"volume files ({loose[0].name})"
            raise ReadError(folder, f"ambiguous generated folder: dataset.json beside {what}",
                            "give the dataset folder or the generated files, each in its own folder")
        folder_read = GeneratedFolder(folder, "dataset", _dataset_entries(folder))
    elif sidecars:
        folder_read = GeneratedFolder(folder, "volsynth", _volsynth_entries(folder, sidecars))
    elif (folder / "imagesTr").is_dir():
        raise ReadError(folder, "imagesTr found but no dataset.json",
                        "add the dataset's dataset.json, or give a folder of image files")
    else:
        folder_read = GeneratedFolder(folder, "plain", _plain_entries(folder, loose))
    if not folder_read.entries:
        raise ReadError(folder, "no generated volumes found", EXPECTED)
    return folder_read


def check_generated_labels(classes: dict[str, list[int]] | None, layout: str) -> None:
    """``--generated-labels`` names the classes of label files without names of their own: not a dataset's."""
    if classes is not None and layout == "dataset":
        raise ConfigError(None, "--generated-labels was given, but the generated folder is a dataset",
                          "its dataset.json names the classes; leave --generated-labels out")


def generated_classes(spec: str | None) -> dict[str, list[int]] | None:
    """``--generated-labels`` (``liver=1,tumour=2+3``, a YAML file or a preset) as class -> ids; None without."""
    if not spec:
        return None
    classes = parse_label_spec(spec, {})
    ids = [i for found in classes.values() for i in found]
    if not classes or 0 in ids or len(set(ids)) != len(ids):
        raise ConfigError(None, f"--generated-labels '{spec}' must give each class its own ids above 0",
                          "write name=id, e.g. liver=1,tumour=2")
    return classes
