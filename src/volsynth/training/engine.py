"""One training engine for every stage: step loop, EMA, bf16 autocast, gradient accumulation and
clipping, NaN guard, progress bar, JSONL metrics (TensorBoard optional), previews, atomic
checkpoints, exact resume, DDP.

Reproducibility without saving RNG state: the data order of step ``s`` comes from a permutation
seeded by (seed, epoch), and every sample draws its noise from its own generator seeded by
(seed, step, position in the global batch). So a resumed run, a run with gradient accumulation and
a data-parallel run under ``torchrun`` all see the same samples and the same noise.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn

from volsynth.config import settings_from_dict
from volsynth.devices import check_device_setting, check_precision_setting, resolve_precision, select_device
from volsynth.errors import VolsynthError
from volsynth.io.atomic import atomic_output
from volsynth.models.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from volsynth.models.checkpointing import enable_activation_checkpointing
from volsynth.parallel import progress_bar


class TrainingError(VolsynthError):
    """Training cannot go on (repeated non-finite losses, a mismatched checkpoint, ...)."""


@dataclass
class TrainConfig:
    """Settings shared by all stages (a recipe's ``train:`` block)."""

    steps: int = 1000
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_accum: int = 1
    grad_clip: float = 1.0
    ema_decay: float | None = 0.999
    bf16: bool | str = "auto"  # auto: bf16 where the device runs it natively (volsynth.devices), else float32
    device: str = "auto"  # auto: this process's GPU when CUDA is available, else the CPU; or cpu, cuda, cuda:N
    activation_checkpointing: bool = False  # recompute large blocks' activations in backward: less memory, ~1.3x time
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    preview_every: int = 0
    seed: int = 0
    max_bad_steps: int = 5
    progress: bool = True
    tensorboard: bool = False  # also write TensorBoard event files (pip install 'volsynth[tensorboard]')

    def __post_init__(self) -> None:
        check_precision_setting(self.bf16, "train.bf16")
        check_device_setting(self.device, "train.device")

    @classmethod
    def from_dict(cls, data: dict | None) -> TrainConfig:
        """Build from a dict, rejecting unknown keys with a clear error."""
        return settings_from_dict(cls, data, "training")


METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Logged values go to ``metrics.jsonl`` and, when asked, to TensorBoard events under ``tensorboard/``."""

    def __init__(self, out: Path, stage: str, tensorboard: bool = False) -> None:
        self.stage = stage
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise TrainingError(out, "tensorboard: true needs the tensorboard package",
                                    "pip install 'volsynth[tensorboard]', or set tensorboard: false") from exc
            self.writer = SummaryWriter(str(out / "tensorboard"))
        self.file = open(out / METRICS_FILE, "a")

    def write(self, step: int, values: dict[str, float]) -> None:
        """Append one line (and one scalar per value to TensorBoard)."""
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{self.stage}/{key}", value, step)
            self.writer.flush()

    def close(self) -> None:
        """Close the files."""
        self.file.close()
        if self.writer is not None:
            self.writer.close()


class Stage(Protocol):
    """What a training stage gives the engine."""

    name: str
    networks: dict[str, nn.Module]  # every network saved in the checkpoint
    configs: dict[str, dict]  # their constructor configs

    def num_items(self) -> int:
        """Number of training items."""
        ...

    def param_groups(self) -> dict[str, list[str]]:
        """Optimizer name -> names of the networks it trains (stepped in this order)."""
        ...

    def losses(self, indices: list[int], generators: list[torch.Generator], step: int) -> dict[str, torch.Tensor]:
        """Losses for the items ``indices``: one entry per optimizer name (a name left out trains nothing that
        step) plus extra logged terms."""
        ...

    def meta(self) -> dict:
        """What to store in meta.json beside the weights (plan, scale factor, text encoder...)."""
        ...

    def preview(self, step: int, path: Path) -> None:
        """Write a preview PNG."""
        ...

    def to(self, device: torch.device) -> None:
        """Put the networks (and any module the losses use) on ``device``; batches follow (training/placement.py)."""
        ...


class EMA:
    """Exponential moving average of a network's floating-point parameters and buffers."""

    def __init__(self, network: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in network.state_dict().items()}

    @torch.no_grad()
    def update(self, network: nn.Module, step: int | None = None) -> None:
        """ema = d * ema + (1 - d) * current, with the warm-up d = min(decay, (1 + step) / (10 + step)).

        Without the warm-up the average keeps decay**steps of the random initial weights: 22 % after 1500
        steps at 0.999, which made a 3000-step diffusion model's EMA samples blobs while its trained
        weights gave recognisable anatomy.
        """
        decay = self.decay if step is None else min(self.decay, (1.0 + step) / (10.0 + step))
        for key, value in network.state_dict().items():
            if value.is_floating_point():
                self.state[key].lerp_(value.detach(), 1.0 - decay)
            else:
                self.state[key].copy_(value)


def _logged_step(line: str) -> float:
    """The step of a metrics line; infinity for a blank or cut-off line (a run killed while appending it)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def distributed_info() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def batch_indices(step: int, batch_size: int, num_items: int, seed: int) -> list[int]:
    """The global batch of ``step``: consecutive positions of per-epoch seeded permutations."""
    out, start = [], step * batch_size
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, num_items)
        permutation = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(permutation[offset]))
    return out


def sample_generators(seed: int, step: int, positions: list[int]) -> list[torch.Generator]:
    """One generator per sample of the global batch, seeded by (seed, step, position)."""
    return [torch.Generator().manual_seed((seed * 1_000_003 + step) * 4099 + p) for p in positions]


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _all_reduce_mean(params: list[torch.Tensor]) -> None:
    """Average gradients over ranks (data parallel), in one flat buffer."""
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for param in params:
        param.grad.copy_(flat[offset:offset + param.numel()].view_as(param))
        offset += param.numel()


class Trainer:
    """Runs a stage for ``config.steps`` optimizer steps, checkpointing into ``out/checkpoints``."""

    def __init__(self, stage: Stage, out: str | Path, config: TrainConfig) -> None:
        self.stage, self.out, self.config = stage, Path(out), config
        self.rank, self.world = distributed_info()
        if config.batch_size % (self.world * config.grad_accum):
            raise TrainingError(None, f"batch_size {config.batch_size} is not divisible by world size x grad_accum "
                                f"({self.world} x {config.grad_accum})")
        groups = stage.param_groups()
        self.trained = [name for names in groups.values() for name in names]
        if config.activation_checkpointing:
            for network in stage.networks.values():
                enable_activation_checkpointing(network)
        # networks, optimizer state and EMA live on the device; batches are made on the CPU and moved there
        self.device = select_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
        stage.to(self.device)
        self.dtype = resolve_precision(config.bf16, self.device)
        if self.world > 1:  # every rank starts from rank 0's weights
            for name in self.trained:
                for tensor in stage.networks[name].state_dict().values():
                    dist.broadcast(tensor, 0)
        self.optimizers = {
            group: torch.optim.AdamW([p for n in names for p in stage.networks[n].parameters() if p.requires_grad],
                                     lr=config.lr, weight_decay=config.weight_decay)
            for group, names in groups.items()}
        warmup = max(1, config.warmup_steps)
        self.schedulers = {g: torch.optim.lr_scheduler.LambdaLR(o, lambda s: min(1.0, (s + 1) / warmup))
                           for g, o in self.optimizers.items()}
        self.ema = {n: EMA(stage.networks[n], config.ema_decay) for n in self.trained} if config.ema_decay else {}
        self.step = 0

    @property
    def checkpoint_dir(self) -> Path:
        """Where checkpoints go."""
        return self.out / "checkpoints"

    def resume(self) -> bool:
        """Load the last complete checkpoint if there is one; returns whether it did."""
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return False
        checkpoint = load_checkpoint(path, with_training_state=True)
        state = checkpoint.training_state
        if state is None:
            raise TrainingError(path, "checkpoint has no training state", "it cannot be resumed")
        for name, network in checkpoint.networks.items():
            self.stage.networks[name].load_state_dict(network.state_dict())
        for name, ema in self.ema.items():
            ema.state = {k: v.to(self.device, copy=True) for k, v in checkpoint.ema[name].items()}
        for group, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][group])
            self.schedulers[group].load_state_dict(state["schedulers"][group])
        self.step = int(state["step"])
        self._truncate_metrics()
        return True

    def _truncate_metrics(self) -> None:
        """Drop logged lines past the resumed step, so the metrics file reads as one run."""
        path = self.out / METRICS_FILE
        if self.rank != 0 or not path.is_file():
            return
        lines = [ln for ln in path.read_text().splitlines() if _logged_step(ln) <= self.step]
        with atomic_output(path) as tmp:  # a full disk leaves the old file whole
            tmp.write_text("".join(ln + "\n" for ln in lines))

    def save(self) -> Path | None:
        """Write ``checkpoint-<step>`` (rank 0) and prune old ones."""
        path = None
        if self.rank == 0:
            path = self.checkpoint_dir / f"checkpoint-{self.step:07d}"
            state = {"step": self.step, "optimizers": {g: o.state_dict() for g, o in self.optimizers.items()},
                     "schedulers": {g: s.state_dict() for g, s in self.schedulers.items()}}
            save_checkpoint(path, self.stage.networks, self.stage.configs,
                            {**self.stage.meta(), "stage": self.stage.name, "step": self.step},
                            settings={"train": asdict(self.config)},
                            ema={n: e.state for n, e in self.ema.items()}, training_state=state)
            kept = sorted(p for p in self.checkpoint_dir.iterdir() if p.name.startswith("checkpoint-"))
            for old in kept[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        if self.world > 1:
            dist.barrier()
        return path

    def _micro_batches(self) -> list[tuple[list[int], list[torch.Generator]]]:
        cfg = self.config
        indices = batch_indices(self.step, cfg.batch_size, self.stage.num_items(), cfg.seed)
        positions = list(range(cfg.batch_size))
        generators = sample_generators(cfg.seed, self.step, positions)
        local = positions[self.rank::self.world]
        size = len(local) // cfg.grad_accum
        chunks = [local[i * size:(i + 1) * size] for i in range(cfg.grad_accum)]
        return [([indices[p] for p in chunk], [generators[p] for p in chunk]) for chunk in chunks]

    def train_step(self) -> dict[str, float] | None:
        """One optimizer step per group; returns logged values, or None when the step was skipped."""
        cfg = self.config
        torch.manual_seed(cfg.seed * 1_000_003 + self.step)  # dropout and other global randomness
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        logged: dict[str, float] = {}
        finite = True
        for indices, generators in self._micro_batches():
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
                losses = self.stage.losses(indices, generators, self.step)
            for key, value in losses.items():
                logged[key] = logged.get(key, 0.0) + float(value.detach()) / cfg.grad_accum
            finite &= all(bool(torch.isfinite(v.detach()).all()) for v in losses.values())
            if not finite:
                break
            # Each group's loss is differentiated w.r.t. its own parameters only (a generator loss that
            # runs through the discriminator leaves the discriminator's gradients alone).
            # A group without a loss this step (a discriminator before its start) keeps no gradients.
            present = [(group, optimizer) for group, optimizer in self.optimizers.items() if group in losses]
            for number, (group, optimizer) in enumerate(present):
                params = _params(optimizer)
                grads = torch.autograd.grad(losses[group] / cfg.grad_accum, params, allow_unused=True,
                                            retain_graph=number < len(present) - 1)
                for param, grad in zip(params, grads, strict=True):
                    if grad is not None:
                        param.grad = grad if param.grad is None else param.grad + grad
        if finite:
            for optimizer in self.optimizers.values():
                params = _params(optimizer)
                if self.world > 1:
                    _all_reduce_mean(params)
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip else None
                if norm is not None and not torch.isfinite(norm):
                    finite = False
        if not finite:
            for optimizer in self.optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            return None
        for group, optimizer in self.optimizers.items():
            optimizer.step()
            self.schedulers[group].step()
        for name, ema in self.ema.items():
            ema.update(self.stage.networks[name], self.step)
        return logged

    def fit(self, resume: bool = True) -> Path:
        """Train to ``config.steps``; returns the final checkpoint folder."""
        cfg = self.config
        if resume:
            self.resume()
        self.out.mkdir(parents=True, exist_ok=True)
        for network in self.stage.networks.values():
            network.train()
        bad, start = 0, time.perf_counter()
        first_step = self.step
        metrics = MetricsLog(self.out, self.stage.name, cfg.tensorboard) if self.rank == 0 else None
        try:
            with progress_bar(cfg.progress and self.rank == 0) as bar:
                task = bar.add_task(f"train {self.stage.name}", total=cfg.steps, completed=self.step)
                while self.step < cfg.steps:
                    logged = self.train_step()
                    if logged is None:
                        bad += 1
                        if bad >= cfg.max_bad_steps:
                            raise TrainingError(self.out, f"{bad} non-finite losses in a row at step {self.step}",
                                                "lower the learning rate, or set bf16: false")
                        continue
                    bad = 0
                    self.step += 1
                    bar.update(task, completed=self.step, description=f"train {self.stage.name} "
                               + " ".join(f"{k} {v:.4f}" for k, v in logged.items()))
                    if metrics and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                        rate = (self.step - first_step) / max(1e-9, time.perf_counter() - start)
                        lr = self.optimizers[next(iter(self.optimizers))].param_groups[0]["lr"]
                        metrics.write(self.step, {**logged, "lr": lr, "it_per_s": rate})
                    if cfg.preview_every and self.rank == 0 and self.step % cfg.preview_every == 0:
                        self.stage.preview(self.step, self.out / "previews" / f"step-{self.step:07d}.png")
                    if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                        self.save()
        except OSError as exc:  # metrics, previews: a full disk or a vanished folder, one line naming the folder
            raise TrainingError(self.out, f"cannot write ({exc.strerror or exc})",
                                "free disk space and run the same command again: it resumes from the last "
                                "checkpoint") from exc
        finally:
            if metrics:
                metrics.close()
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None or not math.isfinite(self.step):
            raise TrainingError(self.out, "training finished without a checkpoint")
        return path
