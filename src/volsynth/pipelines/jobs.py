"""Batch generation: jobs (prompt, seed, n) -> files ``<id>_image.nii.gz`` + ``<id>.json`` sidecars.

Every job is checked before anything is generated, so bad input leaves OUT untouched. Under
``torchrun`` the expanded jobs are split across ranks (each volume once, same files as one process).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from volsynth import __version__
from volsynth.errors import ConfigError
from volsynth.io.formats import write_volume
from volsynth.io.jsonfile import read_json, write_json
from volsynth.parallel import progress_bar

JOB_KEYS = {"prompt", "seed", "n", "id", "mask", "modality"}
# Sampling settings when neither the command nor the model (``sampling`` in its meta.json) gives them.
SAMPLING_DEFAULTS = {"steps": 30, "sampler": "ddim", "text_guidance": 3.0, "mask_guidance": 1.0,
                     "controlnet_scale": 1.0, "refiner_guidance": 1.0}


# Key of a model's ``sampling`` recommendation that holds the settings recommended when a mask guides (e.g. a
# lower text guidance: text guidance pulls samples away from the mask), over the model's plain recommendation.
WITH_MASK = "with_mask"


def sampling_settings(model_path: str | Path | None, masked: bool = False, **given) -> dict:
    """Each sampling setting from ``given`` (not None), else the model's recommendation (with its ``with_mask``
    settings over it when ``masked``), else SAMPLING_DEFAULTS."""
    meta = Path(model_path) / "meta.json" if model_path is not None else None
    recommended = dict((read_json(meta).get("sampling") or {}) if meta is not None and meta.is_file() else {})
    with_mask = recommended.pop(WITH_MASK, None) or {}
    if masked:
        recommended.update(with_mask)
    unknown = sorted(set(given) - set(SAMPLING_DEFAULTS))
    if unknown:
        raise ConfigError(None, f"unknown sampling setting(s) {unknown}")
    return {key: given[key] if given.get(key) is not None else recommended.get(key, default)
            for key, default in SAMPLING_DEFAULTS.items()}


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
    from volsynth.data.dataset import load_dataset

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


def resolve_device(device: str) -> torch.device:
    """``cpu`` or ``cuda``; asking for CUDA where there is none is an error, not a silent fallback."""
    if device not in ("cpu", "cuda"):
        raise ConfigError(None, f"unknown device '{device}'", "use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(None, "--device cuda asked for, but no CUDA GPU is available", "use --device cpu")
    return torch.device(device)


def check_masks(pipeline, jobs: list[Job], mask_labels: dict | None) -> None:
    """Read and map every job's mask before anything is generated (bad masks fail early)."""
    for job in jobs:
        if job.mask:
            pipeline.prepare_mask(job.mask, mask_labels, modality=job.modality)


def run_jobs(pipeline, jobs: list[Job], out: str | Path, steps: int | None = None, sampler: str | None = None,
             text_guidance: float | None = None, image_format: str = "nifti", progress: bool = True,
             mask_guidance: float | None = None, controlnet_scale: float | None = None,
             mask_labels: dict | None = None, slice_noise: str | None = None, refine: bool = True,
             refiner_guidance: float | None = None) -> list[Path]:
    """Generate every job's volumes into ``out``; returns the sidecar paths this rank wrote. ``refine=False``
    skips the model's refiner and ``refiner_guidance`` sets its mask guidance (each an error for a model without
    one).

    Sampling settings left None come from the model's recommendation, else ``SAMPLING_DEFAULTS``."""
    out = Path(out)
    given = {"steps": steps, "sampler": sampler, "text_guidance": text_guidance, "mask_guidance": mask_guidance,
             "controlnet_scale": controlnet_scale, "refiner_guidance": refiner_guidance}
    # per job: with a mask or without (a model may recommend other settings for mask-guided sampling)
    settings = {masked: sampling_settings(getattr(pipeline, "model_path", None), masked=masked, **given)
                for masked in (False, True)}
    for chosen in settings.values():
        chosen["steps"], chosen["sampler"] = int(chosen["steps"]), str(chosen["sampler"])
        if chosen["steps"] < 1:
            raise ConfigError(None, f"steps must be >= 1, got {chosen['steps']}")
    if image_format not in ("nifti", "dicom"):
        raise ConfigError(None, f"unknown format '{image_format}'", "use nifti or dicom")
    if slice_noise is not None:
        from volsynth.pipelines.segguided import check_slice_noise

        if not getattr(pipeline, "slice_model", False):
            raise ConfigError(getattr(pipeline, "model_path", None), "--slice-noise applies to 2D slice models only")
        check_slice_noise(slice_noise)
    options = {"slice_noise": slice_noise} if slice_noise is not None else {}
    has_refiner = getattr(pipeline, "refiner", None) is not None
    for flag, given_here in (("--no-refine", not refine), ("--refiner-guidance", refiner_guidance is not None)):
        if given_here and not has_refiner:
            raise ConfigError(getattr(pipeline, "model_path", None), f"{flag}: this model has no refiner")
    if not refine:
        options["refine"] = False
    items = expand(jobs)
    for sampler in {chosen["sampler"] for chosen in settings.values()}:
        pipeline.scheduler(sampler)  # a sampler the model cannot use fails before anything is written
    check_masks(pipeline, jobs, mask_labels)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    mine = items[rank::world]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with progress_bar(progress and rank == 0) as bar:
        task = bar.add_task("generate", total=len(mine))
        for name, job, seed in mine:
            result = pipeline(prompt=job.prompt, mask=job.mask, modality=job.modality, seed=seed,
                              mask_labels=mask_labels, **settings[bool(job.mask)], **options)
            suffix = ".nii.gz" if image_format == "nifti" else ""
            target = out / f"{name}_image{suffix}"
            write_volume(result.image, target, description=f"volsynth synthetic: {job.prompt}"[:64])
            label = None
            if result.label is not None:
                label = out / f"{name}_label{suffix}"
                write_volume(result.label, label, description="volsynth synthetic label map")
            sidecar = {**result.provenance, "id": name, "job": asdict(job), "image": target.name,
                       "label": label.name if label else None,
                       "volsynth_version": __version__, "format": image_format,
                       "image_sha256": _sha256(target) if target.is_file() else None}
            path = out / f"{name}.json"
            write_json(path, sidecar)
            written.append(path)
            bar.advance(task)
    return written


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
