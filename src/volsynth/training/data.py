"""Prepared datasets in memory, as tensors the stages index into."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from volsynth.data.dataset import REPORTS_FILE
from volsynth.data.plan import Plan
from volsynth.data.prepare import load_manifest
from volsynth.io.formats import read_label, read_volume


@dataclass
class PreparedData:
    """Every prepared case of a folder written by ``volsynth prepare``."""

    root: Path
    plan: Plan
    case_ids: list[str]
    images: torch.Tensor  # [N, C, X, Y, Z] in [-1, 1]
    labels: torch.Tensor | None  # [N, X, Y, Z] integer ids of the plan
    reports: list[str]  # "" where a case has no report
    facts: list[dict]

    def __len__(self) -> int:
        return len(self.case_ids)


def load_prepared(root: str | Path) -> PreparedData:
    """Read plan, manifest, prepared images, labels and reports of a prepared folder."""
    root = Path(root)
    plan = Plan.load(root)
    entries = load_manifest(root)["cases"]
    images = [np.stack([read_volume(root / name).array for name in e["images"]]) for e in entries]
    labels = [read_label(root / e["label"]).array for e in entries if e.get("label")]
    reports: dict[str, dict] = {}
    if (root / REPORTS_FILE).is_file():
        for line in (root / REPORTS_FILE).read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                reports[entry["case"]] = entry
    ids = [e["case"] for e in entries]
    facts = [reports.get(c, {}).get("facts", {}) for c in ids]
    # the classes prepare found annotated (``partial_labels``), unless the case's report lists its own
    facts = [f if "annotated" in f or "annotated" not in e else {**f, "annotated": e["annotated"]}
             for f, e in zip(facts, entries, strict=True)]
    return PreparedData(
        root=root, plan=plan, case_ids=ids, images=torch.from_numpy(np.stack(images)).float(),
        labels=torch.from_numpy(np.stack(labels).astype(np.int64)) if len(labels) == len(entries) else None,
        reports=[reports.get(c, {}).get("report", "") for c in ids],
        facts=facts)
