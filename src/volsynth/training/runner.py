"""Running a recipe: one stage graph for every kind, skipping finished stages and resuming an interrupted one.

Folders under OUT::

    recipe.yaml   the resolved recipe (base merged, ``--set`` applied) as first run: it pins the run
    parents/NAME/ a parent recipe's run, when a stage says ``init: {recipe: NAME.yaml}``
    data*/ prepared*/   phantoms (when the recipe asks for them) and the prepared data
    STAGE/        each trained stage: checkpoints/checkpoint-N, metrics.jsonl, previews/
    latents/      the latent cache (latent recipes)
    model/        the final model: networks, meta.json, config.yaml and model_index.json

Resuming: the same command again, or ``--resume --out OUT`` alone (it reads OUT/recipe.yaml). Only how long the
stages train and how often they report (``RESUMABLE_KEYS``) may change; a stage trained on makes the model be
assembled again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import yaml

from volsynth.errors import ConfigError
from volsynth.io.atomic import atomic_output
from volsynth.io.locks import folder_lock
from volsynth.training.engine import distributed_info
from volsynth.training.recipe_files import apply_overrides, display_path
from volsynth.training.recipe_schema import STAGE_SETTINGS, check_recipe, load_recipe, split_block
from volsynth.training.run_context import Run
from volsynth.training.stage_graph import STAGE_GRAPH

RECIPE_FILE = "recipe.yaml"
PARENTS = "parents"
# Settings a resumed run may change: how long stages train and how often they report. Anything else would
# silently mix two configurations in one run folder.
RESUMABLE_KEYS = ("steps", "checkpoint_every", "preview_every", "progress", "tensorboard", "device")
_SOURCE_LINE = re.compile(r"^# recipe: (.+)$")


def _flatten(node, prefix: str = "") -> dict[str, object]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, object] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def recipe_changes(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two recipes."""
    a, b = _flatten(old), _flatten(new)
    return sorted(key for key in set(a) | set(b) if a.get(key, KeyError) != b.get(key, KeyError))


def _read_pinned(path: Path) -> dict:
    try:
        pinned = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"invalid YAML ({exc})", "restore it or delete it to pin the recipe anew") from exc
    return pinned if isinstance(pinned, dict) else {}


def pin_recipe(recipe: dict, out: Path) -> None:
    """Store the resolved recipe in ``OUT/recipe.yaml`` on the first run; on a resume, refuse one that differs.

    Changing ``train.steps`` (or how often a stage checkpoints and previews, or the device it computes on) is
    allowed, so a finished run can be trained further, or on a GPU; so is the ``model`` block while ``OUT/model`` has
    not been assembled yet. Anything else (a different ``--set``, an edited recipe) raises ConfigError naming the
    keys: start a new ``--out`` instead.
    """
    current = {key: value for key, value in recipe.items() if not key.startswith("_")}
    path = out / RECIPE_FILE
    if path.is_file():
        assembled = (out / "model" / "meta.json").is_file()
        blocking = [key for key in recipe_changes(_read_pinned(path), current)
                    if key.rsplit(".", 1)[-1] not in RESUMABLE_KEYS and (assembled or not key.startswith("model."))]
        if blocking:
            raise ConfigError(path, f"this run was started with other settings: {', '.join(blocking)}",
                              "resume with the same recipe and --set values, or train into a new --out")
    source = recipe.get("_source", recipe.get("_path"))
    with atomic_output(path) as tmp:
        tmp.write_text(f"# recipe: {source}\n" + yaml.safe_dump(current, sort_keys=False))


def pinned_recipe(out: Path, overrides: list[str] | None = None, profile: str | None = None) -> dict:
    """The recipe pinned in ``OUT/recipe.yaml`` (``--resume --out OUT``), with ``overrides`` applied; it keeps
    naming the recipe file it was resolved from, and the profile it was made with (another is refused)."""
    path = out / RECIPE_FILE
    if not path.is_file():
        raise ConfigError(out, "no run to resume here (no recipe.yaml)",
                          "start it with volsynth train --recipe RECIPE --out OUT")
    first = path.read_text().splitlines()[:1]
    match = _SOURCE_LINE.match(first[0]) if first else None
    pinned = _read_pinned(path)
    if profile is not None and pinned.get("profile") != profile:
        raise ConfigError(path, f"this run was started with profile {pinned.get('profile')}, not {profile}",
                          "resume without --profile, or train into a new --out")
    recipe = check_recipe(apply_overrides(pinned, overrides or [], path), path)
    recipe["_source"] = match.group(1) if match else str(path)
    return recipe


def resolve_recipe(recipe_path: str | Path | None, out: Path, overrides: list[str] | None = None,
                   resume: bool = False, profile: str | None = None) -> dict:
    """The recipe a ``volsynth train`` run uses, checked against OUT before anything is written: a new run needs
    an empty or missing OUT (or one it made: OUT/recipe.yaml); ``--resume`` needs a run there. Without
    ``profile``, a run in OUT keeps the profile it was started with."""
    pinned = (out / RECIPE_FILE).is_file()
    if resume and not pinned:
        raise ConfigError(out, "--resume: no run here (no recipe.yaml)", "start it without --resume")
    if recipe_path is None:
        if not resume:
            raise ConfigError(None, "volsynth train needs --recipe and --out (or --resume --out OUT)",
                              "e.g. volsynth train --recipe recipes/tiny.yaml --out runs/tiny")
        recipe = pinned_recipe(out, overrides, profile)
    else:
        if profile is None and pinned:
            profile = _read_pinned(out / RECIPE_FILE).get("profile")
        recipe = load_recipe(recipe_path, overrides, profile)
        if not pinned and out.is_dir() and any(out.iterdir()):
            raise ConfigError(out, "the output folder is not empty and holds no run (no recipe.yaml)",
                              "train into a new or empty --out; nothing was written")
    if not pinned:  # a run under way has prepared its data, or checked it when it started
        check_datasets(recipe)
    return recipe


def check_datasets(recipe: dict) -> None:
    """A new run's ``data.dataset`` folders exist (checked before OUT is written, so the same command with
    ``--set data.dataset=PATH`` starts it)."""
    given = (recipe.get("data") or {}).get("dataset")
    for dataset in given if isinstance(given, list) else [given] if given else []:
        if not Path(dataset).is_dir():
            raise ConfigError(recipe["_path"], f"data.dataset: {dataset} not found",
                              "get the dataset the recipe's header names, or point the recipe at yours with "
                              "--set data.dataset=PATH")


def run_recipe(recipe_path: str | Path | None, out: str | Path, progress: bool = True,
               log: Callable[[str], None] = print, overrides: list[str] | None = None, resume: bool = False,
               profile: str | None = None, _chain: tuple[str, ...] = ()) -> Path:
    """Run (or continue) every stage of a recipe (with ``profile`` and ``overrides`` applied) into OUT; returns the
    final model folder."""
    out = Path(out)
    recipe = resolve_recipe(recipe_path, out, overrides, resume, profile)
    return run_resolved(recipe, out, progress, log, _chain)


def run_resolved(recipe: dict, out: Path, progress: bool = True, log: Callable[[str], None] = print,
                 chain: tuple[str, ...] = ()) -> Path:
    """Run a loaded recipe: its parent recipes first (``init: {recipe: R}``), then its kind's stage graph."""
    rank, world = distributed_info()
    source = str(Path(recipe.get("_source", recipe["_path"])).resolve())
    if source in chain:
        raise ConfigError(recipe["_path"], "init: recipes name each other in a cycle")
    # one run trains in OUT at a time (under torchrun rank 0 holds the lock for all ranks)
    with folder_lock(out, "train") if rank == 0 else nullcontext():
        return _run_locked(recipe, out, progress, log, chain, source, rank, world)


def _run_locked(recipe: dict, out: Path, progress: bool, log: Callable[[str], None], chain: tuple[str, ...],
                source: str, rank: int, world: int) -> Path:
    """run_resolved's work, with OUT locked."""
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        pin_recipe(recipe, out)
    run = Run(recipe, out, progress, log, rank, world)
    for name in STAGE_SETTINGS[recipe.get("kind", "latent")]:
        init = split_block(recipe.get(name))[0].get("init")
        if isinstance(init, dict) and init.get("recipe"):
            parent = Path(init["recipe"])
            log(f"stage {name}: parent recipe {display_path(parent)}")
            run.parent_models[name] = run_recipe(parent, out / PARENTS / parent.stem, progress, log,
                                                 _chain=(*chain, source))
    for step in STAGE_GRAPH[recipe.get("kind", "latent")]:
        step(run)
    return out / "model"
