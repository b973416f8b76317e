"""Large-volume decoding: tiled decode (whole-volume GroupNorm statistics) against a full decode, in one run.

Each method runs in its own subprocess so its peak resident memory is its own. The autoencoder is a
trained model's (``--model DIR``) or, without one, a freshly initialised one of the recipe sizes
(weights do not change time or memory). Prints seconds, peak RSS and the largest difference between
the two outputs (when both ran).

    .venv/bin/python benchmarks/decode.py --size 256 [--model models/X] [--skip-full]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def build_autoencoder(model: str | None, channels: list[int]):
    """The model's autoencoder, or a random one with ``channels`` (4 latent channels, like the recipes)."""
    if model:
        from volsynth.models.checkpoint import load_checkpoint

        return load_checkpoint(model).networks["autoencoder"].float().eval()
    from volsynth.models.registry import build_network, network_config

    config = network_config("autoencoder", "small", channels=channels, norm_num_groups=16,
                            attention_levels=[False] * len(channels))
    return build_network({"class": "AutoencoderKL", "spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                          **config}).eval()


def run_one(method: str, size: int, model: str | None, channels: list[int], out: str) -> None:
    """Decode one random latent for a ``size``^3 volume; print a JSON line of time and peak RSS."""
    from volsynth.models import tiled

    torch.manual_seed(0)
    autoencoder = build_autoencoder(model, channels)
    factor = 2 ** (len(channels) - 1)
    z = torch.randn(1, 4, *(size // factor,) * 3)
    start = time.perf_counter()
    with torch.no_grad():
        image = tiled.decode(autoencoder, z, tiled=method == "tiled")
    seconds = time.perf_counter() - start
    np.save(out, image[0, 0].numpy().astype(np.float32))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"method": method, "seconds": seconds, "peak_rss_gb": peak, "shape": list(image.shape)}))


def main() -> None:
    """Run the full and the tiled decode in subprocesses and compare."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="output edge in voxels")
    parser.add_argument("--model", default=None, help="a volsynth model folder (its autoencoder is used)")
    parser.add_argument("--channels", default="16,32,32", help="autoencoder channels without --model")
    parser.add_argument("--skip-full", action="store_true", help="only the tiled decode")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    channels = [int(c) for c in args.channels.split(",")]
    if args.one:
        run_one(args.one, args.size, args.model, channels, args.save)
        return
    import tempfile

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("tiled",) if args.skip_full else ("full", "tiled"):
            command = [sys.executable, __file__, "--one", method, "--size", str(args.size), "--channels",
                       args.channels, "--save", str(Path(tmp) / f"{method}.npy")]
            if args.model:
                command += ["--model", args.model]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"  {method}: failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
                continue
            results[method] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"decode to {args.size}^3, autoencoder {args.model or 'random ' + args.channels}, "
              f"{torch.get_num_threads()} threads")
        for method, r in results.items():
            print(f"  {method:5s}: {r['seconds']:7.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB")
        if len(results) == 2:
            full, tile = (np.load(Path(tmp) / f"{m}.npy") for m in ("full", "tiled"))
            print(f"  max |tiled - full| = {np.abs(full - tile).max():.2e} (output std {full.std():.3f});"
                  f" memory ratio full/tiled {results['full']['peak_rss_gb'] / results['tiled']['peak_rss_gb']:.1f}x")


if __name__ == "__main__":
    main()
