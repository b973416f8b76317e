"""Montage PNGs of RAS volumes: axial, coronal and sagittal planes with a coloured label overlay.

Display follows the radiological convention for arrays indexed (x, y, z) in RAS+: axial images
show anterior up and the patient's right on the image's left; coronal images show superior up and
the patient's right on the left; sagittal images show superior up and anterior on the left.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from volsynth.io.atomic import atomic_output

PLANES = ("axial", "coronal", "sagittal")


def plane(volume: np.ndarray, name: str, index: int) -> np.ndarray:
    """A 2D display image (rows top to bottom) of one plane of an (x, y, z) RAS array."""
    if name == "axial":  # rows: y (anterior first), columns: x (patient right first)
        return volume[::-1, ::-1, index].T
    if name == "coronal":  # rows: z (superior first), columns: x (patient right first)
        return volume[::-1, index, ::-1].T
    if name == "sagittal":  # rows: z (superior first), columns: y (anterior first)
        return volume[index, ::-1, ::-1].T
    raise ValueError(f"unknown plane {name!r}; expected one of {PLANES}")


def _aspect(name: str, spacing) -> float:
    """Height/width of one display pixel for the plane (anisotropic voxels)."""
    sx, sy, sz = (float(s) for s in spacing)
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[name]


def default_centre(image: np.ndarray, labels: np.ndarray | None) -> tuple[int, int, int]:
    """Centre of the labelled voxels, or of the volume when there are none."""
    if labels is not None and labels.any():
        return tuple(int(round(c)) for c in np.argwhere(labels > 0).mean(axis=0))  # type: ignore[return-value]
    return tuple(s // 2 for s in image.shape)  # type: ignore[return-value]


def save_montage(path: str | Path, images: list[np.ndarray], labels: list[np.ndarray | None], titles: list[str],
                 window: tuple[float, float] | None, centres: list[tuple[int, int, int]] | None = None,
                 spacings: list | None = None, dpi: int = 100) -> Path:
    """Write a PNG with one row per volume and axial/coronal/sagittal columns, labels overlaid in colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    path = Path(path)
    rows = len(images)
    colours = np.vstack([plt.get_cmap("tab10")(np.arange(10)), plt.get_cmap("Dark2")(np.arange(8))])
    overlay_cmap = ListedColormap(colours)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3.1 * rows), squeeze=False)
    for r, (image, label) in enumerate(zip(images, labels, strict=True)):
        centre = centres[r] if centres else default_centre(image, label)
        spacing = spacings[r] if spacings else (1.0, 1.0, 1.0)
        lo, hi = window if window is not None else np.percentile(image, [1, 99])
        for c, name in enumerate(PLANES):
            index = centre[{"axial": 2, "coronal": 1, "sagittal": 0}[name]]
            ax = axes[r, c]
            aspect = _aspect(name, spacing)
            ax.imshow(plane(image, name, index), cmap="gray", vmin=lo, vmax=hi, aspect=aspect,
                      interpolation="nearest")
            if label is not None:
                lab = plane(label, name, index).astype(int)
                masked = np.ma.masked_where(lab == 0, (lab - 1) % len(colours))
                ax.imshow(masked, cmap=overlay_cmap, vmin=0, vmax=len(colours) - 1, alpha=0.4, aspect=aspect,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{titles[r]} {name}" if c == 0 else name, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as a PNG atomically (a failure leaves no half-written file) and close it."""
    import matplotlib.pyplot as plt


    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path
