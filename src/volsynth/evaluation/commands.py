"""Typer command functions of the evaluation: ``volsynth evaluate``, ``volsynth train segmentor`` and
``volsynth study augment``. ``volsynth.cli`` registers them::

    app.command("evaluate")(evaluate)
    train_app.command("segmentor")(train_seg)
    study_app = typer.Typer(no_args_is_help=True, help="Downstream studies with synthetic data.")
    study_app.command("augment")(study_augment)
    app.add_typer(study_app, name="study")

Each parses its options, calls the library and prints a short summary; bad input raises a VolsynthError
(the CLI prints one line and exits 2).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from volsynth.config import parse_floats
from volsynth.errors import ConfigError

if TYPE_CHECKING:
    from volsynth.evaluation.segmentor import SegmentorSettings

console = Console(soft_wrap=True)


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(None, f"{what} must be comma-separated integers, got '{text}'") from exc


def _floats(text: str | None, what: str, count: int = 3) -> list[float] | None:
    return parse_floats(text, what, count)


def command_line(ctx: typer.Context) -> str:
    """The command as it would be typed to reproduce this run (options with non-default values)."""
    parts = ctx.command_path.split()
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default:
            continue
        flag = param.opts[0] if param.opts else param.name
        if getattr(param, "is_flag", False):
            parts.append(flag if value else (param.secondary_opts or [f"--no-{flag.lstrip('-')}"])[0])
        elif param.param_type_name == "argument":
            parts.append(str(value))
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def evaluate(
    ctx: typer.Context,
    real: Path = typer.Option(..., "--real", help="Real dataset (nnU-Net v2 / MSD layout, or a prepared folder)."),
    generated: Path = typer.Option(..., "--generated", help="Generated volumes: volsynth generate output, an nnU-Net/"
                                   "MSD dataset, or a folder of images with optional <id>_label / <id>_seg files."),
    generated_labels: str = typer.Option(None, "--generated-labels", help="Class names of the generated label "
                                         "files: 'liver=1,tumour=2', a YAML file or a preset (maisi, "
                                         "totalsegmentator...). Default: the folder's own, else the real dataset's."),
    out: Path = typer.Option(..., "--out", help="Output folder for metrics.json and report.html."),
    segmentor: Path = typer.Option(None, help="Segmentor folder (volsynth train segmentor output) for "
                                              "Dice_gen/Dice_orig."),
    extractor: str = typer.Option("random-conv", help="FID features: random-conv, inception, or <network>:<weights>."),
    study: Path = typer.Option(None, help="study.json of volsynth study augment, to include in the report."),
    training: Path = typer.Option(None, help="The generator's training set, for the memorization check "
                                             "(default: the real set)."),
    seed: int = typer.Option(0, help="Seed of the real-vs-real split, the extractor and sampling."),
    slices: int = typer.Option(32, help="Slices per volume and plane for FID."),
    max_real: int = typer.Option(None, help="Use at most this many real cases."),
    max_generated: int = typer.Option(None, help="Use at most this many generated volumes."),
    nsd_tolerance: float = typer.Option(2.0, help="NSD tolerance in mm."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Evaluate generated volumes against a real dataset: metrics.json and a self-contained report.html."""
    from volsynth.evaluation.evaluate import EvaluationOptions, run_evaluation

    options = EvaluationOptions(extractor=extractor, seed=seed, slices_per_volume=slices, max_real=max_real,
                                max_generated=max_generated, nsd_tolerance_mm=nsd_tolerance, progress=progress,
                                command=command_line(ctx))
    metrics = run_evaluation(real, generated, out, segmentor=segmentor, study=study, options=options,
                             training=training, generated_labels=generated_labels)
    fid = metrics["fid"]
    floor = fid.get("real_vs_real_mean")
    console.print(f"FID (mean of planes, {fid['extractor']}): {fid['fid_mean']:.4g}"
                  + (f"  real-vs-real floor {floor:.4g}" if floor is not None else ""))
    memo = metrics["memorization"]
    if memo.get("computed"):
        console.print(f"near-copies of training volumes: {memo['near_copies']} of {len(memo['per_volume'])}")
    console.print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")


# train segmentor option -> SegmentorSettings field
SEGMENTOR_OPTIONS = {"architecture": "architecture", "dims": "spatial_dims", "size": "size", "patch": "patch",
                     "foreground": "foreground",
                     "spacing": "spacing", "window": "window", "labels": "labels", "features": "features",
                     "steps": "steps", "batch_size": "batch_size", "lr": "lr", "seed": "seed"}


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether an option was given (command line or environment), not left at its default."""
    source = ctx.get_parameter_source(name)
    # by name: typer may bring its own copy of click, whose ParameterSource is another class
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def segmentor_settings(ctx: typer.Context, config: Path | None, values: dict) -> SegmentorSettings:
    """SegmentorSettings from ``--config`` (if given), overridden by the options typed on the command line."""
    from volsynth.evaluation.segmentor import SegmentorSettings, read_segmentor_settings

    data = read_segmentor_settings(config) if config is not None else {}
    for option, name in SEGMENTOR_OPTIONS.items():
        if config is None or _typed(ctx, option):
            data[name] = values[option]
    settings = SegmentorSettings.from_dict(data)
    try:
        settings.check()
    except (TypeError, ValueError) as exc:  # a value of the wrong type in the file, e.g. steps: many
        raise ConfigError(config, f"bad segmentor setting ({exc})") from exc
    return settings


def train_seg(
    ctx: typer.Context,
    dataset: Path = typer.Option(..., "--data", help="Dataset with label maps (nnU-Net v2 / MSD layout)."),
    out: Path = typer.Option(..., "--out", help="Output folder; the segmentor is written to OUT/segmentor."),
    config: Path = typer.Option(None, help="YAML of segmentor settings (e.g. recipes/segmentor/abdomen-64.yaml); "
                                           "options typed on the command line override it."),
    architecture: str = typer.Option("segresnet", help="segresnet, unet or basicunet."),
    dims: int = typer.Option(3, help="3: whole volumes; 2: axial slices."),
    size: str = typer.Option("64", help="Grid size 'X,Y,Z' or one number (multiple of 8; 16 for basicunet)."),
    patch: str = typer.Option(None, help="Train on random patches of this size (predict by sliding window)."),
    foreground: float = typer.Option(0.0, help="With --patch: share of patches centred on a labelled voxel (a "
                                               "class drawn at random), for small structures; nnU-Net uses 0.33."),
    spacing: str = typer.Option(None, help="Spacing mm 'x,y,z' or one number. Default: the field of view fits."),
    window: str = typer.Option(None, help="CT window 'lo,hi' in HU. Default: dataset 0.5/99.5 percentiles."),
    labels: str = typer.Option(None, help="Classes to learn, e.g. 'liver=1,tumour=4'. Default: all."),
    features: int = typer.Option(16, help="Channels of the first level."),
    steps: int = typer.Option(500, help="Training steps."),
    batch_size: int = typer.Option(2, help="Batch size."),
    lr: float = typer.Option(1e-3, help="Learning rate (AdamW)."),
    seed: int = typer.Option(0, help="Random seed (weights, batches, augmentation)."),
    cases: str = typer.Option(None, help="Comma-separated case ids to train on. Default: all labelled cases."),
    holdout: int = typer.Option(0, help="Leave the last N labelled cases (sorted by id) out of training, then "
                                        "score them: OUT/holdout.json with Dice and NSD per class."),
    tolerance_mm: float = typer.Option(2.0, help="NSD tolerance in mm (with --holdout)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train the evaluation segmentor (MONAI SegResNet/UNet, Dice + cross-entropy) on a dataset's real cases."""
    from volsynth.data.dataset import load_dataset
    from volsynth.evaluation.report import to_json_ready
    from volsynth.evaluation.segmentor import labelled_cases
    from volsynth.evaluation.segtrain import evaluate_holdout, train_segmentor_on_dataset
    from volsynth.io.jsonfile import write_json

    values = {"architecture": architecture, "dims": dims, "size": [int(s) for s in _floats(size, "--size")],
              "patch": [int(s) for s in _floats(patch, "--patch")] if patch else None, "foreground": foreground,
              "spacing": _floats(spacing, "--spacing"), "window": _floats(window, "--window", 2), "labels": labels,
              "features": features, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed}
    settings = segmentor_settings(ctx, config, values)
    case_ids = [c.strip() for c in cases.split(",") if c.strip()] if cases else None
    held_out: list[str] = []
    if holdout:
        if case_ids is not None:
            raise ConfigError(None, "give either --cases or --holdout, not both")
        ids = sorted(c.case_id for c in labelled_cases(load_dataset(dataset)))
        if not 0 < holdout < len(ids):
            raise ConfigError(None, f"--holdout must be from 1 to {len(ids) - 1}, got {holdout}")
        case_ids, held_out = ids[:-holdout], ids[-holdout:]
    command = command_line(ctx)
    path = train_segmentor_on_dataset(dataset, out, settings, case_ids, progress, command)
    console.print(f"segmentor: {path}")
    if held_out:
        result = evaluate_holdout(path, dataset, held_out, tolerance_mm, command)
        write_json(Path(out) / "holdout.json", to_json_ready(result))
        _print_holdout(result)
        console.print(f"wrote {Path(out) / 'holdout.json'}")


def _print_holdout(result: dict) -> None:
    """Mean Dice and NSD per class of the held-out cases, as a table."""
    from rich.table import Table

    table = Table(title=f"held-out cases ({len(result['cases'])}): mean per class, NSD at "
                        f"{result['tolerance_mm']:g} mm")
    table.add_column("class")
    table.add_column("Dice", justify="right")
    table.add_column("NSD", justify="right")
    for name, dice in result["mean"]["dice"].items():
        nsd = result["mean"]["nsd"].get(name)
        table.add_row(name, "–" if dice is None else f"{dice:.3f}", "–" if nsd is None else f"{nsd:.3f}")
    console.print(table)
    bins = [b for b in result.get("by_lesion_size", []) if b["cases"]]
    if bins:
        sizes = Table(title="lesion classes by the largest real lesion's diameter (maximum 3D extent)")
        for column in ("diameter mm", "cases", "Dice", "found", "median size error mm"):
            sizes.add_column(column, justify="right")
        for b in bins:
            lo, hi = b["bin_mm"]
            sizes.add_row(f"{lo:g}–{hi:g}" if hi != float("inf") else f"≥ {lo:g}", str(b["cases"]),
                          "–" if b["dice"] is None else f"{b['dice']:.3f}", str(b["found"]),
                          "–" if b["median_abs_size_error_mm"] is None else f"{b['median_abs_size_error_mm']:.1f}")
        console.print(sizes)
        large = result["lesions_from_15mm"]
        if large["cases"] and large["dice"] is not None:
            lo, hi = large["dice_ci95"]
            console.print(f"cases whose largest lesion is 15 mm or more: {large['cases']}, lesion Dice "
                          f"{large['dice']:.3f} (95 % interval {lo:.3f}-{hi:.3f})")


def study_augment(
    ctx: typer.Context,
    real: Path = typer.Option(..., "--real", help="Real dataset with label maps."),
    generated: Path = typer.Option(..., "--generated", help="Generated folder with image + label pairs (--mask)."),
    out: Path = typer.Option(..., "--out", help="Output folder (runs/ and study.json)."),
    n_real: int = typer.Option(None, help="Real training cases. Default: all not held out."),
    n_synthetic: int = typer.Option(None, help="Synthetic pairs added. Default: all."),
    n_test: int = typer.Option(None, help="Held-out real test cases (the last by id). Default: a quarter."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated training seeds."),
    architectures: str = typer.Option("segresnet,unet", help="Comma-separated: segresnet, unet, basicunet."),
    size: str = typer.Option("64", help="Segmentor grid size 'X,Y,Z' or one number."),
    patch: str = typer.Option(None, help="Train on random patches of this size (predict by sliding window)."),
    window: str = typer.Option(None, help="CT window 'lo,hi' in HU. Default: 0.5/99.5 percentiles of the real cases."),
    dims: int = typer.Option(3, help="3: whole volumes; 2: axial slices."),
    labels: str = typer.Option(None, help="Classes to learn, e.g. 'liver=1,tumour=4'. Default: all."),
    features: int = typer.Option(16, help="Channels of the first level."),
    steps: int = typer.Option(500, help="Training steps per run."),
    lr: float = typer.Option(1e-3, help="Learning rate (AdamW)."),
    bootstrap: int = typer.Option(2000, help="Bootstrap replicates for the 95% intervals."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Segmentor trained on N real vs N real + M synthetic cases: held-out Dice/NSD with 95% CIs -> study.json."""
    from volsynth.evaluation.study import StudySettings, run_augmentation_study

    settings = StudySettings(n_real=n_real, n_synthetic=n_synthetic, n_test=n_test, seeds=_ints(seeds, "--seeds"),
                             architectures=[a.strip() for a in architectures.split(",") if a.strip()],
                             segmentor={"size": [int(s) for s in _floats(size, "--size")], "spatial_dims": dims,
                                        "patch": [int(s) for s in _floats(patch, "--patch")] if patch else None,
                                        "window": _floats(window, "--window", 2), "labels": labels,
                                        "features": features, "steps": steps, "lr": lr},
                             bootstrap=bootstrap)
    result = run_augmentation_study(real, generated, out, settings, progress, command=command_line(ctx))
    for group, entry in result["summary"].items():
        diff = entry["difference"]["dice"]
        if diff["mean"] is not None:
            console.print(f"{group}: Dice real {entry['real']['dice']['mean']:.3f}, real+synthetic "
                          f"{entry['real+synthetic']['dice']['mean']:.3f}, difference {diff['mean']:+.3f} "
                          f"[{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]")
    console.print(f"wrote {Path(out) / 'study.json'}")


def study_run(
    ctx: typer.Context,
    study: Path = typer.Argument(..., help="Study file (YAML): data, split, generator recipe, synthetic sets, arms."),
    out: Path = typer.Option(..., "--out", help="Study folder: new, empty, or a study to continue."),
    workers: int = typer.Option(1, help="Segmentors trained at a time, each in its own process with its share of "
                                        "the CPU threads (e.g. 2 on 2 cores); with 2 or more, the real-only "
                                        "segmentors train while the generator does."),
    record: Path = typer.Option(None, help="Study record to keep in version control: each finished unit's small "
                                           "results (scores, measurements, split, the trained generator) are "
                                           "copied there, and a run into a new --out starts from them."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Run a study file: generator trained on the real training cases, synthetic sets, segmentors per arm, seed
    and architecture, held-out Dice/NSD with 95% CIs and paired tests -> study.json, study.html and study.md.
    Running it again continues where it stopped."""
    from volsynth.evaluation.study_run import run_study

    if workers < 1:
        raise ConfigError(None, f"--workers must be >= 1, got {workers}")
    result = run_study(study, out, progress, log=lambda m: console.print(m), command=command_line(ctx),
                       workers=workers, record=record)
    for arm, metrics in result["comparisons"]["pooled"].items():
        for name, diff in metrics["dice"].items():
            if diff["mean"] is not None:
                console.print(f"{arm} - real, {name} Dice: {diff['mean']:+.3f} [{diff['ci'][0]:+.3f}, "
                              f"{diff['ci'][1]:+.3f}] p={diff['p_wilcoxon']}")
    console.print(f"wrote {Path(out) / 'study.json'}, {Path(out) / 'study.html'} and {Path(out) / 'study.md'}")
