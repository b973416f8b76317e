"""Lesion contrast of phantom datasets, measured on their written images with their label maps.

Per dataset (one line per lesion size bin, in voxels across): lesions, the median |lesion - liver| over whole lesions
(partial volume and blur lower it for small lesions) and over lesion interiors (one voxel in from the border).

    volsynth phantom abdomen-ct runs/ph-v1 --cases 40 --size 64 --generator-version 1
    volsynth phantom abdomen-ct runs/ph-v2 --cases 40 --size 64
    .venv/bin/python benchmarks/lesion_contrast.py runs/ph-v1 runs/ph-v2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from volsynth.data.dataset import load_dataset
from volsynth.data.phantom.measure import lesion_contrasts
from volsynth.io import read_label, read_volume

BINS = ((0, 3), (3, 5), (5, 1000))  # lesion diameter in voxels


def measure(root: Path) -> list[tuple[float, float, float | None]]:
    """(diameter in voxels, |contrast|, |interior contrast| or None) of every lesion of a dataset."""
    rows = []
    for case in load_dataset(root).cases:
        image, labels = read_volume(case.images[0]), read_label(case.label)
        for lesion in lesion_contrasts(image.array, labels.array, image.spacing):
            inner = lesion["interior_contrast"]
            rows.append((lesion["diameter_mm"] / max(image.spacing), abs(lesion["contrast"]),
                         None if inner is None else abs(inner)))
    return rows


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    args = parser.parse_args()
    print(f"{'dataset':<24}{'voxels across':>14}{'lesions':>9}{'|whole| HU':>12}{'interiors':>11}{'|interior| HU':>15}")
    for root in args.datasets:
        rows = measure(root)
        for lo, hi in (*BINS, (0, 1000)):
            chosen = [r for r in rows if lo <= r[0] < hi]
            inner = [r[2] for r in chosen if r[2] is not None]
            name = "all" if (lo, hi) == (0, 1000) else f"{lo}-{hi}" if hi < 1000 else f">={lo}"
            whole = f"{np.median([r[1] for r in chosen]):.1f}" if chosen else "-"
            print(f"{root.name:<24}{name:>14}{len(chosen):>9}{whole:>12}{len(inner):>11}"
                  f"{(f'{np.median(inner):.1f}' if inner else '-'):>15}")


if __name__ == "__main__":
    main()
