"""``model_index.json``: what a model folder is (diffusers' habit), beside its weights.

One typed record per model folder: its kind, every network (file, sha256 of that file, parameter count, class),
its plan(s), the recommended sampling settings (the same dict as ``meta.json``'s ``"sampling"``) and its whole
provenance: the recipe file that rebuilds it, the resolved recipe, per trained stage its steps and the parent
model it started from (by sha256 and step count), the fingerprint of the data it was trained on and, for phantom
data, the phantom generator (kind and version) that wrote it.
``meta.json``, ``config.yaml`` and ``model.safetensors`` stay as they are; loading uses them.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from safetensors import safe_open

from volsynth.errors import ConfigError
from volsynth.io.atomic import atomic_output
from volsynth.io.jsonfile import read_json
from volsynth.models.checkpoint import network_configs, sha256_file

MODEL_INDEX = "model_index.json"
FORMAT = "volsynth-model"
VERSION = 1
KINDS = ("latent", "segguided", "hierarchical", "maisi")
WEIGHTS = "model.safetensors"


@dataclass
class Component:
    """One network of the model: where its weights are, their checksum, size and class."""

    file: str
    sha256: str
    parameters: int
    cls: str  # "class" in the JSON


@dataclass
class Parent:
    """A model a stage started from (``init``) or reused (``pretrained``): a folder path or a recipe file."""

    sha256: str | None  # of the parent's model.safetensors
    steps: int | None  # the parent stage's training steps in all
    path: str | None = None
    recipe: str | None = None


@dataclass
class StageRecord:
    """One stage of the model: how long it trained here, and in all (its parents' steps included)."""

    steps: int
    trained: bool  # false: the network was reused as it is (``pretrained``)
    total_steps: int
    init: Parent | None = None
    pretrained: Parent | None = None


@dataclass
class Provenance:
    """How the model was made: recipe file, resolved recipe, stages and data (phantom generators: one
    ``{"kind", "version"}`` per distinct phantom dataset it learnt from; empty for other data)."""

    recipe: str | None
    resolved_recipe: dict
    stages: dict[str, StageRecord]
    data_fingerprint: str | None
    phantom_generators: list[dict] = field(default_factory=list)


@dataclass
class ModelIndex:
    """The content of ``model_index.json``."""

    name: str
    kind: str
    components: dict[str, Component]
    plans: dict
    sampling: dict
    provenance: Provenance
    format: str = FORMAT
    version: int = VERSION

    def to_dict(self) -> dict:
        """The JSON form (``class`` for a component's class)."""
        data = asdict(self)
        for component in data["components"].values():
            component["class"] = component.pop("cls")
        return {"format": data.pop("format"), "version": data.pop("version"), **data}


def _fields(cls: type, data: object, where: str, path: Path, optional: tuple[str, ...] = ()) -> dict:
    """``data`` checked to hold exactly the fields of ``cls`` (those in ``optional`` may be missing)."""
    if not isinstance(data, dict):
        raise ConfigError(path, f"{where or 'the index'} must be a mapping")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(path, f"unknown key {'.'.join(filter(None, [where, unknown[0]]))}",
                          f"known: {', '.join(names)}")
    missing = [f.name for f in fields(cls) if f.name not in data and f.name not in optional
               and f.default is MISSING]
    if missing:
        raise ConfigError(path, f"missing key {'.'.join(filter(None, [where, missing[0]]))}")
    return data


def _parent(data: object, where: str, path: Path) -> Parent | None:
    if data is None:
        return None
    return Parent(**_fields(Parent, data, where, path, ("path", "recipe")))


def check_index_version(data: dict, path: Path) -> None:
    """A ``model_index.json`` this volsynth can read: its format, and a version no newer than ``VERSION``."""
    if data.get("format") != FORMAT:
        raise ConfigError(path, f"format: expected '{FORMAT}', got {data.get('format')!r}",
                          "a model folder of volsynth holds its own model_index.json")
    version = data.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise ConfigError(path, f"written by a newer volsynth (model_index.json version {version}; this volsynth "
                          f"reads version {VERSION})", "upgrade volsynth (pip install -U volsynth) to load this model")
    if version != VERSION:
        raise ConfigError(path, f"version: expected {VERSION}, got {version!r}",
                          f"this volsynth reads version {VERSION}")


def model_index_from_dict(data: object, path: Path) -> ModelIndex:
    """Parse and check the JSON form; ConfigError naming the file and the key path."""
    if not isinstance(data, dict):
        raise ConfigError(path, "model_index.json must be a mapping")
    check_index_version(data, path)
    data = _fields(ModelIndex, data, "", path, ("format", "version"))
    if data["kind"] not in KINDS:
        raise ConfigError(path, f"kind: expected one of {', '.join(KINDS)}, got {data['kind']!r}")
    components = {}
    for name, entry in (data["components"] or {}).items():
        entry = dict(entry) if isinstance(entry, dict) else entry
        if isinstance(entry, dict) and "class" in entry:
            entry["cls"] = entry.pop("class")
        entry = _fields(Component, entry, f"components.{name}", path)
        if not isinstance(entry["parameters"], int):
            raise ConfigError(path, f"components.{name}.parameters: expected an integer")
        components[name] = Component(**entry)
    prov = _fields(Provenance, data["provenance"], "provenance", path, ("phantom_generators",))
    if not all(isinstance(g, dict) and isinstance(g.get("version"), int) for g in prov.get("phantom_generators", [])):
        raise ConfigError(path, "provenance.phantom_generators: expected a list of {kind, version}")
    stages = {}
    for name, entry in (prov["stages"] or {}).items():
        where = f"provenance.stages.{name}"
        entry = dict(_fields(StageRecord, entry, where, path, ("init", "pretrained")))
        for key in ("init", "pretrained"):
            entry[key] = _parent(entry.get(key), f"{where}.{key}", path)
        stages[name] = StageRecord(**entry)
    return ModelIndex(name=data["name"], kind=data["kind"], components=components, plans=data["plans"],
                      sampling=data["sampling"], provenance=Provenance(**{**prov, "stages": stages}))


def write_model_index(model_dir: str | Path, index: ModelIndex) -> Path:
    """Write ``MODEL_DIR/model_index.json`` atomically."""
    path = Path(model_dir) / MODEL_INDEX
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(index.to_dict(), indent=2, default=str) + "\n")
    return path


def read_model_index(model_dir: str | Path) -> ModelIndex:
    """Read and check ``MODEL_DIR/model_index.json``."""
    path = Path(model_dir) / MODEL_INDEX
    return model_index_from_dict(read_json(path), path)


def model_components(model_dir: str | Path) -> dict[str, Component]:
    """Every network of a model folder: its weights file, that file's sha256, its parameter count and class."""
    model_dir = Path(model_dir)
    digest = sha256_file(model_dir / WEIGHTS)
    counts: dict[str, int] = {}
    with safe_open(str(model_dir / WEIGHTS), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
            size = 1
            for n in weights.get_slice(key).get_shape():
                size *= int(n)
            name = key.split(".", 1)[0]
            counts[name] = counts.get(name, 0) + size
    return {name: Component(WEIGHTS, digest, counts.get(name, 0), str(config.get("class")))
            for name, config in network_configs(model_dir).items()}


def weights_sha256(model_dir: str | Path) -> str | None:
    """The sha256 of a model or checkpoint folder's weights, from its meta.json (None when it records none)."""
    meta = Path(model_dir) / "meta.json"
    return (read_json(meta).get("files") or {}).get(WEIGHTS) if meta.is_file() else None


def plans_of(meta: dict) -> dict:
    """A model's plan(s) as the index records them: ``{"plan": ...}`` or ``{"plans": {modality: ...}}``."""
    return {"plans": meta["plans"]} if "plans" in meta else {"plan": meta.get("plan")}

