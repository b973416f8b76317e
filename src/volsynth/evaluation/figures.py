"""The figures of the evaluation report as base64 PNGs (matplotlib Agg): montages, FID and diversity bars,
memorisation and intensity histograms, augmentation-study bars. ``report.py`` embeds them in report.html.
"""

from __future__ import annotations

import base64
import io
import math
import tempfile
from pathlib import Path

import numpy as np

from volsynth.evaluation.report import METRIC_NAMES
from volsynth.viz import save_montage


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def montage_png(items: list, window, count: int) -> str | None:
    """Three planes of the first ``count`` items with their label map (or prediction) overlaid."""

    chosen = items[:count]
    if not chosen:
        return None
    images, labels, titles, spacings = [], [], [], []
    for item in chosen:
        image = item.image.reoriented("RAS")
        label = item.label if item.label is not None else item.prediction
        label = label.reoriented("RAS") if label is not None and label.shape == item.image.shape else None
        images.append(image.array)
        labels.append(None if label is None else label.array)
        titles.append(item.id + ("" if item.label is not None or label is None else " (pred.)"))
        spacings.append(tuple(image.spacing))
    with tempfile.TemporaryDirectory() as folder:
        path = save_montage(Path(folder) / "montage.png", images, labels, titles, window, spacings=spacings, dpi=70)
        return base64.b64encode(path.read_bytes()).decode("ascii")


def _bar(ax, names, groups: dict[str, list], errors: dict[str, list] | None = None) -> None:
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(names))
    for k, (label, values) in enumerate(groups.items()):
        values = [np.nan if v is None else v for v in values]
        err = None
        if errors and label in errors:
            err = np.array([[v - lo, hi - v] if lo is not None and np.isfinite(v) else [0, 0]
                            for v, (lo, hi) in zip(values, errors[label], strict=True)]).T
        ax.bar(x + (k - (len(groups) - 1) / 2) * width, values, width, label=label, yerr=err, capsize=3)
    ax.set_xticks(x, names, fontsize=8)
    top = max([v for values in groups.values() for v in values if v is not None] or [1.0])
    highs = [hi for bounds in (errors or {}).values() for _, hi in bounds if hi is not None]
    ax.set_ylim(0, 1.35 * max([top, *highs]))  # room for the legend above the bars
    ax.legend(fontsize=7, loc="upper left", ncol=2)


def build_figures(metrics: dict, real: list, generated: list, intensities: tuple[dict, dict], window,
                  montage_cases: int = 3) -> dict[str, str]:
    """Base64 PNGs: montages, FID and diversity bars, memorisation and intensity histograms, study bars."""
    plt = _pyplot()
    figures: dict[str, str] = {}
    for key, items in (("montage_real", real), ("montage_generated", generated)):
        png = montage_png(items, window, montage_cases)
        if png:
            figures[key] = png
    fid = metrics.get("fid", {})
    if fid.get("computed"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3))
        planes = list(fid["fid"])
        groups = {"generated vs real": [fid["fid"][p] for p in planes]}
        if fid.get("real_vs_real"):
            groups["real vs real (floor)"] = [fid["real_vs_real"][p] for p in planes]
        _bar(axes[0], planes, groups)
        axes[0].set_title(f"FID per plane ({fid['extractor']})", fontsize=9)
        diversity = metrics.get("diversity", {})
        if diversity.get("computed"):
            axes[1].bar(["real", "generated"], [diversity["real"], diversity["generated"]],
                        color=["#4477aa", "#ee6677"])
            axes[1].set_title("mean pairwise MS-SSIM (lower = more diverse)", fontsize=9)
        else:
            axes[1].axis("off")
        fig.tight_layout()
        figures["fid"] = _png(fig)
    memo = metrics.get("memorization", {})
    if memo.get("computed"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3))
        for ax, metric in zip(axes, ("ssim", "feature_cosine"), strict=True):
            real_nn = memo["real_vs_real_nearest"][metric]
            gen_nn = [v[metric]["similarity"] for v in memo["per_volume"]]
            bins = np.histogram_bin_edges(np.concatenate([real_nn, gen_nn]), bins=20)
            ax.hist(real_nn, bins=bins, alpha=0.6, label="real vs nearest other real")
            ax.hist(gen_nn, bins=bins, alpha=0.6, label="generated vs nearest real")
            ax.axvline(memo["thresholds"][metric], color="k", linestyle="--", label="threshold")
            ax.set_title(f"nearest-neighbour {metric.replace('_', ' ')}", fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        figures["memorization"] = _png(fig)
    real_values, gen_values = intensities
    names = [n for n in real_values if n in gen_values]
    if names:
        cols = min(4, len(names))
        rows = int(math.ceil(len(names) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.1 * rows), squeeze=False)
        for ax, name in zip(axes.ravel(), names, strict=False):
            lo, hi = np.percentile(np.concatenate([real_values[name], gen_values[name]]), [0.5, 99.5])
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
            ax.hist(real_values[name], bins=bins, density=True, alpha=0.55, label="real")
            ax.hist(gen_values[name], bins=bins, density=True, alpha=0.55, label="generated")
            ax.set_title(name, fontsize=8)
            ax.tick_params(labelsize=6)
        for ax in axes.ravel()[len(names):]:
            ax.axis("off")
        axes.ravel()[0].legend(fontsize=6)
        fig.tight_layout()
        figures["intensity"] = _png(fig)
    study = metrics.get("study", {})
    if study.get("kind") == "augmentation-study":
        groups = list(study["summary"])
        fig, axes = plt.subplots(1, 2, figsize=(9, 3))
        for ax, metric in zip(axes, ("dice", "nsd"), strict=True):
            values = {s: [study["summary"][g][s][metric]["mean"] for g in groups] for s in ("real", "real+synthetic")}
            errors = {s: [study["summary"][g][s][metric]["ci"] for g in groups] for s in ("real", "real+synthetic")}
            _bar(ax, groups, values, errors)
            ax.set_title(f"held-out {METRIC_NAMES[metric]} (95% CI)", fontsize=9)
        fig.tight_layout()
        figures["study"] = _png(fig)
    return figures
