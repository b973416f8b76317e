"""``volsynth prepare``: fingerprint a dataset, freeze a plan, write prepared cases and a manifest.

nnU-Net's order: fingerprint (spacings, sizes, intensities per label) -> ``plan.json`` -> prepared
cases. The output folder is itself a dataset in the nnU-Net v2 layout (so ``verify`` reads it), plus
``plan.json`` and ``manifest.json`` (each case's source geometry and intensity window, for the inverse).
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from volsynth.data.dataset import REPORTS_FILE, Case, Dataset, load_dataset, write_dataset_json
from volsynth.data.intensity import count_labels, sample_values
from volsynth.data.labelspec import parse_label_spec
from volsynth.data.plan import CT_SCHEME, MR_SCHEME, PLAN_FILE, Normalization, Plan
from volsynth.data.verify import verify_dataset
from volsynth.errors import ConfigError, DatasetError
from volsynth.io.atomic import atomic_output, check_output
from volsynth.io.formats import read_label, read_volume, write_volume
from volsynth.io.jsonfile import read_json, write_json
from volsynth.io.resample import grid_centre, resample_to, snap_to_lattice
from volsynth.io.volume import LabelMap, Volume, spacing_of
from volsynth.parallel import map_progress

MANIFEST_FILE = "manifest.json"
INTENSITY_SAMPLES_PER_CASE = 20000
SIZE_MULTIPLE = 16  # grid sizes default to a multiple of 16 (divisible by the networks' downsampling)


@dataclass
class PrepareOptions:
    """What the user may set; ``None`` means derive it from the fingerprint."""

    spacing: str | list[float] | None = None  # None: median; "fit": isotropic, ROI fits the grid
    size: list[int] | None = None
    window: list[float] | None = None  # CT window in HU
    label_sources: dict[str, list[int]] | None = None
    roi: list[str] | None = None
    margin_mm: float = 10.0
    percentiles: tuple[float, float] = (0.5, 99.5)
    # classes a case may leave unannotated (merged datasets): a case whose label map lacks one has it "not
    # given" (known = False in training), not "absent"
    partial_labels: list[str] | None = None


def options_like(plan: Plan) -> PrepareOptions:
    """Options that prepare another dataset exactly as ``plan`` did: same spacing, grid, labels, ROI, window."""
    norm = plan.normalization[0]
    return PrepareOptions(spacing=[float(s) for s in plan.spacing], size=[int(s) for s in plan.size],
                          window=[float(w) for w in norm.window] if norm.scheme == CT_SCHEME else None,
                          label_sources={k: list(v) for k, v in plan.label_sources.items()},
                          roi=list(plan.roi["labels"]) if plan.roi else None,
                          margin_mm=float(plan.roi["margin_mm"]) if plan.roi else 10.0,
                          percentiles=tuple(norm.percentiles) if norm.percentiles else (0.5, 99.5),
                          partial_labels=list(plan.partial_labels) if plan.partial_labels else None)


def load_plan_like(path: str | Path) -> Plan:
    """The plan of a ``plan.json``, a prepared folder, or a model / checkpoint folder (its meta.json)."""
    path = Path(path)
    if path.is_dir() and (path / PLAN_FILE).is_file():
        path = path / PLAN_FILE
    if path.is_dir():
        meta = path / "meta.json"
        data = read_json(meta, error=ConfigError, missing="no plan.json or meta.json here",
                         hint="give a plan, a prepared folder or a model")
        plans = data.get("plans") or {}
        plan = data.get("plan") or next(iter(plans.values()), None)
        if plan is None:
            raise ConfigError(meta, "the model has no plan")
        return Plan.from_dict(plan, meta)
    return Plan.load(path)


def _remap(array: np.ndarray, label_sources: dict[str, list[int]]) -> np.ndarray:
    out = np.zeros(array.shape, dtype=np.uint8)
    for index, sources in enumerate(label_sources.values(), start=1):
        out[np.isin(array, sources)] = index
    return out


def _roi_box(label: LabelMap, roi_ids: list[int]) -> list[list[float]] | None:
    """World-space bounding box [min, max] (mm) of the voxels with the ROI ids, or None if absent."""
    inside = np.isin(label.array, roi_ids)
    # per-axis projections give the same box as the voxel list, without an (n, 3) index array
    spans = [np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if spans[0].size == 0:
        return None
    corners = np.array([[s[0] for s in spans], [s[-1] for s in spans]], dtype=np.float64) + [[-0.5], [0.5]]
    all_corners = np.array([[corners[a][0], corners[b][1], corners[c][2]]
                            for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    world = all_corners @ label.affine[:3, :3].T + label.affine[:3, 3]
    return [world.min(0).tolist(), world.max(0).tolist()]


def fingerprint_case(case: Case, label_sources: dict[str, list[int]], roi: list[str] | None,
                     seed: int = 0) -> dict:
    """Geometry, intensity statistics and label statistics of one case (in RAS)."""
    # RAS views, not copies: a scanner-sized case is held once, as read
    images = [read_volume(p).oriented_view("RAS") for p in case.images]
    array, affine = images[0]
    shape = list(array.shape)
    spacing = spacing_of(affine)
    result: dict = {"case": case.case_id, "spacing": spacing.tolist(), "shape": shape,
                    "extent_mm": (np.asarray(shape) * spacing).tolist(), "centre": grid_centre(affine, shape).tolist()}
    rng = np.random.default_rng([seed, len(case.case_id)])
    key = case_key(case.case_id)
    # the same draw as choosing from the raveled RAS array, read through the view
    result["samples"] = [view[np.unravel_index(rng.choice(view.size, size=min(INTENSITY_SAMPLES_PER_CASE, view.size),
                                                          replace=False), view.shape)].tolist()
                         for view, _ in images]
    if case.label is not None:
        label, label_affine = read_label(case.label).oriented_view("RAS")
        remapped = _remap(label, label_sources)
        names = list(label_sources)
        counts = count_labels(remapped, len(names) + 1)
        result["label_voxels"] = {n: int(counts[i + 1]) for i, n in enumerate(names)}
        result["intensity_per_label"] = {
            n: [float(v) for v in np.percentile(_label_values(array, remapped, i + 1, [seed, i, key]),
                                                [0.5, 50, 99.5])]
            for i, n in enumerate(names) if counts[i + 1] > 0}
        if roi:
            ids = [names.index(n) + 1 for n in roi]
            result["roi_box"] = _roi_box(LabelMap(remapped, label_affine), ids)
    return result


def case_key(case_id: str) -> int:
    """A stable integer of a case id, part of the seed of its sampled intensity statistics."""
    return zlib.crc32(case_id.encode())


def _label_values(array: np.ndarray, labels: np.ndarray, label_id: int, seed: list[int]) -> np.ndarray:
    """The image values inside one label (a seeded sample of them in a large case)."""
    return sample_values(array, seed, lambda index: labels[index] == label_id)


def make_plan(dataset: Dataset, fingerprints: list[dict], options: PrepareOptions,
              label_sources: dict[str, list[int]]) -> Plan:
    """Decide spacing, size and normalisation from the fingerprints and the user's options."""
    spacings = np.array([f["spacing"] for f in fingerprints])
    roi_extents = [np.subtract(f["roi_box"][1], f["roi_box"][0]) + 2 * options.margin_mm
                   for f in fingerprints if f.get("roi_box")]
    extents = np.array(roi_extents if options.roi and roi_extents else [f["extent_mm"] for f in fingerprints])
    if options.spacing == "fit":
        if options.size is None:
            raise ConfigError(None, "--spacing fit needs --size", "give the grid size, e.g. --size 64")
        spacing = [float(np.max(extents / np.asarray(options.size)))] * 3
    elif options.spacing is None:
        spacing = np.median(spacings, axis=0).round(5).tolist()  # headers store float32
    else:
        spacing = [float(s) for s in options.spacing]
    if options.size is None:
        voxels = np.median(extents, axis=0) / np.asarray(spacing)
        size = [int(SIZE_MULTIPLE * np.ceil(v / SIZE_MULTIPLE)) for v in voxels]
    else:
        size = [int(s) for s in options.size]
    _warn_if_cropped(np.asarray(spacing) * np.asarray(size), np.median(extents, axis=0), bool(options.roi and
                                                                                              roi_extents))
    normalization = []
    for channel, name in sorted(dataset.channel_names.items(), key=lambda kv: int(kv[0])):
        pooled = np.concatenate([np.asarray(f["samples"][int(channel)]) for f in fingerprints])
        if str(name).upper() == "CT":
            window = options.window or np.percentile(pooled, options.percentiles).round(1).tolist()
            normalization.append(Normalization(CT_SCHEME, [float(w) for w in window]))
        else:
            norm = Normalization(MR_SCHEME, [0.0, 1.0], list(options.percentiles))
            windows = [norm.case_window(np.asarray(f["samples"][int(channel)])) for f in fingerprints]
            norm.window = np.median(np.array(windows), axis=0).tolist()
            normalization.append(norm)
    summary = {
        "cases": len(fingerprints),
        "spacing_median": np.median(spacings, axis=0).tolist(),
        "spacing_min": spacings.min(0).tolist(), "spacing_max": spacings.max(0).tolist(),
        "shape_median": np.median([f["shape"] for f in fingerprints], axis=0).tolist(),
        "intensity_per_label": _pool_label_intensities(fingerprints),
        "roi_missing": [f["case"] for f in fingerprints if options.roi and not f.get("roi_box")],
    }
    return Plan(spacing=spacing, size=size, normalization=normalization,
                labels={name: i for i, name in enumerate(label_sources, start=1)},
                label_sources=label_sources, modality=dataset.modality, channel_names=dataset.channel_names,
                roi={"labels": options.roi, "margin_mm": options.margin_mm} if options.roi else None,
                partial_labels=list(options.partial_labels) if options.partial_labels else None,
                fingerprint=summary, source={"dataset": str(dataset.root), "name": dataset.name,
                                             "sha256": dataset_digest(dataset),
                                             **({"phantom_generator": dataset.phantom_generator}
                                                if dataset.phantom_generator else {})})


class PlanWarning(UserWarning):
    """A plan that will not show what the user probably wants (e.g. a grid smaller than the cases)."""


CROP_WARNING = 0.9  # a grid covering less than this share of the median extent along an axis is worth a warning


def _warn_if_cropped(grid_mm: np.ndarray, extent_mm: np.ndarray, roi: bool) -> None:
    """Warn when the grid is smaller than the median case (or ROI) along an axis: prepared cases are cut."""
    short = grid_mm < CROP_WARNING * extent_mm
    if short.any():
        what = "ROI with its margin" if roi else "field of view"
        warnings.warn(f"the grid ({' x '.join(f'{v:.0f}' for v in grid_mm)} mm) is smaller than the median {what} "
                      f"({' x '.join(f'{v:.0f}' for v in extent_mm)} mm) along {int(short.sum())} axis(es): "
                      "prepared cases are cut to the grid; --spacing fit (with --size) or a larger --size keeps them "
                      "whole", PlanWarning, stacklevel=3)


def _pool_label_intensities(fingerprints: list[dict]) -> dict[str, list[float]]:
    pooled: dict[str, list[list[float]]] = {}
    for f in fingerprints:
        for name, values in f.get("intensity_per_label", {}).items():
            pooled.setdefault(name, []).append(values)
    return {name: np.median(np.array(v), axis=0).round(2).tolist() for name, v in pooled.items()}


def dataset_digest(dataset: Dataset) -> str:
    """sha256 over dataset.json and the names and sizes of every case file (identifies the data)."""
    digest = hashlib.sha256((dataset.root / "dataset.json").read_bytes())
    for case in dataset.cases:
        for path in [*case.images, *([case.label] if case.label else [])]:
            digest.update(f"{path.name}:{path.stat().st_size if path.exists() else -1}".encode())
    return digest.hexdigest()


def prepare_case(case: Case, plan: Plan, out: Path) -> dict:
    """Resample, normalise and write one case on the plan's grid; returns its manifest entry."""
    images = [read_volume(p) for p in case.images]
    label = read_label(case.label) if case.label is not None else None
    centre = grid_centre(images[0].affine, images[0].shape)
    roi_found = None
    if label is not None:
        label = label.with_array(plan.remap(label.array))
        if plan.partial_labels:  # counted on the source grid: a class lost by resampling was still annotated
            present = set(np.unique(label.array).tolist())
            entry_annotated = [n for n, i in plan.labels.items() if n not in plan.partial_labels or i in present]
        if plan.roi:
            box = _roi_box(label, [plan.labels[n] for n in plan.roi["labels"]])
            roi_found = box is not None
            if box is not None:
                centre = (np.asarray(box[0]) + np.asarray(box[1])) / 2
    target = plan.grid(snap_to_lattice(centre, images[0].affine, plan.size, plan.spacing))
    entry: dict = {"case": case.case_id, "source_images": [str(p) for p in case.images],
                   "source_label": str(case.label) if case.label else None,
                   "source_affine": images[0].affine.tolist(), "source_shape": list(images[0].shape),
                   "affine": target.tolist(), "windows": [], "images": []}
    for channel, image in enumerate(images):
        norm = plan.normalization[channel]
        window = norm.case_window(image.array, seed=case_key(case.case_id))
        resampled = resample_to(image, target, plan.size, cval=window[0])
        prepared = Volume(norm.forward(resampled.array, window), target, modality=plan.modality)
        name = f"imagesTr/{case.case_id}_{channel:04d}.nii.gz"
        write_volume(prepared, out / name)
        entry["windows"].append(list(window))
        entry["images"].append(name)
    if label is not None:
        resampled = resample_to(LabelMap(label.array, label.affine, labels=plan.labels), target, plan.size)
        entry["label"] = f"labelsTr/{case.case_id}.nii.gz"
        write_volume(resampled, out / entry["label"])
        entry["label_voxels"] = {n: int(np.count_nonzero(resampled.array == i)) for n, i in plan.labels.items()}
        entry["roi_found"] = roi_found
        if plan.partial_labels:
            entry["annotated"] = entry_annotated
    return entry


def prepare_dataset(root: str | Path, out: str | Path, options: PrepareOptions | None = None,
                    label_spec: str | None = None, workers: int = 1, progress: bool = True,
                    overwrite: bool = False, check: bool = True) -> Plan:
    """Fingerprint, plan and prepare a dataset into ``out`` (written atomically as a whole)."""
    options = options or PrepareOptions()
    root, out = Path(root), Path(out)
    check_output(out, overwrite, _is_prepared)  # before any work: a refused output wastes none, and warns of nothing
    if check:
        problems = verify_dataset(root, workers=workers, progress=progress)
        if problems:
            first = problems[0]
            raise DatasetError(first.file, first.problem,
                               f"{len(problems)} problem(s) in total; run volsynth verify {root}")
    dataset = load_dataset(root)
    label_sources = options.label_sources or parse_label_spec(label_spec, dataset.labels)
    for option, names in (("ROI", options.roi), ("partial", options.partial_labels)):
        unknown = [n for n in names or [] if n not in label_sources]
        if unknown:
            raise ConfigError(None, f"{option} label(s) {unknown} not among labels {list(label_sources)}")
    fingerprints = list(map_progress(partial(fingerprint_case, label_sources=label_sources, roi=options.roi),
                                     dataset.cases, workers, "fingerprint", progress))
    plan = make_plan(dataset, fingerprints, options, label_sources)
    with atomic_output(out, overwrite=overwrite, replaceable=_is_prepared) as tmp:
        tmp.mkdir()
        entries = list(map_progress(partial(prepare_case, plan=plan, out=tmp), dataset.cases, workers,
                                    "prepare", progress))
        plan.save(tmp / PLAN_FILE)
        write_dataset_json(tmp, plan.labels, plan.channel_names, len(entries), f"{dataset.name}-prepared",
                           f"prepared by volsynth from {root}", dataset.phantom_generator)
        write_json(tmp / MANIFEST_FILE, {"plan": PLAN_FILE, "cases": entries})
        if dataset.reports_file is not None:
            prepared = {e["case"] for e in entries}
            lines = [ln for ln in dataset.reports_file.read_text().splitlines()
                     if ln.strip() and json.loads(ln).get("case") in prepared]
            (tmp / REPORTS_FILE).write_text("".join(ln + "\n" for ln in lines))
    return plan


def _is_prepared(folder: Path) -> bool:
    """Whether a folder is one ``prepare`` wrote (it may then be replaced with --overwrite)."""
    return (folder / PLAN_FILE).is_file() and (folder / MANIFEST_FILE).is_file()


def load_manifest(prepared: str | Path) -> dict:
    """The manifest of a prepared folder."""
    return read_json(Path(prepared) / MANIFEST_FILE, error=DatasetError, missing="manifest not found",
                     hint="is this a folder written by volsynth prepare?")


def case_windows(prepared: str | Path) -> dict[str, tuple[float, float]]:
    """Each prepared case's intensity window (first channel), for ``Plan.denormalize(..., window=...)``."""
    return {entry["case"]: tuple(entry["windows"][0]) for entry in load_manifest(prepared)["cases"]}
