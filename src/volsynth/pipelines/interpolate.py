"""Latent interpolation between two masks (segmentation-guided diffusion's interpolation, on a latent model with
a ControlNet): the mask conditions are blended linearly and the starting noises spherically, so the frames
morph from one mask's generation to the other's."""

from __future__ import annotations

from pathlib import Path

import torch

from volsynth.errors import ConfigError
from volsynth.io.formats import write_volume
from volsynth.pipelines.base import GenerationRequest, GenerationResult, Pipeline
from volsynth.pipelines.jobs import output_paths
from volsynth.pipelines.sidecar import sidecar_record, write_sidecar


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two Gaussian noise tensors (keeps their norm statistics)."""
    if t <= 0:
        return a.clone()
    if t >= 1:
        return b.clone()
    a_flat, b_flat = a.flatten(), b.flatten()
    cos = torch.clamp((a_flat @ b_flat) / (a_flat.norm() * b_flat.norm()), -1.0, 1.0)
    angle = torch.arccos(cos)
    if float(angle) < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * angle) * a + torch.sin(t * angle) * b) / torch.sin(angle)


def interpolate(pipeline: Pipeline, mask_a, mask_b, frames: int = 5, seed_a: int = 0, seed_b: int | None = None,
                **request) -> list[GenerationResult]:
    """Generations along a path between two masks: the first and last frames are exactly the two masks' own
    generations (each on its mask's grid; middle frames use the nearer mask's grid). ``request`` holds other
    GenerationRequest fields (prompt, steps, guidance scales, mask_labels)."""
    if frames < 2:
        raise ConfigError(None, f"--frames must be >= 2, got {frames}")
    if not hasattr(pipeline, "initial_noise") or "mask" not in pipeline.options:
        raise ConfigError(pipeline.model_path, f"interpolation needs a latent model with mask guidance, not this "
                          f"{pipeline.kind} model")
    seed_b = seed_a if seed_b is None else seed_b
    labels = request.get("mask_labels")
    features_a = pipeline.prepare_mask(mask_a, labels)[2]
    features_b = pipeline.prepare_mask(mask_b, labels)[2]
    noise_a, noise_b = pipeline.initial_noise(seed_a), pipeline.initial_noise(seed_b)
    results = []
    for index in range(frames):
        t = index / (frames - 1)
        near_a = t < 0.5
        checked = GenerationRequest(mask=mask_a if near_a else mask_b, seed=seed_a if near_a else seed_b, **request)
        pipeline.check(checked)
        # the endpoints are the masks' own generations: no condition given (it would equal the mask's own)
        condition = None if t in (0, 1) else (1 - t) * features_a + t * features_b
        result = pipeline.generate(**pipeline.resolve(checked), latents=slerp(noise_a, noise_b, t),
                                   mask_condition=condition)
        result.sidecar.update(interpolation={"t": t, "frame": index, "seed_a": seed_a, "seed_b": seed_b})
        results.append(result)
    return results


def check_frames_free(out: str | Path, frames: int) -> list[str]:
    """The frame names (``frame_NN``); a ConfigError when any of their files is already in ``out``."""
    names = [f"frame_{index:02d}" for index in range(frames)]
    existing = [p for name in names for p in output_paths(Path(out), name, "nifti").values() if p.exists()]
    if existing:
        raise ConfigError(existing[0], "output exists", "choose another --out: interpolate replaces no file")
    return names


def write_frames(results: list[GenerationResult], out: str | Path) -> list[Path]:
    """Each frame's image, label map and sidecar (``frame_NN_*``) into ``out``; existing files are refused."""
    out = Path(out)
    names = check_frames_free(out, len(results))
    written = []
    for name, result in zip(names, results, strict=True):
        paths = output_paths(out, name, "nifti")
        write_volume(result.image, paths["image"], description="volsynth synthetic interpolation")
        label = write_volume(result.label, paths["label"]) if result.label is not None else None
        written.append(write_sidecar(paths["sidecar"], sidecar_record(result, name, paths["image"], label)))
    return written
