"""The recipe schema: one YAML file, typed and checked when it is read.

A recipe names its kind (``latent``, ``segguided``, ``hierarchical``), its data, how to prepare them, the text
encoder, one block per trained stage of its kind and a ``model`` block. ``base: OTHER.yaml`` (relative to the
recipe) inherits another recipe: mappings merge deeply, the child's values win; chains are allowed, cycles are not.
Every stage block holds its stage's settings (the stage's Settings class is the source of truth), a ``train:``
block (``TrainConfig``), and for the latent stages ``init:`` (train on from a model folder's networks, or from the
model a parent recipe makes: ``init: {recipe: PARENT.yaml}``) or ``pretrained:`` (reuse a network as it is).
An unknown key or a value of the wrong type is a ConfigError naming the file and the dotted key path.

``profiles: {NAME: {...}}`` holds named variants of the recipe (e.g. ``smoke``: phantom data at the full grid,
test-sized networks, a step or two per stage). A profile is a mapping merged over the recipe like a child recipe;
its keys may be dotted (``autoencoder.train.steps: 1``) as in ``--set``. ``volsynth train --profile NAME`` applies
one before ``--set``; the resolved recipe drops ``profiles`` and records ``profile: NAME``.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from volsynth.data.prepare import PrepareOptions
from volsynth.errors import ConfigError
from volsynth.models.stages import RefinerSettings
from volsynth.pipelines.base import SAMPLING_DEFAULTS, WITH_MASK
from volsynth.training.autoencoder import AutoencoderSettings
from volsynth.training.controlnet import ControlNetSettings
from volsynth.training.diffusion import DiffusionSettings
from volsynth.training.engine import TrainConfig
from volsynth.training.hierarchical import HierarchicalSettings
from volsynth.training.recipe_files import apply_overrides, apply_profile, read_with_bases
from volsynth.training.segguided import SegGuidedSettings

KINDS = ("latent", "segguided", "hierarchical")
# The settings of each trained stage's block, by recipe kind, in training order.
STAGE_SETTINGS = {"latent": {"autoencoder": AutoencoderSettings, "diffusion": DiffusionSettings,
                             "controlnet": ControlNetSettings, "refiner": RefinerSettings},
                  "segguided": {"segguided": SegGuidedSettings},
                  "hierarchical": {"joint": HierarchicalSettings, "superres": HierarchicalSettings}}
ALL_STAGES = {name: cls for stages in STAGE_SETTINGS.values() for name, cls in stages.items()}
REUSABLE = ("autoencoder", "diffusion", "controlnet")  # blocks that may say pretrained: MODEL


@dataclass
class DataSpec:
    """``data:``: phantoms to write, or a dataset folder (a list of either for a segguided recipe)."""

    phantom: dict | list | None = None
    dataset: str | list | None = None


@dataclass
class ModelSpec:
    """``model:``: how the final model is assembled, and the sampling it recommends."""

    dtype: str = "float32"
    ema: bool = True
    sampling: dict = field(default_factory=dict)


@dataclass
class RecipeSpec:
    """The top level of a recipe (stage blocks are checked against their stage's Settings)."""

    name: str | None = None
    kind: str = "latent"
    seed: int = 0
    base: str | None = None
    data: dict | None = None
    prepare: dict | None = None
    text_encoder: str = "minilm"
    model: dict | None = None
    profiles: dict | None = None
    profile: str | None = None  # the profile a resolved recipe was made with (written by load_recipe)


TOP_KEYS = [f.name for f in fields(RecipeSpec)] + list(ALL_STAGES)
# mirrors the old name: every key a recipe may hold at the top
RECIPE_KEYS = set(TOP_KEYS)


def _type_ok(value: object, hint: object) -> bool:
    """Whether ``value`` (read from YAML) fits the annotation ``hint`` (unknown annotations accept anything)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if hint is list or origin in (list, tuple) or hint is tuple:
        return isinstance(value, (list, tuple))  # element types are the Settings classes' to check
    return True


def _type_name(hint: object) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "None").replace("<class '", "").replace("'>", "")


def check_fields(cls: type, data: object, where: str, path: str | Path, extra: dict | None = None) -> dict:
    """``data`` checked against the dataclass ``cls`` (plus ``extra`` name -> annotation): unknown keys and
    values of the wrong type raise ConfigError naming ``path`` and the dotted key (``where.key``)."""
    if not isinstance(data, dict):
        raise ConfigError(path, f"{where}: must be a mapping of setting: value")
    hints = typing.get_type_hints(cls)
    known = {**{f.name: hints.get(f.name) for f in fields(cls)}, **(extra or {})}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ConfigError(path, f"unknown key {dotted}", f"known: {', '.join(known)}")
        if not _type_ok(value, known[key]):
            raise ConfigError(path, f"{dotted}: expected {_type_name(known[key])}, got {type(value).__name__} "
                              f"{value!r}")
    return data


def check_profiles(recipe: dict, path: str | Path) -> None:
    """Every profile of a recipe, merged over it and checked: a typo in a profile fails whichever is run; the
    error names the profile and the key path."""
    for name in recipe.get("profiles") or {}:
        try:
            check_recipe(apply_profile(recipe, name, path), path)
        except ConfigError as exc:
            raise ConfigError(path, f"profiles.{name}: {exc.problem}", exc.hint) from exc


def load_recipe(path: str | Path, overrides: list[str] | None = None, profile: str | None = None) -> dict:
    """Read a recipe (its ``base:`` chain merged, then ``profile`` and ``overrides`` "block.key=value" applied) and
    check it whole: a typo in a late stage or in any profile fails now, not after the earlier stages trained for
    hours. The resolved recipe, with ``_path`` (the file) added."""
    path = Path(path)
    raw = read_with_bases(path)
    if "profile" in raw:
        raise ConfigError(path, "profile: is what a resolved recipe records", "choose a profile with --profile NAME")
    check_recipe(apply_profile(raw, None, path), path)
    check_profiles(raw, path)
    recipe = apply_overrides(apply_profile(raw, profile, path), overrides or [], path)
    return check_recipe(recipe, path)


def check_recipe(recipe: dict, path: str | Path) -> dict:
    """Check a resolved recipe against the schema; returns it with ``_path`` set."""
    recipe = {k: v for k, v in recipe.items() if not k.startswith("_")}
    check_fields(RecipeSpec, {k: v for k, v in recipe.items() if k not in ALL_STAGES}, "", path,
                 {name: dict | None for name in ALL_STAGES})
    kind = recipe.get("kind", "latent")
    if kind not in KINDS:
        raise ConfigError(path, f"kind: unknown recipe kind '{kind}'", "use latent, segguided or hierarchical")
    check_fields(DataSpec, recipe.get("data") or {}, "data", path)
    data = recipe.get("data") or {}
    if bool(data.get("phantom")) == bool(data.get("dataset")):
        raise ConfigError(path, "data: give exactly one of 'phantom' or 'dataset'")
    prepare_options(recipe.get("prepare"), path)
    for name in ALL_STAGES:
        if name in recipe and name not in STAGE_SETTINGS[kind]:
            raise ConfigError(path, f"unknown key {name}", f"a {kind} recipe trains {', '.join(STAGE_SETTINGS[kind])}")
    for name, settings_class in STAGE_SETTINGS[kind].items():
        if recipe.get(name) is not None:
            check_stage_block(name, settings_class, recipe[name], kind, path)
    recipe["_path"] = str(path)
    check_model_block(recipe)
    check_reused_controlnet(recipe)
    return recipe


def prepare_options(block: object, path: str | Path) -> tuple[PrepareOptions, str | None]:
    """The ``prepare:`` block as PrepareOptions (one number stands for all three axes) and its ``labels``."""
    prep = dict(check_fields(PrepareOptions, block or {}, "prepare", path, {"labels": str | None,
                                                                           "size": int | list,
                                                                           "spacing": float | str | list | None}))
    labels = prep.pop("labels", None)
    if isinstance(prep.get("size"), int):
        prep["size"] = [prep["size"]] * 3
    if isinstance(prep.get("spacing"), (int, float)):
        prep["spacing"] = [float(prep["spacing"])] * 3
    try:
        return PrepareOptions(**prep), labels
    except (TypeError, ValueError) as exc:
        raise ConfigError(path, f"invalid prepare block ({exc})") from exc


def split_block(block: dict | None) -> tuple[dict, dict]:
    """A stage block as (settings, train)."""
    block = dict(block or {})
    return block, block.pop("train", {}) or {}


def check_stage_block(name: str, settings_class: type, block: object, kind: str, path: str | Path) -> None:
    """Parse one stage block (settings and ``train:``), raising ConfigError naming the file and key path."""
    if not isinstance(block, dict):
        raise ConfigError(path, f"{name}: must be a mapping of setting: value")
    extra = {"train": dict | None}
    if kind == "latent":  # init: MODEL serves the latent stages only
        extra["init"] = str | dict | None
    if name in REUSABLE:
        extra["pretrained"] = str | None
    settings, train = split_block(block)
    if settings.get("pretrained") is not None and settings.get("init") is not None:
        raise ConfigError(path, f"{name}.init and {name}.pretrained exclude each other",
                          "pretrained reuses a network as it is; init trains on from it")
    if settings.get("pretrained") is not None:  # a reused network's block is checked where it is reused
        return
    check_fields(settings_class, settings, name, path, extra)
    check_fields(TrainConfig, train, f"{name}.train", path)
    init = settings.pop("init", None)
    settings.pop("pretrained", None)
    if isinstance(init, dict):
        check_fields(ParentSpec, init, f"{name}.init", path)
        if bool(init.get("recipe")) == bool(init.get("path")):
            raise ConfigError(path, f"{name}.init: give exactly one of 'recipe' or 'path'")
    try:
        TrainConfig.from_dict(train)
        settings_class.from_dict(settings)
    except (ConfigError, TypeError, ValueError) as exc:
        problem = exc.problem if isinstance(exc, ConfigError) else str(exc)
        raise ConfigError(path, f"{name}: {problem}", getattr(exc, "hint", None)) from exc


@dataclass
class ParentSpec:
    """``init: {recipe: FILE}`` (a parent recipe run first) or ``init: {path: MODEL}``."""

    recipe: str | None = None
    path: str | None = None


def check_model_block(recipe: dict) -> None:
    """``model:`` (ModelSpec) and its ``sampling`` (keys of ``jobs.SAMPLING_DEFAULTS``)."""
    check_fields(ModelSpec, recipe.get("model") or {}, "model", recipe["_path"])
    model_sampling(recipe)


def model_sampling(recipe: dict) -> dict:
    """The recommended sampling settings a recipe stores in its model (``model: {sampling: {...}}``): what
    ``volsynth generate`` uses when the command line does not say (keys of ``jobs.SAMPLING_DEFAULTS``; under
    ``with_mask:`` those that differ when a mask guides)."""
    sampling = (recipe.get("model") or {}).get("sampling") or {}
    if not isinstance(sampling, dict):
        raise ConfigError(recipe.get("_path"), "model.sampling must be a mapping, e.g. {mask_guidance: 2}")
    with_mask = sampling.get(WITH_MASK) or {}
    if not isinstance(with_mask, dict):
        raise ConfigError(recipe.get("_path"), f"model.sampling.{WITH_MASK} must be a mapping",
                          "e.g. {text_guidance: 1}")
    for where, keys in (("model.sampling", set(sampling) - {WITH_MASK}),
                        (f"model.sampling.{WITH_MASK}", set(with_mask))):
        unknown = sorted(keys - set(SAMPLING_DEFAULTS))
        if unknown:
            raise ConfigError(recipe.get("_path"), f"unknown {where} key(s): {', '.join(unknown)}",
                              f"known: {', '.join(SAMPLING_DEFAULTS)}")
    return dict(sampling)


def model_ema(recipe: dict) -> bool:
    """Whether the final model takes the EMA weights (``model: {ema: true}``, the default) or the trained ones."""
    return bool((recipe.get("model") or {}).get("ema", True))


def check_reused_controlnet(recipe: dict) -> None:
    """``controlnet: {pretrained: MODEL}`` reuses that ControlNet as it is, with the UNet it was trained for:
    the block holds nothing else and MODEL must be the recipe's ``diffusion.pretrained``."""
    block, train = split_block(recipe.get("controlnet") if isinstance(recipe.get("controlnet"), dict) else {})
    if block.get("pretrained") is None:
        return
    if set(block) - {"pretrained"} or train:
        raise ConfigError(recipe["_path"], "controlnet.pretrained reuses that model's ControlNet as it is, so the "
                          "controlnet block can hold nothing else", "drop the other controlnet settings")
    diffusion = recipe.get("diffusion") if isinstance(recipe.get("diffusion"), dict) else {}
    if diffusion.get("pretrained") is None or Path(diffusion["pretrained"]).resolve() != Path(
            block["pretrained"]).resolve():
        raise ConfigError(recipe["_path"], f"controlnet.pretrained: {block['pretrained']}'s ControlNet steers that "
                          "model's UNet only", f"add diffusion: {{pretrained: {block['pretrained']}}}")


def stage_settings(recipe: dict, name: str) -> tuple[dict, dict]:
    """A stage block's (settings, train) as the stage reads them (``init``/``pretrained`` removed)."""
    settings, train = split_block(recipe.get(name))
    settings.pop("init", None)
    settings.pop("pretrained", None)
    return settings, train

