"""Recipes: one YAML runs every stage in order, skipping finished stages and resuming an interrupted one.

Stages and their folders under OUT::

    data/         phantom dataset (when the recipe asks for phantoms; else the given dataset is used)
    prepared/     volsynth prepare output (plan.json, manifest.json, cases)
    autoencoder/  checkpoints/checkpoint-N, metrics.jsonl, previews/ (none with ``autoencoder: {pretrained: MODEL}``,
                  which reuses another model's autoencoder; its plan must match the prepared grid)
    latents/      latent cache (posterior statistics, report embeddings, pooled masks)
    diffusion/    checkpoints/checkpoint-N, metrics.jsonl, previews/ (none with ``diffusion: {pretrained: MODEL}``,
                  which reuses that model's UNet and autoencoder as they are, e.g. to train only a ControlNet)
    controlnet/   checkpoints/checkpoint-N (when the recipe has a controlnet block; none with
                  ``controlnet: {pretrained: MODEL}``, which reuses the ControlNet of the model whose UNet
                  ``diffusion: {pretrained: MODEL}`` reuses)
    refiner/      checkpoints/checkpoint-N (when the recipe has a refiner block: a pixel-space stage that redraws
                  the decoded volume from its degraded copy and the full-resolution mask; see training.refiner)
    model/        the final model: autoencoder + UNet [+ ControlNet] [+ refiner] (EMA weights) + meta.json
    recipe.yaml   the recipe as first run, ``--set`` overrides applied (see ``pin_recipe``)

A trained stage's block may say ``init: MODEL`` (a model or checkpoint folder): its networks start from that
folder's networks of the same names and train on (fresh optimizer and step count), e.g. to sharpen a model's
autoencoder and then adapt its UNet and ControlNet to the new latents at a fraction of the cost from scratch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from volsynth.data.plan import PLAN_FILE, Plan
from volsynth.data.prepare import PrepareOptions, prepare_dataset
from volsynth.errors import ConfigError
from volsynth.io.atomic import atomic_output
from volsynth.io.jsonfile import read_json
from volsynth.models.checkpoint import latest_checkpoint, load_checkpoint, network_configs, save_checkpoint
from volsynth.training.autoencoder import AutoencoderSettings, AutoencoderStage
from volsynth.training.controlnet import ControlNetSettings, ControlNetStage
from volsynth.training.data import load_prepared
from volsynth.training.diffusion import DiffusionSettings, DiffusionStage
from volsynth.training.engine import TrainConfig, Trainer, distributed_info
from volsynth.training.hierarchical import HierarchicalSettings, JointStage, SuperResolutionStage
from volsynth.training.latents import CACHE_INFO, build_latent_cache, load_latent_cache
from volsynth.training.refiner import RefinerSettings, RefinerStage
from volsynth.training.segguided import SegGuidedSettings, SegGuidedStage

RECIPE_KEYS = {"name", "kind", "seed", "data", "prepare", "text_encoder", "autoencoder", "diffusion", "controlnet",
               "segguided", "joint", "superres", "refiner", "model"}
RECIPE_FILE = "recipe.yaml"
# Settings a resumed run may change: how long stages train and how often they report. Anything else would
# silently mix two configurations in one run folder.
RESUMABLE_KEYS = ("steps", "checkpoint_every", "preview_every", "progress", "tensorboard")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The settings of each trained stage's block, by recipe kind (checked when the recipe is read).
STAGE_SETTINGS = {"latent": {"autoencoder": AutoencoderSettings, "diffusion": DiffusionSettings,
                             "controlnet": ControlNetSettings, "refiner": RefinerSettings},
                  "segguided": {"segguided": SegGuidedSettings},
                  "hierarchical": {"joint": HierarchicalSettings, "superres": HierarchicalSettings}}


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
        node[parts[-1]] = value
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read and check a recipe YAML, with ``overrides`` ("block.key=value") applied."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "recipe not found")
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"invalid YAML ({exc})") from exc
    if not isinstance(recipe, dict):
        raise ConfigError(path, "a recipe must be a mapping")
    recipe = apply_overrides(recipe, overrides or [], path)
    unknown = sorted(set(recipe) - RECIPE_KEYS)
    if unknown:
        raise ConfigError(path, f"unknown recipe key(s): {', '.join(unknown)}",
                          f"known: {', '.join(sorted(RECIPE_KEYS))}")
    data = recipe.get("data") or {}
    if bool(data.get("phantom")) == bool(data.get("dataset")):
        raise ConfigError(path, "data: give exactly one of 'phantom' or 'dataset'")
    if recipe.get("kind", "latent") not in ("latent", "segguided", "hierarchical"):
        raise ConfigError(path, f"unknown recipe kind '{recipe['kind']}'", "use latent, segguided or hierarchical")
    recipe["_path"] = str(path)
    _check_stage_blocks(recipe)  # a typo in a late stage fails now, not after the earlier stages trained for hours
    _check_reused_controlnet(recipe)
    model_sampling(recipe)  # a bad model.sampling fails now, not when the model is assembled hours later
    return recipe


def _check_stage_blocks(recipe: dict) -> None:
    """Parse every stage block of the recipe's kind (settings and ``train:``), raising ConfigError naming the file."""
    for name, settings_class in STAGE_SETTINGS[recipe.get("kind", "latent")].items():
        block = recipe.get(name)
        if block is None:
            continue
        if not isinstance(block, dict):
            raise ConfigError(recipe["_path"], f"{name}: must be a mapping of setting: value")
        settings, train = _split(block)
        if recipe.get("kind", "latent") == "latent":  # init: MODEL serves the latent stages only
            settings.pop("init", None)
        try:
            TrainConfig.from_dict(train)
            if settings.get("pretrained") is None:  # a reused network's block is checked where it is reused
                settings_class.from_dict(settings)
        except (ConfigError, TypeError, ValueError) as exc:
            problem = exc.problem if isinstance(exc, ConfigError) else str(exc)
            raise ConfigError(recipe["_path"], f"{name}: {problem}", getattr(exc, "hint", None)) from exc


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


def pin_recipe(recipe: dict, out: Path) -> None:
    """Store the recipe in ``OUT/recipe.yaml`` on the first run; on a resume, refuse one that differs.

    Changing ``train.steps`` (or how often a stage checkpoints and previews) is allowed, so a finished run can be
    trained further; so is the ``model`` block while ``OUT/model`` has not been assembled yet. Anything else (a
    different ``--set``, an edited recipe) raises ConfigError naming the keys: start a new ``--out`` instead.
    """
    current = {key: value for key, value in recipe.items() if not key.startswith("_")}
    path = out / RECIPE_FILE
    if path.is_file():
        try:
            pinned = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(path, f"invalid YAML ({exc})", "restore it or delete it to pin the recipe anew") from exc
        assembled = (out / "model" / "meta.json").is_file()
        blocking = [key for key in recipe_changes(pinned if isinstance(pinned, dict) else {}, current)
                    if key.rsplit(".", 1)[-1] not in RESUMABLE_KEYS and (assembled or not key.startswith("model."))]
        if blocking:
            raise ConfigError(path, f"this run was started with other settings: {', '.join(blocking)}",
                              "resume with the same recipe and --set values, or train into a new --out")
    with atomic_output(path) as tmp:
        tmp.write_text(yaml.safe_dump(current, sort_keys=False))


def _split(block: dict | None) -> tuple[dict, dict]:
    block = dict(block or {})
    return block, block.pop("train", {}) or {}


def _once(rank: int, world: int, done: Callable[[], bool], work: Callable[[], object]) -> None:
    """Run ``work`` on rank 0 unless ``done()``; other ranks wait for it."""
    if rank == 0 and not done():
        work()
    if world > 1:
        dist.barrier()


def _finished(folder: Path, steps: int) -> bool:
    path = latest_checkpoint(folder / "checkpoints")
    return path is not None and int(json.loads((path / "meta.json").read_text())["step"]) >= steps


def _model_current(model: Path, trained: dict[str, Path | None], log: Callable[[str], None]) -> bool:
    """Whether ``OUT/model`` exists and was assembled from these checkpoints (stage -> checkpoint folder).

    A stage trained on since (a resume with more ``train.steps``) makes the model stale: it is assembled again.
    Stages taken from another model (``pretrained``) carry no step and are not compared.
    """
    if not (model / "meta.json").is_file():
        return False
    recorded = read_json(model / "meta.json").get("steps") or {}
    stale = []
    for stage, checkpoint in trained.items():
        step = None if checkpoint is None else read_json(checkpoint / "meta.json").get("step")
        if step is not None and recorded.get(stage) != int(step):
            stale.append(f"{stage} {recorded.get(stage)} -> {int(step)} steps")
    if stale:
        log(f"model {model} was assembled from older checkpoints ({', '.join(stale)}): assembling it again")
    return not stale


def run_recipe(recipe_path: str | Path, out: str | Path, progress: bool = True,
               log: Callable[[str], None] = print, overrides: list[str] | None = None) -> Path:
    """Run (or continue) every stage of a recipe; returns the final model folder."""
    recipe = load_recipe(recipe_path, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if distributed_info()[0] == 0:
        pin_recipe(recipe, out)
    if recipe.get("kind", "latent") == "segguided":
        return run_segguided_recipe(recipe, out, progress, log)
    if recipe.get("kind") == "hierarchical":
        return run_hierarchical_recipe(recipe, out, progress, log)
    rank, world = distributed_info()
    seed = int(recipe.get("seed", 0))
    text_encoder = str(recipe.get("text_encoder", "minilm"))

    # 1. data, 2. prepare
    dataset = _data_stage(recipe, recipe["data"], out / "data", progress, log, rank, world)
    prepared = out / "prepared"
    _prepare_stage(recipe, dataset, prepared, progress, log, rank, world)
    data = load_prepared(prepared)

    # 3. autoencoder (trained here, or taken from another model: autoencoder: {pretrained: MODEL}, which
    #    diffusion: {pretrained: MODEL} implies)
    ae_block, ae_train = _split(recipe.get("autoencoder"))
    diff_block, diff_train = _split(recipe.get("diffusion"))
    reused = _reused_diffusion(recipe, ae_block, ae_train, diff_block, diff_train, text_encoder)
    if reused is not None:
        ae_block = {"pretrained": reused}
    ae_init = _init_source(recipe, ae_block, "autoencoder", data.plan)
    if ae_block.get("pretrained") is not None:
        autoencoder = pretrained_model(ae_block["pretrained"], data.plan, recipe["_path"], "autoencoder")
    else:
        autoencoder = _train_stage(
            recipe, "autoencoder", out, {"seed": seed, "progress": progress, **ae_train}, ae_init, log,
            lambda: AutoencoderStage(data, AutoencoderSettings.from_dict(ae_block), seed=seed))

    # 4. latent cache (scaled as the reused diffusion model's were)
    latents = out / "latents"
    scale = None if reused is None else float(read_json(reused / "meta.json")["scale_factor"])
    _once(rank, world, lambda: (latents / CACHE_INFO).is_file(),
          lambda: (log("stage latents"), build_latent_cache(autoencoder, data, text_encoder, latents, progress,
                                                            scale_factor=scale)))
    cache = load_latent_cache(latents)

    # 5. diffusion (trained here, or a model's UNet reused as it is: diffusion: {pretrained: MODEL})
    if reused is not None:
        diffusion = reused
    else:
        diff_init = _init_source(recipe, diff_block, "diffusion")
        if diff_init is not None:
            _same_text_encoder(recipe, diff_init, text_encoder, "diffusion.init")
        diffusion = _train_stage(
            recipe, "diffusion", out, {"seed": seed, "progress": progress, **diff_train}, diff_init, log,
            lambda: DiffusionStage(cache, DiffusionSettings.from_dict({"text_encoder": text_encoder, **diff_block}),
                                   seed=seed, autoencoder=autoencoder))

    # 6. ControlNet (when the recipe has one)
    controlnet = None
    if recipe.get("controlnet") is not None:
        cn_block, cn_train = _split(recipe.get("controlnet"))
        if cn_block.get("pretrained") is not None:  # checked with the recipe (_check_reused_controlnet)
            controlnet = pretrained_model(cn_block["pretrained"], None, recipe["_path"], "controlnet", "controlnet")
        else:
            cn_init = _init_source(recipe, cn_block, "controlnet")
            controlnet = _train_stage(
                recipe, "controlnet", out, {"seed": seed, "progress": progress, **cn_train}, cn_init, log,
                lambda: ControlNetStage(cache, diffusion, ControlNetSettings.from_dict(cn_block), seed=seed))

    # 7. refiner (when the recipe has one): pixel space, on the prepared images and label maps
    refiner = None
    if recipe.get("refiner") is not None:
        rf_block, rf_train = _split(recipe.get("refiner"))
        rf_init = _init_source(recipe, rf_block, "refiner", data.plan)
        refiner = _train_stage(
            recipe, "refiner", out, {"seed": seed, "progress": progress, **rf_train}, rf_init, log,
            lambda: RefinerStage(data, RefinerSettings.from_dict(rf_block), seed=seed))

    # 8. final model
    model = out / "model"
    dtype = DTYPES.get(str((recipe.get("model") or {}).get("dtype", "float32")))
    trained = {"autoencoder": autoencoder, "diffusion": diffusion, "controlnet": controlnet, "refiner": refiner}
    _once(rank, world, lambda: _model_current(model, trained, log),
          lambda: (log("stage model"), assemble_model(autoencoder, diffusion, model, recipe, dtype, controlnet,
                                                      refiner)))
    return model


def _check_reused_controlnet(recipe: dict) -> None:
    """``controlnet: {pretrained: MODEL}`` reuses that ControlNet as it is, with the UNet it was trained for:
    the block holds nothing else and MODEL must be the recipe's ``diffusion.pretrained`` (checked when read)."""
    block, train = _split(recipe.get("controlnet") if isinstance(recipe.get("controlnet"), dict) else {})
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


def _train_stage(recipe: dict, name: str, out: Path, train: dict, init: Path | None, log: Callable[[str], None],
                 make_stage: Callable[[], object]) -> Path:
    """Train (or finish training) one stage into OUT/name; its last checkpoint. A fresh stage with ``init``
    starts its trained networks from that folder's networks of the same names."""
    config = TrainConfig.from_dict(train)
    folder = out / name
    if not _finished(folder, config.steps):
        log(f"stage {name}")
        stage = make_stage()
        if init is not None and latest_checkpoint(folder / "checkpoints") is None:
            initialise_networks(stage, init, recipe["_path"], name)
        Trainer(stage, folder, config).fit(resume=True)
    return latest_checkpoint(folder / "checkpoints")


def _init_source(recipe: dict, block: dict, name: str, plan: Plan | None = None) -> Path | None:
    """The folder of a stage block's ``init: MODEL`` (removed from the block; checked), or None."""
    init = block.pop("init", None)
    if init is None:
        return None
    if block.get("pretrained") is not None:
        raise ConfigError(recipe["_path"], f"{name}.init and {name}.pretrained exclude each other",
                          "pretrained reuses a network as it is; init trains on from it")
    network = {"diffusion": "unet"}.get(name, name)
    return pretrained_model(init, plan, recipe["_path"], network, name, key="init")


def initialise_networks(stage, source: Path, recipe_path: str | Path, block: str) -> list[str]:
    """Load a stage's trained networks from the same-named networks of a model or checkpoint folder
    (``block: {init: MODEL}``): training goes on from them, with fresh optimizers and step count. Networks the
    folder lacks (an autoencoder's discriminator in a model folder) keep their initial weights."""
    networks = load_checkpoint(source).networks
    names = [n for names in stage.param_groups().values() for n in names if n in networks]
    for name in names:
        try:
            stage.networks[name].load_state_dict(networks[name].state_dict())
        except RuntimeError as exc:
            detail = (str(exc).splitlines()[1:] or [str(exc)])[0].strip()
            raise ConfigError(recipe_path, f"{block}.init: the {name} of {source} does not fit the recipe's "
                              f"({detail})", "give the block the network settings of that model") from exc
    return names


def _reused_diffusion(recipe: dict, ae_block: dict, ae_train: dict, diff_block: dict, diff_train: dict,
                      text_encoder: str) -> Path | None:
    """The model folder named by ``diffusion: {pretrained: MODEL}`` (checked), or None.

    Its UNet is reused as it is, so nothing else may configure the diffusion stage; its autoencoder and text
    encoder come with it (its latents are scaled as in its training).
    """
    if diff_block.get("pretrained") is None:
        return None
    path = pretrained_model(diff_block["pretrained"], None, recipe["_path"], "unet", "diffusion")
    if set(diff_block) - {"pretrained"} or diff_train:
        raise ConfigError(recipe["_path"], "diffusion.pretrained reuses that model's UNet as it is, so the "
                          f"diffusion block can hold nothing else (found {sorted(set(diff_block) - {'pretrained'})}"
                          f"{' and train' if diff_train else ''})", "drop the other diffusion settings")
    if ae_train or set(ae_block) - {"pretrained"} or ae_block.get("pretrained") not in (None, diff_block["pretrained"]):
        raise ConfigError(recipe["_path"], "diffusion.pretrained brings its model's autoencoder; the recipe's "
                          "autoencoder block asks for another", "drop the autoencoder block")
    _same_text_encoder(recipe, path, text_encoder, "diffusion.pretrained")
    return path


def _same_text_encoder(recipe: dict, path: Path, text_encoder: str, where: str) -> None:
    """Refuse a UNet trained with another text encoder (same width or not, its tokens mean other things)."""
    trained_with = read_json(path / "meta.json").get("text_encoder")
    if trained_with != text_encoder:
        raise ConfigError(recipe["_path"], f"{where}: {path} was trained with text encoder "
                          f"'{trained_with}', the recipe names '{text_encoder}'", f"set text_encoder: {trained_with}")


def pretrained_model(path: str | Path, plan: Plan | None, recipe_path: str | Path, network: str,
                     block: str = "autoencoder", key: str = "pretrained") -> Path:
    """A model or checkpoint folder whose ``network`` the recipe's ``block.pretrained`` reuses (or ``block.init``
    trains on from); with a plan, the folder's plan must be the recipe's grid."""
    path = Path(path)
    meta = path / "meta.json"
    if not meta.is_file():
        raise ConfigError(recipe_path, f"{block}.{key}: {path} is not a model or checkpoint folder",
                          "give a folder with meta.json, e.g. models/abdomen-ct-64")
    if network not in network_configs(path):
        raise ConfigError(recipe_path, f"{block}.{key}: {path} holds no {network}")
    if plan is None:
        return path
    other = Plan.from_dict(read_json(meta)["plan"], meta)
    if not other.same_grid(plan) or other.normalization != plan.normalization:
        raise ConfigError(recipe_path, f"{block}.{key}: {path} was trained on {tuple(other.size)} voxels "
                          f"at {tuple(other.spacing)} mm ({other.modality}), the recipe prepares "
                          f"{tuple(plan.size)} at {tuple(plan.spacing)} mm ({plan.modality})",
                          f"prepare like that model (same size, spacing and window) or train its {network}")
    return path


def _data_stage(recipe: dict, data_cfg: dict, folder: Path, progress: bool, log, rank: int, world: int) -> Path:
    """Write the recipe's phantom dataset into ``folder`` (once), or return the given dataset."""
    if not data_cfg.get("phantom"):
        return Path(data_cfg["dataset"])

    def make_phantoms() -> None:
        from volsynth.data.phantom import write_phantom_dataset

        log(f"stage data: writing phantoms to {folder.name}")
        with atomic_output(folder) as tmp:
            write_phantom_dataset(out=tmp, progress=progress, **data_cfg["phantom"])

    _once(rank, world, lambda: (folder / "dataset.json").is_file(), make_phantoms)
    return folder


def _prepare_stage(recipe: dict, dataset: Path, prepared: Path, progress: bool, log, rank: int, world: int) -> None:
    prep = dict(recipe.get("prepare") or {})
    labels = prep.pop("labels", None)
    if isinstance(prep.get("size"), int):
        prep["size"] = [prep["size"]] * 3
    if isinstance(prep.get("spacing"), (int, float)):
        prep["spacing"] = [float(prep["spacing"])] * 3
    try:
        options = PrepareOptions(**prep)
    except TypeError as exc:
        raise ConfigError(recipe["_path"], f"invalid prepare block ({exc})") from exc
    _once(rank, world, lambda: (prepared / PLAN_FILE).is_file(),
          lambda: (log(f"stage prepare {prepared.name}"),
                   prepare_dataset(dataset, prepared, options, label_spec=labels, progress=progress)))


def run_segguided_recipe(recipe: dict, out: Path, progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Segmentation-guided recipe: one dataset per modality -> prepare each -> train -> model."""
    rank, world = distributed_info()
    seed = int(recipe.get("seed", 0))
    data_cfg = recipe["data"]
    sources = data_cfg.get("phantom") or data_cfg.get("dataset")
    sources = sources if isinstance(sources, list) else [sources]
    datasets = []
    for index, source in enumerate(sources):
        key = "phantom" if data_cfg.get("phantom") else "dataset"
        dataset = _data_stage(recipe, {key: source}, out / f"data-{index}", progress, log, rank, world)
        _prepare_stage(recipe, dataset, out / f"prepared-{index}", progress, log, rank, world)
        datasets.append(load_prepared(out / f"prepared-{index}"))
    block, train_block = _split(recipe.get("segguided"))
    settings = SegGuidedSettings.from_dict({"text_encoder": str(recipe.get("text_encoder", "minilm")), **block})
    checkpoint = _train_stage(recipe, "segguided", out, {"seed": seed, "progress": progress, **train_block}, None, log,
                              lambda: SegGuidedStage(datasets, settings, seed=seed))
    model = out / "model"

    def assemble() -> None:
        log("stage model")
        trained = load_checkpoint(checkpoint, use_ema=model_ema(recipe))
        meta = {**trained.meta, "recipe": recipe.get("name"), "steps": {"segguided": trained.meta["step"]},
                **_sampling_meta(recipe)}
        save_checkpoint(model, trained.networks, trained.config["networks"], meta,
                        settings={"recipe": {k: v for k, v in recipe.items() if not k.startswith("_")}})

    _once(rank, world, lambda: _model_current(model, {"segguided": checkpoint}, log), assemble)
    return model


def run_hierarchical_recipe(recipe: dict, out: Path, progress: bool = True,
                            log: Callable[[str], None] = print) -> Path:
    """Hierarchical recipe: data -> prepare (high resolution) -> joint stage -> super-resolution -> model."""
    rank, world = distributed_info()
    seed = int(recipe.get("seed", 0))
    dataset = _data_stage(recipe, recipe["data"], out / "data", progress, log, rank, world)
    _prepare_stage(recipe, dataset, out / "prepared", progress, log, rank, world)
    data = load_prepared(out / "prepared")
    text_encoder = str(recipe.get("text_encoder", "minilm"))
    finals, checkpoints = {}, {}
    for name, stage_class in (("joint", JointStage), ("superres", SuperResolutionStage)):
        block, train_block = _split(recipe.get(name))
        settings = HierarchicalSettings.from_dict({"text_encoder": text_encoder, **block})
        checkpoint = _train_stage(recipe, name, out, {"seed": seed, "progress": progress, **train_block}, None, log,
                                  partial(stage_class, data, settings, seed=seed))
        checkpoints[name] = checkpoint
        finals[name] = load_checkpoint(checkpoint, use_ema=model_ema(recipe))
    if finals["joint"].meta["factor"] != finals["superres"].meta["factor"]:
        raise ConfigError(recipe["_path"], "joint and superres need the same factor")
    model = out / "model"

    def assemble() -> None:
        log("stage model")
        meta = {**finals["joint"].meta, "recipe": recipe.get("name"),  # "diffusion": the joint stage's settings
                "superres_diffusion": finals["superres"].meta["diffusion"],
                "steps": {n: c.meta["step"] for n, c in finals.items()}, **_sampling_meta(recipe)}
        save_checkpoint(model, {n: c.networks["unet"] for n, c in finals.items()},
                        {n: c.config["networks"]["unet"] for n, c in finals.items()}, meta,
                        settings={"recipe": {k: v for k, v in recipe.items() if not k.startswith("_")}})

    _once(rank, world, lambda: _model_current(model, checkpoints, log), assemble)
    return model


def model_sampling(recipe: dict) -> dict:
    """The recommended sampling settings a recipe stores in its model (``model: {sampling: {...}}``): what
    ``volsynth generate`` uses when the command line does not say (keys of ``jobs.SAMPLING_DEFAULTS``; under
    ``with_mask:`` those that differ when a mask guides)."""
    from volsynth.pipelines.jobs import SAMPLING_DEFAULTS, WITH_MASK

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


def _sampling_meta(recipe: dict) -> dict:
    sampling = model_sampling(recipe)
    return {"sampling": sampling} if sampling else {}


def model_ema(recipe: dict) -> bool:
    """Whether the final model takes the EMA weights (``model: {ema: true}``, the default) or the trained ones.

    Runs trained before the EMA warm-up existed averaged in their first steps' weights; short ones are better
    assembled from the trained weights (``--set model.ema=false``).
    """
    return bool((recipe.get("model") or {}).get("ema", True))


def _steps(meta: dict, stage: str) -> int:
    """Training steps of a stage: a checkpoint's step, or what a model folder records for the stage."""
    return int(meta["step"]) if "step" in meta else int(meta["steps"][stage])


def assemble_model(autoencoder: Path, diffusion: Path, out: Path, recipe: dict, dtype: torch.dtype | None = None,
                   controlnet: Path | None = None, refiner: Path | None = None) -> Path:
    """One folder with the autoencoder, UNet [, ControlNet] [and refiner] (EMA weights unless the recipe says
    ``model: {ema: false}``) and what generation needs."""
    ema = model_ema(recipe)
    ae = load_checkpoint(autoencoder, use_ema=ema)
    diff = load_checkpoint(diffusion, use_ema=ema)
    meta = {key: diff.meta[key] for key in ("scale_factor", "text_encoder", "latent_shape", "diffusion",
                                            "autoencoder_sha256")}
    meta.update(plan=ae.meta["plan"], dataset_sha256=ae.meta.get("dataset_sha256"), recipe=recipe.get("name"),
                steps={"autoencoder": _steps(ae.meta, "autoencoder"), "diffusion": _steps(diff.meta, "diffusion")},
                **_sampling_meta(recipe))
    # autoencoder.pretrained / diffusion.pretrained: model folders, not training checkpoints
    meta.update({f"{name}_from": str(path) for name, path, checkpoint in
                 (("autoencoder", autoencoder, ae), ("diffusion", diffusion, diff)) if "step" not in checkpoint.meta})
    init = {block: str(recipe[block]["init"]) for block in ("autoencoder", "diffusion", "controlnet", "refiner")
            if isinstance(recipe.get(block), dict) and recipe[block].get("init") is not None}
    if init:  # block: {init: MODEL}: trained on from that model's networks
        meta["initialised_from"] = init
    configs = {"autoencoder": ae.config["networks"]["autoencoder"], "unet": diff.config["networks"]["unet"]}
    networks = {"autoencoder": ae.networks["autoencoder"], "unet": diff.networks["unet"]}
    if controlnet is not None:
        cn = load_checkpoint(controlnet, use_ema=ema)
        configs["controlnet"] = cn.config["networks"]["controlnet"]
        networks["controlnet"] = cn.networks["controlnet"]
        meta["steps"]["controlnet"] = _steps(cn.meta, "controlnet")
        if "step" not in cn.meta:
            meta["controlnet_from"] = str(controlnet)
    if refiner is not None:
        rf = load_checkpoint(refiner, use_ema=ema)
        configs["refiner"] = rf.config["networks"]["refiner"]
        networks["refiner"] = rf.networks["refiner"]
        meta["steps"]["refiner"] = rf.meta["step"]
        meta["refiner"] = rf.meta["refiner"]
    return save_checkpoint(out, networks, configs, meta, settings={"recipe": {k: v for k, v in recipe.items()
                                                                              if not k.startswith("_")}},
                           dtype=dtype)
