"""``volsynth train --recipe R --dry-run``: what each stage of a recipe needs on this device, measured before
anything is trained.

The recipe runs for real, in a child process and a temporary folder that is deleted afterwards, on a few phantom
cases prepared at the recipe's grid: every stage through the same stage graph as ``volsynth train`` for
``WARMUP_STEPS + TIMED_STEPS`` steps (peak resident memory from just before its first step, mean time of the
timed steps), then the assembled model generates one volume (peak memory, seconds per sampler step). A grid too
big to run here is measured at a reduced grid and extrapolated linearly in voxels (``planner_report``).
"""

from __future__ import annotations

import copy
import math
import multiprocessing
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from volsynth.data.prepare import load_manifest
from volsynth.devices import (
    PrecisionWarning,
    current_rss,
    memory_in_use,
    memory_peak,
    peak_rss,
    reset_memory_peak,
    reset_peak_rss,
    synchronize,
)
from volsynth.errors import ConfigError, VolsynthError
from volsynth.models.index import read_model_index
from volsynth.pipelines.auto import load_pipeline
from volsynth.training.engine import TrainConfig, Trainer
from volsynth.training.recipe_schema import STAGE_SETTINGS, check_recipe, prepare_options
from volsynth.training.run_context import Run
from volsynth.training.stage_graph import STAGE_GRAPH

DRY_CASES = 2  # phantom cases per dataset of a dry run
WARMUP_STEPS = 1  # not timed: the first step allocates the optimizer state and warms the kernels
TIMED_STEPS = 2
GENERATION_STEPS = (1, 3)  # two generations: their difference is the cost of sampler steps
DRY_TRAIN = {"checkpoint_every": WARMUP_STEPS + TIMED_STEPS, "preview_every": 0, "log_every": 1000,
             "progress": False, "tensorboard": False, "steps": WARMUP_STEPS + TIMED_STEPS}


@dataclass
class StageMeasurement:
    """One stage's training step, as measured at ``grid``."""

    name: str
    parameters: dict[str, int]  # trained network -> parameter count
    parameter_bytes: int  # bytes of the trained parameters
    micro_batch: int  # samples per forward/backward (batch_size / grad_accum)
    patch: list[int] | None  # training patch, for stages that train on patches
    precision: str  # "bfloat16" or "float32"
    ready_rss: int  # resident bytes with the stage built, before its first step
    peak_rss: int  # peak resident bytes during its steps
    step_seconds: float  # mean time of one optimizer step


@dataclass
class GenerationMeasurement:
    """One generated volume of the assembled model."""

    parameters: dict[str, int]  # component -> parameter count (model_index.json)
    ready_rss: int  # resident bytes with the model loaded
    peak_rss: int  # peak resident bytes while generating
    fixed_seconds: float  # prompt, mask, decode and post-processing
    seconds_per_step: float  # one sampler step


@dataclass
class Probe:
    """What one dry run measured at one grid."""

    grid: list[int]
    base_rss: int  # resident bytes of the child process before the recipe ran (libraries)
    stages: list[StageMeasurement]
    generation: GenerationMeasurement | None
    warnings: list[tuple[str, type]]


def recipe_grid(recipe: dict) -> list[int]:
    """The grid the recipe prepares its data on (``prepare.size``)."""
    options, _ = prepare_options(recipe.get("prepare"), recipe["_path"])
    if options.size is None:
        raise ConfigError(recipe["_path"], "a dry run needs prepare.size", "set prepare: {size: N}")
    return list(options.size)


def dry_recipe(recipe: dict, grid: list[int]) -> dict:
    """The recipe as a dry run runs it: ``DRY_CASES`` phantoms per dataset prepared at ``grid`` (a dataset recipe
    gets abdomen CT phantoms, prepared without its label spec and ROI), no ``init``, ``DRY_TRAIN`` steps."""
    dry = copy.deepcopy({k: v for k, v in recipe.items() if not k.startswith("_")})
    data, prepare = dry.get("data") or {}, dict(dry.get("prepare") or {})
    source = data.get("phantom") or data.get("dataset")
    entries = source if isinstance(source, list) else [source]
    if data.get("phantom"):
        phantoms = [{**entry, "cases": DRY_CASES, "size": max(grid)} for entry in entries]
    else:
        phantoms = [{"kind": "abdomen-ct", "cases": DRY_CASES, "size": max(grid), "seed": 0} for _ in entries]
        for key in ("labels", "roi", "margin_mm"):
            prepare.pop(key, None)
    dry["data"] = {"phantom": phantoms if isinstance(source, list) else phantoms[0]}
    dry["prepare"] = {**prepare, "size": list(grid)}
    for name in STAGE_SETTINGS[dry.get("kind", "latent")]:
        block = dry.get(name)
        if isinstance(block, dict) and block.get("pretrained") is None:
            block.pop("init", None)
            block["train"] = {**(block.get("train") or {}), **DRY_TRAIN}
    return check_recipe(dry, recipe["_path"])


def trained_parameters(stage) -> dict[str, int]:
    """Trained network -> parameter count."""
    return {name: sum(p.numel() for p in stage.networks[name].parameters())
            for names in stage.param_groups().values() for name in names}


def _measuring_fit(measured: list[StageMeasurement]):
    """A ``Run.fit`` that trains a stage for its few dry steps, measuring memory and time, then checkpoints."""
    def fit(stage, folder: Path, config: TrainConfig) -> None:
        trainer = Trainer(stage, folder, config)
        for network in stage.networks.values():
            network.train()
        ready = memory_in_use(trainer.device)  # on a GPU: its allocator's bytes, the memory that limits it
        reset_memory_peak(trainer.device)
        times = []
        while trainer.step < config.steps:
            start = time.perf_counter()
            trainer.train_step()
            synchronize(trainer.device)
            times.append(time.perf_counter() - start)
            trainer.step += 1
        peak = memory_peak(trainer.device)
        trainer.save()
        trained = [stage.networks[n] for names in stage.param_groups().values() for n in names]
        patch = getattr(getattr(stage, "settings", None), "patch", None)
        measured.append(StageMeasurement(
            stage.name, trained_parameters(stage),
            sum(p.numel() * p.element_size() for net in trained for p in net.parameters()),
            config.batch_size // config.grad_accum, list(patch) if patch else None,
            str(trainer.dtype).removeprefix("torch."), ready, peak,
            sum(times[WARMUP_STEPS:]) / max(1, len(times) - WARMUP_STEPS)))
    return fit


def _first_label_map(run: Run) -> Path | None:
    """The label map of the run's first prepared case (None without labels)."""
    data = run.state.get("data") or (run.state.get("datasets") or [None])[0]
    entry = load_manifest(data.root)["cases"][0] if data is not None else {}
    return data.root / entry["label"] if entry.get("label") else None


def _generation(model: Path, mask: Path | None) -> GenerationMeasurement:
    """Load the assembled model and generate one volume (from ``mask`` when the model takes one) with 1 and with
    3 sampler steps."""
    pipeline = load_pipeline(model)
    given = {"mask": str(mask)} if mask is not None and "mask" in pipeline.options else {}
    ready = current_rss()
    reset_peak_rss()
    seconds = []
    for steps in GENERATION_STEPS:
        start = time.perf_counter()
        pipeline(seed=0, steps=steps, **given)
        seconds.append(time.perf_counter() - start)
    per_step = max(0.0, (seconds[1] - seconds[0]) / (GENERATION_STEPS[1] - GENERATION_STEPS[0]))
    parameters = {name: c.parameters for name, c in read_model_index(model).components.items()}
    fixed = max(0.0, seconds[0] - per_step * GENERATION_STEPS[0])
    return GenerationMeasurement(parameters, ready, peak_rss(), fixed, per_step)


def probe_in_process(recipe: dict, folder: Path) -> Probe:
    """Run the dry recipe into ``folder`` in this process; what it measured."""
    base = current_rss()
    measured: list[StageMeasurement] = []
    run = Run(recipe, folder, progress=False, log=lambda message: None, fit=_measuring_fit(measured))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for step in STAGE_GRAPH[recipe.get("kind", "latent")]:
            step(run)
        model = folder / "model"
        generation = _generation(model, _first_label_map(run)) if (model / "meta.json").is_file() else None
    # the precision warning concerns the user's recipe; others concern the dry run's phantoms
    shown = list(dict.fromkeys((str(w.message), w.category) for w in caught if issubclass(w.category,
                                                                                        PrecisionWarning)))
    return Probe(recipe_grid(recipe), base, measured, generation, shown)


def _probe_child(recipe: dict, folder: str, threads: int, connection) -> None:
    """The child process: run the probe, send back ("ok", Probe) or ("error", one line)."""
    torch.set_num_threads(threads)
    try:
        connection.send(("ok", probe_in_process(recipe, Path(folder))))
    except VolsynthError as exc:
        connection.send(("error", exc.one_line()))
    except Exception as exc:  # noqa: BLE001 - any failure of the child is reported by the parent
        connection.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        connection.close()


def probe(recipe: dict, grid: list[int]) -> Probe:
    """Measure the recipe at ``grid`` in a fresh child process, in a temporary folder deleted afterwards."""
    dry = dry_recipe(recipe, grid)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    with tempfile.TemporaryDirectory(prefix="volsynth-dry-run-") as folder:
        child = context.Process(target=_probe_child, args=(dry, str(Path(folder) / "run"), torch.get_num_threads(),
                                                           sender))
        child.start()
        sender.close()
        try:
            status, result = receiver.recv()
        except EOFError:
            status, result = "error", None
        child.join()
    if result is None:
        result = f"the measuring process ended without a result (exit code {child.exitcode}; out of memory?)"
    if status != "ok":
        raise ConfigError(recipe["_path"], f"dry run at {'x'.join(map(str, grid))}: {result}")
    for message, category in result.warnings:
        warnings.warn(message, category, stacklevel=2)
    return result


def reduced_grid(grid: list[int], voxels: int, multiple: int = 16) -> list[int]:
    """``grid`` scaled down to about ``voxels`` voxels, each axis a multiple of ``multiple`` (at least one)."""
    scale = (voxels / math.prod(grid)) ** (1 / 3)
    return [max(multiple, int(size * scale) // multiple * multiple) for size in grid]
