"""Commands of the command line that run a model's pipeline, other than ``generate``: reconstruct, sweep,
interpolate and edit (and generate's dry run). cli.py registers them; their torch-heavy imports sit inside the
functions, so ``volsynth --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from volsynth.config import parse_floats as _floats
from volsynth.data.vocabularies import vocabulary_names
from volsynth.errors import ConfigError, VolsynthError

console = Console(soft_wrap=True)
PRESETS = ", ".join(vocabulary_names())  # the label vocabularies shipped (data/vocabularies)
MASK_LABELS_HELP = (f"Map your mask ids to model classes: 'liver=5,tumour=6', or a preset of another tool's ids "
                    f"({PRESETS}; 'totalsegmentator:liver,spleen' selects classes).")


def reconstruct(
    model: Path = typer.Argument(..., help="Latent model folder (its autoencoder is used), or an autoencoder "
                                           "checkpoint (OUT/autoencoder/checkpoints/checkpoint-N)."),
    prepared: Path = typer.Argument(..., help="Dataset prepared like the model (prepare RAW OUT --like MODEL)."),
    out: Path = typer.Option(..., help="Output folder, laid out like volsynth generate's (evaluate reads it)."),
    limit: int = typer.Option(None, help="Only the first N cases."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Encode and decode real cases with the model's autoencoder: the ceiling of what its samples can show."""
    from volsynth.pipelines.reconstruct import load_for_reconstruction, reconstruct_dataset

    written = reconstruct_dataset(load_for_reconstruction(model), prepared, out, limit, progress)
    console.print(f"wrote {len(written)} reconstruction(s) to {out}")


def sweep(
    model: Path = typer.Argument(..., help="Model folder."),
    out: Path = typer.Option(..., help="Montage PNG to write (rows: mask scale, columns: text scale)."),
    prompt: str = typer.Option("", help="Radiology-style report."),
    mask: Path = typer.Option(None, help="Label map guiding generation."),
    mask_labels: str = typer.Option(None, help=MASK_LABELS_HELP),
    text_guidance: str = typer.Option("1,3,7", help="Text guidance scales, comma-separated."),
    mask_guidance: str = typer.Option("1", help="Mask guidance scales, comma-separated."),
    seed: int = typer.Option(0, help="One seed for every cell."),
    steps: int = typer.Option(30, help="Sampling steps."),
    sampler: str = typer.Option("ddim", help="ddim, ddpm or rflow."),
    view: str = typer.Option("axial", help="axial, coronal or sagittal."),
    modality: str = typer.Option(None, help="CT or MR, for a model that generates both; default: its first."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Show the effect of the guidance scales: one seed over a grid of text and mask scales, as a montage."""
    from volsynth.data.plan import CT_SCHEME
    from volsynth.pipelines import load_pipeline
    from volsynth.pipelines.masks import parse_mask_labels
    from volsynth.pipelines.sweep import guidance_sweep, save_sweep_montage, save_sweep_sidecar
    from volsynth.viz import PLANES

    if view not in PLANES:
        raise ConfigError(None, f"--view must be one of {', '.join(PLANES)}, got '{view}'")
    if out.suffix.lower() != ".png":
        raise ConfigError(out, "the montage is a PNG: give a path ending in .png")
    text_scales, mask_scales = _floats(text_guidance, "--text-guidance"), _floats(mask_guidance, "--mask-guidance")
    pipeline = load_pipeline(model)
    grid = guidance_sweep(pipeline, text_scales, mask_scales, progress, prompt=prompt, mask=mask, seed=seed,
                          steps=steps, sampler=sampler, modality=modality,
                          mask_labels=parse_mask_labels(mask_labels))
    norm = pipeline.plan_for(modality).normalization[0]
    window = tuple(norm.window) if norm.scheme == CT_SCHEME else None
    title = f"{model.name}: \"{prompt}\"" + (f", mask {mask.name}" if mask else "") + f", seed {seed}"
    save_sweep_montage(out, grid, text_scales, mask_scales, view, window, title)
    save_sweep_sidecar(out.with_suffix(".json"), grid, text_scales, mask_scales)
    console.print(f"wrote {out} and {out.with_suffix('.json').name}")


def interpolate(
    model: Path = typer.Argument(..., help="Latent model with mask guidance (or its training run folder)."),
    mask_a: Path = typer.Argument(..., help="Label map of the first frame."),
    mask_b: Path = typer.Argument(..., help="Label map of the last frame."),
    out: Path = typer.Option(..., help="Output folder: frame_NN_image/_label.nii.gz and frame_NN.json sidecars."),
    frames: int = typer.Option(5, help="Frames along the path, both masks' own generations included."),
    prompt: str = typer.Option("", help="Radiology-style report for every frame."),
    mask_labels: str = typer.Option(None, help=MASK_LABELS_HELP),
    seed: int = typer.Option(0, help="Seed of the first mask's generation."),
    seed_b: int = typer.Option(None, help="Seed of the last mask's generation; default: --seed."),
    steps: int = typer.Option(None, help="Sampling steps; default: the model's recommendation, else 30."),
    text_guidance: float = typer.Option(None, help="Text guidance scale; default: the model's."),
    mask_guidance: float = typer.Option(None, help="Mask guidance scale; default: the model's."),
) -> None:
    """Latent interpolation between two masks: blended mask conditions and spherically blended noise."""
    from volsynth.pipelines import load_pipeline
    from volsynth.pipelines.interpolate import check_frames_free, write_frames
    from volsynth.pipelines.interpolate import interpolate as interpolate_masks
    from volsynth.pipelines.masks import parse_mask_labels

    check_frames_free(out, max(frames, 0))
    pipeline = load_pipeline(model)
    results = interpolate_masks(pipeline, mask_a, mask_b, frames, seed, seed_b, prompt=prompt, steps=steps,
                                text_guidance=text_guidance, mask_guidance=mask_guidance,
                                mask_labels=parse_mask_labels(mask_labels))
    written = write_frames(results, out)
    console.print(f"wrote {len(written)} frame(s) to {out}")


def edit(
    mask: Path = typer.Argument(..., help="Label map to edit."),
    out: Path = typer.Argument(..., help="Edited label map to write."),
    insert_lesion: float = typer.Option(None, help="Insert a spherical lesion of this diameter (mm)."),
    at: str = typer.Option(None, help="Lesion centre 'x,y,z' in world RAS mm; default: a random fitting spot."),
    remove_lesion: str = typer.Option(None, help="Remove lesions: 'all' or numbers '1,3' (1 = largest)."),
    organ_id: int = typer.Option(1, help="Label id of the organ that holds the lesions (phantoms: liver 1)."),
    lesion_id: int = typer.Option(4, help="Label id of lesions (phantoms: tumour 4)."),
    seed: int = typer.Option(0, help="Seed for the random lesion position."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
) -> None:
    """Edit a mask before generation: insert a lesion of a given diameter, or remove lesions."""
    import json as _json

    from volsynth.io import read_label, write_volume
    from volsynth.pipelines.edit import insert_lesion as insert
    from volsynth.pipelines.edit import remove_lesions

    if (insert_lesion is None) == (remove_lesion is None):
        raise ConfigError(None, "give exactly one of --insert-lesion or --remove-lesion")
    label = read_label(mask)
    try:
        if insert_lesion is not None:
            if insert_lesion <= 0:
                raise ConfigError(None, f"--insert-lesion must be > 0 mm, got {insert_lesion:g}")
            label, facts = insert(label, insert_lesion, organ_id, lesion_id, _floats(at, "--at", 3), seed)
        else:
            which = None if remove_lesion == "all" else [int(v) for v in _floats(remove_lesion, "--remove-lesion")]
            label, facts = remove_lesions(label, which, lesion_id, organ_id), {"removed": remove_lesion}
    except VolsynthError as exc:
        raise type(exc)(exc.path or mask, exc.problem, exc.hint) from exc
    write_volume(label, out, overwrite=overwrite)
    console.print(f"wrote {out}  {_json.dumps(facts)}")


def print_estimates(pipeline, jobs: list, options: dict) -> None:
    """``generate --dry-run``: each job's predicted GPU memory and time, as a table; nothing is generated."""
    from rich.table import Table

    from volsynth.pipelines.jobs import job_request

    for job in jobs:
        cost = pipeline.estimate(job_request(job, job.seed, options))
        table = Table(title=f"dry run: {job.id or job.mask or 'no mask'}")
        table.add_column("what")
        table.add_column("predicted")
        for what, value in cost.rows():
            table.add_row(what, value)
        console.print(table)
    console.print("GPU memory: float32 tensors on the GPU (weights, latents, the larger of one step's and one decode "
                  "window's peak); allocator and CUDA context not included. Time: FLOPs at the rates NV-Generate-CT's "
                  "published A100 timings imply; see docs/maisi.md.")
