"""How time and memory grow with the output size: latent decode, and text + mask generation, at 64^3, 128^3, 256^3.

The networks are a recipe-sized model's (default ``models/abdomen-ct-64``: autoencoder 16/32/32, "small" UNet and
its ControlNet); its folder is copied with the plan grid set to N^3 (the same field of view, finer voxels) and the
latent grid to (N/4)^3, so the real path runs at each size: ``load_pipeline`` -> ``SynthesisPipeline.generate``
with a prompt and a liver mask (DDIM, ``--steps`` steps, the model's guidance: text 1, mask 4, so two network
passes a step). Weights do not change time or memory. Each measurement runs in its own subprocess, so its peak RSS
(``ru_maxrss``) is its own. Prints a table with the growth exponent per doubling (log2 of the ratio between
successive sizes; 3 means the cost follows the voxel count).

    .venv/bin/python benchmarks/scale.py [--sizes 64,128,256] [--steps 2] [--model models/abdomen-ct-64] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def scaled_model(model: Path, size: int, folder: Path) -> Path:
    """A copy of ``model`` whose plan grid is size^3 over the same field of view (latents size/4 per axis)."""
    shutil.copytree(model, folder)
    meta = json.loads((folder / "meta.json").read_text())
    plan, latent = meta["plan"], meta["latent_shape"]
    factor = plan["size"][0] // latent[1]
    plan["spacing"] = [s * n / size for s, n in zip(plan["spacing"], plan["size"], strict=True)]
    plan["size"] = [size] * 3
    meta["latent_shape"] = [latent[0], *[size // factor] * 3]
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def liver_mask(plan, size: int):
    """An ellipsoidal 'liver' (label 1) on the plan's grid."""
    from volsynth.io.volume import LabelMap

    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"))
    inside = ((grid - 0.1) ** 2 / np.array([0.4, 0.3, 0.35])[:, None, None, None] ** 2).sum(0) < 1
    return LabelMap(inside.astype(np.uint8), plan.default_affine())


def run_one(what: str, size: int, model: str, steps: int, device: str) -> None:
    """One measurement in this process; prints a JSON line."""
    from volsynth.models import tiled
    from volsynth.pipelines import generate as generate_module
    from volsynth.pipelines.auto import load_pipeline

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_pipeline(scaled_model(Path(model), size, Path(tmp) / "model")).to(device)
    result: dict = {"what": what, "size": size}
    if what == "decode":
        z = torch.randn(1, *pipe.latent_shape, device=device)
        start = time.perf_counter()
        image = tiled.decode(pipe.autoencoder, z)
        _sync(device)
        result["seconds"] = time.perf_counter() - start
        result["shape"] = list(image.shape)
    else:
        timings: dict[str, float] = {}

        def timed(name, fn):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                out = fn(*args, **kwargs)
                _sync(device)
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
                return out
            return wrapper

        generate_module.sample = timed("denoise", generate_module.sample)
        generate_module.decode = timed("decode", generate_module.decode)
        start = time.perf_counter()
        out = pipe.generate(prompt="Two hypodense lesions in the right liver lobe, the largest 24 mm.",
                            mask=liver_mask(pipe.plan, size), mask_labels={"liver": 1}, seed=0, steps=steps,
                            sampler="ddim", text_guidance=1.0, mask_guidance=4.0)
        result["seconds"] = time.perf_counter() - start
        result.update(steps=steps, seconds_per_step=timings["denoise"] / steps, decode_seconds=timings["decode"],
                      shape=list(out.image.shape))
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    if device.startswith("cuda"):
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    print(json.dumps(result))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def growth(values: list[float]) -> list[str]:
    """log2 of the ratio of each value to the previous one ('' for the first)."""
    pairs = zip(values[:-1], values[1:], strict=True)
    return [""] + [f"{math.log2(b / a):.2f}" if a > 0 and b > 0 else "" for a, b in pairs]


def main() -> None:
    """Measure every size in subprocesses and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,256", help="output edges in voxels, doubling")
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps of each generation")
    parser.add_argument("--model", default=str(ROOT / "models" / "abdomen-ct-64"), help="a latent model folder")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.size, args.model, args.steps, args.device)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: dict[str, list[dict]] = {"decode": [], "generate": []}
    for size in sizes:
        for what in rows:
            command = [sys.executable, __file__, "--one", what, "--size", str(size), "--steps", str(args.steps),
                       "--model", args.model, "--device", args.device]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{what} at {size}^3 failed:\n{done.stderr[-3000:]}")
            rows[what].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {what} {size}^3 done: {rows[what][-1]}", file=sys.stderr)
    gpu = args.device.startswith("cuda")
    print(f"device {args.device}, model {Path(args.model).name}, {args.steps} DDIM steps, text 1 + mask 4 guidance")
    header = ["size", "decode s", "decode peak RSS GB", "generate s", "s/step", "generate peak RSS GB"]
    if gpu:
        header += ["decode peak GPU GB", "generate peak GPU GB"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for decode, generated in zip(rows["decode"], rows["generate"], strict=True):
        cells = [f"{decode['size']}^3", f"{decode['seconds']:.2f}", f"{decode['peak_rss_gb']:.2f}",
                 f"{generated['seconds']:.2f}", f"{generated['seconds_per_step']:.2f}",
                 f"{generated['peak_rss_gb']:.2f}"]
        if gpu:
            cells += [f"{decode['peak_gpu_gb']:.2f}", f"{generated['peak_gpu_gb']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    columns = {"decode s": [r["seconds"] for r in rows["decode"]],
               "decode peak RSS": [r["peak_rss_gb"] for r in rows["decode"]],
               "s/step": [r["seconds_per_step"] for r in rows["generate"]],
               "generate peak RSS": [r["peak_rss_gb"] for r in rows["generate"]]}
    print("growth exponent per doubling (log2 of the ratio to the previous size):")
    for name, values in columns.items():
        print(f"  {name:<18} " + "  ".join(g or "-" for g in growth(values)))
    largest = rows["generate"][-1]
    peak = largest["peak_gpu_gb"] if gpu else largest["peak_rss_gb"]
    print(f"{largest['size']}^3 text + mask generation peak {'GPU' if gpu else 'RSS'} {peak:.2f} GB: goal < 8 GB "
          f"{'reached' if peak < 8 else 'not reached'}")


if __name__ == "__main__":
    main()
