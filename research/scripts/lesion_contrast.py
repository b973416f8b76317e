"""Does an image show the lesions its label map says it has? Per volume: the median intensity of a ring of organ
voxels around the lesions (``--ring`` voxels wide) minus the median inside the lesions (positive: the lesions are
darker than the organ around them, as hypodense lesions are), for a study's synthetic pairs and for the real cases
of a dataset, side by side.

    python research/scripts/lesion_contrast.py runs/liver-lesions-8 --real runs/liver-lesions-8/train-data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from volsynth.data.dataset import load_dataset
from volsynth.evaluation.segmentor import labelled_cases
from volsynth.io.formats import read_label, read_volume


def lesion_contrast(image: np.ndarray, label: np.ndarray, organ: int, lesion: int, ring: int,
                    min_voxels: int = 5) -> float | None:
    """Median organ intensity around the lesions minus the median inside them; None without lesion voxels."""
    inside = label == lesion
    if inside.sum() < min_voxels:
        return None
    around = ndi.binary_dilation(inside, iterations=ring) & (label == organ)
    if not around.any():
        return None
    return float(np.median(image[around]) - np.median(image[inside]))


def _summary(name: str, values: list[float | None]) -> str:
    measured = np.array([v for v in values if v is not None])
    if not len(measured):
        return f"{name}: {len(values)} volume(s), none with a lesion"
    q1, median, q3 = np.percentile(measured, [25, 50, 75])
    return (f"{name}: {len(measured)} of {len(values)} volume(s) with a lesion; organ - lesion median {median:+.0f} "
            f"(quartiles {q1:+.0f}, {q3:+.0f}); {int((measured >= 15).sum())} at 15 or more")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a study folder (its synthetic/SET/*_image.nii.gz pairs)")
    parser.add_argument("--real", type=Path, help="a dataset whose cases to measure as well")
    parser.add_argument("--organ", type=int, default=1)
    parser.add_argument("--lesion", type=int, default=4)
    parser.add_argument("--ring", type=int, default=3)
    args = parser.parse_args()

    def measure(image: Path, label: Path) -> float | None:
        return lesion_contrast(read_volume(image).array, read_label(label).array, args.organ, args.lesion, args.ring)

    for folder in sorted(p for p in (args.study / "synthetic").iterdir() if p.is_dir()):
        images = sorted(folder.glob("*_image.nii.gz"))
        pairs = [(i, i.with_name(i.name.replace("_image", "_label"))) for i in images]
        pairs = [(i, lab) for i, lab in pairs if lab.is_file()]
        if pairs:
            print(_summary(f"synthetic/{folder.name}", [measure(i, lab) for i, lab in pairs]))
    if args.real:
        cases = labelled_cases(load_dataset(args.real))
        print(_summary(f"real ({args.real})", [measure(c.images[0], c.label) for c in cases]))


if __name__ == "__main__":
    main()
