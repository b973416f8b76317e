"""The dataset contract: nnU-Net v2 raw layout or Medical Segmentation Decathlon layout, with
optional radiology reports in ``reports.jsonl`` beside ``dataset.json``.

nnU-Net v2::

    dataset.json   {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
                    "numTraining": N, "file_ending": ".nii.gz"}
    imagesTr/<case>_0000.nii.gz
    labelsTr/<case>.nii.gz

MSD::

    dataset.json   {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver"},
                    "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]}

``reports.jsonl``: one ``{"case": ..., "report": "...", "facts": {...}}`` per line.

A dataset written by ``volsynth phantom`` also says which generator made it:
``"phantom_generator": {"kind": "abdomen-ct", "version": 2}`` in ``dataset.json``; ``volsynth prepare`` carries
it into the prepared folder's ``dataset.json`` and the plan's ``source``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from volsynth.errors import DatasetError
from volsynth.io.atomic import atomic_output
from volsynth.io.formats import write_volume
from volsynth.io.jsonfile import read_json, write_json
from volsynth.io.volume import LabelMap, Volume

REPORTS_FILE = "reports.jsonl"
PHANTOM_GENERATOR_KEY = "phantom_generator"


@dataclass
class Case:
    """One training case: image channel files, an optional label file and an optional report."""

    case_id: str
    images: list[Path]
    label: Path | None
    report: str | None = None
    facts: dict | None = None


@dataclass
class Dataset:
    """A loaded dataset description; files are not read until asked."""

    root: Path
    layout: str  # "nnunet" or "msd"
    name: str
    labels: dict[str, int]  # name -> id, background included
    channel_names: dict[str, str]  # channel index (as string) -> modality/name
    file_ending: str
    cases: list[Case]
    reports_file: Path | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file, problem) found while loading
    phantom_generator: dict | None = None  # {"kind", "version"} of a phantom dataset

    @property
    def modality(self) -> str:
        """Modality of the first channel in upper case (``CT``, ``MR``, ...)."""
        name = str(self.channel_names.get("0", "")).upper()
        if name in ("MRI", "T1", "T2", "FLAIR", "T1W", "T2W"):
            return "MR"
        return name

    def case(self, case_id: str) -> Case:
        """The case with this id."""
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise DatasetError(self.root, f"no case '{case_id}'")


def _load_json(path: Path) -> dict:
    return read_json(path, error=DatasetError, missing="dataset.json not found",
                     hint="a dataset folder needs dataset.json")


def _parse_labels(path: Path, raw: dict, msd: bool) -> dict[str, int]:
    """Labels as name -> id; MSD stores id -> name, nnU-Net name -> id (or a list for regions)."""
    labels: dict[str, int] = {}
    try:
        for key, value in raw.items():
            if msd:
                labels[str(value)] = int(key)
            elif isinstance(value, list):
                raise DatasetError(path, f"label '{key}' is a region (list of ids)",
                                   "region-based labels are not supported; give one id per label")
            else:
                labels[str(key)] = int(value)
    except (TypeError, ValueError) as exc:
        raise DatasetError(path, f"labels must map names to integer ids ({exc})") from exc
    return labels


def load_dataset(root: str | Path) -> Dataset:
    """Load a dataset folder of either layout; raises ``DatasetError`` when the contract is broken."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder not found")
    meta_path = root / "dataset.json"
    meta = _load_json(meta_path)
    if "training" in meta:
        dataset = _load_msd(root, meta_path, meta)
    elif "channel_names" in meta:
        dataset = _load_nnunet(root, meta_path, meta)
    else:
        raise DatasetError(meta_path, "neither nnU-Net v2 ('channel_names') nor MSD ('training') layout")
    generator = meta.get(PHANTOM_GENERATOR_KEY)
    if generator is not None and not (isinstance(generator, dict) and isinstance(generator.get("version"), int)):
        raise DatasetError(meta_path, f"{PHANTOM_GENERATOR_KEY} must be a mapping with an integer 'version'",
                           "it is written by volsynth phantom; remove the key if the data is not a phantom dataset")
    dataset.phantom_generator = generator
    _attach_reports(dataset)
    return dataset


def _require(meta_path: Path, meta: dict, keys: Iterable[str]) -> None:
    missing = [k for k in keys if k not in meta]
    if missing:
        raise DatasetError(meta_path, f"missing keys: {', '.join(missing)}")


def _load_nnunet(root: Path, meta_path: Path, meta: dict) -> Dataset:
    _require(meta_path, meta, ("channel_names", "labels", "numTraining", "file_ending"))
    ending = str(meta["file_ending"])
    channels = {str(k): str(v) for k, v in meta["channel_names"].items()}
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise DatasetError(images_dir, "imagesTr folder not found")
    problems: list[tuple[str, str]] = []
    by_case: dict[str, dict[int, Path]] = {}
    for path in sorted(images_dir.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(ending):
            continue
        stem = path.name[: -len(ending)]
        case_id, sep, channel = stem.rpartition("_")
        if not sep or len(channel) != 4 or not channel.isdigit():
            problems.append((str(path), "image name does not end in _XXXX (channel index)"))
            continue
        by_case.setdefault(case_id, {})[int(channel)] = path
    cases = []
    for case_id, found in by_case.items():
        expected = list(range(len(channels)))
        missing = [c for c in expected if c not in found]
        for c in missing:
            problems.append((str(images_dir / f"{case_id}_{c:04d}{ending}"), "missing file (image channel)"))
        label = labels_dir / f"{case_id}{ending}"
        cases.append(Case(case_id, [found[c] for c in sorted(found)], label))
    if labels_dir.is_dir():
        for path in sorted(labels_dir.iterdir()):
            if path.name.endswith(ending) and path.name[: -len(ending)] not in by_case:
                problems.append((str(path), "label has no image in imagesTr"))
    declared = meta.get("numTraining")
    if isinstance(declared, int) and declared != len(cases):
        problems.append((str(meta_path), f"numTraining is {declared} but {len(cases)} cases were found"))
    return Dataset(root, "nnunet", str(meta.get("name", root.name)), _parse_labels(meta_path, meta["labels"], False),
                   channels, ending, cases, problems=problems)


def _load_msd(root: Path, meta_path: Path, meta: dict) -> Dataset:
    _require(meta_path, meta, ("training", "labels", "modality"))
    if not isinstance(meta["training"], list):
        raise DatasetError(meta_path, "'training' must be a list of {image, label}")
    cases: list[Case] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry in meta["training"]:
        if not isinstance(entry, dict) or "image" not in entry:
            raise DatasetError(meta_path, f"training entry without 'image': {entry!r}")
        image = (root / entry["image"]).resolve()
        name = image.name
        case_id = name[:-7] if name.endswith(".nii.gz") else image.stem
        if case_id in seen:
            problems.append((str(meta_path), f"duplicate case id '{case_id}'"))
            continue
        seen.add(case_id)
        label = (root / entry["label"]).resolve() if entry.get("label") else None
        cases.append(Case(case_id, [image], label))
    channels = {str(k): str(v) for k, v in meta["modality"].items()}
    ending = ".nii.gz"
    return Dataset(root, "msd", str(meta.get("name", root.name)), _parse_labels(meta_path, meta["labels"], True),
                   channels, ending, cases, problems=problems)


def _attach_reports(dataset: Dataset) -> None:
    path = dataset.root / REPORTS_FILE
    if not path.is_file():
        return
    dataset.reports_file = path
    by_id = {case.case_id: case for case in dataset.cases}
    seen: set[str] = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            case_id, report = str(entry["case"]), str(entry["report"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            dataset.problems.append((f"{path}:{number}", f"invalid report line ({exc})"))
            continue
        if case_id in seen:
            dataset.problems.append((f"{path}:{number}", f"duplicate report for case '{case_id}'"))
            continue
        seen.add(case_id)
        if case_id not in by_id:
            dataset.problems.append((f"{path}:{number}", f"report for unknown case '{case_id}'"))
            continue
        by_id[case_id].report = report
        by_id[case_id].facts = entry.get("facts")
    missing = [c.case_id for c in dataset.cases if c.case_id not in seen]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        dataset.problems.append((str(path), f"reports missing for {len(missing)} case(s): {shown}"))


def write_dataset(root: str | Path, cases: Iterable[tuple[str, Volume, LabelMap, str | None, dict | None]],
                  labels: dict[str, int], channel_names: dict[str, str], name: str,
                  description: str = "") -> Path:
    """Write cases in the nnU-Net v2 layout (+ ``reports.jsonl`` when any case has a report)."""
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    reports: list[dict] = []
    count = 0
    for case_id, image, label, report, facts in cases:
        write_volume(image, root / "imagesTr" / f"{case_id}_0000.nii.gz")
        write_volume(label, root / "labelsTr" / f"{case_id}.nii.gz")
        if report is not None:
            reports.append({"case": case_id, "report": report, "facts": facts or {}})
        count += 1
    write_dataset_json(root, labels, channel_names, count, name, description)
    if reports:
        write_reports(root / REPORTS_FILE, reports)
    return root


def write_dataset_json(root: Path, labels: dict[str, int], channel_names: dict[str, str], count: int,
                       name: str, description: str = "", phantom_generator: dict | None = None) -> Path:
    """Write an nnU-Net v2 ``dataset.json`` atomically (with the phantom generator that made it, if any)."""
    labels = {"background": 0, **{k: int(v) for k, v in labels.items() if k != "background"}}
    meta = {"name": name, "description": description, "channel_names": channel_names, "labels": labels,
            "numTraining": count, "file_ending": ".nii.gz"}
    if phantom_generator is not None:
        meta[PHANTOM_GENERATOR_KEY] = phantom_generator
    return write_json(root / "dataset.json", meta)


def write_reports(path: Path, entries: list[dict]) -> Path:
    """Write report entries as JSON lines, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    return path


