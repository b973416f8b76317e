"""``volsynth train``: a whole recipe, or one stage. ``volsynth.cli`` registers ``train_app``::

    app.add_typer(train_app, name="train")

``volsynth train segmentor`` (the evaluation segmentor) is added to ``train_app`` by the CLI from
``volsynth.evaluation.commands``: training does not import evaluation. Each stage command takes ``--data`` (a
prepared folder), ``--out`` and ``--config`` (a recipe whose block of that stage is used) and resumes from OUT's
last checkpoint. ``import_app`` is ``volsynth import``: published models (MAISI) turned into model folders.

The stages' modules load torch and MONAI: they are imported inside the commands, so ``volsynth --help`` stays
fast.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import typer
from rich.console import Console

from volsynth.errors import ConfigError

console = Console(soft_wrap=True)
train_app = typer.Typer(no_args_is_help=False, help="Train models: a whole recipe, or one stage.")

DATA = typer.Option(..., "--data", help="Prepared folder (volsynth prepare output).")
OUT = typer.Option(..., "--out", help="Output folder (checkpoints, metrics, previews); resumes from its last one.")
PROGRESS = typer.Option(True, help="Show a progress bar.")
# runner.RESUMABLE_KEYS, spelled out so that --help does not import torch
RESUMABLE = ("steps", "checkpoint_every", "preview_every", "progress", "tensorboard", "device")


def _config(name: str) -> typer.Option:
    return typer.Option(None, "--config", help=f"Recipe YAML whose '{name}' block to use.")


@train_app.callback(invoke_without_command=True)
def train(
    ctx: typer.Context,
    recipe: Path = typer.Option(None, help="Recipe YAML: runs every stage in order (data -> prepare -> trained "
                                           "stages -> model), skipping finished ones."),
    out: Path = typer.Option(None, help="Output folder of the recipe run: new, empty, or a run to resume."),
    override: list[str] = typer.Option(None, "--set", help="Change one recipe value: block.key=value (YAML value), "
                                                           "e.g. --set segguided.ablation=0; repeatable."),
    profile: str = typer.Option(None, "--profile", help="Apply one of the recipe's profiles (e.g. smoke: phantom data "
                                "at the recipe's grid, tiny networks, a step or two per stage) before --set; a "
                                "resumed run keeps the profile it started with."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT: OUT/recipe.yaml pins its recipe "
                                f"(--out alone reads it); only {', '.join(RESUMABLE)} may change (--set "
                                "STAGE.train.steps=N trains on). Without a run in OUT it is an error."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Train nothing: measure one step of every stage and one "
                                 "generation on this device (phantoms in a temporary folder) and print parameters, "
                                 "peak memory, time per step and the estimated time of each stage. No --out."),
    gpu_memory: str = typer.Option(None, "--gpu-memory", help="With --dry-run: say whether each stage fits a GPU "
                                   "of this much memory (e.g. 24G) and the largest batch (and patch) that does."),
) -> None:
    """Run a recipe; a new run refuses a non-empty OUT it did not make."""
    from volsynth.training.runner import run_recipe

    if ctx.invoked_subcommand is not None:
        return
    if dry_run:
        _dry_run(recipe, override or [], gpu_memory, profile)
        return
    if gpu_memory is not None:
        raise ConfigError(None, "--gpu-memory goes with --dry-run", "add --dry-run")
    if out is None:
        raise ConfigError(None, "volsynth train needs --recipe and --out (or --resume --out OUT, or a stage "
                          "subcommand)", "e.g. volsynth train --recipe recipes/tiny.yaml --out runs/tiny")
    model = run_recipe(recipe, out, progress=progress, log=lambda m: console.print(f"[bold]{m}[/bold]"),
                       overrides=override or [], resume=resume, profile=profile)
    console.print(f"model ready: {model}")


def _dry_run(recipe: Path | None, overrides: list[str], gpu_memory: str | None, profile: str | None) -> None:
    """``--dry-run``: plan the recipe and print the table."""
    from volsynth.training.plan_report import parse_memory, plan_recipe, print_plan
    from volsynth.training.recipe_schema import load_recipe

    if recipe is None:
        raise ConfigError(None, "--dry-run needs --recipe", "e.g. volsynth train --recipe recipes/tiny.yaml --dry-run")
    memory = None if gpu_memory is None else parse_memory(gpu_memory)
    plan = plan_recipe(load_recipe(recipe, overrides, profile=profile), memory)
    # a table that is not read in a terminal (a log, a pipe) keeps one line per stage
    print_plan(plan, console if console.is_terminal else Console(soft_wrap=True, width=200))


def _blocks(config: Path | None, name: str) -> tuple[dict, dict, dict]:
    """The recipe, its ``name`` block's settings and its ``train`` block ({} each without --config)."""
    from volsynth.training.recipe_schema import load_recipe, stage_settings

    if config is None:
        return {}, {}, {}
    recipe = load_recipe(config)
    settings, train = stage_settings(recipe, name)
    return recipe, settings, train


def _fit(stage, out: Path, recipe: dict, train: dict, progress: bool, what: str) -> None:
    from volsynth.io.locks import folder_lock
    from volsynth.training.engine import TrainConfig, Trainer, distributed_info

    seed = int(recipe.get("seed", 0))
    config = TrainConfig.from_dict({"seed": seed, "progress": progress, **train})
    with folder_lock(out, f"train {what}") if distributed_info()[0] == 0 else nullcontext():
        path = Trainer(stage, out, config).fit()
    console.print(f"{what} checkpoint: {path}")


def _text_encoder(recipe: dict) -> str:
    return str(recipe.get("text_encoder", "minilm"))


def _cache(data: Path, autoencoder: Path, text_encoder: str, folder: Path, progress: bool,
           scale_factor: float | None = None):
    """The latent cache in ``folder`` (encoded once)."""
    from volsynth.training.data import load_prepared
    from volsynth.training.latents import CACHE_INFO, build_latent_cache, load_latent_cache

    if (folder / CACHE_INFO).is_file():
        return load_latent_cache(folder)
    return build_latent_cache(autoencoder, load_prepared(data), text_encoder, folder, progress,
                              scale_factor=scale_factor)


@train_app.command("autoencoder")
def train_autoencoder(data: Path = DATA, out: Path = OUT, config: Path = _config("autoencoder"),
                      progress: bool = PROGRESS) -> None:
    """Train the autoencoder stage alone."""
    from volsynth.training.autoencoder import AutoencoderSettings, AutoencoderStage
    from volsynth.training.data import load_prepared

    recipe, block, train = _blocks(config, "autoencoder")
    stage = AutoencoderStage(load_prepared(data), AutoencoderSettings.from_dict(block),
                             seed=int(recipe.get("seed", 0)))
    _fit(stage, out, recipe, train, progress, "autoencoder")


@train_app.command("diffusion")
def train_diffusion(
    data: Path = DATA,
    autoencoder: Path = typer.Option(..., help="Autoencoder checkpoint or model folder."),
    out: Path = OUT, config: Path = _config("diffusion"), progress: bool = PROGRESS,
) -> None:
    """Encode the latent cache (once, into OUT/latents) and train the text-conditioned diffusion stage."""
    from volsynth.training.diffusion import DiffusionSettings, DiffusionStage

    recipe, block, train = _blocks(config, "diffusion")
    settings = DiffusionSettings.from_dict({"text_encoder": _text_encoder(recipe), **block})
    cache = _cache(data, autoencoder, settings.text_encoder, out / "latents", progress)
    stage = DiffusionStage(cache, settings, seed=int(recipe.get("seed", 0)), autoencoder=autoencoder)
    _fit(stage, out, recipe, train, progress, "diffusion")


@train_app.command("controlnet")
def train_controlnet(
    data: Path = DATA,
    diffusion: Path = typer.Option(..., help="Diffusion checkpoint or model folder whose UNet the ControlNet "
                                             "steers; its autoencoder encodes the latents."),
    autoencoder: Path = typer.Option(None, help="Autoencoder checkpoint (default: the --diffusion folder's)."),
    out: Path = OUT, config: Path = _config("controlnet"), progress: bool = PROGRESS,
) -> None:
    """Train a ControlNet on a frozen UNet (latent cache encoded once into OUT/latents, scaled as the UNet's)."""
    from volsynth.io.jsonfile import read_json
    from volsynth.models.checkpoint import network_configs
    from volsynth.training.controlnet import ControlNetSettings, ControlNetStage

    recipe, block, train = _blocks(config, "controlnet")
    meta = read_json(diffusion / "meta.json")
    if autoencoder is None:  # a model folder holds its autoencoder; a diffusion checkpoint names the one it used
        own = "autoencoder" in network_configs(diffusion)
        autoencoder = diffusion if own else Path(meta.get("autoencoder") or "")
        if not own and not (autoencoder / "meta.json").is_file():
            raise ConfigError(diffusion, f"the autoencoder this diffusion checkpoint names is not there "
                              f"({meta.get('autoencoder')})", "give it with --autoencoder")
    cache = _cache(data, autoencoder, str(meta.get("text_encoder", _text_encoder(recipe))),
                   out / "latents", progress, scale_factor=meta.get("scale_factor"))
    stage = ControlNetStage(cache, diffusion, ControlNetSettings.from_dict(block), seed=int(recipe.get("seed", 0)))
    _fit(stage, out, recipe, train, progress, "controlnet")


@train_app.command("refiner")
def train_refiner(data: Path = DATA, out: Path = OUT, config: Path = _config("refiner"),
                  progress: bool = PROGRESS) -> None:
    """Train the pixel-space refiner on the prepared images and label maps."""
    from volsynth.models.stages import RefinerSettings
    from volsynth.training.data import load_prepared
    from volsynth.training.refiner import RefinerStage

    recipe, block, train = _blocks(config, "refiner")
    stage = RefinerStage(load_prepared(data), RefinerSettings.from_dict(block), seed=int(recipe.get("seed", 0)))
    _fit(stage, out, recipe, train, progress, "refiner")


@train_app.command("segguided")
def train_segguided(
    data: list[Path] = typer.Option(..., "--data", help="Prepared folder, one per modality; repeatable."),
    out: Path = OUT, config: Path = _config("segguided"), progress: bool = PROGRESS,
) -> None:
    """Train the segmentation-guided stage (the mask concatenated to the noisy image)."""
    from volsynth.training.data import load_prepared
    from volsynth.training.segguided import SegGuidedSettings, SegGuidedStage

    recipe, block, train = _blocks(config, "segguided")
    settings = SegGuidedSettings.from_dict({"text_encoder": _text_encoder(recipe), **block})
    stage = SegGuidedStage([load_prepared(d) for d in data], settings, seed=int(recipe.get("seed", 0)))
    _fit(stage, out, recipe, train, progress, "segguided")


def _hierarchical(name: str, stage_class: str, data: Path, out: Path, config: Path | None, progress: bool) -> None:
    from volsynth.training import hierarchical
    from volsynth.training.data import load_prepared

    recipe, block, train = _blocks(config, name)
    settings = hierarchical.HierarchicalSettings.from_dict({"text_encoder": _text_encoder(recipe), **block})
    stage = getattr(hierarchical, stage_class)(load_prepared(data), settings, seed=int(recipe.get("seed", 0)))
    _fit(stage, out, recipe, train, progress, name)


@train_app.command("joint")
def train_joint(data: Path = DATA, out: Path = OUT, config: Path = _config("joint"),
                progress: bool = PROGRESS) -> None:
    """Train the hierarchical model's joint stage (image and label map at low resolution)."""
    _hierarchical("joint", "JointStage", data, out, config, progress)


@train_app.command("superres")
def train_superres(data: Path = DATA, out: Path = OUT, config: Path = _config("superres"),
                   progress: bool = PROGRESS) -> None:
    """Train the hierarchical model's super-resolution stage."""
    _hierarchical("superres", "SuperResolutionStage", data, out, config, progress)


import_app = typer.Typer(no_args_is_help=True, help="Import published models into volsynth model folders.")
err_console = Console(stderr=True, soft_wrap=True)


@import_app.command("maisi")
def import_maisi(
    weights_dir: Path = typer.Argument(..., help="Folder holding NV-Generate-CT's files as its download script lays "
                                                 "them out (models/autoencoder_v1.pt, models/diff_unet_3d_*.pt, "
                                                 "models/controlnet_3d_*.pt)."),
    variant: str = typer.Option(..., help="rflow-ct or ddpm-ct."),
    out: Path = typer.Option(..., help="Model folder to write (e.g. models/maisi-rflow-ct)."),
    overwrite: bool = typer.Option(False, help="Replace a model folder volsynth wrote at OUT."),
) -> None:
    """Import NVIDIA's MAISI (NV-Generate-CT) weights, loading every network strictly; each mismatch is listed."""
    from volsynth.models.maisi.importer import import_maisi as run_import
    from volsynth.models.maisi.networks import WeightsMismatchError

    try:
        path = run_import(weights_dir, variant, out, overwrite=overwrite)
    except WeightsMismatchError as exc:
        for problem in exc.problems:  # one line per problem; the error line follows (exit code 2)
            err_console.print(problem, markup=False, highlight=False, soft_wrap=True)
        raise
    console.print(f"wrote {path} (MAISI {variant}, every network loaded strictly)")
