"""Batch generation: jobs (prompt, seed, n) -> files ``<id>_image.nii.gz`` + ``<id>.json`` sidecars
(``--format dicom``: an ``<id>_image`` series folder and the label map as a DICOM SEG ``<id>_label.dcm``).

Every job is checked before anything is generated, so bad input leaves OUT untouched. Under
``torchrun`` the expanded jobs are split across ranks (each volume once, same files as one process).
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from volsynth.data.dataset import load_dataset
from volsynth.errors import ConfigError
from volsynth.io.dicom_seg import write_dicom_seg
from volsynth.io.formats import write_volume
from volsynth.io.locks import folder_lock
from volsynth.parallel import progress_bar
from volsynth.pipelines.base import GenerationRequest, Pipeline
from volsynth.pipelines.masks import map_by_name
from volsynth.pipelines.sidecar import sidecar_record, write_sidecar

JOB_KEYS = {"prompt", "seed", "n", "id", "mask", "modality"}


@dataclass
class Job:
    """One line of a jobs file: generate ``n`` volumes for ``prompt`` from seeds ``seed``, ``seed+1``, ..."""

    prompt: str = ""
    seed: int = 0
    n: int = 1
    id: str | None = None
    mask: str | None = None
    modality: str | None = None


def read_jobs(path: str | Path) -> list[Job]:
    """Parse a JSON-lines jobs file; any bad line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "jobs file not found")
    jobs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(where, f"invalid JSON ({exc.msg})") from exc
        if not isinstance(entry, dict):
            raise ConfigError(where, "a job must be a JSON object")
        unknown = sorted(set(entry) - JOB_KEYS)
        if unknown:
            raise ConfigError(where, f"unknown job key(s) {unknown}", f"known: {sorted(JOB_KEYS)}")
        try:
            job = Job(prompt=str(entry.get("prompt", "")), seed=int(entry.get("seed", 0)), n=int(entry.get("n", 1)),
                      id=str(entry["id"]) if "id" in entry else None,
                      mask=str(path.parent / entry["mask"]) if entry.get("mask") else None,
                      modality=str(entry["modality"]).upper() if entry.get("modality") else None)
        except (TypeError, ValueError) as exc:
            raise ConfigError(where, f"bad job value ({exc})") from exc
        if job.n < 1:
            raise ConfigError(where, f"n must be >= 1, got {job.n}")
        jobs.append(job)
    if not jobs:
        raise ConfigError(path, "jobs file has no jobs")
    return jobs


def jobs_from_dataset(root: str | Path, prompt: str | None = None, seed: int = 0, n: int = 1,
                      modality: str | None = None, limit: int | None = None, masks: bool = True) -> list[Job]:
    """One job per case of a dataset (the first ``limit``), the case id as the id, seeds ``seed``, ``seed + n``, ...
    in case order. With ``masks``: labelled cases, each with its label map as the mask. Without: text only,
    cases with a report. The prompt is the case's report, or ``prompt`` for all."""
    if limit is not None and limit < 1:
        raise ConfigError(None, f"--limit must be >= 1, got {limit}")
    dataset = load_dataset(root)
    if masks:
        cases = [c for c in dataset.cases if c.label is not None and c.label.exists()][:limit]
        if not cases:
            raise ConfigError(dataset.root, "dataset has no label maps to generate from")
    else:
        cases = [c for c in dataset.cases if prompt is not None or (c.report or "").strip()][:limit]
        if not cases:
            raise ConfigError(dataset.root, "dataset has no reports to generate from", "give --prompt for all cases")
    return [Job(prompt=(case.report or "") if prompt is None else prompt, seed=seed + number * n, n=n, id=case.case_id,
                mask=str(case.label) if masks else None, modality=modality) for number, case in enumerate(cases)]


def dataset_mask_labels(root: str | Path, model_labels: dict[str, int]) -> dict[str, list[int]] | None:
    """How a dataset's label maps give the model's classes: by the names its ``dataset.json`` gives its ids (its
    ids need not be the model's); None when it names none."""
    names = {name: int(i) for name, i in (load_dataset(root).labels or {}).items() if int(i) != 0}
    return map_by_name(names, model_labels, Path(root) / "dataset.json") if names else None


def expand(jobs: list[Job]) -> list[tuple[str, Job, int]]:
    """(output id, job, seed) for every volume to make, in a fixed order."""
    items, seen = [], set()
    for number, job in enumerate(jobs):
        for k in range(job.n):
            base = job.id or f"job{number:03d}"
            name = f"{base}_{k:02d}" if job.n > 1 or job.id is None else base
            if name in seen:
                raise ConfigError(None, f"duplicate output id '{name}'", "give each job a unique id")
            seen.add(name)
            items.append((name, job, job.seed + k))
    return items


def job_request(job: Job, seed: int, options: dict) -> GenerationRequest:
    """The request for one volume of a job: its prompt, mask and modality, ``seed``, and the shared options."""
    try:
        return GenerationRequest(prompt=job.prompt, mask=job.mask, modality=job.modality, seed=seed, **options)
    except TypeError as exc:
        raise ConfigError(None, f"bad generation option ({exc})") from exc


def check_masks(pipeline, jobs: list[Job], mask_labels: dict | None, body_ct=None) -> None:
    """Read and map every job's mask (with the CT its body label comes from, for a model that takes one) before
    anything is generated: bad masks fail early."""
    extra = {} if body_ct is None else {"body_ct": body_ct}  # only models that take --body-ct get here with one
    for job in jobs:
        if job.mask:
            pipeline.prepare_mask(job.mask, mask_labels, modality=job.modality, **extra)


def output_paths(out: Path, name: str, image_format: str) -> dict[str, Path]:
    """The files one generated volume is written to."""
    suffix = ".nii.gz" if image_format == "nifti" else ""
    label_suffix = suffix if image_format == "nifti" else ".dcm"  # DICOM: a SEG object referencing the series
    return {"image": out / f"{name}_image{suffix}", "label": out / f"{name}_label{label_suffix}",
            "sidecar": out / f"{name}.json"}


def run_jobs(pipeline: Pipeline, jobs: list[Job], out: str | Path, image_format: str = "nifti",
             progress: bool = True, overwrite: bool = False, **options) -> list[Path]:
    """Generate every job's volumes into ``out``; returns the sidecar paths this rank wrote.

    ``options`` are GenerationRequest fields shared by every job (steps, sampler, guidance scales, mask_labels,
    refine, ...); unset sampling settings come from the model's recommendation. Every request is checked, every
    mask read and every output name checked before anything is generated: a refused option, a bad mask or an
    existing output (without ``overwrite``) leaves OUT untouched. Files already in OUT are never replaced unless
    ``overwrite``; nothing else in OUT is touched."""
    out = Path(out)
    if image_format not in ("nifti", "dicom"):
        raise ConfigError(None, f"unknown format '{image_format}'", "use nifti or dicom")
    if out.exists() and not out.is_dir():
        raise ConfigError(out, "output exists and is not a folder", "give a folder for --out")
    items, samplers = [], set()
    for name, job, seed in expand(jobs):
        request = job_request(job, seed, options)
        pipeline.check(request)
        samplers.add(pipeline.resolve(request)["sampler"])
        items.append((name, job, request))
    for sampler in samplers:
        pipeline.scheduler(sampler)  # a sampler the model cannot use fails now, once per sampler
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    mine = items[rank::world]  # each rank checks its own files: another rank may be writing its own already
    check_masks(pipeline, jobs, options.get("mask_labels"), options.get("body_ct"))
    # one run writes into OUT at a time (under torchrun rank 0 holds the lock for all ranks)
    with folder_lock(out, "generate") if rank == 0 else nullcontext():
        existing = [p for name, _, _ in mine for p in output_paths(out, name, image_format).values() if p.exists()]
        if existing and not overwrite:
            raise ConfigError(existing[0], f"output exists ({len(existing)} file(s) of this run are already in {out})",
                              "choose another --out, or give --overwrite to replace them")
        out.mkdir(parents=True, exist_ok=True)
        return _generate_items(pipeline, mine, out, image_format, progress and rank == 0)


def _generate_items(pipeline: Pipeline, items: list, out: Path, image_format: str, progress: bool) -> list[Path]:
    """Generate and write each (name, job, request); the sidecar paths written."""
    written = []
    with progress_bar(progress) as bar:
        task = bar.add_task("generate", total=len(items))
        for name, job, request in items:
            result = pipeline(request)
            paths = output_paths(out, name, image_format)
            write_volume(result.image, paths["image"], description=f"volsynth synthetic: {job.prompt}"[:64])
            label = None
            if result.label is not None and image_format == "dicom":
                label = write_dicom_seg(result.label, paths["image"], paths["label"])
            elif result.label is not None:
                label = write_volume(result.label, paths["label"], description="volsynth synthetic label map")
            written.append(write_sidecar(paths["sidecar"], sidecar_record(result, name, paths["image"], label,
                                                                           image_format, job=asdict(job))))
            bar.advance(task)
    return written
