"""``volsynth evaluate``: a generated set against the real dataset, into ``metrics.json`` and ``report.html``.

Recipe (``run_evaluation``):
1. read the real dataset (verified; a folder written by ``volsynth prepare`` is mapped back to its units with
   each case's window) and the generated folder (``<id>_image`` + ``<id>.json`` sidecar [+ ``<id>_label``]);
2. put both sets on one comparison shape (the generated volumes' most common shape): a volume of another
   shape is resized over its own field of view (RAS); fix one intensity range (CT: the prepared plan's window,
   else the real set's pooled 0.5/99.5 percentiles; MR: per-volume percentiles);
3. distribution: 2.5D FID per plane with the real-vs-real floor, MMD with its real-vs-real value, MS-SSIM
   diversity of both sets;
4. with a segmentor: mask faithfulness, Dice/NSD of its predictions on generated volumes against their
   conditioning masks (Dice_gen) beside the same on held-out real cases against ground truth (Dice_orig);
5. text adherence (stated vs measured lesion count, diameters, organ volumes) for generated volumes and,
   as a floor, for the real cases; anatomy volumes (ml) per class, e.g. airway (seed 001);
6. memorisation: nearest training volume by SSIM and feature cosine, thresholds from real-vs-real pairs;
7. intensity histograms per tissue; montages; write metrics.json and report.html (``report.py``).
"""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from volsynth import __version__
from volsynth.data.dataset import load_dataset
from volsynth.data.plan import PLAN_FILE, Plan
from volsynth.data.prepare import MANIFEST_FILE, dataset_digest, load_manifest
from volsynth.data.verify import verify_dataset
from volsynth.errors import DatasetError, ReadError
from volsynth.evaluation import adherence
from volsynth.evaluation.distribution import compute_mmd_volumes
from volsynth.evaluation.features import get_extractor
from volsynth.evaluation.fid import FIDPerPlane, split_halves
from volsynth.evaluation.memorization import check_memorization
from volsynth.evaluation.overlap import compute_dice_per_class, compute_nsd_per_class
from volsynth.evaluation.similarity import MSSSIMDiversity
from volsynth.io.formats import read_label, read_volume
from volsynth.io.resample import grid_affine, grid_centre, resample_to
from volsynth.io.volume import LabelMap, Volume
from volsynth.parallel import progress_bar

SIDECAR_IMAGE_KEY = "image"


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


@dataclass
class EvaluationOptions:
    """Settings of one evaluation (all recorded in metrics.json)."""

    extractor: str = "random-conv"
    seed: int = 0
    slices_per_volume: int = 32
    max_real: int | None = None
    max_generated: int | None = None
    nsd_tolerance_mm: float = 2.0
    memorization_quantile: float | None = None
    montage_cases: int = 3
    progress: bool = True
    command: str | None = None


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
        try:
            sidecar = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ReadError(path, f"invalid sidecar JSON ({exc})") from exc
        if not isinstance(sidecar, dict) or SIDECAR_IMAGE_KEY not in sidecar:
            continue  # not a sidecar (e.g. a metrics file)
        image = folder / str(sidecar[SIDECAR_IMAGE_KEY])
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
    windows = {e["case"]: e["windows"][0] for e in load_manifest(root)["cases"]} if prepared else {}
    items = []
    cases = dataset.cases[:limit]
    with progress_bar(progress) as bar:
        task = bar.add_task("read real", total=len(cases))
        for case in cases:
            image = read_volume(case.images[0])
            if plan is not None:
                window = windows.get(case.case_id)
                image = plan.denormalize(image, window=tuple(window) if window else None)
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


def intensity_range(real: list[Item], plan: Plan | None, modality: str, seed: int = 0) -> tuple[float, float] | None:
    """One window for every volume: CT the plan's or the real set's 0.5/99.5 percentiles; MR None (per volume)."""
    if modality != "CT":
        return None
    if plan is not None:
        return tuple(float(w) for w in plan.normalization[0].window)
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([rng.choice(i.image.array.ravel(), size=min(20000, i.image.array.size), replace=False)
                             for i in real])
    lo, hi = np.percentile(pooled, [0.5, 99.5])
    return float(lo), float(hi)


def distribution_metrics(real: list[Volume], generated: list[Volume], options: EvaluationOptions,
                         window: tuple[float, float] | None) -> dict:
    """FID per plane with its floor, MMD with a real-vs-real value, MS-SSIM diversity."""
    extractor = get_extractor(options.extractor, seed=options.seed)
    fid = FIDPerPlane(extractor, options.slices_per_volume, intensity_range=window).report(real, generated,
                                                                                          options.seed)
    fid["note"] = None if extractor.comparable_to_published else (
        f"{extractor.name} features are a random-weights proxy: compare these FIDs only with FIDs from the "
        "same extractor, never with published numbers (use --extractor inception for those)")
    out: dict = {"fid": {"computed": True, **fid}}
    if len(real) >= 2 and len(generated) >= 2:
        mmd = {"computed": True, "mmd": compute_mmd_volumes(real, generated, intensity_range=window),
               "features": "volumes in RAS scaled to [-1, 1], area-downsampled to 16^3", "real_vs_real": None}
        if len(real) >= 4:
            first, second = split_halves(len(real), options.seed)
            mmd["real_vs_real"] = compute_mmd_volumes([real[i] for i in first], [real[i] for i in second],
                                                      intensity_range=window)
        out["mmd"] = mmd
        data_range = None if window is None else float(window[1] - window[0])
        out["diversity"] = {"computed": True, "data_range": data_range,
                            **MSSSIMDiversity(data_range=data_range, seed=options.seed)(real, generated),
                            "note": "mean pairwise MS-SSIM within each set; lower = more diverse; a generated "
                                    "value well above the real one suggests mode collapse"}
    else:
        reason = "needs at least 2 real and 2 generated volumes"
        out["mmd"] = {"computed": False, "reason": reason}
        out["diversity"] = {"computed": False, "reason": reason}
    return out


def _mean_per_class(rows: list[dict[str, float]]) -> dict[str, float | None]:
    names = list(dict.fromkeys(n for r in rows for n in r))
    result = {}
    for name in names:
        values = [r[name] for r in rows if name in r and r[name] is not None and np.isfinite(r[name])]
        result[name] = float(np.mean(values)) if values else None
    return result


def mask_faithfulness(segmentor, real: list[Item], generated: list[Item], tolerance_mm: float) -> dict:
    """Dice/NSD per class of the segmentor on generated volumes vs their masks, and on held-out real cases."""
    from volsynth.evaluation.segmentor import plan_label_ids

    trained_on = set(segmentor.meta.get("training_cases") or [])
    held_out = [i for i in real if i.id not in trained_on and i.label is not None]
    real_rows = held_out if held_out else [i for i in real if i.label is not None]
    names = {n: i for n, i in segmentor.labels.items() if i != 0}
    result: dict = {"computed": True, "held_out": bool(held_out), "tolerance_mm": tolerance_mm}
    for key, rows in (("orig", real_rows), ("gen", [i for i in generated if i.label is not None])):
        dice, nsd = [], []
        for item in rows:
            reference = LabelMap(plan_label_ids(item.label, segmentor.plan), item.label.affine, labels=segmentor.labels)
            dice.append(compute_dice_per_class(item.prediction, reference, names, ignore_empty=True))
            nsd.append(compute_nsd_per_class(item.prediction, reference, tolerance_mm, names, ignore_empty=True))
        result[key] = {"cases": [i.id for i in rows], "dice": _mean_per_class(dice), "nsd": _mean_per_class(nsd),
                       "per_case": [{"id": i.id, "dice": d, "nsd": s} for i, d, s in zip(rows, dice, nsd, strict=True)]}
    if not result["gen"]["cases"]:
        result["note"] = "no generated volume has a label map (generate with --mask): Dice_gen not computed"
    return result


def text_adherence(real: list[Item], generated: list[Item], segmentor) -> dict:
    """Stated vs measured, per source of the measurement (label map or segmentor prediction), with real floors."""
    by_report = {i.prompt.strip(): i.facts for i in real if i.prompt and i.facts}
    groups: dict[str, list[dict]] = {}
    for set_name, items in (("generated", generated), ("real", real)):
        for item in items:
            facts = item.facts if set_name == "real" else (item.facts or by_report.get(item.prompt.strip()))
            stated = adherence.stated_facts(item.prompt, facts)
            if stated.empty:
                continue
            sources = [("label map", item.label), ("segmentor", item.prediction)]
            for source, label in sources:
                if label is None:
                    continue
                if set_name == "real" and source == "segmentor" and item.id in set(segmentor.meta.get(
                        "training_cases") or []):
                    continue  # a floor on the segmentor's own training cases would flatter it
                compared = adherence.compare(stated, adherence.measure(label, label.labels or {}))
                groups.setdefault(f"{set_name} / {source}", []).append({"id": item.id, **compared})
    if not groups:
        return {"computed": False, "reason": "no prompt or facts state a lesion count, diameter or organ volume"}
    return {"computed": True, "summary": {k: adherence.summarise(v) for k, v in groups.items()}, "per_volume": groups,
            "note": "'label map' of a generated volume is its conditioning mask when generated with --mask; "
                    "'segmentor' measures what the image shows"}


def anatomy_volumes(real: list[Item], generated: list[Item]) -> dict:
    """Per class volume (ml) mean and SD: real label maps vs generated label maps or predictions."""
    def maps(items):
        chosen = [i.label if i.label is not None else i.prediction for i in items]
        return [(m, m.labels or {}) for m in chosen if m is not None]

    real_maps, gen_maps = maps(real), maps(generated)
    if not real_maps or not gen_maps:
        return {"computed": False, "reason": "needs label maps (or a segmentor) for both sets"}
    return {"computed": True, "real": adherence.volume_statistics(real_maps),
            "generated": adherence.volume_statistics(gen_maps)}


def tissue_intensities(items: list[Item], seed: int = 0, per_class: int = 20000) -> dict[str, np.ndarray]:
    """Intensity samples per class name (label map, else prediction), at most ``per_class`` values each."""
    rng = np.random.default_rng(seed)
    pooled: dict[str, list[np.ndarray]] = {}
    for item in items:
        label = item.label if item.label is not None else item.prediction
        if label is None or label.shape != item.image.shape:
            continue
        for name, class_id in (label.labels or {}).items():
            values = item.image.array[label.array == class_id]
            if values.size:
                pooled.setdefault(name, []).append(values)
    out = {}
    for name, chunks in pooled.items():
        values = np.concatenate(chunks)
        out[name] = rng.choice(values, size=min(per_class, values.size), replace=False)
    return out


def intensity_summary(real: dict[str, np.ndarray], generated: dict[str, np.ndarray]) -> dict:
    """Per tissue: mean and SD of both sets and the 1-D Wasserstein distance between them."""
    from scipy.stats import wasserstein_distance

    if not real or not generated:
        return {"computed": False, "reason": "needs label maps (or a segmentor) for both sets"}
    rows = {}
    for name in real:
        if name in generated:
            rows[name] = {"real_mean": float(real[name].mean()), "real_sd": float(real[name].std()),
                          "generated_mean": float(generated[name].mean()), "generated_sd": float(generated[name].std()),
                          "wasserstein": float(wasserstein_distance(real[name], generated[name]))}
    return {"computed": True, "per_tissue": rows}


def run_evaluation(real: str | Path, generated: str | Path, out: str | Path, segmentor: str | Path | None = None,
                   study: str | Path | None = None, options: EvaluationOptions | None = None) -> dict:
    """Evaluate a generated folder against a real dataset; writes ``out``/metrics.json and report.html."""
    from volsynth.evaluation.report import build_figures, write_metrics, write_report

    options = options or EvaluationOptions()
    start, out = time.perf_counter(), Path(out)
    study_data = None
    if study is not None:  # bad inputs fail before any work
        from volsynth.evaluation.study import load_study

        study_data = load_study(study)
    # 1. read both sets (and the segmentor)
    real_info, real_items, plan = read_real(real, options.max_real, options.progress)
    if not real_items:
        raise DatasetError(real, "the real dataset has no cases")
    gen_items = read_generated(generated, real_info["labels"], options.max_generated, options.progress)
    seg = None
    if segmentor is not None:
        from volsynth.evaluation.segmentor import load_segmentor, predict

        seg = load_segmentor(segmentor)
        with progress_bar(options.progress) as bar:
            task = bar.add_task("segment", total=len(real_items) + len(gen_items))
            for item in real_items + gen_items:
                item.prediction = predict(seg, item.image)
                bar.advance(task)
    # 2. one comparison shape and intensity range
    shape = Counter(tuple(i.image.shape) for i in gen_items).most_common(1)[0][0]
    real_volumes = [to_shape(i.image, shape) for i in real_items]
    gen_volumes = [to_shape(i.image, shape) for i in gen_items]
    window = intensity_range(real_items, plan, real_info["modality"], options.seed)
    # 3.-7. the metrics
    metrics: dict = {"provenance": provenance(real_info, generated, gen_items, seg, options, shape, window)}
    metrics.update(distribution_metrics(real_volumes, gen_volumes, options, window))
    reason = {"computed": False, "reason": "no segmentor given (--segmentor; train one with volsynth train-seg)"}
    metrics["mask_faithfulness"] = (mask_faithfulness(seg, real_items, gen_items, options.nsd_tolerance_mm)
                                    if seg is not None else reason)
    metrics["text_adherence"] = text_adherence(real_items, gen_items, seg)
    metrics["anatomy_volumes"] = anatomy_volumes(real_items, gen_items)
    if len(real_items) >= 2:
        metrics["memorization"] = {"computed": True, **check_memorization(
            gen_volumes, real_volumes, get_extractor(options.extractor, seed=options.seed), [i.id for i in gen_items],
            [i.id for i in real_items], intensity_range=window, quantile=options.memorization_quantile,
            progress=options.progress)}
    else:
        metrics["memorization"] = {"computed": False, "reason": "needs at least 2 real volumes to calibrate"}
    intensities = (tissue_intensities(real_items, options.seed), tissue_intensities(gen_items, options.seed))
    metrics["intensity"] = intensity_summary(*intensities)
    metrics["study"] = study_data if study_data is not None else {"computed": False,
                                                                  "reason": "no study given (--study study.json)"}
    metrics["provenance"]["seconds"] = round(time.perf_counter() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    figures = build_figures(metrics, real_items, gen_items, intensities, window, options.montage_cases)
    write_metrics(out / "metrics.json", metrics)
    write_report(out / "report.html", metrics, figures)
    return metrics


def provenance(real_info: dict, folder: str | Path, generated: list[Item], seg, options: EvaluationOptions, shape,
               window) -> dict:
    """Where every number comes from: command, versions, data, models, seeds, segmentor, settings."""
    import monai
    import torch

    volumes = [{"id": i.id, "model": i.sidecar.get("model"), "model_sha256": i.sidecar.get("model_sha256"),
                "seed": i.sidecar.get("seed"), "prompt": i.prompt, "mask": i.sidecar.get("mask"),
                "steps": i.sidecar.get("steps"), "sampler": i.sidecar.get("sampler"),
                "image_sha256": i.sidecar.get("image_sha256"), "has_label": i.label is not None} for i in generated]
    models = Counter((v["model"], v["model_sha256"]) for v in volumes)
    return {
        "command": options.command, "volsynth_version": __version__, "python": platform.python_version(),
        "torch": torch.__version__, "monai": monai.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "real": real_info,
        "generated": {"path": str(folder), "count": len(generated), "volumes": volumes,
                      "models": [{"model": m, "model_sha256": s, "volumes": n} for (m, s), n in models.items()]},
        "segmentor": None if seg is None else {
            "path": str(seg.path), "architecture": seg.settings.architecture, "spatial_dims": seg.settings.spatial_dims,
            "training_cases": seg.meta.get("training_cases"), "dataset": seg.meta.get("dataset"),
            "dataset_sha256": seg.meta.get("dataset_sha256"), "seed": seg.settings.seed, "steps": seg.settings.steps},
        "options": {**asdict(options), "comparison_shape": list(shape),
                    "intensity_range": None if window is None else list(window)},
    }
