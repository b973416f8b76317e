"""What the studio offers: model folders (with their cards) and dataset cases, each under a server-made id.

A request names a model or a case only by these ids; a name that is not in the catalogue is unknown, so no part
of a request ever becomes a path.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from volsynth.data.dataset import load_dataset
from volsynth.errors import ConfigError
from volsynth.io.jsonfile import read_json
from volsynth.models.index import MODEL_INDEX
from volsynth.pipelines import Pipeline, load_pipeline
from volsynth.pipelines.base import LIBRARY_ONLY, WITH_MASK, resolve_sampling
from volsynth.sampling.samplers import SAMPLERS

# The repository's shipped models (src/volsynth/studio -> the repository root); absent in a wheel install.
SHIPPED_MODELS = Path(__file__).resolve().parents[3] / "models"
# matplotlib's tab10 then Dark2: the label overlay colours of volsynth's montages (viz.save_montage), label 1 first.
LABEL_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                 "#17becf", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
# Request fields the page shows as controls, in this order (a model's card lists the ones it takes).
CONTROLS = ("steps", "sampler", "text_guidance", "mask_guidance", "controlnet_scale", "modality", "refine",
            "refiner_guidance", "refiner_steps")
EXAMPLE_PROMPTS = {  # by the body region of a model's training data
    "abdomen": ["One 30 mm hypodense lesion in segment VII.",
                "Two hypodense lesions in the right liver lobe, the largest 24 mm.",
                "Normal liver, no focal lesion. Spleen and kidneys unremarkable."],
    "chest": ["Centrilobular emphysema in both upper lobes.", "A 12 mm nodule in the right upper lobe.",
              "Small right pleural effusion. No nodules."],
}
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _unique_id(name: str, taken: set[str], fallback: str) -> str:
    """``name`` when it is a plain, unused id; else ``fallback``/``name`` with a number."""
    base = name if SAFE_ID.fullmatch(name) else fallback
    candidate, number = base, 2
    while candidate in taken:
        candidate, number = f"{base}-{number}", number + 1
    taken.add(candidate)
    return candidate


def _region(index: dict) -> str | None:
    """The body region of a model's training data, from its resolved recipe's phantom kinds (None: unknown)."""
    data = ((index.get("provenance") or {}).get("resolved_recipe") or {}).get("data") or {}
    phantoms = data.get("phantom") if isinstance(data, dict) else None
    phantoms = phantoms if isinstance(phantoms, list) else [phantoms] if phantoms else []
    kinds = [str(p.get("kind", "")) for p in phantoms if isinstance(p, dict)]
    return next((region for region in EXAMPLE_PROMPTS if any(k.startswith(region) for k in kinds)), None)


@dataclass
class ModelEntry:
    """A model folder the studio offers."""

    id: str
    path: Path
    name: str
    kind: str
    source: str  # "shipped" or the --models folder's name
    region: str | None


class Catalog:
    """Model folders under the shipped models/ and every ``--models`` folder, and the cases of ``--data`` folders."""

    def __init__(self, model_folders: list[Path], dataset_folders: list[Path] | None = None) -> None:
        self.models: dict[str, ModelEntry] = {}
        taken: set[str] = set()
        for folder in model_folders:
            if not folder.is_dir():
                raise ConfigError(folder, "models folder not found")
            source = "shipped" if folder.resolve() == SHIPPED_MODELS.resolve() else folder.name
            candidates = [folder] if (folder / "meta.json").is_file() else sorted(folder.iterdir())
            for path in candidates:
                if not (path / "meta.json").is_file():
                    continue
                index = read_json(path / MODEL_INDEX) if (path / MODEL_INDEX).is_file() else {}
                entry_id = _unique_id(path.name, taken, "model")
                self.models[entry_id] = ModelEntry(entry_id, path, str(index.get("name") or path.name),
                                                   str(index.get("kind") or read_json(path / "meta.json").get(
                                                       "kind", "latent")), source, _region(index))
        self.datasets: dict[str, tuple[Path, dict[str, Path]]] = {}
        for root in dataset_folders or []:
            dataset = load_dataset(root)
            cases = {case.case_id: case.label for case in dataset.cases if case.label and case.label.exists()}
            if not cases:
                raise ConfigError(root, "dataset has no label maps to choose a mask from")
            self.datasets[_unique_id(Path(root).name, taken, "dataset")] = (Path(root), cases)
        self._pipelines: dict[str, Pipeline] = {}
        self._lock = threading.Lock()

    def entry(self, model_id: str) -> ModelEntry:
        """The model of an id; an unknown id is a ConfigError."""
        if model_id not in self.models:
            raise ConfigError(None, f"unknown model '{model_id}'", "choose one of the listed models")
        return self.models[model_id]

    def pipeline(self, model_id: str) -> Pipeline:
        """The model's pipeline, loaded once."""
        entry = self.entry(model_id)
        with self._lock:
            if model_id not in self._pipelines:
                self._pipelines[model_id] = load_pipeline(entry.path)
            return self._pipelines[model_id]

    def summaries(self) -> list[dict]:
        """One line per model: id, name, kind, where it comes from."""
        return [{"id": e.id, "name": e.name, "kind": e.kind, "source": e.source} for e in self.models.values()]

    def card(self, model_id: str) -> dict:
        """A model's card summary: kind, grid, classes with colours, sampling defaults, the options it takes."""
        entry, pipeline = self.entry(model_id), self.pipeline(model_id)
        plan = pipeline.plan
        options = [name for name in CONTROLS if name in pipeline.options - LIBRARY_ONLY]
        recommended = dict(pipeline.recommended)
        classes = [{"name": name, "id": label, "colour": LABEL_COLOURS[(label - 1) % len(LABEL_COLOURS)]}
                   for name, label in sorted(plan.labels.items(), key=lambda item: item[1]) if label > 0]
        return {"id": entry.id, "name": entry.name, "kind": entry.kind, "source": entry.source,
                "grid": {"size": list(plan.size), "spacing": [round(float(s), 3) for s in plan.spacing]},
                "modalities": list(getattr(pipeline, "modalities", [plan.modality])),
                "classes": classes, "takes_mask": "mask" in pipeline.options,
                "sampling": {key: value for key, value in resolve_sampling(recommended).items()
                             if key in options and value is not None},  # None: the network's own (refiner steps)
                "sampling_with_mask": ({key: value for key, value in resolve_sampling(recommended, True).items()
                                        if key in options and value is not None}
                                       if WITH_MASK in recommended else None),
                "options": options, "samplers": list(SAMPLERS), "examples": EXAMPLE_PROMPTS.get(entry.region, [])}

    def canvas(self, model_id: str, modality: str | None = None) -> bytes:
        """An empty NIfTI in the model's grid (the plan's default geometry) to draw a mask on."""
        plan = self.pipeline(model_id).plan_for(modality)
        affine = plan.default_affine()
        image = nib.Nifti1Image(np.zeros(tuple(plan.size), dtype=np.int16), affine)
        image.set_sform(affine, code=1)
        image.set_qform(affine, code=1)
        image.header.set_xyzt_units("mm", "sec")
        return image.to_bytes()

    def case_label(self, dataset_id: str, case_id: str) -> Path:
        """The label map of a dataset case; unknown ids are ConfigErrors."""
        if dataset_id not in self.datasets:
            raise ConfigError(None, f"unknown dataset '{dataset_id}'")
        cases = self.datasets[dataset_id][1]
        if case_id not in cases:
            raise ConfigError(None, f"unknown case '{case_id}' of dataset '{dataset_id}'")
        return cases[case_id]

    def dataset_summaries(self) -> list[dict]:
        """The datasets and their labelled cases."""
        return [{"id": key, "name": root.name, "cases": sorted(cases)} for key, (root, cases) in self.datasets.items()]

