"""Does an image show the lesions its label map says it has? Per volume, its largest lesion's contrast as the
phantoms' facts state it (``lesion_contrasts``: the lesion's median intensity minus the organ's; negative: darker
than the organ, as hypodense lesions are), for a study's synthetic pairs and for the real cases of a dataset, side
by side.

    python research/scripts/lesion_contrast.py runs/liver-lesions-8 --real runs/liver-lesions-8/train-data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from volsynth.data.dataset import load_dataset
from volsynth.data.phantom.measure import lesion_contrasts
from volsynth.evaluation.segmentor import labelled_cases
from volsynth.io.formats import read_label, read_volume


def _summary(name: str, values: list[float | None]) -> str:
    measured = np.array([v for v in values if v is not None])
    if not len(measured):
        return f"{name}: {len(values)} volume(s), none with a lesion"
    q1, median, q3 = np.percentile(measured, [25, 50, 75])
    return (f"{name}: {len(measured)} of {len(values)} volume(s) with a lesion; largest lesion - organ median "
            f"{median:+.0f} (quartiles {q1:+.0f}, {q3:+.0f}); {int((measured <= -15).sum())} at -15 or less")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a study folder (its synthetic/SET/*_image.nii.gz pairs)")
    parser.add_argument("--real", type=Path, help="a dataset whose cases to measure as well")
    parser.add_argument("--organ", type=int, default=1)
    parser.add_argument("--lesion", type=int, default=4)
    args = parser.parse_args()

    def measure(image_path: Path, label_path: Path) -> float | None:
        image = read_volume(image_path)
        lesions = lesion_contrasts(image.array, read_label(label_path).array, image.spacing, args.organ, args.lesion)
        return lesions[0]["contrast"] if lesions else None

    for folder in sorted(p for p in (args.study / "synthetic").iterdir() if p.is_dir()):
        pairs = [(i, i.with_name(i.name.replace("_image", "_label"))) for i in sorted(folder.glob("*_image.nii.gz"))]
        pairs = [(i, lab) for i, lab in pairs if lab.is_file()]
        if pairs:
            print(_summary(f"synthetic/{folder.name}", [measure(i, lab) for i, lab in pairs]))
    if args.real:
        cases = labelled_cases(load_dataset(args.real))
        print(_summary(f"real ({args.real})", [measure(c.images[0], c.label) for c in cases]))


if __name__ == "__main__":
    main()
