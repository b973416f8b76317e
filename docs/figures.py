"""Regenerate docs/images/abdomen-ct-64-samples.png: text only, text + mask, and the real held-out case.

    volsynth phantom abdomen-ct runs/heldout-abdomen --cases 16 --size 128 --seed 2
    volsynth prepare runs/heldout-abdomen runs/heldout-abdomen-64 --like models/abdomen-ct-64
    .venv/bin/python docs/figures.py [--model models/abdomen-ct-64] [--heldout runs/heldout-abdomen-64]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from volsynth.data.dataset import load_dataset  # noqa: E402
from volsynth.evaluation.inputs import read_real  # noqa: E402
from volsynth.pipelines.generate import SynthesisPipeline  # noqa: E402
from volsynth.viz import save_montage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "abdomen-ct-64")
    parser.add_argument("--heldout", type=Path, default=ROOT / "runs" / "heldout-abdomen-64")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "abdomen-ct-64-samples.png")
    parser.add_argument("--case", type=int, default=0, help="Index of the held-out case.")
    args = parser.parse_args()

    case = load_dataset(args.heldout).cases[args.case]
    _, real, plan = read_real(args.heldout, limit=args.case + 1, progress=False)
    real = real[args.case]
    pipe = SynthesisPipeline.from_pretrained(args.model)
    text = pipe(prompt=case.report, seed=0)
    masked = pipe(prompt=case.report, mask=case.label, seed=0)
    window = tuple(plan.normalization[0].window)
    save_montage(args.out, [text.image.array, masked.image.array, real.image.array],
                 [None, masked.label.array, real.label.array],
                 [f"{args.model.name}: text only", "text + mask (mask overlaid)", f"real held-out {case.case_id}"],
                 window)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
