"""Liver Dice of a mask-guided model's samples on held-out masks, unrefined and refined by refiner checkpoints.

Each held-out mask is generated once without a refiner (seed 0, the model's recommended sampling with a mask: text
guidance 1, mask guidance 4 or --mask-guidance; cached under --cache), then every checkpoint's refiner redraws the
same volumes, so checkpoints and refiner settings (--steps, --iterations, --guidance: the refiner's mask guidance
scales) are compared on identical inputs. --from-real refines the held-out real images instead (the refiner's
ceiling). Prints the mean and per-case liver Dice of the evaluation segmentor against the conditioning mask. Needs
runs/heldout-abdomen-64 and runs/seg-abdomen-64 (research/README.md, "Set-up").

    OMP_NUM_THREADS=1 .venv/bin/python research/scripts/refiner_dice.py \
        runs/abdomen-refined-64/refiner/checkpoints/checkpoint-0005000 --guidance 1 4
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    """Generate (once), refine with each checkpoint, segment, print Dice."""
    import numpy as np
    import torch

    from volsynth.evaluation.overlap import compute_dice_per_class
    from volsynth.evaluation.segmentor import load_segmentor, predict
    from volsynth.io import Volume, read_label, read_volume
    from volsynth.models.checkpoint import load_checkpoint
    from volsynth.pipelines.generate import SynthesisPipeline
    from volsynth.pipelines.refine import run_refiner

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", help="refiner checkpoints (OUT/refiner/checkpoints/checkpoint-N)")
    parser.add_argument("--model", default="models/abdomen-fullmask-64", help="the mask-guided model to refine")
    parser.add_argument("--heldout", default="runs/heldout-abdomen-64")
    parser.add_argument("--segmentor", default="runs/seg-abdomen-64")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="refiner steps (default: the checkpoint's)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0],
                        help="refiner mask guidance scales to compare (default: 1, none)")
    parser.add_argument("--from-real", action="store_true",
                        help="refine the held-out real images instead of samples (the refiner's ceiling)")
    parser.add_argument("--iterations", type=int, default=1, help="refine the refined volume again this often")
    parser.add_argument("--mask-guidance", type=float, default=4.0,
                        help="the unrefined samples' mask guidance (default 4, the model's recommendation)")
    parser.add_argument("--cache", default="runs/refiner-dice-cache",
                        help="unrefined samples at mask guidance 4 (other scales: a subfolder per scale)")
    parser.add_argument("--liver-shift", type=float, default=None,
                        help="also score the refined volumes with the liver's mean moved by this many HU ...")
    parser.add_argument("--liver-spread", type=float, default=1.0, help="... and its spread around it scaled by this")
    args = parser.parse_args()
    pipe = SynthesisPipeline.from_pretrained(args.model)
    segmentor = load_segmentor(args.segmentor)
    masks = sorted(Path(args.heldout, "labelsTr").glob("*.nii.gz"))[: args.limit]
    reports_file = Path(args.heldout, "reports.jsonl")
    reports = {}
    if reports_file.is_file():
        entries = [json.loads(line) for line in reports_file.read_text().splitlines() if line.strip()]
        reports = {entry["case"]: entry["report"] for entry in entries}
    cache = Path(args.cache)
    if args.mask_guidance != 4.0:
        cache = cache / f"mask-guidance-{args.mask_guidance:g}"
    cache.mkdir(parents=True, exist_ok=True)
    plain = []
    for mask in masks:
        case = mask.name.removesuffix(".nii.gz")
        stored = cache / f"{case}.npy"
        if args.from_real:
            prepared = read_volume(Path(args.heldout, "imagesTr", f"{case}_0000.nii.gz"))  # normalised
            plain.append(pipe.plan.denormalize(prepared).array)
            continue
        if not stored.is_file():
            result = pipe(prompt=reports.get(case, ""), mask=mask, seed=0, text_guidance=1.0,
                          mask_guidance=args.mask_guidance, refine=False)
            np.save(stored, result.image.array)
        plain.append(np.load(stored))

    def liver_dice(arrays) -> list[float]:
        values = []
        for array, mask in zip(arrays, masks, strict=True):
            label = read_label(mask)
            predicted = predict(segmentor, Volume(array.astype(np.float32), label.affine, modality="CT"))
            values.append(compute_dice_per_class(predicted, label, segmentor.labels)["liver"])
        return values

    def show(name: str, values: list[float]) -> None:
        print(f"{name}: liver Dice {np.mean(values):.3f} ({' '.join(f'{v:.3f}' for v in values)})", flush=True)

    show("real images" if args.from_real else "unrefined", liver_dice(plain))
    norm = pipe.plan.normalization[0]
    # the refiner's inputs, once: each volume normalised as the plan says and its mask's full-resolution features
    inputs = [(torch.from_numpy(norm.forward(array, norm.window))[None, None],
               pipe._mask_features(read_label(mask), sorted(pipe.plan.labels), 1))
              for array, mask in zip(plain, masks, strict=True)]
    for path in args.checkpoints:
        checkpoint = load_checkpoint(path, use_ema=True)
        refiner, settings = checkpoint.networks["refiner"].eval().float(), checkpoint.meta["refiner"]
        for guidance in args.guidance:
            refined = []
            for x, features in inputs:
                for _ in range(args.iterations):
                    x = run_refiner(refiner, x, features, settings, 0, steps=args.steps, guidance=guidance)
                refined.append(norm.inverse(x[0, 0].numpy()))
            show(f"{path}, guidance {guidance:g}", liver_dice(refined))
        if args.liver_shift is not None:  # is it the liver's brightness that costs Dice?
            liver_id = pipe.plan.labels["liver"]
            for array, mask in zip(refined, masks, strict=True):
                liver = read_label(mask).array == liver_id
                mean = array[liver].mean()
                array[liver] = mean + args.liver_shift + (array[liver] - mean) * args.liver_spread
            show(f"{path}, guidance {guidance:g}, liver {args.liver_shift:+g} HU, spread x{args.liver_spread:g}",
                 liver_dice(refined))


if __name__ == "__main__":
    main()
