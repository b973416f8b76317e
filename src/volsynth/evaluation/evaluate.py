"""``volsynth evaluate``: a generated set against the real dataset, into ``metrics.json`` and ``report.html``.

Recipe (``run_evaluation``):
1. read the real dataset (verified; a folder written by ``volsynth prepare`` is mapped back to its units with
   each case's window) and the generated folder: volsynth output (``<id>_image`` + ``<id>.json`` sidecar
   [+ ``<id>_label``]), an nnU-Net / MSD dataset, or a plain folder of images with optional ``<id>_label`` /
   ``<id>_seg`` files (``inputs.py``, ``generated.py``);
2. put both sets on one comparison shape (the generated volumes' most common shape): a volume of another
   shape is resized over its own field of view (RAS); fix one intensity range (CT: the prepared plan's window,
   else the real set's pooled 0.5/99.5 percentiles; MR: per-volume percentiles);
3. distribution: 2.5D FID per plane with the real-vs-real floor, MMD with its real-vs-real value, MS-SSIM
   diversity of both sets;
4. with a segmentor: mask faithfulness, Dice/NSD of its predictions on generated volumes against their
   conditioning masks (Dice_gen) beside the same on held-out real cases against ground truth (Dice_orig);
5. text adherence (stated vs measured lesion count, diameters, organ volumes) for generated volumes and,
   as a floor, for the real cases; anatomy volumes (ml) per class, e.g. airway (MedSyn);
6. memorisation: nearest training volume by SSIM and feature cosine, thresholds from real-vs-real pairs;
7. intensity histograms per tissue; montages; write metrics.json and report.html (``figures.py``,
   ``report.py``).
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from volsynth import __version__
from volsynth.data.plan import Plan
from volsynth.errors import ConfigError, DatasetError
from volsynth.evaluation import adherence
from volsynth.evaluation.distribution import compute_mmd_volumes
from volsynth.evaluation.fid import FIDPerPlane, split_halves
from volsynth.evaluation.figures import build_figures
from volsynth.evaluation.generated import generated_classes
from volsynth.evaluation.inputs import Item, read_generated_set, read_real, to_shape
from volsynth.evaluation.memorization import check_memorization
from volsynth.evaluation.overlap import (
    compute_dice_per_class,
    compute_nsd_per_class,
    confusion_counts,
    confusion_summary,
    mean_per_class,
)
from volsynth.evaluation.pretrained import get_extractor
from volsynth.evaluation.report import write_metrics, write_report
from volsynth.evaluation.segmentor import load_segmentor, plan_label_ids, predict
from volsynth.evaluation.similarity import MSSSIMDiversity
from volsynth.evaluation.study import load_study
from volsynth.io.volume import LabelMap, Volume
from volsynth.parallel import progress_bar


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


def mask_faithfulness(segmentor, real: list[Item], generated: list[Item], tolerance_mm: float) -> dict:
    """Dice/NSD per class of the segmentor on generated volumes vs their masks, and on held-out real cases; and,
    summed over each set's cases, where each class's errors go (``confusion``: missed voxels by the class the
    segmentor gave them, false voxels by the class the mask has there)."""

    trained_on = set(segmentor.meta.get("training_cases") or [])
    held_out = [i for i in real if i.id not in trained_on and i.label is not None]
    real_rows = held_out if held_out else [i for i in real if i.label is not None]
    names = {n: i for n, i in segmentor.labels.items() if i != 0}
    num_classes = max(segmentor.labels.values()) + 1
    by_id = {i: n for n, i in segmentor.labels.items()}  # background (0) included
    id_names = [by_id.get(i, str(i)) for i in range(num_classes)]
    result: dict = {"computed": True, "held_out": bool(held_out), "tolerance_mm": tolerance_mm}
    for key, rows in (("orig", real_rows), ("gen", [i for i in generated if i.label is not None])):
        dice, nsd = [], []
        counts = np.zeros((num_classes, num_classes), dtype=np.int64)
        for item in rows:
            reference = LabelMap(plan_label_ids(item.label, segmentor.plan), item.label.affine, labels=segmentor.labels)
            dice.append(compute_dice_per_class(item.prediction, reference, names, ignore_empty=True))
            nsd.append(compute_nsd_per_class(item.prediction, reference, tolerance_mm, names, ignore_empty=True))
            counts += confusion_counts(item.prediction, reference, num_classes)
        result[key] = {"cases": [i.id for i in rows], "dice": mean_per_class(dice), "nsd": mean_per_class(nsd),
                       "confusion": confusion_summary(counts, id_names),
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
                   study: str | Path | None = None, options: EvaluationOptions | None = None,
                   training: str | Path | None = None, generated_labels: str | None = None) -> dict:
    """Evaluate a generated folder against a real dataset; writes ``out``/metrics.json and report.html.

    ``training``: the generator's training set, for the memorization check (default: the real set).
    ``generated_labels``: class names of the generated label files (``liver=1,tumour=2``, a YAML file or a preset
    such as ``maisi``) where the folder does not name them (default: the real dataset's names).
    """
    options = options or EvaluationOptions()
    start, out = time.perf_counter(), Path(out)
    check_report_folder(out)
    gen_classes = generated_classes(generated_labels)
    study_data = None
    if study is not None:  # bad inputs fail before any work
        study_data = load_study(study)
    # 1. read both sets (and the segmentor)
    real_info, real_items, plan = read_real(real, options.max_real, options.progress)
    if not real_items:
        raise DatasetError(real, "the real dataset has no cases")
    scanned, gen_items = read_generated_set(generated, real_info["labels"], options.max_generated, options.progress,
                                            gen_classes)
    seg = None
    if segmentor is not None:
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
    metrics["provenance"]["generated"].update(layout=scanned.layout, labels=generated_labels)
    metrics.update(distribution_metrics(real_volumes, gen_volumes, options, window))
    reason = {"computed": False, "reason": "no segmentor given (--segmentor; train one with volsynth train segmentor)"}
    metrics["mask_faithfulness"] = (mask_faithfulness(seg, real_items, gen_items, options.nsd_tolerance_mm)
                                    if seg is not None else reason)
    metrics["text_adherence"] = text_adherence(real_items, gen_items, seg)
    metrics["anatomy_volumes"] = anatomy_volumes(real_items, gen_items)
    reference_info, reference_items = real_info, real_items
    if training is not None:
        reference_info, reference_items, _ = read_real(training, None, options.progress)
    if len(reference_items) >= 2:
        reference = ([to_shape(i.image, shape) for i in reference_items] if training is not None else real_volumes)
        metrics["memorization"] = {"computed": True, "reference": "training" if training is not None else "real",
                                   "reference_path": reference_info["path"], **check_memorization(
            gen_volumes, reference, get_extractor(options.extractor, seed=options.seed), [i.id for i in gen_items],
            [i.id for i in reference_items], intensity_range=window, quantile=options.memorization_quantile,
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


def check_report_folder(out: Path) -> None:
    """Refuse an output that is a file, or a non-empty folder that no evaluation wrote (evaluate replaces only
    its own metrics.json and report.html)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(out, "output exists and is not a folder", "give a folder for --out")
    if out.is_dir() and any(out.iterdir()) and not (out / "metrics.json").is_file():
        raise ConfigError(out, "folder exists, is not empty and holds no earlier evaluation (metrics.json)",
                          "choose a new --out; evaluate replaces only its own metrics.json and report.html")


def provenance(real_info: dict, folder: str | Path, generated: list[Item], seg, options: EvaluationOptions, shape,
               window) -> dict:
    """Where every number comes from: command, versions, data, models, seeds, segmentor, settings."""
    import monai
    import torch

    volumes = [{"id": i.id, "model": i.sidecar.get("model"), "model_sha256": i.sidecar.get("model_sha256"),
                "seed": i.sidecar.get("seed"), "prompt": i.prompt, "mask": i.sidecar.get("mask"),
                "steps": i.sidecar.get("steps"), "sampler": i.sidecar.get("sampler"),
                "image_sha256": i.sidecar.get("image_sha256"), "has_label": i.label is not None,
                "label_names_from": i.label_names_from} for i in generated]
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
