"""Prepared datasets as arrays the stages index into: each case memory-mapped from a ``.npy`` copy made once
beside the prepared files and read only when a batch needs it, so a stage holds a batch, not the dataset; random
training patches."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from volsynth.data.dataset import REPORTS_FILE
from volsynth.data.plan import Plan
from volsynth.data.prepare import load_manifest
from volsynth.errors import ConfigError
from volsynth.io.atomic import atomic_output
from volsynth.io.formats import read_label, read_volume

ARRAYS_FOLDER = "arrays"  # in a prepared folder: memory-mappable copies of its cases, made on first use


class CaseStack:
    """One ``.npy`` file per case, memory-mapped and read only for the cases indexed.

    Indexing the first (case) axis by an int, a slice or a list returns what indexing a stacked tensor of all
    cases would (a tensor, copied out of the files); further indices apply to that result.
    """

    def __init__(self, files: list[Path], dtype: torch.dtype | None = None) -> None:
        self.files, self.dtype = files, dtype  # dtype: what indexing returns (None: the files' own)
        self.shape = torch.Size([len(files), *self.case(0).shape])

    def case(self, index: int) -> np.ndarray:
        """The memory-mapped array of one case (nothing read yet)."""
        return np.load(self.files[index], mmap_mode="r")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key) -> torch.Tensor:
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            out = torch.from_numpy(np.array(self.case(int(key))))
        else:
            cases = range(len(self))[key] if isinstance(key, slice) else [int(i) for i in key]
            out = torch.from_numpy(np.stack([self.case(i) for i in cases]))
        out = out if self.dtype is None else out.to(self.dtype)
        return out[rest] if rest else out


@dataclass
class PreparedData:
    """Every prepared case of a folder written by ``volsynth prepare``."""

    root: Path
    plan: Plan
    case_ids: list[str]
    images: CaseStack  # [N, C, X, Y, Z] float32 in [-1, 1]; indexing gives tensors
    labels: CaseStack | None  # [N, X, Y, Z] int64 ids of the plan
    reports: list[str]  # "" where a case has no report
    facts: list[dict]

    def __len__(self) -> int:
        return len(self.case_ids)


def load_prepared(root: str | Path) -> PreparedData:
    """Read plan, manifest, prepared images, labels and reports of a prepared folder."""
    root = Path(root)
    plan = Plan.load(root)
    entries = load_manifest(root)["cases"]
    reports: dict[str, dict] = {}
    if (root / REPORTS_FILE).is_file():
        for line in (root / REPORTS_FILE).read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                reports[entry["case"]] = entry
    ids = [e["case"] for e in entries]
    images = CaseStack([case_array(root, e["images"], "image") for e in entries], torch.float32)
    labelled = all(e.get("label") for e in entries)
    labels = CaseStack([case_array(root, [e["label"]], "label") for e in entries], torch.int64) if labelled else None
    facts = [reports.get(c, {}).get("facts", {}) for c in ids]
    # the classes prepare found annotated (``partial_labels``), unless the case's report lists its own
    facts = [f if "annotated" in f or "annotated" not in e else {**f, "annotated": e["annotated"]}
             for f, e in zip(facts, entries, strict=True)]
    return PreparedData(
        root=root, plan=plan, case_ids=ids, images=images, labels=labels,
        reports=[reports.get(c, {}).get("report", "") for c in ids],
        facts=facts)


def case_array(root: Path, names: list[str], kind: str) -> Path:
    """The ``.npy`` copy of one prepared case (``kind`` "image": its channels stacked, float32; "label": its label
    map ``names[0]``, int16), written on first use under ``root/arrays``; its name carries the source files' sizes and
    times, so a re-prepared case gets a new copy."""
    sources = [root / name for name in names]
    stamp = "-".join(f"{s.st_size}-{s.st_mtime_ns}" for s in (p.stat() for p in sources))
    path = root / ARRAYS_FOLDER / f"{kind}-{Path(names[0]).name.split('.')[0]}-{stamp}.npy"
    if path.is_file():
        return path
    if kind == "image":
        array = np.stack([read_volume(p).array for p in sources]).astype(np.float32)
    else:
        array = read_label(sources[0]).array
        if array.size and (array.min() < np.iinfo(np.int16).min or array.max() > np.iinfo(np.int16).max):
            raise ConfigError(sources[0], "label ids outside the int16 range")
        array = array.astype(np.int16)
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)
    return path


def check_patch_fits(root, patch: list[int] | None, grid: list[int], levels: int, name: str = "patch") -> None:
    """A training patch (when given) must fit the grid and be divisible by the UNet's downsampling ``levels``."""
    if patch is not None and any(p % levels or p > s for p, s in zip(patch, grid, strict=True)):
        raise ConfigError(root, f"{name} {patch} must fit the grid {grid} and be divisible by {levels}")


def random_patches(tensors: list[torch.Tensor], patch: list[int], generators: list[torch.Generator],
                   step: int = 1) -> list[torch.Tensor]:
    """The same random patch (corners on multiples of ``step``) of each tensor [B, C, ...], per sample."""
    shape = tensors[0].shape[2:]
    rows: list[list[torch.Tensor]] = [[] for _ in tensors]
    for b, generator in enumerate(generators):
        corner = [int(torch.randint(0, (s - p) // step + 1, (1,), generator=generator)) * step
                  for s, p in zip(shape, patch, strict=True)]
        window = tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
        for row, tensor in zip(rows, tensors, strict=True):
            row.append(tensor[(b, slice(None), *window)])
    return [torch.stack(row) for row in rows]
