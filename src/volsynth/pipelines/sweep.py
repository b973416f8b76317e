"""Guidance sweeps: one prompt, mask and seed generated over a grid of text and mask guidance scales,
and a montage of the grid (rows: mask scale, columns: text scale).

With dual classifier-free guidance (``volsynth.sampling.guidance.dual_guidance``) the prediction is
``e = e(0,0) + s_t [e(t,0) - e(0,0)] + s_m [e(t,m) - e(t,0)]``: ``s_t = s_m = 1`` is the plain
conditional model, ``s_t`` above 1 pushes towards the report and ``s_m`` above 1 towards the mask. The
same seed in every cell makes the differences the scales' effect alone.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from volsynth.errors import ConfigError
from volsynth.io.jsonfile import write_json
from volsynth.parallel import progress_bar
from volsynth.pipelines.base import GenerationRequest
from volsynth.pipelines.sidecar import sidecar_record
from volsynth.viz import default_centre, plane, save_figure


def guidance_sweep(pipeline, text_scales: list[float], mask_scales: list[float], progress: bool = True,
                   **call) -> list[list]:
    """Results ``[mask scale][text scale]`` of ``pipeline(GenerationRequest(**call, text_guidance=t,
    mask_guidance=m))`` (mask scales only for models with mask guidance)."""
    if not text_scales or not mask_scales:
        raise ConfigError(None, "a sweep needs at least one text scale and one mask scale")
    mask_option = "mask_guidance" in pipeline.options
    if not mask_option and list(mask_scales) != [1.0]:
        raise ConfigError(pipeline.model_path, "--mask-guidance: this model has no mask guidance to sweep",
                          "sweep --text-guidance only")
    grid: list[list] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("sweep", total=len(text_scales) * len(mask_scales))
        for mask_scale in mask_scales:
            row = []
            for text_scale in text_scales:
                scales = {"text_guidance": text_scale, **({"mask_guidance": mask_scale} if mask_option else {})}
                row.append(pipeline(GenerationRequest(**call, **scales)))
                bar.advance(task)
            grid.append(row)
    return grid


def save_sweep_sidecar(path: str | Path, grid: list[list], text_scales: list[float],
                       mask_scales: list[float]) -> Path:
    """The montage's JSON record: one sidecar record per cell (the generate sidecar schema), image = the PNG."""
    path = Path(path)
    cells = [sidecar_record(result, f"text{text_scale:g}-mask{mask_scale:g}", path.with_suffix(".png"), None,
                            "png", text_scale=text_scale, mask_scale=mask_scale)
             for mask_scale, row in zip(mask_scales, grid, strict=True)
             for text_scale, result in zip(text_scales, row, strict=True)]
    return write_json(path, {"montage": path.with_suffix(".png").name, "cells": cells})


def save_sweep_montage(path: str | Path, grid: list[list], text_scales: list[float], mask_scales: list[float],
                       view: str = "axial", window: tuple[float, float] | None = None, title: str = "",
                       dpi: int = 100) -> Path:
    """A PNG of one plane (through the centre of the labels) per cell, label outlines drawn when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = grid[0][0]
    label = first.label.array if first.label is not None else None
    centre = default_centre(first.image.array, label)
    index = centre[{"axial": 2, "coronal": 1, "sagittal": 0}[view]]
    rows, cols = len(mask_scales), len(text_scales)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows + 0.5), squeeze=False,
                             layout="constrained")
    for r, (mask_scale, row) in enumerate(zip(mask_scales, grid, strict=True)):
        for c, (text_scale, result) in enumerate(zip(text_scales, row, strict=True)):
            image = result.image.array
            lo, hi = window if window is not None else np.percentile(image, [1, 99])
            ax = axes[r, c]
            ax.imshow(plane(image, view, index), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            if result.label is not None:
                ax.contour(plane(result.label.array, view, index) > 0, levels=[0.5], colors="orange",
                           linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"text {text_scale:g} · mask {mask_scale:g}", fontsize=7)
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 15 * cols)), fontsize=7)
    return save_figure(fig, path, dpi)
