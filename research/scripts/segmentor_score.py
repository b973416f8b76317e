"""Score a trained segmentor on every labelled case of a dataset it did not learn from: Dice and NSD per class, and
the lesion classes by the size of each case's largest real lesion (``evaluate_holdout``).

    python research/scripts/segmentor_score.py runs/seg-liver-lesions-128/segmentor runs/seg-lesion-heldout \
        --out runs/seg-liver-lesions-128/heldout-24.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from volsynth.data.dataset import load_dataset
from volsynth.evaluation.commands import _print_holdout
from volsynth.evaluation.report import to_json_ready
from volsynth.evaluation.segmentor import labelled_cases
from volsynth.evaluation.segtrain import evaluate_holdout
from volsynth.io.jsonfile import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("segmentor", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tolerance-mm", type=float, default=2.0)
    args = parser.parse_args()
    ids = sorted(c.case_id for c in labelled_cases(load_dataset(args.dataset)))
    result = evaluate_holdout(args.segmentor, args.dataset, ids, args.tolerance_mm,
                              command="python research/scripts/segmentor_score.py " + " ".join(map(str, [
                                  args.segmentor, args.dataset])))
    _print_holdout(result)
    if args.out:
        write_json(args.out, to_json_ready(result))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
