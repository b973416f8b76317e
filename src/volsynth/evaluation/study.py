"""Downstream augmentation study (dual-guided liver CT; 3D-LLDM): does adding synthetic image/label pairs to N real
training cases improve a segmentor on held-out real cases?

Design (``volsynth study augment``):
1. split the real dataset's labelled cases, sorted by id: the last ``n_test`` are the held-out test set,
   the first ``n_real`` of the rest the real training set. Both are fixed across settings, seeds and
   architectures, so the settings differ only by the synthetic data (a paired comparison);
2. one plan (grid, normalisation, labels) fingerprinted on the real training cases serves every run;
3. for every architecture and seed, train a segmentor on the real cases ("real") and on the real cases
   plus ``n_synthetic`` generated pairs ("real+synthetic"; label ids mapped by class name);
4. Dice and NSD per class of every run on every test case (``ignore_empty``: a case lacking a class does
   not count for it), their mean over classes per case;
5. 95% confidence intervals by a two-level bootstrap: each replicate resamples the seeds and the test
   cases with replacement and takes the mean; the interval holds the central 95% of replicates. It thus
   covers both training randomness and test-set sampling. The difference (real+synthetic - real) is
   bootstrapped paired: the same resampled seeds and cases on both sides. Also given per architecture
   and pooled over architectures (runs = architectures x seeds).
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from volsynth import __version__
from volsynth.errors import ConfigError, DatasetError
from volsynth.evaluation.inputs import read_generated_folder, read_named_label
from volsynth.evaluation.overlap import compute_dice_per_class, compute_nsd_per_class
from volsynth.evaluation.report import to_json_ready
from volsynth.evaluation.segmentor import (
    SegmentorSettings,
    labelled_cases,
    load_segmentor,
    load_segmentor_dataset,
    make_segmentor_plan,
    plan_label_ids,
    predict,
    read_case,
)
from volsynth.evaluation.segtrain import train_segmentor
from volsynth.evaluation.study_stats import replicate_means
from volsynth.io.formats import read_volume
from volsynth.io.jsonfile import read_json, write_json
from volsynth.io.volume import LabelMap

SETTINGS = ("real", "real+synthetic")
STUDY_FILE = "study.json"


@dataclass
class StudySettings:
    """What the study trains and how it summarises (saved in study.json)."""

    n_real: int | None = None  # real training cases; None: every labelled case not held out
    n_synthetic: int | None = None  # synthetic pairs added; None: every generated volume with a label map
    n_test: int | None = None  # held-out real cases; None: a quarter of the labelled cases (at least 1)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    architectures: list[str] = field(default_factory=lambda: ["segresnet", "unet"])
    segmentor: dict = field(default_factory=dict)  # SegmentorSettings overrides (size, steps, labels, ...)
    nsd_tolerance_mm: float = 2.0
    bootstrap: int = 2000
    confidence: float = 0.95


def bootstrap_mean(values: np.ndarray, replicates: int, confidence: float, seed: int = 0,
                   baseline: np.ndarray | None = None) -> dict:
    """Mean of ``values[runs, cases]`` (minus ``baseline``, paired) with a two-level bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    if baseline is not None:
        values = values - np.asarray(baseline, dtype=np.float64)
    if not np.isfinite(values).any():
        return {"mean": None, "ci": [None, None], "per_run": [None] * len(values)}
    stats = replicate_means(values, replicates, seed)  # replicates drawing only NaN cells are skipped
    per_run = [float(np.nanmean(row)) if np.isfinite(row).any() else None for row in values]
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(stats, [tail, 100.0 - tail]) if stats.size else (None, None)
    return {"mean": float(np.nanmean(values)), "ci": [None if lo is None else float(lo), None if hi is None
                                                       else float(hi)], "per_run": per_run}


def split_cases(case_ids: list[str], settings: StudySettings) -> tuple[list[str], list[str]]:
    """(real training ids, held-out test ids) of the sorted labelled cases."""
    ids = sorted(case_ids)
    n_test = settings.n_test if settings.n_test is not None else max(1, len(ids) // 4)
    if n_test < 1 or n_test >= len(ids):
        raise ConfigError(None, f"cannot hold out {n_test} of {len(ids)} labelled cases for testing",
                          "the study needs at least one training and one test case")
    pool, test = ids[:-n_test], ids[-n_test:]
    n_real = settings.n_real if settings.n_real is not None else len(pool)
    if not 1 <= n_real <= len(pool):
        raise ConfigError(None, f"n_real must be from 1 to {len(pool)} (cases not held out), got {n_real}")
    return pool[:n_real], test


def synthetic_pairs(generated: str | Path, count: int | None, fallback_labels: dict[str, int]) -> tuple[list, list]:
    """(image, label map with class names) pairs of the generated volumes that have a label map, and their ids."""

    items = [item for item in read_generated_folder(generated) if item.label_path is not None]
    if not items:
        raise DatasetError(generated, "no generated volume has a label map (<id>_label file)",
                           "generate with --mask so that every volume comes with its label map")
    if count is not None:
        if count > len(items):
            raise ConfigError(None, f"n_synthetic {count} exceeds the {len(items)} generated pairs in {generated}")
        items = items[:count]
    fallback = {name: [i] for name, i in fallback_labels.items()}
    pairs = [(read_volume(item.image_path), read_named_label(item.label_path, item.label_classes or fallback))
             for item in items]
    return pairs, [item.id for item in items]


def evaluate_run(checkpoint: Path, test_pairs: list[tuple], tolerance_mm: float) -> dict[str, dict[str, list]]:
    """Dice and NSD per class (NaN where a test case lacks the class) of one trained segmentor."""
    segmentor = load_segmentor(checkpoint)
    names = {n: i for n, i in segmentor.labels.items() if i != 0}
    scores: dict[str, dict[str, list]] = {"dice": {n: [] for n in names}, "nsd": {n: [] for n in names}}
    for image, label in test_pairs:
        reference = LabelMap(plan_label_ids(label, segmentor.plan), label.affine, labels=segmentor.labels)
        prediction = predict(segmentor, image)
        dice = compute_dice_per_class(prediction, reference, names, ignore_empty=True)
        nsd = compute_nsd_per_class(prediction, reference, tolerance_mm, names, ignore_empty=True)
        for name in names:
            scores["dice"][name].append(dice[name])
            scores["nsd"][name].append(nsd[name])
    return scores


def _case_means(per_class: dict[str, list]) -> list[float]:
    table = np.array(list(per_class.values()), dtype=np.float64)  # [classes, cases]
    return [float(np.nanmean(col)) if np.isfinite(col).any() else math.nan for col in table.T]


def summarise_study(runs: list[dict], settings: StudySettings) -> dict:
    """Means with bootstrap intervals per architecture (and pooled), per setting, and their paired difference."""
    groups = {arch: [r for r in runs if r["architecture"] == arch] for arch in settings.architectures}
    if len(settings.architectures) > 1:
        groups["pooled"] = runs
    summary: dict = {}
    for group, members in groups.items():
        by_setting = {s: sorted((r for r in members if r["setting"] == s), key=lambda r: (r["architecture"], r["seed"]))
                      for s in SETTINGS}
        classes = list(by_setting["real"][0]["scores"]["dice"])
        entry: dict = {}
        for metric in ("dice", "nsd"):
            matrices = {s: np.array([_case_means(r["scores"][metric]) for r in rs]) for s, rs in by_setting.items()}
            per_class = {s: {c: np.array([r["scores"][metric][c] for r in rs], dtype=np.float64) for c in classes}
                         for s, rs in by_setting.items()}
            options = dict(replicates=settings.bootstrap, confidence=settings.confidence)
            for s in SETTINGS:
                entry.setdefault(s, {})[metric] = bootstrap_mean(matrices[s], **options)
                entry[s].setdefault("per_class", {})[metric] = {c: bootstrap_mean(per_class[s][c], **options)
                                                                for c in classes}
            entry.setdefault("difference", {})[metric] = bootstrap_mean(matrices["real+synthetic"], **options,
                                                                        baseline=matrices["real"])
            entry["difference"].setdefault("per_class", {})[metric] = {
                c: bootstrap_mean(per_class["real+synthetic"][c], **options, baseline=per_class["real"][c])
                for c in classes}
        summary[group] = entry
    return summary


def run_augmentation_study(real: str | Path, generated: str | Path, out: str | Path,
                           settings: StudySettings | None = None, progress: bool = True,
                           command: str | None = None) -> dict:
    """Train every (architecture, seed, setting), evaluate on held-out real cases, write ``out``/study.json."""
    settings = settings or StudySettings()
    if not settings.seeds or not settings.architectures:
        raise ConfigError(None, "the study needs at least one seed and one architecture")
    out = Path(out)
    dataset = load_segmentor_dataset(real)
    cases = {c.case_id: c for c in labelled_cases(dataset)}
    train_ids, test_ids = split_cases(list(cases), settings)
    base = SegmentorSettings.from_dict(settings.segmentor)
    for architecture in settings.architectures:  # every configuration is checked before any training
        SegmentorSettings.from_dict({**asdict(base), "architecture": architecture}).check()
    plan = make_segmentor_plan(dataset, [cases[c] for c in train_ids], base)
    real_pairs = [read_case(cases[c]) for c in train_ids]
    test_pairs = [read_case(cases[c]) for c in test_ids]
    synthetic, synthetic_ids = synthetic_pairs(generated, settings.n_synthetic, dataset.labels)
    runs, start = [], time.perf_counter()
    for architecture in settings.architectures:
        for seed in settings.seeds:
            for setting in SETTINGS:
                run_settings = SegmentorSettings.from_dict({**asdict(base), "architecture": architecture,
                                                            "seed": int(seed)})
                pairs = real_pairs + (synthetic if setting == "real+synthetic" else [])
                name = f"{architecture}_{setting.replace('+', '_')}_seed{seed}"
                meta = {"study_run": name, "training_cases": train_ids,
                        "synthetic_cases": synthetic_ids if setting == "real+synthetic" else []}
                checkpoint = train_segmentor(pairs, plan, out / "runs" / name, run_settings, meta, progress)
                runs.append({"name": name, "architecture": architecture, "seed": int(seed), "setting": setting,
                             "checkpoint": str(checkpoint),
                             "scores": evaluate_run(checkpoint, test_pairs, settings.nsd_tolerance_mm)})
    result = {
        "kind": "augmentation-study",
        "settings": asdict(settings),
        "segmentor": asdict(base),
        "ci_method": f"two-level bootstrap ({settings.bootstrap} replicates) over seeds and test cases, "
                     f"central {settings.confidence:.0%}; difference paired",
        "data": {"real": str(dataset.root), "real_sha256": plan.source.get("sha256"), "generated": str(generated),
                 "train_cases": train_ids, "test_cases": test_ids, "synthetic_cases": synthetic_ids},
        "runs": runs,
        "summary": summarise_study(runs, settings),
        "provenance": {"command": command, "volsynth_version": __version__, "python": platform.python_version(),
                       "seconds": round(time.perf_counter() - start, 1),
                       "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    out.mkdir(parents=True, exist_ok=True)
    result = to_json_ready(result)
    write_json(out / STUDY_FILE, result)
    return result


def load_study(path: str | Path) -> dict:
    """A study.json (or the folder holding it), checked to be one."""
    path = Path(path)
    if path.is_dir():
        path = path / STUDY_FILE
    study = read_json(path, error=ConfigError, missing="study file not found", hint="run volsynth study augment first")
    if study.get("kind") != "augmentation-study":
        raise ConfigError(path, "not an augmentation study file")
    return study
