"""What every stage of a recipe run shares: the run's state, training one stage, and the data stages."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from volsynth.data.phantom import write_phantom_dataset
from volsynth.data.plan import PLAN_FILE, Plan
from volsynth.data.prepare import prepare_dataset
from volsynth.errors import ConfigError
from volsynth.io.atomic import atomic_output
from volsynth.io.jsonfile import read_json
from volsynth.models.checkpoint import latest_checkpoint, load_checkpoint, network_configs
from volsynth.training.engine import TrainConfig, Trainer
from volsynth.training.recipe_schema import prepare_options, split_block


def fit_stage(stage, folder: Path, config: TrainConfig) -> None:
    """Train ``stage`` into ``folder`` to ``config.steps``, resuming from its last checkpoint."""
    Trainer(stage, folder, config).fit(resume=True)


@dataclass
class Run:
    """One recipe run: the resolved recipe, its folder, and what the finished stages produced."""

    recipe: dict
    out: Path
    progress: bool
    log: Callable[[str], None]
    rank: int = 0
    world: int = 1
    parent_models: dict[str, Path] = field(default_factory=dict)  # stage -> model made by its init: {recipe: R}
    trained: dict[str, Path | None] = field(default_factory=dict)  # stage -> its final checkpoint or model folder
    state: dict = field(default_factory=dict)  # what later stages read (prepared data, latent cache, ...)
    fit: Callable[[object, Path, TrainConfig], None] = fit_stage  # how a stage is trained (the planner measures)

    @property
    def path(self) -> str:
        """The recipe file (errors name it)."""
        return self.recipe["_path"]

    @property
    def seed(self) -> int:
        """The recipe's seed."""
        return int(self.recipe.get("seed", 0))

    @property
    def text_encoder(self) -> str:
        """The recipe's text encoder id."""
        return str(self.recipe.get("text_encoder", "minilm"))

    def train_config(self, train: dict) -> dict:
        """A stage's ``train:`` block with the run's seed and progress."""
        return {"seed": self.seed, "progress": self.progress, **train}

    def once(self, done: Callable[[], bool], work: Callable[[], object]) -> None:
        """Run ``work`` on rank 0 unless ``done()``; other ranks wait for it."""
        if self.rank == 0 and not done():
            work()
        if self.world > 1:
            dist.barrier()


def finished(folder: Path, steps: int) -> bool:
    """Whether a stage folder holds a checkpoint at ``steps`` or later."""
    path = latest_checkpoint(folder / "checkpoints")
    return path is not None and int(json.loads((path / "meta.json").read_text())["step"]) >= steps


def train_stage(run: Run, name: str, train: dict, init: Path | None, make_stage: Callable[[], object]) -> Path:
    """Train (or finish training) one stage into OUT/name; its last checkpoint. A fresh stage with ``init``
    starts its trained networks from that folder's networks of the same names."""
    config = TrainConfig.from_dict(run.train_config(train))
    folder = run.out / name
    if not finished(folder, config.steps):
        run.log(f"stage {name}")
        stage = make_stage()
        if init is not None and latest_checkpoint(folder / "checkpoints") is None:
            initialise_networks(stage, init, run.path, name)
        run.fit(stage, folder, config)
    return latest_checkpoint(folder / "checkpoints")


def init_source(run: Run, name: str, plan: Plan | None = None) -> Path | None:
    """The folder a stage block's ``init:`` names (a model folder, or the model its parent recipe made), checked;
    or None."""
    block, _ = split_block(run.recipe.get(name))
    init = block.get("init")
    if init is None:
        return None
    if block.get("pretrained") is not None:
        raise ConfigError(run.path, f"{name}.init and {name}.pretrained exclude each other",
                          "pretrained reuses a network as it is; init trains on from it")
    source = run.parent_models.get(name)
    if source is None:
        source = Path(init["path"] if isinstance(init, dict) else init)
    network = {"diffusion": "unet"}.get(name, name)
    return pretrained_model(source, plan, run.path, network, name, key="init")


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


def data_stage(run: Run, data_cfg: dict, folder: Path) -> Path:
    """Write the recipe's phantom dataset into ``folder`` (once), or return the given dataset."""
    if not data_cfg.get("phantom"):
        return Path(data_cfg["dataset"])

    def make_phantoms() -> None:
        run.log(f"stage data: writing phantoms to {folder.name}")
        with atomic_output(folder) as tmp:
            write_phantom_dataset(out=tmp, progress=run.progress, **data_cfg["phantom"])

    run.once(lambda: (folder / "dataset.json").is_file(), make_phantoms)
    return folder


def prepare_stage(run: Run, dataset: Path, prepared: Path) -> None:
    """Prepare ``dataset`` into ``prepared`` (once) with the recipe's ``prepare:`` block."""
    options, labels = prepare_options(run.recipe.get("prepare"), run.path)
    run.once(lambda: (prepared / PLAN_FILE).is_file(),
             lambda: (run.log(f"stage prepare {prepared.name}"),
                      prepare_dataset(dataset, prepared, options, label_spec=labels, progress=run.progress)))


def model_current(model: Path, trained: dict[str, Path | None], log: Callable[[str], None]) -> bool:
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
