"""What the evaluation segmentor finds in a study's text-guided volumes, whose prompts state one lesion of a given
size: per volume, the number of separate lesions it predicts (26-connected components of its lesion classes), the
largest one's diameter (maximum 3D extent, as the study measures it) and the predicted lesions' median intensity
minus the predicted liver's. The same for the study's held-out real test cases, for comparison.

    python research/scripts/text_lesions.py runs/liver-lesions-8 runs/seg-liver-lesions-128/segmentor
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from volsynth.data.dataset import load_dataset
from volsynth.evaluation.adherence import lesion_class_ids, measure_lesions
from volsynth.evaluation.segmentor import load_segmentor, predict
from volsynth.io.formats import read_volume


def describe(segmentor, image) -> dict:
    """Lesions the segmentor predicts in one image."""
    prediction = predict(segmentor, image)
    lesion_ids = lesion_class_ids(segmentor.labels)
    sizes = measure_lesions(prediction, lesion_ids)
    lesion = np.isin(prediction.array, lesion_ids)
    liver = prediction.array == segmentor.labels.get("liver", -1)
    contrast = (float(np.median(image.array[lesion]) - np.median(image.array[liver]))
                if lesion.any() and liver.any() else None)
    return {"lesions": len(sizes), "largest_mm": float(sizes[0]) if sizes else 0.0, "contrast": contrast}


def _line(name: str, rows: list[dict]) -> str:
    counts = [r["lesions"] for r in rows]
    contrasts = [r["contrast"] for r in rows if r["contrast"] is not None]
    return (f"{name}: {len(rows)} volume(s); lesions found per volume median {np.median(counts):.0f} "
            f"(range {min(counts)}-{max(counts)}); predicted lesion - liver median "
            f"{np.median(contrasts):+.0f}" if contrasts else f"{name}: {len(rows)} volume(s); no lesion found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a study folder (synthetic/text/*.json and split.json)")
    parser.add_argument("segmentor", type=Path, help="the evaluation segmentor's folder")
    args = parser.parse_args()
    segmentor = load_segmentor(args.segmentor)

    text = []
    for sidecar in sorted((args.study / "synthetic" / "text").glob("*.json")):
        record = json.loads(sidecar.read_text())
        row = {"id": sidecar.stem, "stated_mm": record["stated_mm"],
               **describe(segmentor, read_volume(sidecar.parent / record["image"]))}
        text.append(row)
        contrast = "-" if row["contrast"] is None else f"{row['contrast']:+.0f}"
        print(f"{row['id']}: stated {row['stated_mm']:.0f} mm, {row['lesions']} lesion(s) found, largest "
              f"{row['largest_mm']:.0f} mm, lesion - liver {contrast}")
    split = json.loads((args.study / "split.json").read_text())
    dataset = load_dataset(split["dataset"])  # relative to the repository root, where the study ran
    cases = {case.case_id: case for case in dataset.cases}
    real = [describe(segmentor, read_volume(cases[case_id].images[0])) for case_id in split["test"]]
    print(_line("text-guided", text))
    print(_line("real test cases", real))
    rho = spearmanr([r["stated_mm"] for r in text], [r["largest_mm"] for r in text]).statistic
    print(f"stated size vs largest found: Spearman rho {rho:+.2f}")


if __name__ == "__main__":
    main()
