"""The resource plan of a recipe: the dry run's measurements (``planner``) brought to the recipe's grid and
steps, checked against a GPU's memory, and printed as one table.

Memory of a training step on a GPU: what the stage holds before its first step (its networks, EMA copies, frozen
networks, less the process's libraries), three more copies of the trained parameters (gradients and the two AdamW
moments) and the activations, which grow linearly with the batch (and with the patch's voxels, for a stage that
trains on patches). A grid measured at a reduced size scales the activations and the step time linearly in voxels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from volsynth.devices import DeviceInfo, available_memory, device_info
from volsynth.errors import ConfigError
from volsynth.pipelines.base import SAMPLING_DEFAULTS
from volsynth.training.engine import TrainConfig
from volsynth.training.planner import Probe, StageMeasurement, probe, recipe_grid, reduced_grid
from volsynth.training.recipe_schema import STAGE_SETTINGS, model_sampling, split_block

PROBE_VOXELS = 64 ** 3  # a larger grid is first measured at about this many voxels
RAM_SHARE = 0.7  # a grid whose estimate needs more than this share of the available memory is not run
MAX_BATCH = 4096  # shown as "> MAX_BATCH" when the activations are too small to bound the batch
_UNITS = {"": 1024 ** 3, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


@dataclass
class StagePlan:
    """One row of the plan."""

    name: str
    parameters: dict[str, int]
    precision: str
    batch_size: int
    steps: int
    peak_rss: int
    step_seconds: float
    source: str  # "measured" or "extrapolated from AxBxC"
    gpu_fixed: int = 0  # bytes on a GPU that do not grow with the batch
    gpu_per_sample: float = 0.0  # bytes per sample of the micro batch
    micro_batch: int = 1
    patch: list[int] | None = None
    fits: bool | None = None
    max_batch: int | None = None
    max_patch: int | None = None

    @property
    def seconds(self) -> float:
        """Estimated wall time of the whole stage."""
        return self.steps * self.step_seconds

    @property
    def gpu_need(self) -> int:
        """Bytes a GPU needs for one step at the recipe's batch."""
        return int(self.gpu_fixed + self.gpu_per_sample * self.micro_batch)


@dataclass
class RecipePlan:
    """What a recipe needs on this device."""

    name: str
    grid: list[int]
    device: DeviceInfo
    stages: list[StagePlan]
    generation: StagePlan | None
    reused: list[str] = field(default_factory=list)  # stages taken from another model (pretrained)
    gpu_memory: int | None = None

    @property
    def training_seconds(self) -> float:
        """Estimated wall time of every trained stage."""
        return sum(stage.seconds for stage in self.stages)


def parse_memory(text: str) -> int:
    """``"24G"``, ``"24GB"``, ``"512M"``, ``"1.5T"`` (binary units; a bare number is GiB) -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(None, f"--gpu-memory: cannot read {text!r} as an amount of memory", "e.g. 24G or 80GB")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _stage_plan(recipe: dict, measured: StageMeasurement, base_rss: int, ratio: float, source: str) -> StagePlan:
    """A stage's row at the recipe's grid (``ratio``: recipe voxels / measured voxels)."""
    _, train = split_block(recipe.get(measured.name))
    config = TrainConfig.from_dict(train)
    if measured.patch:  # the step sees patches of a fixed size, whatever the grid
        ratio = 1.0
    held, step = measured.ready_rss - base_rss, measured.peak_rss - measured.ready_rss
    optimizer = 3 * measured.parameter_bytes  # gradients and the AdamW moments, allocated by the first step
    activations = max(0.0, step - optimizer) * ratio
    return StagePlan(measured.name, measured.parameters, measured.precision, config.batch_size, config.steps,
                     int(measured.ready_rss + step * ratio), measured.step_seconds * ratio, source,
                     gpu_fixed=held + optimizer, gpu_per_sample=activations / measured.micro_batch,
                     micro_batch=measured.micro_batch, patch=measured.patch)


def _generation_plan(recipe: dict, found: Probe, ratio: float, source: str) -> StagePlan | None:
    """Generating one volume at the recipe's recommended number of sampler steps."""
    measured = found.generation
    if measured is None:
        return None
    steps = int(model_sampling(recipe).get("steps", SAMPLING_DEFAULTS["steps"]))
    extra = (measured.peak_rss - measured.ready_rss) * ratio
    seconds = (measured.fixed_seconds + measured.seconds_per_step * steps) * ratio
    return StagePlan("generate 1 volume", measured.parameters, "float32", 1, 1, int(measured.ready_rss + extra),
                     seconds, source, gpu_fixed=measured.ready_rss - found.base_rss, gpu_per_sample=extra)


def check_gpu(row: StagePlan, gpu_memory: int, grid: list[int]) -> None:
    """Whether ``row`` fits ``gpu_memory``, and the largest batch (and cubic patch) that does."""
    room = gpu_memory - row.gpu_fixed
    row.fits = row.gpu_need <= gpu_memory
    if row.gpu_per_sample <= 0:
        row.max_batch = MAX_BATCH if room > 0 else 0
    else:
        row.max_batch = max(0, min(MAX_BATCH, int(room // row.gpu_per_sample)))
    if row.patch:
        per_voxel = row.gpu_per_sample / math.prod(row.patch)
        side = min(grid) if per_voxel <= 0 else int((max(0, room) / (per_voxel * row.micro_batch)) ** (1 / 3))
        row.max_patch = min(min(grid), side // 16 * 16)


def plan_from_probe(recipe: dict, found: Probe, gpu_memory: int | None = None) -> RecipePlan:
    """The recipe's plan from a probe (at the recipe's grid, or extrapolated from a smaller one)."""
    grid = recipe_grid(recipe)
    ratio = math.prod(grid) / math.prod(found.grid)
    source = "measured" if found.grid == grid else f"extrapolated from {'x'.join(map(str, found.grid))}"
    stages = [_stage_plan(recipe, m, found.base_rss, ratio, source) for m in found.stages]
    generation = _generation_plan(recipe, found, ratio, source)
    kind = recipe.get("kind", "latent")
    reused = [name for name in STAGE_SETTINGS[kind]
              if split_block(recipe.get(name))[0].get("pretrained") is not None]
    plan = RecipePlan(str(recipe.get("name") or recipe["_path"]), grid, device_info("cpu"), stages, generation,
                      reused, gpu_memory)
    if gpu_memory is not None:
        for row in [*stages, *([generation] if generation else [])]:
            check_gpu(row, gpu_memory, grid)
    return plan


def plan_recipe(recipe: dict, gpu_memory: int | None = None, probe_voxels: int = PROBE_VOXELS) -> RecipePlan:
    """Measure the recipe on this device (at a reduced grid first when its grid is over ``probe_voxels``, and at
    its own grid only when the estimate fits ``RAM_SHARE`` of the available memory) and plan it."""
    grid = recipe_grid(recipe)
    if math.prod(grid) <= probe_voxels:
        return plan_from_probe(recipe, probe(recipe, grid), gpu_memory)
    small = probe(recipe, reduced_grid(grid, probe_voxels))
    estimate = plan_from_probe(recipe, small, gpu_memory)
    rows = [*estimate.stages, *([estimate.generation] if estimate.generation else [])]
    available = available_memory()
    if available is not None and max(row.peak_rss for row in rows) <= RAM_SHARE * available:
        return plan_from_probe(recipe, probe(recipe, grid), gpu_memory)
    return estimate


def _bytes(count: float) -> str:
    for unit, size in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("kB", 1024)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{int(count)} B"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def print_plan(plan: RecipePlan, console: Console) -> None:
    """The plan as a table, the device and the totals."""
    table = Table(title=f"dry run of {plan.name}: grid {'x'.join(map(str, plan.grid))}")
    for column in ("stage", "parameters", "precision", "batch", "peak RSS", "time / step", "steps", "time",
                   "how"):
        table.add_column(column, justify="left" if column in ("stage", "parameters", "how") else "right")
    if plan.gpu_memory is not None:
        for column in ("GPU need", "fits", "largest batch"):
            table.add_column(column, justify="right")
    for row in [*plan.stages, *([plan.generation] if plan.generation else [])]:
        generation = row is plan.generation
        cells = [row.name, ", ".join(f"{n} {c:,}" for n, c in row.parameters.items()), row.precision,
                 str(row.batch_size), _bytes(row.peak_rss),
                 f"{row.step_seconds:.2f} s" if not generation else "", str(row.steps) if not generation else "",
                 _duration(row.seconds), row.source]
        if plan.gpu_memory is not None:
            largest = "" if generation else (f"> {MAX_BATCH}" if row.max_batch >= MAX_BATCH else str(row.max_batch))
            if row.max_patch is not None:
                largest += f" (patch {row.max_patch}^3)"
            cells += [_bytes(row.gpu_need), "fits" if row.fits else "does not fit", largest]
        table.add_row(*cells)
    console.print(table)
    console.print(f"device: {plan.device.describe()}")
    if plan.reused:
        console.print(f"reused, not trained: {', '.join(plan.reused)}")
    console.print(f"training, every stage: about {_duration(plan.training_seconds)} on this device")
    if plan.gpu_memory is not None:
        rows = [*plan.stages, *([plan.generation] if plan.generation else [])]
        fits = all(row.fits for row in rows)
        console.print(f"GPU memory {_bytes(plan.gpu_memory)}: the recipe {'fits' if fits else 'does not fit'}")
