"""The ``volsynth`` command: parse options, call the library, print with rich.

Every ``VolsynthError`` becomes one line ``error: <file>: <problem> (<hint>)`` on stderr and exit
code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from volsynth.config import parse_floats
from volsynth.errors import ConfigError, VolsynthError
from volsynth.pipeline_commands import MASK_LABELS_HELP, PRESETS
from volsynth.training.commands import import_app, train_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Synthesise 3D CT/MR volumes with label maps: prepare data, train, generate, evaluate.")
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")) -> None:
    """volsynth: 3D medical volume synthesis guided by text and masks."""


_floats = parse_floats


@app.command()
def convert(
    source: Path = typer.Argument(..., help="Input: .nii/.nii.gz/.nrrd/.mha/.mhd, DICOM series folder or DICOM SEG."),
    target: Path = typer.Argument(..., help="Output path; a name without suffix writes a DICOM series folder."),
    label: bool = typer.Option(False, "--label", help="Treat it as a label map (a DICOM SEG always is one)."),
    modality: str = typer.Option(None, help="Modality to record (CT, MR) when the input does not say."),
    compression: str = typer.Option(None, help="DICOM pixel compression: jpeg2000."),
    series: str = typer.Option(None, "--series", help="SeriesInstanceUID to read, when the DICOM folder holds "
                               "several (the error for such a folder lists them)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
) -> None:
    """Convert a volume between NIfTI, NRRD, MHA and DICOM, keeping its geometry."""
    from volsynth.io import read_label, read_volume, seg_file, write_volume

    modality = modality.upper() if modality else None
    obj = (read_label(source, series=series) if label or (series is None and seg_file(source))
           else read_volume(source, modality=modality, series=series))
    write_volume(obj, target, overwrite=overwrite, compression=compression)
    console.print(f"wrote {target}  shape {obj.shape}  spacing {' x '.join(f'{s:.4g}' for s in obj.spacing)} mm  "
                  f"orientation {obj.orientation}", markup=False)


@app.command()
def verify(
    dataset: Path = typer.Argument(..., help="Dataset folder (nnU-Net v2 or MSD layout)."),
    workers: int = typer.Option(1, help="Worker processes."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Check every case of a dataset; exit 0 when clean, 2 when any problem."""
    from volsynth.data.verify import verify_dataset

    problems = verify_dataset(dataset, workers=workers, progress=progress)
    if not problems:
        console.print(f"[green]ok[/green] {dataset}: no problems found")
        return
    if console.is_terminal:
        table = Table(title=f"{len(problems)} problem(s) in {dataset}")
        for column in ("case", "file", "problem"):
            table.add_column(column, overflow="fold")
        for p in problems:
            table.add_row(p.case or "-", p.file, p.problem)
        console.print(table)
    else:  # one greppable line per problem when piped
        for p in problems:
            print(f"{p.file}: {p.problem}" + (f" [case {p.case}]" if p.case else ""))
    err_console.print(f"error: {dataset}: {len(problems)} problem(s) found", markup=False, highlight=False,
                      soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def prepare(
    dataset: Path = typer.Argument(..., help="Dataset folder (nnU-Net v2 or MSD layout)."),
    out: Path = typer.Argument(..., help="Output folder for plan.json, manifest.json and prepared cases."),
    spacing: str = typer.Option(None, help="Target spacing mm: 'x,y,z', one number, or 'fit' (ROI fits "
                                "--size). Default: median spacing."),
    size: str = typer.Option(None, help="Grid size 'X,Y,Z' or one number. Default: median extent, multiple of 16."),
    window: str = typer.Option(None, help="CT window 'lo,hi' in HU. Default: dataset 0.5/99.5 percentiles."),
    labels: str = typer.Option(None, help="Label remap 'liver=1,tumour=2+3' (ids or names), a YAML file, "
                                         f"or a preset ({PRESETS}; 'amos:liver,spleen' selects classes)."),
    roi: str = typer.Option(None, help="Centre the grid on these labels (after remap), e.g. 'liver'."),
    margin: float = typer.Option(10.0, help="ROI margin in mm."),
    partial_labels: str = typer.Option(None, help="Classes a case may leave unannotated (after remap), e.g. "
                                       "'liver,spleen': a case lacking one has it not given, not absent."),
    like: Path = typer.Option(None, help="Prepare exactly as this plan did (plan.json, a prepared folder or a model "
                                         "folder): its spacing, grid, labels, ROI and window; --labels still remaps."),
    workers: int = typer.Option(1, help="Worker processes."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Fingerprint a dataset, write a frozen plan and the prepared cases."""
    from volsynth.data.prepare import PrepareOptions, load_plan_like, options_like, prepare_dataset

    if like is not None:
        if any(v is not None for v in (spacing, size, window, roi)):
            raise ConfigError(like, "--like sets spacing, size, window and ROI: give none of those with it")
        options = options_like(load_plan_like(like))
        if labels:
            options.label_sources = None  # the remap given here replaces the plan's
        if partial_labels:
            options.partial_labels = partial_labels.split(",")
    else:
        options = PrepareOptions(
            spacing="fit" if spacing == "fit" else _floats(spacing, "--spacing", 3),
            size=[int(s) for s in _floats(size, "--size", 3)] if size else None,
            window=_floats(window, "--window", 2), roi=roi.split(",") if roi else None, margin_mm=margin,
            partial_labels=partial_labels.split(",") if partial_labels else None)
    plan = prepare_dataset(dataset, out, options, label_spec=labels, workers=workers, progress=progress,
                           overwrite=overwrite)
    console.print(f"wrote {out}: spacing {' x '.join(f'{s:.4g}' for s in plan.spacing)} mm, size {plan.size}, "
                  f"labels {plan.labels}, normalisation "
                  f"{[(n.scheme, [round(float(w), 1) for w in n.window]) for n in plan.normalization]}", markup=False)


@app.command()
def phantom(
    kind: str = typer.Argument(..., help="abdomen-ct, abdomen-mr or chest-ct."),
    out: Path = typer.Argument(..., help="Output dataset folder (nnU-Net v2 layout + reports.jsonl)."),
    cases: int = typer.Option(8, help="Number of cases."),
    size: int = typer.Option(64, help="Grid size (voxels per side)."),
    spacing: float = typer.Option(None, help="Voxel size in mm. Default: the body fills the field of view."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same files."),
    workers: int = typer.Option(1, help="Worker processes."),
    preview: bool = typer.Option(False, help="Also write preview.png: three planes with label overlay."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    generator_version: int = typer.Option(2, help="Phantom generator: 2 has lesions of realistic contrast and "
                                          "sizes; 1 the original lesions the shipped models learnt from."),
) -> None:
    """Write a procedural phantom dataset with paired radiology-style reports."""
    from volsynth.data.phantom import write_phantom_dataset

    if cases < 1 or size < 8:
        raise ConfigError(None, f"need --cases >= 1 and --size >= 8, got {cases} and {size}")
    path = write_phantom_dataset(kind, out, cases=cases, size=size, spacing=spacing, seed=seed, workers=workers,
                                 progress=progress, preview=preview, generator_version=generator_version)
    console.print(f"wrote {cases} {kind} case(s) to {path}")


def _register_pipelines() -> None:
    """reconstruct, sweep, interpolate and edit live in volsynth.pipeline_commands."""
    from volsynth import pipeline_commands as commands

    for name in ("reconstruct", "sweep", "interpolate", "edit"):
        app.command(name)(getattr(commands, name))


def _register_commands() -> None:
    """Commands defined beside the CLI: evaluation's (evaluate, study augment, train segmentor) and studio."""
    from volsynth.evaluation import commands
    from volsynth.studio.commands import studio

    app.command("evaluate")(commands.evaluate)
    train_app.command("segmentor")(commands.train_seg)
    study_app = typer.Typer(no_args_is_help=True, help="Studies: downstream segmentation with synthetic data.")
    study_app.command("augment")(commands.study_augment)
    study_app.command("run")(commands.study_run)
    app.add_typer(study_app, name="study")
    app.command("studio")(studio)


app.add_typer(train_app, name="train")  # volsynth train [--recipe R --out OUT | --resume --out OUT | STAGE ...]
app.add_typer(import_app, name="import")  # volsynth import maisi WEIGHTS_DIR --variant V --out OUT


@app.command()
def generate(
    model: Path = typer.Argument(..., help="Model folder (e.g. models/abdomen-ct-64), or a run folder given to "
                                           "train --out (its model/ is used)."),
    out: Path = typer.Option(None, help="Output folder for volumes and their JSON sidecars (files already there are "
                                       "never replaced unless --overwrite)."),
    prompt: str = typer.Option(None, help="Radiology-style report; empty for unconditional samples."),
    jobs: Path = typer.Option(None, help="JSON-lines jobs file: {prompt, seed, n, id, mask, modality} per line."),
    masks_from: Path = typer.Option(None, help="Dataset: one job per labelled case (its mask, its report as the "
                                               "prompt unless --prompt; seeds from --seed; ids = case ids)."),
    prompts_from: Path = typer.Option(None, help="Dataset: one text-only job per case with a report (its report "
                                                 "as the prompt unless --prompt; ids = case ids)."),
    limit: int = typer.Option(None, help="With --masks-from / --prompts-from: only the first N cases."),
    n: int = typer.Option(1, help="Volumes per prompt (seeds seed, seed+1, ...)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same volume."),
    steps: int = typer.Option(None, help="Sampling steps; default: the model's recommendation, else 30."),
    sampler: str = typer.Option(None, help="ddim, ddpm or rflow (for flow models); default: the model's, else ddim."),
    text_guidance: float = typer.Option(None, help="Text guidance scale (CFG); default: the model's, else 3."),
    mask: Path = typer.Option(None, help="Label map guiding generation (models with mask guidance)."),
    mask_labels: str = typer.Option(None, help=MASK_LABELS_HELP),
    mask_guidance: float = typer.Option(None, help="Mask guidance scale (CFG); default: the model's, else 1."),
    controlnet_scale: float = typer.Option(None, help="ControlNet residual scale (models with a ControlNet); "
                                                      "default: the model's, else 1."),
    modality: str = typer.Option(None, help="CT or MR, for models that make both from one mask."),
    body_ct: Path = typer.Option(None, help="The mask's CT: the body label is the body above -500 HU in it (MAISI "
                                            "models, when the mask has no body label)."),
    image_format: str = typer.Option("nifti", "--format", help="nifti or dicom."),
    refine: bool = typer.Option(True, help="--no-refine skips the model's refiner (models with a refiner)."),
    refiner_guidance: float = typer.Option(None, help="The refiner's mask guidance scale (CFG) when a mask guides "
                                                      "(models with a refiner); default: the model's, else 1."),
    refiner_steps: int = typer.Option(None, help="The refiner's sampling steps (models with a refiner); default: "
                                                 "the model's. Fewer cost less: see docs/benchmarks.md."),
    overwrite: bool = typer.Option(False, help="Replace this run's files when they already exist in OUT."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N, or auto (a GPU when there is one)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Generate nothing: predict each job's GPU memory and "
                                                          "time (MAISI models)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Generate volumes from text and/or a mask; per volume an image, a label map (with a mask) and a sidecar.
    With none of --prompt, --mask, --masks-from, --prompts-from and --jobs: one unconditional volume.

    An option the model does not take (e.g. --controlnet-scale for a model without a ControlNet) is an error."""
    from volsynth.devices import select_device
    from volsynth.pipelines import load_pipeline
    from volsynth.pipelines.jobs import Job, dataset_mask_labels, jobs_from_dataset, read_jobs, run_jobs
    from volsynth.pipelines.masks import parse_mask_labels

    if jobs is not None and (prompt is not None or mask is not None or masks_from or prompts_from):
        raise ConfigError(None, "give either --jobs or --prompt/--mask/--masks-from/--prompts-from, not both")
    if sum(x is not None for x in (mask, masks_from, prompts_from)) > 1:
        raise ConfigError(None, "give only one of --mask, --masks-from and --prompts-from")
    if n < 1 or (steps is not None and steps < 1):
        raise ConfigError(None, f"--n and --steps must be >= 1, got {n} and {steps}")
    modality = modality.upper() if modality else None
    if jobs:
        job_list = read_jobs(jobs)
    elif masks_from or prompts_from:
        job_list = jobs_from_dataset(masks_from or prompts_from, prompt, seed, n, modality, limit,
                                     masks=masks_from is not None)
    else:
        job_list = [Job(prompt=prompt or "", seed=seed, n=n, mask=str(mask) if mask else None, modality=modality)]
    options = dict(steps=steps, sampler=sampler, text_guidance=text_guidance, mask_guidance=mask_guidance,
                   controlnet_scale=controlnet_scale, mask_labels=parse_mask_labels(mask_labels),
                   refine=None if refine else False, refiner_guidance=refiner_guidance, refiner_steps=refiner_steps,
                   body_ct=str(body_ct) if body_ct else None)
    if out is None and not dry_run:
        raise ConfigError(None, "--out is required", "give the folder to write into (or --dry-run)")
    pipeline = load_pipeline(model)
    if masks_from and options["mask_labels"] is None:  # the dataset names its ids: map them by name
        options["mask_labels"] = dataset_mask_labels(masks_from, pipeline.plan.labels)
    if dry_run:
        from volsynth.pipeline_commands import print_estimates

        print_estimates(pipeline, job_list, options)
        return
    pipeline = pipeline.to(select_device(device))
    written = run_jobs(pipeline, job_list, out, image_format=image_format, progress=progress, overwrite=overwrite,
                       **options)
    console.print(f"wrote {len(written)} volume(s) to {out}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-output"), help="Folder for everything the demo writes."),
    cases: int = typer.Option(6, help="Phantom cases to make."),
    size: int = typer.Option(64, help="Phantom grid size (the masks are then prepared like the model's plan)."),
    steps: int = typer.Option(20, help="Sampling steps per volume."),
    tiny: bool = typer.Option(False, help="Use the CI-sized tiny-* models (seconds; they show the workflow only)."),
) -> None:
    """Generate with every shipped model, evaluate against fresh phantoms, and say where the results are.

    OUT must be new, empty, or an earlier demo's folder (whose own outputs are replaced; nothing else is touched)."""
    from volsynth.demo import run_demo

    run_demo(out, cases=cases, size=size, console=console, steps=steps, tiny=tiny)


_register_pipelines()
_register_commands()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr, like errors: ``warning: <message>`` (no source line of volsynth's)."""
    err_console.print(f"warning: {' '.join(str(message).split())}", markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, map volsynth errors to one line on stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if not debug:
        warnings.showwarning = _show_warning
    try:
        app(args=argv, prog_name="volsynth")  # standalone: usage errors exit 2 through SystemExit
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except VolsynthError as exc:
        if debug:
            raise
        err_console.print(f"error: {exc.one_line()}", markup=False, highlight=False, soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
