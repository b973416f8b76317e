"""Per-class overlap of two label maps on one grid: Dice and normalised surface Dice (NSD).

Both wrap MONAI (``compute_dice``, ``compute_surface_dice``) and return ``{class_name: value}`` for every
foreground class (background, id 0, is left out).

Empty classes (a fixed convention, the same for both metrics):
- absent from both maps: **1.0** (the maps agree perfectly), with ``ignore_empty=False`` (default);
- absent from the reference only, present in the prediction: 0.0;
- ``ignore_empty=True``: NaN whenever the reference lacks the class (MONAI's ``ignore_empty``), so that
  a mean over cases covers only cases that have the class.

NSD: a boundary voxel counts as correct when its distance to the other map's boundary is at most the
class tolerance τ, in **millimetres** (distances use the label maps' voxel spacing). Boundaries are the
voxels of a mask with a 6-neighbour outside it (MONAI's default, ``use_subvoxels=False``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from monai.metrics import compute_dice, compute_surface_dice

from volsynth.errors import ConfigError
from volsynth.evaluation._checks import require_same_geometry
from volsynth.io.volume import LabelMap

DEFAULT_TOLERANCE_MM = 2.0


def class_names(pred: LabelMap, ref: LabelMap, labels: Mapping[str, int] | None = None) -> dict[str, int]:
    """Foreground classes as name -> id: from ``labels``, else the reference's, else the ids present in either map."""
    labels = labels or ref.labels or pred.labels
    if labels:
        named = {str(name): int(i) for name, i in labels.items() if int(i) != 0}
    else:
        named = {str(i): i for i in sorted(set(ref.present()) | set(pred.present()))}
    return dict(sorted(named.items(), key=lambda item: item[1]))


def _mask(labels: LabelMap, class_id: int) -> torch.Tensor:
    return torch.from_numpy(np.asarray(labels.array) == class_id)[None, None].float()  # [1, 1, X, Y, Z]


def _empty_convention(value: float, pred_has: bool, ref_has: bool, ignore_empty: bool) -> float:
    if not ref_has:
        if ignore_empty:
            return math.nan
        return 0.0 if pred_has else 1.0
    return value


def compute_dice_per_class(pred: LabelMap, ref: LabelMap, labels: Mapping[str, int] | None = None,
                           ignore_empty: bool = False) -> dict[str, float]:
    """Dice per foreground class of ``pred`` against ``ref`` (same grid); both-empty classes give 1.0."""
    require_same_geometry(pred, ref, "label maps")
    names = class_names(pred, ref, labels)
    if not names:
        return {}
    result = {}
    for name, class_id in names.items():  # one class at a time: memory stays at two masks
        mask_pred, mask_ref = _mask(pred, class_id), _mask(ref, class_id)
        value = float(compute_dice(mask_pred, mask_ref, include_background=True, ignore_empty=ignore_empty)[0, 0])
        result[name] = _empty_convention(value, bool(mask_pred.any()), bool(mask_ref.any()), ignore_empty)
    return result


def _tolerances(names: dict[str, int], tolerance_mm: float | Mapping[str, float]) -> list[float]:
    if isinstance(tolerance_mm, Mapping):
        missing = [name for name in names if name not in tolerance_mm]
        if missing:
            raise ConfigError(None, f"no NSD tolerance for class(es) {', '.join(missing)}",
                              "give a tolerance in mm for every class, or one number for all")
        values = [float(tolerance_mm[name]) for name in names]
    else:
        values = [float(tolerance_mm)] * len(names)
    if any(not (math.isfinite(v) and v >= 0) for v in values):
        raise ConfigError(None, f"NSD tolerances must be finite and >= 0 mm, got {values}")
    return values


def compute_nsd_per_class(pred: LabelMap, ref: LabelMap,
                          tolerance_mm: float | Mapping[str, float] = DEFAULT_TOLERANCE_MM,
                          labels: Mapping[str, int] | None = None, ignore_empty: bool = False) -> dict[str, float]:
    """Normalised surface Dice per class at tolerance(s) in mm (one number, or class name -> mm)."""
    require_same_geometry(pred, ref, "label maps")
    names = class_names(pred, ref, labels)
    if not names:
        return {}
    spacing = [float(s) for s in ref.spacing]
    result = {}
    for (name, class_id), tolerance in zip(names.items(), _tolerances(names, tolerance_mm), strict=True):
        mask_pred, mask_ref = _mask(pred, class_id), _mask(ref, class_id)
        with warnings.catch_warnings():  # MONAI warns about empty classes; the convention below handles them
            warnings.simplefilter("ignore")
            value = float(compute_surface_dice(mask_pred, mask_ref, class_thresholds=[tolerance],
                                               include_background=True, spacing=spacing)[0, 0])
        result[name] = _empty_convention(value, bool(mask_pred.any()), bool(mask_ref.any()), ignore_empty)
    return result


class _PerClassMean:
    """Accumulates ``{class: value}`` per case; ``aggregate`` gives per-class means over cases (NaNs skipped)."""

    def __init__(self, labels: Mapping[str, int] | None = None, ignore_empty: bool = False) -> None:
        self.labels = labels
        self.ignore_empty = ignore_empty
        self.values: list[dict[str, float]] = []

    def _compute(self, pred: LabelMap, ref: LabelMap) -> dict[str, float]:
        raise NotImplementedError

    def __call__(self, pred: LabelMap, ref: LabelMap) -> dict[str, float]:
        """Per-class values of one case, also kept for ``aggregate``."""
        value = self._compute(pred, ref)
        self.values.append(value)
        return value

    def aggregate(self) -> dict[str, float]:
        """Per-class mean over the cases seen so far, NaN entries skipped (NaN if a class has none)."""
        names = list(dict.fromkeys(name for case in self.values for name in case))
        result = {}
        for name in names:
            finite = [case[name] for case in self.values if name in case and not math.isnan(case[name])]
            result[name] = float(np.mean(finite)) if finite else math.nan
        return result

    def reset(self) -> None:
        """Forget the cases seen so far."""
        self.values = []


class DicePerClass(_PerClassMean):
    """Dice per class (``compute_dice_per_class``) with per-class means over cases."""

    def _compute(self, pred: LabelMap, ref: LabelMap) -> dict[str, float]:
        return compute_dice_per_class(pred, ref, self.labels, self.ignore_empty)


class SurfaceDicePerClass(_PerClassMean):
    """NSD per class (``compute_nsd_per_class``) at tolerances in mm, with per-class means over cases."""

    def __init__(self, tolerance_mm: float | Mapping[str, float] = DEFAULT_TOLERANCE_MM,
                 labels: Mapping[str, int] | None = None, ignore_empty: bool = False) -> None:
        super().__init__(labels, ignore_empty)
        self.tolerance_mm = tolerance_mm

    def _compute(self, pred: LabelMap, ref: LabelMap) -> dict[str, float]:
        return compute_nsd_per_class(pred, ref, self.tolerance_mm, self.labels, self.ignore_empty)


def confusion_counts(pred: LabelMap, ref: LabelMap, num_classes: int) -> np.ndarray:
    """Voxel counts ``[reference id, predicted id]`` over ids ``0 .. num_classes - 1`` (same grid). Ids outside
    that range are an error: a count matrix that silently dropped them would not add up to the volume."""
    require_same_geometry(pred, ref, "label maps")
    ref_ids, pred_ids = np.asarray(ref.array).astype(np.int64).ravel(), np.asarray(pred.array).astype(np.int64).ravel()
    for name, ids in (("reference", ref_ids), ("prediction", pred_ids)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ConfigError(None, f"{name} label map has ids outside 0..{num_classes - 1}")
    return np.bincount(ref_ids * num_classes + pred_ids, minlength=num_classes**2).reshape(num_classes, num_classes)


def confusion_summary(counts: np.ndarray | list, names: list[str], top: int = 3) -> dict[str, dict]:
    """Where each foreground class's errors go, from a summed ``confusion_counts`` matrix (names by id).

    Per class with reference voxels: ``voxels`` (in the reference), ``missed`` (share of them predicted as
    another class) with ``missed_as`` (the ``top`` classes they went to, each as a share of the class's voxels),
    and ``false`` (voxels predicted as the class that the reference gives another, as a share of the class's
    voxels) with ``false_from`` (what the reference has there)."""
    counts = np.asarray(counts, dtype=np.int64)

    def shares(row: np.ndarray, voxels: int) -> dict[str, float]:
        order = [i for i in np.argsort(-row, kind="stable")[:top] if row[i] > 0]
        return {names[i]: float(row[i] / voxels) for i in order}

    summary = {}
    for index, name in enumerate(names):
        voxels = int(counts[index].sum())
        if index == 0 or voxels == 0:
            continue
        missed, false = counts[index].copy(), counts[:, index].copy()
        missed[index] = false[index] = 0
        summary[name] = {"voxels": voxels, "missed": float(missed.sum() / voxels), "missed_as": shares(missed, voxels),
                         "false": float(false.sum() / voxels), "false_from": shares(false, voxels)}
    return summary


def mean_per_class(rows: list[dict[str, float]]) -> dict[str, float | None]:
    """Mean of each class over the rows, skipping missing, None and NaN values (None when none is left)."""
    names = list(dict.fromkeys(n for r in rows for n in r))
    result = {}
    for name in names:
        values = [r[name] for r in rows if name in r and r[name] is not None and np.isfinite(r[name])]
        result[name] = float(np.mean(values)) if values else None
    return result
