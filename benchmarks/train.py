"""Training speed: volsynth's stages against a MONAI-tutorial-style baseline, measured in one run.

Baseline diffusion step (as in MONAI's 3D LDM tutorial): fp32, the autoencoder encodes the images
at every step (no latent cache), the report is encoded at every step, attention without SDPA.
volsynth: cached latents and text embeddings, SDPA attention, optional bf16. Same networks, data and
batch. Prints seconds per step, the speed-up and peak RSS.

    .venv/bin/python benchmarks/train.py [--size 64] [--steps 5] [--batch 4]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from volsynth.data.phantom import generate_case
from volsynth.models.registry import build_network, network_config
from volsynth.sampling.samplers import build_scheduler, training_target
from volsynth.text import get_text_encoder


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def timed(fn, steps: int, warmup: int = 2) -> float:
    """Seconds per call after warm-up."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
    """Run both variants and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = [generate_case("abdomen-ct", seed=i, size=args.size) for i in range(args.batch)]
    images = torch.from_numpy(np.stack([np.clip(c.image, -1000, 1000) / 1000 for c in cases])[:, None]).float()
    reports = [c.report for c in cases]
    encoder = get_text_encoder("minilm")
    autoencoder = build_network({"class": "AutoencoderKL", "spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                                 **network_config("autoencoder", "small")}).eval()
    with torch.no_grad():
        mu, sigma = autoencoder.encode(images)
    cached_latents = mu
    cached_text = encoder.encode(reports)[0]
    scheduler = build_scheduler("ddpm")

    def make_unet(sdpa: bool):
        torch.manual_seed(0)
        unet = {"spatial_dims": 3, **network_config("unet", "small", use_flash_attention=sdpa)}
        net = build_network({"class": "ConditionedUNet", "latent_channels": mu.shape[1], "context_dim": encoder.dim,
                             "context_length": encoder.max_length, "unet": unet})
        return net, torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step(net, optimizer, z, context, bf16: bool):
        noise = torch.randn_like(z)
        t = torch.randint(0, 1000, (z.shape[0],))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            prediction = net(scheduler.add_noise(z, noise, t), t, context=context)
        loss = (prediction.float() - training_target(scheduler, "epsilon", z, noise, t)).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    base_net, base_opt = make_unet(sdpa=False)

    def baseline():
        with torch.no_grad():
            z = autoencoder.sampling(*autoencoder.encode(images))  # encoded every step
            context = encoder.encode(reports)[0]  # text encoded every step
        step(base_net, base_opt, z, context, bf16=False)

    ours_net, ours_opt = make_unet(sdpa=True)

    def ours(bf16: bool):
        z = cached_latents + torch.randn_like(cached_latents) * 0.0  # posterior sample from the cache
        step(ours_net, ours_opt, z, cached_text, bf16=bf16)

    t_base = timed(baseline, args.steps)
    t_ours = timed(lambda: ours(False), args.steps)
    t_bf16 = timed(lambda: ours(True), args.steps)
    print(f"diffusion stage, {args.size}^3 images -> {list(mu.shape[2:])} latents, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")
    print(f"  baseline (fp32, encode every step, no SDPA): {t_base:.3f} s/step")
    print(f"  volsynth (latent + text cache, SDPA, fp32):  {t_ours:.3f} s/step   speed-up {t_base / t_ours:.2f}x")
    print(f"  volsynth (latent + text cache, SDPA, bf16):  {t_bf16:.3f} s/step   speed-up {t_base / t_bf16:.2f}x")
    print(f"  target >= 2x: {'met' if t_base / min(t_ours, t_bf16) >= 2 else 'NOT met'}")
    print(f"peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
