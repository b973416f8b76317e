"""What the refiner adds to a mask-guided generation: the same model, mask and seed generated without the
refiner (the baseline) and with it, alternately, in one run. Prints seconds per volume and the ratio.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/refiner.py models/abdomen-refined-64 \
        --mask runs/heldout-abdomen-64/labelsTr/abdomen_ct_0000.nii.gz [--repeats 2] [--refiner-steps 20]
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
    args = parser.parse_args()
    pipe = SynthesisPipeline.from_pretrained(args.model)
    if pipe.refiner is None:
        parser.error(f"{args.model} has no refiner")
    if args.refiner_steps is not None:
        pipe.refiner_settings["steps"] = args.refiner_steps
    sampling = {"prompt": "liver", "mask": args.mask, "seed": 0, "text_guidance": 1.0, "mask_guidance": 4.0}
    pipe(**sampling, refine=False)  # warm-up (text encoder, first allocations)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for refine in (False, True):
            start = time.perf_counter()
            pipe(**sampling, refine=refine)
            times[refine].append(time.perf_counter() - start)
    plain, refined = (min(times[r]) for r in (False, True))
    print(f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}, refiner steps {pipe.refiner_settings['steps']}, "
          f"best of {args.repeats}")
    print(f"without the refiner (baseline): {plain:.2f} s/volume")
    print(f"with the refiner:               {refined:.2f} s/volume ({refined / plain:.2f}x)")


if __name__ == "__main__":
    main()
