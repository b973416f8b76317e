"""``volsynth verify``: check every case of a dataset and list each problem with its file."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from volsynth.data.dataset import Case, load_dataset
from volsynth.errors import VolsynthError
from volsynth.io.formats import read_array
from volsynth.io.volume import LABEL_TOLERANCE, orthogonality_error, spacing_of
from volsynth.parallel import map_progress

AFFINE_TOLERANCE_MM = 1e-3  # largest allowed |difference| between image and label affine entries
ORTHOGONALITY_TOLERANCE = 1e-3  # largest allowed |cos| between two axis directions
SPACING_RANGE_MM = (0.0, 20.0)  # spacing must be > 0 and <= 20 mm


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset: the file it concerns and what is wrong."""

    file: str
    problem: str
    case: str | None = None


def verify_dataset(root: str | Path, workers: int = 1, progress: bool = False) -> list[Problem]:
    """Check a dataset folder; returns every problem found (an empty list when clean)."""
    try:
        dataset = load_dataset(root)
    except VolsynthError as exc:
        return [Problem(exc.path or str(root), exc.problem + (f" ({exc.hint})" if exc.hint else ""))]
    problems = [Problem(file, problem) for file, problem in dataset.problems]
    if not dataset.cases:
        problems.append(Problem(str(Path(root) / "dataset.json"), "dataset has no cases"))
    label_ids = set(dataset.labels.values())
    check = partial(check_case, label_ids=frozenset(label_ids))
    for case_problems in map_progress(check, dataset.cases, workers, "verify", progress):
        problems.extend(case_problems)
    return problems


def _geometry_problems(path: Path, array: np.ndarray, affine: np.ndarray, case_id: str) -> list[Problem]:
    problems = []
    if array.ndim != 3:
        return [Problem(str(path), f"not 3D: shape {tuple(array.shape)}", case_id)]
    spacing = spacing_of(affine)
    low, high = SPACING_RANGE_MM
    if np.any(spacing <= low) or np.any(spacing > high):
        problems.append(Problem(str(path), f"absurd spacing {np.round(spacing, 4).tolist()} mm "
                                f"(must be > {low:g} and <= {high:g})", case_id))
    elif orthogonality_error(affine) > ORTHOGONALITY_TOLERANCE:
        problems.append(Problem(str(path), f"non-orthogonal direction matrix (axes |cos| up to "
                                f"{orthogonality_error(affine):.3g}, tolerance {ORTHOGONALITY_TOLERANCE:g})",
                                case_id))
    return problems


def _read(path: Path, case_id: str) -> tuple[np.ndarray | None, np.ndarray | None, list[Problem]]:
    if not path.exists():
        return None, None, [Problem(str(path), "missing file", case_id)]
    try:
        array, affine, _ = read_array(path)
    except VolsynthError as exc:
        return None, None, [Problem(str(path), exc.problem + (f" ({exc.hint})" if exc.hint else ""), case_id)]
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    return array, affine, _geometry_problems(path, array, affine, case_id)


def check_case(case: Case, label_ids: frozenset[int]) -> list[Problem]:
    """All problems of one case: files, dimensions, values, geometry and labels."""
    problems: list[Problem] = []
    reference: tuple[Path, np.ndarray, np.ndarray] | None = None
    for path in case.images:
        array, affine, found = _read(path, case.case_id)
        problems.extend(found)
        if array is None or array.ndim != 3:
            continue
        if np.issubdtype(array.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(array)))
            if bad:
                problems.append(Problem(str(path), f"{bad} NaN/Inf voxel(s)", case.case_id))
        if reference is None:
            reference = (path, array, affine)
        else:
            problems.extend(_match_problems(reference, (path, array, affine), case.case_id))
    if case.label is None:
        return problems
    array, affine, found = _read(case.label, case.case_id)
    problems.extend(found)
    if array is None or array.ndim != 3:
        return problems
    problems.extend(_label_value_problems(case.label, array, label_ids, case.case_id))
    if reference is not None:
        problems.extend(_match_problems(reference, (case.label, array, affine), case.case_id))
    return problems


def _label_value_problems(path: Path, array: np.ndarray, label_ids: frozenset[int], case_id: str) -> list[Problem]:
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            return [Problem(str(path), "label map has NaN/Inf values", case_id)]
        off = np.abs(array - np.rint(array)) > LABEL_TOLERANCE  # as LabelMap reads it: 0.9999999 is label 1
        if off.any():
            return [Problem(str(path), f"labels are not integer ({int(off.sum())} voxel(s) with fractional values, "
                            f"e.g. {array[off].flat[0]:g})", case_id)]
        array = np.rint(array)
    values = {int(v) for v in np.unique(array)}
    unknown = sorted(values - set(label_ids))
    problems = []
    if unknown:
        problems.append(Problem(str(path), f"label ids {unknown} not in dataset.json labels "
                                f"{sorted(label_ids)}", case_id))
    if values <= {0}:
        problems.append(Problem(str(path), "empty label map (only background)", case_id))
    return problems


def _match_problems(reference: tuple[Path, np.ndarray, np.ndarray], other: tuple[Path, np.ndarray, np.ndarray],
                    case_id: str) -> list[Problem]:
    ref_path, ref_array, ref_affine = reference
    path, array, affine = other
    if array.shape != ref_array.shape:
        return [Problem(str(path), f"shape {array.shape} differs from {ref_path.name} {ref_array.shape}", case_id)]
    difference = float(np.abs(affine - ref_affine).max())
    if difference > AFFINE_TOLERANCE_MM:
        return [Problem(str(path), f"affine differs from {ref_path.name} by up to {difference:.4g} "
                        f"(tolerance {AFFINE_TOLERANCE_MM:g} mm)", case_id)]
    return []
