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
from volsynth.parallel import progress_bar
from volsynth.viz import default_centre, plane, save_figure


def guidance_sweep(pipeline, text_scales: list[float], mask_scales: list[float], progress: bool = True,
                   **call) -> list[list]:
    """Results ``[mask scale][text scale]`` of ``pipeline(**call, text_guidance=t, mask_guidance=m)``."""
    if not text_scales or not mask_scales:
        raise ConfigError(None, "a sweep needs at least one text scale and one mask scale")
    grid: list[list] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("sweep", total=len(text_scales) * len(mask_scales))
        for mask_scale in mask_scales:
            row = []
            for text_scale in text_scales:
                row.append(pipeline(**call, text_guidance=text_scale, mask_guidance=mask_scale))
                bar.advance(task)
            grid.append(row)
    return grid


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
