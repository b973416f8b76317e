"""What the refiner costs and what it buys: the same model, masks and seeds generated without the refiner (the
baseline), and with it at several step counts, with and without its mask guidance (two refiner calls a step),
alternately, in one run. Prints seconds per volume, the ratio to the baseline and, with --segmentor, the liver
Dice of the evaluation segmentor on each variant's volumes against their conditioning masks.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/refiner.py models/abdomen-refined-64 \
        --masks runs/heldout-abdomen-64/labelsTr --count 4 --segmentor runs/seg-abdomen-64 \
        [--refiner-steps 20,8,5,4] [--refiner-guidance 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    """Time every variant on every mask and print the comparison."""
    from volsynth.evaluation.overlap import compute_dice_per_class
    from volsynth.evaluation.segmentor import load_segmentor, predict
    from volsynth.pipelines.generate import SynthesisPipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--masks", type=Path, required=True, help="a label map, or a folder of them")
    parser.add_argument("--count", type=int, default=2, help="masks used (the first of the folder)")
    parser.add_argument("--refiner-steps", default=None, help="comma-separated step counts; default: the model's")
    parser.add_argument("--refiner-guidance", type=float, default=3.0, help="the guided variants' scale")
    parser.add_argument("--segmentor", type=Path, default=None, help="evaluation segmentor for the Dice column")
    args = parser.parse_args()
    pipe = SynthesisPipeline.from_pretrained(args.model)
    if pipe.refiner is None:
        parser.error(f"{args.model} has no refiner")
    masks = sorted(args.masks.glob("*.nii.gz"))[: args.count] if args.masks.is_dir() else [args.masks]
    default_steps = int(pipe.recommended.get("refiner_steps") or pipe.refiner_settings["steps"])
    step_counts = [int(s) for s in args.refiner_steps.split(",")] if args.refiner_steps else [default_steps]
    segmentor = load_segmentor(args.segmentor) if args.segmentor is not None else None
    sampling = {"prompt": "", "seed": 0, "text_guidance": 1.0, "mask_guidance": 4.0}
    pipe(**sampling, mask=masks[0], refine=False)  # warm-up (text encoder, first allocations)
    variants = {"without the refiner (baseline)": {"refine": False}}
    for steps in step_counts:
        variants[f"refiner {steps} steps"] = {"refine": True, "refiner_guidance": 1.0, "refiner_steps": steps}
        variants[f"refiner {steps} steps, guidance {args.refiner_guidance:g}"] = {
            "refine": True, "refiner_guidance": args.refiner_guidance, "refiner_steps": steps}
    times: dict[str, list[float]] = {name: [] for name in variants}
    dice: dict[str, list[float]] = {name: [] for name in variants}
    for seed, mask in enumerate(masks):
        for name, options in variants.items():
            start = time.perf_counter()
            result = pipe(**{**sampling, "seed": seed}, mask=mask, **options)
            times[name].append(time.perf_counter() - start)
            if segmentor is not None:
                scores = compute_dice_per_class(predict(segmentor, result.image), result.label)
                dice[name].append(scores.get("liver", float("nan")))
    baseline = float(np.mean(times["without the refiner (baseline)"]))
    print(f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}, {len(masks)} masks, mean over masks")
    for name in variants:
        seconds = float(np.mean(times[name]))
        quality = f", liver Dice {np.nanmean(dice[name]):.3f}" if segmentor is not None else ""
        print(f"{name + ':':44s} {seconds:6.2f} s/volume ({seconds / baseline:.2f}x){quality}")


if __name__ == "__main__":
    main()
