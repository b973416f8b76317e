"""Named label vocabularies: the label ids of other tools and datasets (TotalSegmentator, MAISI, AMOS, MSD Liver),
each with the source's class name and volsynth's canonical name, and the merge groups that build a model's broader
classes (``lobes``, ``vessels``, ``kidney`` ...) from canonical ones.

A table is a JSON file beside this module (``<name>.json``, its source named in it); the merge groups are
``groups.json``. A model class ``C`` takes the ids whose canonical name is ``C`` or one of ``groups[C]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from volsynth.errors import ConfigError

VOCABULARY_FORMAT = "volsynth-vocabulary"
GROUPS_FILE = "groups.json"
PRESET_SEPARATOR = ":"  # "totalsegmentator:liver,spleen" selects classes of a preset


@dataclass(frozen=True)
class LabelClass:
    """One id of a vocabulary: the source's class name and volsynth's (None: a placeholder id of the source)."""

    id: int
    source: str
    canonical: str | None


@dataclass(frozen=True)
class Vocabulary:
    """A label table of another tool or dataset, and where it comes from (project, version, url, table)."""

    name: str
    title: str
    source: dict
    classes: tuple[LabelClass, ...]

    @property
    def ids(self) -> set[int]:
        """Every id the vocabulary defines, background (0) included."""
        return {0} | {c.id for c in self.classes}

    def canonical_names(self) -> list[str]:
        """The canonical names of the vocabulary's classes, in id order, each once."""
        return list(dict.fromkeys(c.canonical for c in self.classes if c.canonical))

    def ids_of(self, canonical: set[str] | frozenset[str]) -> list[int]:
        """The ids whose canonical name is one of ``canonical``."""
        return [c.id for c in self.classes if c.canonical in canonical]

    def resolve(self, name: str) -> tuple[str, set[str]]:
        """What a name stands for: (class name, canonical names). A canonical or group name stands for itself
        (and the group's members); a source name (any case, spaces or underscores) for its canonical name."""
        present = set(self.canonical_names())
        if name in present or name in label_groups():
            canonical = class_members(name) & present
            if not canonical:
                raise ConfigError(None, f"the {self.name} vocabulary has no '{name}'",
                                  f"it has: {', '.join(self.canonical_names())}")
            return name, canonical
        key = _source_key(name)
        for label in self.classes:
            if label.canonical and _source_key(label.source) == key:
                return label.canonical, {label.canonical}
        raise ConfigError(None, f"'{name}' is not a class of the {self.name} vocabulary nor a label group",
                          f"classes: {', '.join(self.canonical_names())}; groups: {', '.join(label_groups())}")


def _source_key(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("/", "_")


def _read(filename: str) -> dict:
    return json.loads(resources.files(__package__).joinpath(filename).read_text())


def vocabulary_names() -> list[str]:
    """The names of the shipped vocabularies (presets), sorted."""
    return sorted(p.name.removesuffix(".json") for p in resources.files(__package__).iterdir()
                  if p.name.endswith(".json") and p.name != GROUPS_FILE)


@cache
def load_vocabulary(name: str) -> Vocabulary:
    """The vocabulary ``name`` (e.g. ``totalsegmentator``); an unknown name is a ConfigError listing the presets."""
    names = vocabulary_names()
    if name not in names:
        raise ConfigError(None, f"unknown label vocabulary '{name}'",
                          f"presets: {', '.join(names)}; or write name=id, e.g. liver=5,vessels=6+7")
    raw = _read(f"{name}.json")
    if raw.get("format") != VOCABULARY_FORMAT or raw.get("name") != name:
        raise ConfigError(f"{name}.json", f"not a {VOCABULARY_FORMAT} file named {name}")
    classes = tuple(LabelClass(int(c["id"]), str(c["source"]), c["canonical"]) for c in raw["classes"])
    ids = [c.id for c in classes]
    if len(set(ids)) != len(ids) or min(ids) < 1:
        raise ConfigError(f"{name}.json", "class ids must be unique and above 0")
    return Vocabulary(name, raw["title"], dict(raw["source"]), classes)


@cache
def label_groups() -> dict[str, frozenset[str]]:
    """Merge groups: a model class name -> the canonical names it covers besides its own."""
    return {name: frozenset(members) for name, members in _read(GROUPS_FILE)["groups"].items()}


def class_members(name: str) -> set[str]:
    """The canonical names a class named ``name`` covers: itself and its merge group's members."""
    return {name} | set(label_groups().get(name, ()))


def preset_mapping(name: str, model_labels=None, select: list[str] | tuple[str, ...] | None = None
                   ) -> dict[str, list[int]]:
    """Class -> the vocabulary's ids that give it.

    With ``model_labels`` (the model's class names, or its name -> id map), each model class the vocabulary can
    give: the ids whose canonical name is the class or belongs to its merge group; classes it cannot give are
    left out. Without, every canonical class of the vocabulary. ``select`` keeps only the classes the named
    (canonical, source or group) names give; a name that gives no class is a ConfigError.
    """
    vocabulary = load_vocabulary(name)
    wanted = None if select is None else [vocabulary.resolve(s) for s in select]
    if model_labels is None:
        if wanted is None:
            return {c: vocabulary.ids_of({c}) for c in vocabulary.canonical_names()}
        return {label: vocabulary.ids_of(canonical) for label, canonical in wanted}
    classes = [c for c in model_labels if c != "background"]
    mapping = {c: ids for c in classes if (ids := vocabulary.ids_of(class_members(c)))}
    if wanted is None:
        return mapping
    chosen: set[str] = set()
    for label, canonical in wanted:
        hits = {c for c in mapping if class_members(c) & canonical}
        if not hits:
            raise ConfigError(None, f"'{label}' of the {name} vocabulary gives none of the model's classes",
                              f"it gives: {', '.join(mapping) or 'none'}; model classes: {', '.join(classes)}")
        chosen |= hits
    return {c: ids for c, ids in mapping.items() if c in chosen}


@dataclass(frozen=True)
class LabelPreset:
    """Ids from a named vocabulary, all its classes or a selection: ``totalsegmentator`` or
    ``totalsegmentator:liver,spleen``; what it gives a model is decided by the model's classes."""

    vocabulary: str
    select: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, spec: str) -> LabelPreset:
        """``name[:class,class...]``, checked against the vocabulary (unknown names are a ConfigError)."""
        name, sep, names = spec.strip().partition(PRESET_SEPARATOR)
        select = tuple(n.strip() for n in names.split(",") if n.strip()) if sep else None
        if sep and not select:
            raise ConfigError(None, f"'{spec}' selects no class", f"write {name}:liver,spleen or just {name}")
        vocabulary = load_vocabulary(name.strip())
        for item in select or ():
            vocabulary.resolve(item)
        return cls(vocabulary.name, select)

    def mapping(self, model_labels=None) -> dict[str, list[int]]:
        """Class -> ids, as ``preset_mapping``."""
        return preset_mapping(self.vocabulary, model_labels, self.select)

    def translate(self, names: dict[str, int]) -> dict[int, int]:
        """Mask id -> the vocabulary's id, for a mask that names its classes by the vocabulary's source (or
        canonical) names, e.g. the files of TotalSegmentator's one-mask-per-class output; a name the vocabulary
        lacks is a ConfigError."""
        vocabulary = load_vocabulary(self.vocabulary)
        by_key = {_source_key(c.source): c.id for c in vocabulary.classes}
        by_key.update({_source_key(c.canonical): c.id for c in vocabulary.classes if c.canonical})
        unknown = sorted(n for n, i in names.items() if int(i) != 0 and _source_key(n) not in by_key)
        if unknown:
            raise ConfigError(None, f"mask class(es) {unknown[:8]} are not in the {self.vocabulary} vocabulary",
                              "choose the preset the mask was made with, or write name=id")
        return {int(i): by_key[_source_key(n)] for n, i in names.items() if int(i) != 0}

    def unknown_ids(self, ids) -> list[int]:
        """The ids of ``ids`` that the vocabulary does not define, sorted."""
        return sorted(set(int(i) for i in ids) - load_vocabulary(self.vocabulary).ids)

    def __str__(self) -> str:
        return self.vocabulary + (PRESET_SEPARATOR + ",".join(self.select) if self.select else "")
