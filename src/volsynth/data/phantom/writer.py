"""Write a phantom dataset in the nnU-Net v2 layout with ``reports.jsonl`` (see volsynth.data.dataset).

Cases are generated and written in worker processes (so a large dataset never waits on one
process compressing NIfTI files, nor piles up in memory), then ``dataset.json`` and the reports
are written by the calling process. Everything goes to a temporary sibling folder that replaces
``out`` only when complete. Case ``n`` uses the child seed ``n`` of ``SeedSequence(seed)``, so
results do not depend on the number of workers.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from volsynth.data.dataset import REPORTS_FILE, write_dataset_json, write_reports
from volsynth.data.phantom.generate import (
    FIELD_OF_VIEW_MM,
    GENERATOR_VERSION,
    LABELS,
    PhantomCase,
    check_request,
    generate_case,
)
from volsynth.errors import ConfigError
from volsynth.io import LabelMap, Volume, atomic_output, write_volume
from volsynth.io.volume import spacing_of
from volsynth.parallel import map_progress
from volsynth.viz import save_montage

PREVIEW_CASES = 4
PREVIEW_WINDOWS = {"abdomen-ct": (-160.0, 240.0), "abdomen-mr": None, "chest-ct": (-1000.0, 200.0)}


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` in a dataset generated with ``seed`` (child of a SeedSequence)."""
    child = np.random.SeedSequence(int(seed), spawn_key=(int(index),))
    return int(child.generate_state(1, dtype=np.uint64)[0])


def _make_case(job: tuple[int, int, str], kind: str, size: int, spacing: float | None, root: str,
               keep: int, generator_version: int) -> tuple[str, str, dict, tuple | None]:
    index, seed, case_id = job
    case = generate_case(kind, seed, size=size, spacing=spacing, case_id=case_id, generator_version=generator_version)
    write_case(case, Path(root), kind)
    arrays = (case.image, case.labels, case.affine) if index < keep else None
    return case.case_id, case.report, case.facts, arrays


def write_case(case: PhantomCase, root: Path, kind: str) -> None:
    """Write one case's image and label map into ``root``/imagesTr and ``root``/labelsTr."""
    modality = "MR" if kind.endswith("mr") else "CT"
    write_volume(Volume(case.image, case.affine, modality=modality), root / "imagesTr" / f"{case.case_id}_0000.nii.gz")
    write_volume(LabelMap(case.labels, case.affine, labels=LABELS[kind]), root / "labelsTr" / f"{case.case_id}.nii.gz")


def write_phantom_dataset(kind: str, out: Path, cases: int, size: int = 64, spacing: float | None = None,
                          seed: int = 0, workers: int = 1, progress: bool = True, preview: bool = False,
                          generator_version: int = GENERATOR_VERSION) -> Path:
    """Generate ``cases`` phantoms of ``kind`` into a new dataset folder ``out``; returns its path. The generator
    version (recorded in ``dataset.json``) picks the lesion model: 1 the original, 2 (default) ``lesions``."""
    check_request(kind, size, spacing, generator_version=generator_version)
    if not isinstance(cases, (int, np.integer)) or cases < 1:
        raise ConfigError(None, f"cases must be a positive integer, got {cases!r}")
    out = Path(out)
    prefix = kind.replace("-", "_")
    jobs = [(n, case_seed(seed, n), f"{prefix}_{n:04d}") for n in range(cases)]
    with atomic_output(out, overwrite=False) as tmp:
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        make = partial(_make_case, kind=kind, size=size, spacing=spacing, root=str(tmp),
                       keep=PREVIEW_CASES if preview else 0, generator_version=generator_version)
        results = list(map_progress(make, jobs, workers, f"phantom {kind}", progress))
        modality = "MR" if kind.endswith("mr") else "CT"
        fov = FIELD_OF_VIEW_MM if spacing is None else spacing * size
        description = (f"volsynth procedural {kind} phantoms: {cases} cases, {size}^3 voxels, {fov:g} mm field "
                       f"of view, seed {seed}")
        write_dataset_json(tmp, LABELS[kind], {"0": modality}, cases, out.name, description,
                           phantom_generator={"kind": kind, "version": int(generator_version)})
        write_reports(tmp / REPORTS_FILE, [{"case": c, "report": r, "facts": f} for c, r, f, _ in results])
        if preview:
            _write_preview(tmp / "preview.png", kind, [r for r in results if r[3] is not None])
    return out


def _write_preview(path: Path, kind: str, results: list) -> None:

    images, labels, centres, spacings = [], [], [], []
    for _, _, _, (image, label, affine) in results:
        focus = label == 1 if kind.startswith("abdomen") else (label >= 1) & (label <= 3)  # liver / right lung
        focus = focus if focus.any() else label > 0
        centre = np.argwhere(focus).mean(axis=0) if focus.any() else np.array(label.shape) / 2
        images.append(image)
        labels.append(label)
        centres.append(tuple(int(round(c)) for c in centre))
        spacings.append(tuple(spacing_of(affine)))
    save_montage(path, images, labels, [r[0] for r in results], PREVIEW_WINDOWS[kind], centres, spacings)
