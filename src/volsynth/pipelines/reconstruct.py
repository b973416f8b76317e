"""Autoencoder reconstructions of a prepared dataset, written like ``volsynth generate`` output.

A latent model cannot generate finer detail than its autoencoder keeps. Scoring the reconstructions of real
cases with ``volsynth evaluate`` (their masks are the real ones) gives that ceiling: e.g. the liver Dice a
segmentor reaches on decoded real anatomy, against which the generated volumes' Dice can be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from volsynth.data.dataset import load_dataset
from volsynth.data.plan import PLAN_FILE, Plan
from volsynth.data.prepare import case_windows
from volsynth.errors import ConfigError, DatasetError
from volsynth.io.formats import read_label, read_volume, write_volume
from volsynth.models.checkpoint import load_checkpoint, network_configs
from volsynth.models.tiled import decode
from volsynth.parallel import progress_bar
from volsynth.pipelines.auto import load_pipeline, resolve_model_folder
from volsynth.pipelines.base import GenerationResult
from volsynth.pipelines.jobs import output_paths
from volsynth.pipelines.sidecar import sidecar_record, write_sidecar


@dataclass
class AutoencoderOnly:
    """A folder with an autoencoder but no UNet (a checkpoint of a recipe's autoencoder stage), as reconstruction
    needs it: so an autoencoder can be judged before a diffusion model is trained on its latents."""

    autoencoder: torch.nn.Module
    plan: Plan
    model_path: Path
    model_sha256: str | None


def load_for_reconstruction(path: str | Path):
    """A latent model's pipeline, or an ``AutoencoderOnly`` for a folder that holds an autoencoder and no UNet."""
    path = resolve_model_folder(path)
    networks = network_configs(path)
    if "autoencoder" in networks and "unet" not in networks:  # read the weights once, as the right kind
        checkpoint = load_checkpoint(path, use_ema=True)
        if "plan" in checkpoint.meta:
            return AutoencoderOnly(checkpoint.networks["autoencoder"].eval(), Plan.from_dict(checkpoint.meta["plan"]),
                                   path, checkpoint.meta["files"].get("model.safetensors"))
    return load_pipeline(path)


@torch.no_grad()
def reconstruct_array(autoencoder, array: np.ndarray) -> np.ndarray:
    """Encode a normalised volume ([-1, 1], model grid) to its posterior mean and decode it."""
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    mu, _ = autoencoder.encode(x)
    return decode(autoencoder, mu)[0, 0].float().clamp(-1, 1).numpy()


def _check_plan(prepared: Path, plan: Plan, model_plan: Plan, model: Path | None) -> None:
    if not plan.same_grid(model_plan):
        hint = f"prepare the raw dataset like the model: volsynth prepare RAW OUT --like {model or 'MODEL'}"
        raise DatasetError(prepared / PLAN_FILE,
                           f"prepared as {tuple(plan.size)} at {tuple(plan.spacing)} mm, but the model "
                           f"{model or ''} works on {tuple(model_plan.size)} at {tuple(model_plan.spacing)} mm",
                           hint)


def reconstruct_dataset(pipeline, prepared: str | Path, out: str | Path, limit: int | None = None,
                        progress: bool = True) -> list[Path]:
    """Write ``<case>_image.nii.gz`` (reconstruction, in HU / MR units), ``<case>_label.nii.gz`` (the case's
    own mask) and ``<case>.json`` for each case of a folder prepared like the model; returns the sidecars."""
    prepared, out = Path(prepared), Path(out)
    if limit is not None and limit < 1:
        raise ConfigError(None, f"--limit must be >= 1, got {limit}")
    if getattr(pipeline, "autoencoder", None) is None:
        raise ConfigError(getattr(pipeline, "model_path", None), "this model has no autoencoder to reconstruct with",
                          "reconstruction applies to latent models")
    if not (prepared / PLAN_FILE).is_file():
        raise DatasetError(prepared, "not a prepared dataset (no plan.json)",
                           f"prepare it like the model: volsynth prepare RAW {prepared} --like MODEL")
    plan = Plan.load(prepared)
    _check_plan(prepared, plan, pipeline.plan, pipeline.model_path)
    dataset = load_dataset(prepared)
    windows = case_windows(prepared)
    cases = dataset.cases[:limit]
    if not cases:
        raise DatasetError(prepared, "no cases to reconstruct")
    autoencoder = pipeline.autoencoder
    existing = [p for case in cases for p in output_paths(out, case.case_id, "nifti").values() if p.exists()]
    if existing:
        raise ConfigError(existing[0], "output exists", "choose another --out: reconstruct replaces no file")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with progress_bar(progress) as bar:
        task = bar.add_task("reconstruct", total=len(cases))
        for case in cases:
            image = read_volume(case.images[0])
            if tuple(image.shape) != tuple(plan.size):
                raise DatasetError(case.images[0], f"shape {image.shape} differs from the plan's {tuple(plan.size)}")
            recon = image.with_array(reconstruct_array(autoencoder, image.array))
            recon = plan.denormalize(recon, window=windows.get(case.case_id))
            target = out / f"{case.case_id}_image.nii.gz"
            write_volume(recon, target, description="volsynth autoencoder reconstruction")
            label = None
            if case.label is not None and case.label.exists():
                label = out / f"{case.case_id}_label.nii.gz"
                write_volume(read_label(case.label, labels=dataset.labels), label, description="volsynth label map")
            record = {"labels": dataset.labels, "prompt": case.report or "", "facts": case.facts,
                      "reconstruction_of": str(case.images[0]), "model": str(pipeline.model_path),
                      "model_sha256": pipeline.model_sha256}
            written.append(write_sidecar(out / f"{case.case_id}.json",
                                         sidecar_record(GenerationResult(recon, None, record), case.case_id, target,
                                                        label)))
            bar.advance(task)
    return written
