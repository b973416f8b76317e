"""Label specs: how a user maps label ids to class names, for ``prepare --labels`` (a dataset's ids to the
prepared classes) and ``generate --mask-labels`` (a mask's ids to a model's classes). One syntax:

- ``liver=1,tumour=2+3``: name = id, several ids joined by ``+``;
- a YAML or JSON file ``{liver: 1, tumour: [2, 3]}``;
- a preset, ``totalsegmentator`` or ``totalsegmentator:liver,spleen`` (see ``volsynth.data.vocabularies``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from volsynth.data.vocabularies import PRESET_SEPARATOR, LabelPreset, vocabulary_names
from volsynth.errors import ConfigError


def read_label_spec(spec: str) -> LabelPreset | list[tuple[str, list[str]]]:
    """A spec as written: a preset, or (name, [source, ...]) pairs with sources as strings (ids or names)."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml", ".json") or path.is_file():
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(path, f"cannot read label map ({exc})") from exc
        if not isinstance(raw, dict):
            raise ConfigError(path, "label map must be a mapping name -> id or list of ids")
        return [(str(k), [str(s).strip() for s in (v if isinstance(v, list) else [v])]) for k, v in raw.items()]
    if "=" not in spec:
        if spec.partition(PRESET_SEPARATOR)[0].strip() not in vocabulary_names():
            raise ConfigError(None, f"bad label spec '{spec}': neither name=id nor a preset",
                              f"presets: {', '.join(vocabulary_names())}; or write name=id, e.g. liver=1,tumour=2+3")
        return LabelPreset.parse(spec)
    items = []
    for part in spec.split(","):
        name, sep, sources = part.partition("=")
        if not sep or not name.strip() or not sources.strip():
            raise ConfigError(None, f"bad label spec '{part}'", "write name=id, e.g. liver=1,tumour=2+3")
        items.append((name.strip(), [s.strip() for s in sources.split("+")]))
    return items


def parse_label_spec(spec: str | None, dataset_labels: dict[str, int]) -> dict[str, list[int]]:
    """``"liver=1,tumour=2+3"``, a YAML file ``{liver: 1, tumour: [2, 3]}`` or a preset -> name -> source ids.

    A source may be given by id or by its name in dataset.json; a preset gives its canonical class names
    (or the selected names). Without a spec, labels stay as they are.
    """
    if not spec:
        return {name: [i] for name, i in dataset_labels.items() if i != 0}
    written = read_label_spec(spec)
    if isinstance(written, LabelPreset):
        return written.mapping()
    mapping: dict[str, list[int]] = {}
    for name, sources in written:
        ids = []
        for source in sources:
            if source.lstrip("-").isdigit():
                ids.append(int(source))
            elif source in dataset_labels:
                ids.append(dataset_labels[source])
            else:
                raise ConfigError(None, f"label '{name}': source '{source}' is neither an id nor a label name",
                                  f"dataset labels: {dataset_labels}")
        mapping[name] = ids
    return mapping
