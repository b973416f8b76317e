"""Recipe files as YAML: reading one with its ``base:`` chain, and the three ways a recipe is changed before it is
checked (``recipe_schema``): a child recipe merged over its base, a profile merged over the recipe, ``--set``
overrides. All three treat ``ALTERNATIVES`` alike: giving one key of a group drops the others.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from volsynth.config import read_yaml
from volsynth.errors import ConfigError

# Keys of a block that exclude each other: giving one (in a child recipe, a profile or --set) drops the others, so
# ``--set data.dataset=PATH`` points a phantom recipe at a dataset.
ALTERNATIVES = {("data",): ("phantom", "dataset")}


def _drop_alternatives(block: dict, where: tuple[str, ...], given: str) -> None:
    """``given`` was set in the block at ``where``: remove the keys it excludes (``ALTERNATIVES``)."""
    alternatives = ALTERNATIVES.get(where, ())
    if given in alternatives:
        for other in alternatives:
            if other != given:
                block.pop(other, None)


def deep_merge(base: dict, child: dict, where: tuple[str, ...] = ()) -> dict:
    """``child`` over ``base``: mappings merge key by key, anything else is replaced by the child's value; a key
    of ``ALTERNATIVES`` replaces the keys it excludes."""
    merged = dict(base)
    for key, value in child.items():
        _drop_alternatives(merged, where, key)
        merged[key] = deep_merge(merged[key], value, (*where, key)) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path, "recipe")
    if not isinstance(data, dict):
        raise ConfigError(path, "a recipe must be a mapping")
    return data


def display_path(path: Path) -> str:
    """A path as recipes and records write it: relative to the working directory (the repository root) when
    inside it, else absolute."""
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def _resolve_parents(recipe: dict, path: Path) -> None:
    """``init: {recipe: FILE}`` names FILE relative to the recipe that says it: rewrite it as ``display_path``."""
    for block in recipe.values():
        init = block.get("init") if isinstance(block, dict) else None
        if isinstance(init, dict) and isinstance(init.get("recipe"), str):
            block["init"] = {**init, "recipe": display_path(path.parent / init["recipe"])}


def read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The recipe at ``path`` with its ``base:`` chain merged in (the result holds no ``base``)."""
    resolved = path.resolve()
    if resolved in chain:
        names = " -> ".join(p.name for p in (*chain, resolved))
        raise ConfigError(path, f"base: recipes inherit from each other in a cycle ({names})")
    data = _read_yaml(path)
    _resolve_parents(data, path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(path, f"base: expected a file name, got {base!r}")
    return deep_merge(read_with_bases(path.parent / base, (*chain, resolved)), data)


def apply_overrides(recipe: dict, overrides: list[str], path: str | Path) -> dict:
    """Set ``"block.key=value"`` entries (values read as YAML) in the recipe; missing blocks are created."""
    for override in overrides:
        key, sep, text = override.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(path, f"bad override '{override}'", "write block.key=value, e.g. segguided.ablation=0")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(path, f"bad value in override '{override}' ({exc})") from exc
        node = recipe
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(path, f"override '{override}': '{part}' is not a block")
            node = node[part]
        _drop_alternatives(node, tuple(parts[:-1]), parts[-1])
        node[parts[-1]] = value
    return recipe


def _undot(mapping: dict) -> dict:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}`` (a profile may write keys as ``--set`` does), merged key by key."""
    nested: dict = {}
    for key, value in mapping.items():
        parts = str(key).split(".")
        value = _undot(value) if isinstance(value, dict) else value
        for part in reversed(parts[1:]):
            value = {part: value}
        nested = deep_merge(nested, {parts[0]: value})
    return nested


def apply_profile(recipe: dict, name: str | None, path: str | Path) -> dict:
    """The recipe with profile ``name`` merged over it (none: unchanged), ``profiles`` removed and ``profile``
    recorded; an unknown name is a ConfigError listing the recipe's profiles."""
    profiles = recipe.get("profiles") or {}
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise ConfigError(path, "profiles: must map each profile name to a mapping of settings",
                          "e.g. profiles: {smoke: {autoencoder.train.steps: 1}}")
    base = {k: v for k, v in recipe.items() if k != "profiles"}
    if name is None:
        return base
    if name not in profiles:
        known = ", ".join(profiles) if profiles else "none"
        raise ConfigError(path, f"unknown profile '{name}'", f"this recipe's profiles: {known}")
    return {**deep_merge(base, _undot(profiles[name])), "profile": name}
