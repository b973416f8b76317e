"""Sampling speed: volsynth's text+mask pipeline against a MONAI-tutorial-style baseline, in one run.

Baseline: DDPM with 1000 steps, fp32, the ControlNet conditioning embedding recomputed at every
step, full-volume decode. volsynth: DDIM (or rectified flow) with few steps, the embedding computed
once, tiled decode above its threshold, optional bf16. Same model, masks and seeds. Prints seconds
per volume, the speed-up, peak RSS, and (with --segmentor) the Dice of both against their masks.

    .venv/bin/python benchmarks/sample.py MODEL --masks DIR [--steps 30] [--baseline-steps 1000]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch

from volsynth.io import read_label
from volsynth.pipelines import load_pipeline


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def peak_gpu_gb() -> float | None:
    """Peak CUDA memory allocated by this process in GB (None without CUDA)."""
    return torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None


def baseline(pipe, mask, seed: int, steps: int):
    """Tutorial-style sampling: embedding inside the loop, full decode, DDPM, fp32."""
    controlnet = pipe.controlnet
    original = controlnet.embed
    calls = []

    def embed_every_step(features):
        calls.append(1)
        return original(features)

    # the pipeline embeds once; the baseline recomputes it in every network call instead
    controlnet.embed = lambda features: features
    inner = controlnet.forward

    def forward(x, t, features, context=None, scale=1.0):
        return inner(x, t, embed_every_step(features), context=context, scale=scale)

    controlnet.forward = forward
    from volsynth.models import tiled

    threshold = tiled.TILED_DECODE_THRESHOLD
    tiled.TILED_DECODE_THRESHOLD = 10**12  # never tile
    try:
        result = pipe(prompt="liver", mask=mask, seed=seed, steps=steps, sampler="ddpm", text_guidance=1.0)
    finally:
        controlnet.embed, controlnet.forward = original, inner
        tiled.TILED_DECODE_THRESHOLD = threshold
    return result, len(calls)


def main() -> None:
    """Time both samplers on the same masks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--masks", type=Path, required=True, help="folder of label maps (*.nii.gz)")
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--baseline-steps", type=int, default=1000)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--segmentor", type=Path, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (a GPU run records 128^3 / 256^3 figures)")
    args = parser.parse_args()
    from volsynth.devices import select_device

    pipe = load_pipeline(args.model).to(select_device(args.device))
    masks = [read_label(p) for p in sorted(args.masks.glob("*.nii.gz"))[: args.count]]
    pipe(prompt="liver", mask=masks[0], seed=0, steps=2)  # warm-up
    ours, base, calls = [], [], 0
    results = {"ours": [], "baseline": []}
    for index, mask in enumerate(masks):
        start = time.perf_counter()
        results["ours"].append(pipe(prompt="liver", mask=mask, seed=index, steps=args.steps, sampler=args.sampler,
                                    text_guidance=1.0, dtype=torch.bfloat16 if args.bf16 else torch.float32))
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        result, calls = baseline(pipe, mask, index, args.baseline_steps)
        results["baseline"].append(result)
        base.append(time.perf_counter() - start)
    shape = masks[0].shape
    print(f"model {args.model}, masks {shape}, {torch.get_num_threads()} threads")
    print(f"  baseline (DDPM {args.baseline_steps}, embedding every step: {calls} calls, full decode): "
          f"{np.mean(base):.2f} s/volume")
    print(f"  volsynth ({args.sampler} {args.steps}, embedding once, tiled decode): {np.mean(ours):.2f} s/volume"
          f"   speed-up {np.mean(base) / np.mean(ours):.1f}x")
    if args.segmentor is not None:
        from volsynth.evaluation.overlap import compute_dice_per_class
        from volsynth.evaluation.segmentor import load_segmentor, predict

        segmentor = load_segmentor(args.segmentor)
        for name, items in results.items():
            dice = [compute_dice_per_class(predict(segmentor, r.image), r.label).get("liver", float("nan"))
                    for r in items]
            print(f"  liver Dice ({name}): {np.nanmean(dice):.3f}")
    gpu = peak_gpu_gb()
    print(f"peak RSS {peak_rss_gb():.2f} GB" + (f", peak GPU memory {gpu:.2f} GB" if gpu is not None else ""))


if __name__ == "__main__":
    main()
