"""What the refiner adds to a mask-guided generation: the same model, mask and seed generated without the
refiner (the baseline), with it, and with it under mask guidance (--refiner-guidance, two refiner calls a step),
alternately, in one run. Prints seconds per volume and the ratios.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/refiner.py models/abdomen-refined-64 \
        --mask runs/heldout-abdomen-64/labelsTr/abdomen_ct_0000.nii.gz [--repeats 2] [--refiner-steps 20] \
        [--refiner-guidance 4]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    """Time both and print the comparison."""
    from volsynth.pipelines.generate import SynthesisPipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--mask", required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--refiner-steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--refiner-guidance", type=float, default=4.0, help="the guided variant's scale")
    args = parser.parse_args()
    pipe = SynthesisPipeline.from_pretrained(args.model)
    if pipe.refiner is None:
        parser.error(f"{args.model} has no refiner")
    if args.refiner_steps is not None:
        pipe.refiner_settings["steps"] = args.refiner_steps
    sampling = {"prompt": "liver", "mask": args.mask, "seed": 0, "text_guidance": 1.0, "mask_guidance": 4.0}
    pipe(**sampling, refine=False)  # warm-up (text encoder, first allocations)
    variants = {"without the refiner (baseline)": {"refine": False},
                "with the refiner": {"refine": True, "refiner_guidance": 1.0},
                f"with the refiner, guidance {args.refiner_guidance:g}": {"refine": True,
                                                                         "refiner_guidance": args.refiner_guidance}}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, options in variants.items():
            start = time.perf_counter()
            pipe(**sampling, **options)
            times[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in times.items()}
    baseline = best["without the refiner (baseline)"]
    print(f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}, refiner steps {pipe.refiner_settings['steps']}, "
          f"best of {args.repeats}")
    for name, seconds in best.items():
        print(f"{name + ':':40s} {seconds:.2f} s/volume ({seconds / baseline:.2f}x)")


if __name__ == "__main__":
    main()
