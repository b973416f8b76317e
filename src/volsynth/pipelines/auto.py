"""``load_pipeline(path)``: the right pipeline for a model folder, whatever its kind."""

from __future__ import annotations

from pathlib import Path

from volsynth.errors import ConfigError
from volsynth.io.jsonfile import read_json
from volsynth.models.index import MODEL_INDEX, check_index_version
from volsynth.pipelines.base import Pipeline
from volsynth.pipelines.generate import SynthesisPipeline
from volsynth.pipelines.hierarchical import HierarchicalPipeline
from volsynth.pipelines.maisi import MaisiPipeline
from volsynth.pipelines.segguided import SegGuidedPipeline

PIPELINES: dict[str, type[Pipeline]] = {"latent": SynthesisPipeline, "segguided": SegGuidedPipeline,
                                        "hierarchical": HierarchicalPipeline, "maisi": MaisiPipeline}
RUN_RECIPE = "recipe.yaml"  # what ``volsynth train --out RUN`` pins in a run folder


def resolve_model_folder(path: str | Path) -> Path:
    """A model folder: ``path`` itself, or ``path/model`` when ``path`` is a training run (``train --out``).

    A run whose model is not assembled yet, or a folder that holds no model, is a ConfigError that says so.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(path, "model folder not found")
    if (path / "meta.json").is_file() or (path / MODEL_INDEX).is_file():
        return path
    if (path / "model" / "meta.json").is_file():
        return path / "model"
    if (path / RUN_RECIPE).is_file():
        raise ConfigError(path, "this training run has no model yet (its model/ folder is assembled when the "
                          "last stage finishes)", f"finish it with volsynth train --out {path} --resume")
    raise ConfigError(path, "not a model folder (no meta.json)",
                      "give a model folder such as models/abdomen-ct-64, or a run folder given to train --out")


def model_kind(path: str | Path) -> str:
    """The kind of model in a folder (``model_index.json``'s kind; else meta.json's, latent by default)."""
    path = Path(path)
    source = path / MODEL_INDEX if (path / MODEL_INDEX).is_file() else path / "meta.json"
    data = read_json(source)
    if source.name == MODEL_INDEX:
        check_index_version(data, source)  # a newer model says so before its kind or networks are read
    kind = data.get("kind", "latent")
    if kind not in PIPELINES:
        raise ConfigError(source, f"unknown model kind '{kind}'", f"known: {', '.join(PIPELINES)}")
    return kind


def load_pipeline(path: str | Path) -> Pipeline:
    """The pipeline of a model folder (or of a training run's model), its networks loaded."""
    folder = resolve_model_folder(path)
    return PIPELINES[model_kind(folder)].from_pretrained(folder)
