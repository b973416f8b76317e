"""The JSON sidecar beside every generated volume: one schema (versioned), one writer, one reader.

``generate``, ``demo`` and ``sweep`` write sidecars with ``write_sidecar``; ``evaluate`` (and anything else that
reads generated folders) reads them with ``read_sidecar``. A sidecar holds what the pipeline recorded (prompt,
seed, resolved sampling settings, mask and its sha256, model and its sha256, seconds) plus the files it
describes::

    {"sidecar_version": 1, "id": "case_0001", "image": "case_0001_image.nii.gz",
     "label": "case_0001_label.nii.gz" | null, "format": "nifti" | "dicom", "image_sha256": "...",
     "volsynth_version": "0.1.0", "job": {...} (generate), "prompt": ..., "seed": ..., "model": ..., ...}
"""

from __future__ import annotations

from pathlib import Path

from volsynth import __version__
from volsynth.errors import ReadError
from volsynth.io.jsonfile import read_json, write_json
from volsynth.models.checkpoint import sha256_file
from volsynth.pipelines.base import GenerationResult

SIDECAR_VERSION = 1
# Keys every sidecar of this version has; the pipeline's own record adds more.
REQUIRED_KEYS = ("sidecar_version", "id", "image", "label", "format", "volsynth_version")


def sidecar_record(result: GenerationResult, sidecar_id: str, image: Path, label: Path | None,
                   image_format: str = "nifti", **extra) -> dict:
    """The sidecar of one generated volume written to ``image`` (and ``label``); ``extra`` keys are added
    (e.g. the generate job)."""
    return {**result.sidecar, **extra, "sidecar_version": SIDECAR_VERSION, "id": sidecar_id, "image": image.name,
            "label": label.name if label is not None else None, "format": image_format,
            "image_sha256": sha256_file(image) if image.is_file() else None, "volsynth_version": __version__}


def write_sidecar(path: str | Path, record: dict) -> Path:
    """Write a sidecar record atomically (it must carry the keys of this version)."""
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ValueError(f"sidecar record lacks {missing}")
    return write_json(path, record)


def read_sidecar(path: str | Path) -> dict | None:
    """A sidecar's record; None for a JSON file that is not a sidecar (no ``image`` key, e.g. metrics.json).

    A sidecar of a newer version than this volsynth reads, or one that lacks a required key, is a ReadError.
    Sidecars without a version (written before the schema was versioned) are read as they are.
    """
    record = read_json(path, kind=None)
    if not isinstance(record, dict) or "image" not in record:
        return None
    version = record.get("sidecar_version")
    if version is None:
        return record
    if not isinstance(version, int) or version > SIDECAR_VERSION:
        raise ReadError(path, f"sidecar_version {version!r} is not one this volsynth reads (<= {SIDECAR_VERSION})",
                        "update volsynth")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ReadError(path, f"sidecar lacks key(s) {', '.join(missing)}")
    return record

