"""How well the MAISI cost prediction (``volsynth generate --dry-run``) matches NV-Generate-CT's published timings.

NV-Generate-CT's docs/performance.md (commit da438fe of NVIDIA-Medtech/NV-Generate-CTMR) lists, per inference config,
the rflow-ct diffusion time (30 steps, ControlNet + UNet) and the autoencoder decode time on an A100 80 GB. This
script traces the published networks on the meta device at each config's grid and decode window, fits one sustained
rate for each phase (total FLOPs over total published seconds), prints every row's prediction against the published
time, and then volsynth's own prediction for 256^3 and 512^3 with its default decode window. Last, the memory
trace is checked on this CPU: the full-size autoencoder decodes random latents of 16^3 and 24^3 voxels, each in a
fresh process, and its resident-memory growth is printed against the trace's peak. About a minute on 2 cores; no GPU
and no weights needed.

    python benchmarks/maisi_cost.py
"""

from __future__ import annotations

import resource
import subprocess
import sys

import torch

from volsynth.models.costing import trace_cost
from volsynth.models.maisi.importer import DECODE
from volsynth.models.maisi.networks import build_maisi_network, published_configs
from volsynth.pipelines.maisi_cost import A100_TFLOPS, GB, estimate

LATENT_FACTOR = 4
STEPS = 30
# (output size, decode window, overlap, published peak GB, diffusion s, decode s): rflow-ct rows of the table
PUBLISHED = [
    ((256, 256, 128), (96, 96, 96), 0.25, 15.0, 2, 1),
    ((256, 256, 256), (48, 48, 64), 0.6666, 15.4, 3, 5),
    ((512, 512, 128), (64, 64, 32), 0.5, 15.7, 5, 8),
    ((256, 256, 256), (64, 64, 64), 0.25, 22.7, 3, 2),
    ((512, 512, 128), (80, 80, 32), 0.4, 21.0, 5, 6),
    ((512, 512, 512), (64, 64, 48), 0.4, 22.8, 19, 29),
    ((512, 512, 512), (80, 80, 48), 0.4, 28.4, 19, 30),
    ((512, 512, 512), (80, 80, 80), 0.4, 45.3, 19, 32),
    ((512, 512, 768), (80, 80, 96), 0.4, 49.7, 30, 57),
]


def main() -> None:
    configs = published_configs("rflow-ct")
    costs = [estimate(configs, list(size), LATENT_FACTOR, STEPS, True, {"window": list(window), "overlap": overlap})
             for size, window, overlap, *_ in PUBLISHED]
    rates = {"denoise": sum(c.steps * c.step_flops for c in costs) / sum(r[4] for r in PUBLISHED) / 1e12,
             "decode": sum(c.windows * c.window_flops for c in costs) / sum(r[5] for r in PUBLISHED) / 1e12}
    print(f"fitted A100 rates (TFLOP/s): denoise {rates['denoise']:.1f}, decode {rates['decode']:.1f}; "
          f"in volsynth.pipelines.maisi_cost: {A100_TFLOPS}")
    print("| grid | window | windows | diffusion s: published / predicted | decode s: published / predicted | "
          "peak GB: published (fp16) / predicted (fp32) |")
    print("|---|---|---|---|---|---|")
    for (size, window, _, peak, dm, vae), cost in zip(PUBLISHED, costs, strict=True):
        seconds = cost.seconds(A100_TFLOPS)
        print(f"| {'x'.join(map(str, size))} | {'x'.join(map(str, window))} | {cost.windows} | {dm} / "
              f"{seconds['denoise']:.1f} | {vae} / {seconds['decode']:.1f} | {peak} / {cost.peak_bytes / GB:.1f} |")
    print("\nvolsynth's default decode window", DECODE, "(overlap 0.4 above a 64-voxel latent axis)")
    for size in ((256, 256, 256), (512, 512, 512)):
        decode = dict(DECODE, overlap=DECODE["overlap"] if max(size) <= 256 else 0.4)
        cost = estimate(configs, list(size), LATENT_FACTOR, STEPS, True, decode)
        print("\n".join(f"  {what}: {value}" for what, value in cost.rows()))
    print("\nmemory trace against this CPU's resident memory (full-size autoencoder decode, float32)")
    for side in (16, 24):
        print(subprocess.run([sys.executable, __file__, "--rss", str(side)], capture_output=True, text=True,
                             check=True).stdout.strip())


def rss_check(side: int) -> None:
    """Decode random latents of ``side``^3 with the full-size autoencoder: traced peak vs resident-memory growth."""
    config = published_configs("rflow-ct")["autoencoder"]
    with torch.device("meta"):
        traced = trace_cost(build_maisi_network(config).eval().decode_stage_2_outputs,
                            torch.empty(1, 4, side, side, side, device="meta")).peak_bytes
    autoencoder = build_maisi_network(config).eval()
    z = torch.randn(1, 4, side, side, side)
    before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    with torch.no_grad():
        autoencoder.decode_stage_2_outputs(z)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"  latent {side}^3: traced peak {traced / GB:.2f} GB, resident growth {(peak - before) / GB:.2f} GB "
          f"({(peak - before) / traced:.2f}x)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rss":
        rss_check(int(sys.argv[2]))
    else:
        main()
