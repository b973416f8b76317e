"""Schedulers (MONAI DDPM, DDIM, rectified flow) and one sampling loop as a pure function.

Parameterisations: ``epsilon`` (predict the noise), ``v_prediction`` (predict v) for DDPM/DDIM, and
``flow`` (predict x0 - noise, the velocity from noise to data) for rectified flow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler

from volsynth.errors import ConfigError

SAMPLERS = ("ddpm", "ddim", "rflow")
PREDICTIONS = ("epsilon", "v_prediction", "flow")


def build_scheduler(sampler: str, prediction_type: str = "epsilon", num_train_timesteps: int = 1000,
                    schedule: str = "scaled_linear_beta", spatial_numel: int = 32768, clip_sample: bool = False):
    """A MONAI scheduler for training or sampling; the schedule must match the one trained with.

    ``clip_sample`` clips each step's estimate of the clean sample to [-1, 1]: right for pixel-space models
    (images are scaled to [-1, 1]), where small noise-prediction errors at the noisiest steps are amplified
    ~100x in that estimate and otherwise make sampling diverge; wrong for latents, which are not bounded.
    """
    if sampler not in SAMPLERS:
        raise ConfigError(None, f"unknown sampler '{sampler}'", f"choose one of {', '.join(SAMPLERS)}")
    if sampler == "rflow":
        if prediction_type != "flow":
            raise ConfigError(None, "rectified flow needs prediction_type 'flow'")
        return RFlowScheduler(num_train_timesteps=num_train_timesteps, use_discrete_timesteps=False,
                              sample_method="logit-normal", use_timestep_transform=True,
                              base_img_size_numel=spatial_numel, spatial_dim=3)
    if prediction_type == "flow":
        raise ConfigError(None, f"prediction_type 'flow' needs the rflow sampler, not '{sampler}'")
    kwargs = {"num_train_timesteps": num_train_timesteps, "schedule": schedule, "prediction_type": prediction_type,
              "clip_sample": clip_sample}
    if schedule != "cosine":
        kwargs.update(beta_start=0.0015, beta_end=0.0195)
    return DDPMScheduler(**kwargs) if sampler == "ddpm" else DDIMScheduler(**kwargs)


def scheduler_for(trained: dict, sampler: str, spatial_numel: int = 32768, model_path=None,
                  pixel_space: bool = False):
    """A sampling scheduler for a model trained with the settings ``trained`` (its meta's ``diffusion``).

    DDIM and DDPM sample models trained with the DDPM schedule; rectified-flow models need ``rflow``.
    Pixel-space models sample with the clean-sample estimate clipped to [-1, 1].
    """
    trained_with = trained.get("sampler", "ddpm")
    if (sampler == "rflow") != (trained_with == "rflow"):
        raise ConfigError(model_path, f"model trained with '{trained_with}' cannot sample with '{sampler}'",
                          "use rflow for flow models, ddpm/ddim otherwise")
    return build_scheduler(sampler, trained.get("prediction_type", "epsilon"), trained.get("num_train_timesteps", 1000),
                           trained.get("schedule", "scaled_linear_beta"), spatial_numel, clip_sample=pixel_space)


def training_target(scheduler, prediction_type: str, x0: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the network is trained to predict for the noisy sample made from ``x0`` and ``noise``."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    if prediction_type == "flow":
        return x0 - noise
    raise ConfigError(None, f"unknown prediction type '{prediction_type}'", f"choose one of {PREDICTIONS}")


def sample_timesteps(scheduler, x0: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One training timestep per sample, each from its own generator (reproducible under DDP)."""
    if isinstance(scheduler, RFlowScheduler):
        # logit-normal time, then MONAI's resolution-dependent shift, as RFlowScheduler.sample_timesteps does
        t = torch.stack([torch.sigmoid(torch.randn((), generator=g)) for g in generators]) * \
            scheduler.num_train_timesteps
        if scheduler.use_timestep_transform:
            from monai.networks.schedulers.rectified_flow import timestep_transform

            t = timestep_transform(t, input_img_size_numel=torch.tensor(x0[0, 0].numel()),
                                   base_img_size_numel=scheduler.base_img_size_numel,
                                   scale=scheduler.transform_scale, num_train_timesteps=scheduler.num_train_timesteps,
                                   spatial_dim=scheduler.spatial_dim)
        return t.to(x0.device)
    return torch.stack([torch.randint(0, scheduler.num_train_timesteps, (), generator=g) for g in generators]).to(
        x0.device)


Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepObserver = Callable[[int, int], None]
# Observers of every sampling step run in the current context (thread or task): a caller that cannot reach the
# sampling loops inside a pipeline (a progress bar, a cancel button) watches them here instead of each pipeline
# threading a callback through its stages.
_STEP_OBSERVERS: ContextVar[tuple[StepObserver, ...]] = ContextVar("volsynth_step_observers", default=())


@contextmanager
def observe_steps(observer: StepObserver) -> Iterator[None]:
    """Call ``observer(step, total)`` after each sampling step run inside this block (1-based step); an exception
    it raises stops the sampling (a cancelled job)."""
    token = _STEP_OBSERVERS.set((*_STEP_OBSERVERS.get(), observer))
    try:
        yield
    finally:
        _STEP_OBSERVERS.reset(token)


@torch.no_grad()
def sample(denoiser: Denoiser, x: torch.Tensor, scheduler, steps: int, generator: torch.Generator | None = None,
           callback: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run the reverse process from noise ``x``; ``denoiser(x, t)`` returns the model prediction."""
    if isinstance(scheduler, RFlowScheduler):
        scheduler.set_timesteps(steps, input_img_size_numel=x[0, 0].numel())
    else:
        scheduler.set_timesteps(steps)
    timesteps = list(scheduler.timesteps)
    for index, t in enumerate(timesteps):
        t_batch = torch.full((x.shape[0],), float(t), device=x.device)
        if not isinstance(scheduler, RFlowScheduler):
            t_batch = t_batch.long()
        prediction = denoiser(x, t_batch)
        if isinstance(scheduler, RFlowScheduler):
            following = timesteps[index + 1] if index + 1 < len(timesteps) else None
            x, _ = scheduler.step(prediction, t, x, following)
        elif isinstance(scheduler, DDPMScheduler):
            x, _ = scheduler.step(prediction, int(t), x, generator=generator)
        else:
            x, _ = scheduler.step(prediction, int(t), x, eta=0.0, generator=generator)
        if callback is not None:
            callback(index, len(timesteps), x)
        for observer in _STEP_OBSERVERS.get():
            observer(index + 1, len(timesteps))
    return x
