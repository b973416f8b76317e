"""Masks from users and other tools: map their label ids to the model's classes, check them, and
place the model's grid on them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from volsynth.data.labelspec import read_label_spec
from volsynth.data.plan import Plan
from volsynth.data.vocabularies import LabelPreset, vocabulary_names
from volsynth.errors import ConfigError, VolsynthError
from volsynth.io.formats import read_label
from volsynth.io.resample import resample_to, snap_to_lattice
from volsynth.io.volume import LabelMap

FOV_WARNING_RATIO = 1.5  # warn when the mask's field of view or spacing is this far from the plan's


class MaskWarning(UserWarning):
    """A mask was accepted but something about it may surprise (ignored ids, odd geometry)."""


def parse_mask_labels(spec: str | None) -> dict[str, list[int]] | LabelPreset | None:
    """``"liver=5,vessels=6+7"`` -> {"liver": [5], "vessels": [6, 7]}; a preset (``totalsegmentator``,
    ``totalsegmentator:liver,spleen``) -> a LabelPreset, resolved against the model's classes by ``map_mask``;
    None stays None (the model's ids)."""
    if not spec:
        return None
    written = read_label_spec(spec)
    if isinstance(written, LabelPreset):
        return written
    for name, ids in written:
        if not all(i.isdigit() for i in ids):
            raise ConfigError(None, f"bad --mask-labels entry '{name}={'+'.join(ids)}'",
                              f"write name=id, e.g. liver=5,vessels=6+7, or a preset: {', '.join(vocabulary_names())}")
    return {name: [int(i) for i in ids] for name, ids in written}


def load_mask(mask: LabelMap | str | Path) -> tuple[LabelMap, str | None]:
    """A LabelMap from an object or a file; returns it and the file path (for provenance)."""
    if isinstance(mask, LabelMap):
        return mask, None
    return read_label(mask), str(mask)


def map_mask(mask: LabelMap, model_labels: dict[str, int],
             mask_labels: dict[str, int | list[int]] | LabelPreset | None,
             source: str | None = None) -> tuple[LabelMap, list[str]]:
    """The mask with the model's label ids, and the names of the classes it gives.

    Without ``mask_labels``, a mask that names its classes (a DICOM SEG's segments, a LabelMap's labels) maps by
    those names (case, spaces and hyphens aside); one that does not must use the model's ids (other ids are an
    error). With ``mask_labels``, or when mapped by name, ids not mapped are ignored with a warning that lists
    them. With a preset, the mask's ids must be the vocabulary's, and the model classes the vocabulary cannot
    give are not given.
    """
    present = set(mask.present())
    if mask_labels is None and mask.labels:
        mask_labels = map_by_name(mask.labels, model_labels, source)
    if isinstance(mask_labels, LabelPreset):
        preset = mask_labels
        if mask.labels and not set(mask.labels) <= {"background"}:  # named classes: to the vocabulary's ids
            try:
                table = preset.translate(mask.labels)
            except ConfigError as exc:
                raise VolsynthError(source, exc.problem, exc.hint) from exc
            lookup = np.zeros(max([*table, int(mask.array.max())]) + 1, dtype=np.int32)
            for mask_id, vocabulary_id in table.items():
                lookup[mask_id] = vocabulary_id
            mask = LabelMap(lookup[mask.array], mask.affine)
            present = set(mask.present())
        unknown = preset.unknown_ids(present)
        if unknown:
            raise VolsynthError(source, f"label ids {unknown} in mask are not in the {preset.vocabulary} vocabulary",
                                "choose the preset the mask was made with, or write name=id")
        mask_labels = preset.mapping(model_labels)
        if not mask_labels:
            raise ConfigError(None, f"the {preset} preset gives none of the model's classes",
                              f"model classes: {list(model_labels)}")
    if mask_labels is None:
        unknown = sorted(present - set(model_labels.values()))
        if unknown:
            raise VolsynthError(source, f"unknown label ids {unknown} in mask (model labels: {model_labels})",
                                "map your ids with --mask-labels name=id")
        mapping = {name: [i] for name, i in model_labels.items()}
    else:
        bad = sorted(set(mask_labels) - set(model_labels))
        if bad:
            raise ConfigError(None, f"--mask-labels names {bad} are not model classes", f"model: {list(model_labels)}")
        mapping = {name: ids if isinstance(ids, list) else [ids] for name, ids in mask_labels.items()}
        ignored = sorted(present - {i for ids in mapping.values() for i in ids})
        if ignored:
            shown = f"{ignored[:12]}" if len(ignored) <= 12 else f"{ignored[:12]} and {len(ignored) - 12} more"
            warnings.warn(f"{source or 'mask'}: label ids {shown} are not mapped to model classes and are ignored",
                          MaskWarning, stacklevel=2)
    out = np.zeros(mask.shape, dtype=np.uint8)
    for name, user_ids in mapping.items():
        out[np.isin(mask.array, user_ids)] = model_labels[name]
    if not out.any():
        raise VolsynthError(source, "mask is empty: none of the model's classes is present",
                            f"model classes: {list(model_labels)}")
    return LabelMap(out, mask.affine, labels=dict(model_labels)), list(mapping)


def _name_key(name: str) -> str:
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


def map_by_name(names: dict[str, int], model_labels: dict[str, int], source: str | Path | None = None
                ) -> dict[str, list[int]]:
    """Model class -> the mask's ids, for the mask's named classes that are model classes (a ``mask_labels`` for
    ``map_mask``). A named class with no voxel stays in: the mask says it is absent. None of the names a model
    class is an error naming ``source``."""
    model = {_name_key(n): n for n in model_labels}
    mapping: dict[str, list[int]] = {}
    for name, mask_id in names.items():
        if int(mask_id) != 0 and _name_key(name) in model:
            mapping.setdefault(model[_name_key(name)], []).append(int(mask_id))
    if not mapping:
        named = ", ".join(f"{n}={i}" for n, i in names.items() if int(i) != 0)
        raise VolsynthError(source, f"the mask names its classes ({named}) and none is a model class "
                            f"({', '.join(model_labels)})", "map them with --mask-labels name=id")
    return mapping


def grid_centre_for(mask: LabelMap, plan: Plan) -> np.ndarray:
    """Centre of the model's grid on this mask: the plan's ROI classes if present, else the mask's centre;
    snapped onto the mask's voxel lattice (``snap_to_lattice``)."""
    centre = (np.asarray(mask.shape, dtype=np.float64) - 1) / 2
    if plan.roi:
        ids = [plan.labels[n] for n in plan.roi["labels"] if n in plan.labels]
        voxels = np.argwhere(np.isin(mask.array, ids))
        if voxels.size:
            centre = (voxels.min(0) + voxels.max(0)) / 2
    return snap_to_lattice((mask.affine @ np.append(centre, 1.0))[:3], mask.affine, plan.size, plan.spacing)


def geometry_warnings(mask: LabelMap, plan: Plan, source: str | None = None) -> None:
    """Warn when the mask's spacing or field of view is far from what the model was trained on."""
    spacing = mask.spacing
    ratio = np.maximum(spacing / np.asarray(plan.spacing), np.asarray(plan.spacing) / spacing)
    if np.any(ratio > FOV_WARNING_RATIO):
        warnings.warn(f"{source or 'mask'}: spacing {np.round(spacing, 2).tolist()} mm is far from the model's "
                      f"{np.round(plan.spacing, 2).tolist()} mm; the mask is resampled", MaskWarning, stacklevel=2)
    fov = spacing * np.asarray(mask.shape)
    plan_fov = np.asarray(plan.spacing) * np.asarray(plan.size)
    if np.any(fov > FOV_WARNING_RATIO * plan_fov):
        warnings.warn(f"{source or 'mask'}: field of view {np.round(fov).tolist()} mm exceeds the model's "
                      f"{np.round(plan_fov).tolist()} mm; voxels outside it are filled with the background value",
                      MaskWarning, stacklevel=2)


def place_mask(mask: LabelMap | str | Path, plan: Plan, mask_labels: dict | None = None,
               known: list[str] | None = None):
    """Load, map and check a mask, and resample it onto the plan's grid centred on it.

    Returns (mapped mask on its own grid, plan-grid affine, mask on the plan grid, known class names,
    source path). ``known`` defaults to the classes the mask gives.
    """
    label, source = load_mask(mask)
    mapped, given = map_mask(label, plan.labels, mask_labels, source)
    geometry_warnings(mapped, plan, source)
    grid = plan.grid(grid_centre_for(mapped, plan))
    on_grid = resample_to(mapped, grid, plan.size)
    return mapped, grid, on_grid, (given if known is None else list(known)), source


def class_flags(plan: Plan, known: list[str]) -> tuple[list[str], list[int], torch.Tensor]:
    """Class names and ids in id order, and a [1, K] known-flag tensor."""
    names = sorted(plan.labels, key=plan.labels.get)
    return names, [plan.labels[n] for n in names], torch.tensor([[1.0 if n in known else 0.0 for n in names]])
