"""ControlNet training step: the mask embedding on the latent grid (pooled occupancy, ``embedding_channels
[16]``, the baseline) against one reading the mask at full image resolution (``[8, 16, 32]``), measured in one
run. Same frozen "small" UNet, ControlNet, batch and latent grid (64^3 images, 16^3 x 4 latents).
Prints seconds per step and the ratio.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/controlnet_embedding.py [--size 64] [--steps 3] [--batch 4]
"""

from __future__ import annotations

import argparse
import time

import torch

from volsynth.models.controlnet import mask_features
from volsynth.models.registry import build_network, network_config


def main() -> None:
    """Time both variants and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    classes, latent, factor, context_dim = 4, 4, 4, 384
    unet_config = {"spatial_dims": 3, **network_config("unet", "small")}
    unet = build_network({"class": "ConditionedUNet", "latent_channels": latent, "context_dim": context_dim,
                          "context_length": 64, "unet": unet_config}).eval()
    for param in unet.parameters():
        param.requires_grad_(False)
    labels = torch.randint(0, classes + 1, (args.batch, *[args.size] * 3))
    known = torch.ones(args.batch, classes)
    grid = args.size // factor
    z = torch.randn(args.batch, latent, grid, grid, grid)
    context = torch.randn(args.batch, 64, context_dim)
    t = torch.randint(0, 1000, (args.batch,))

    def variant(channels: list[int]):
        torch.manual_seed(0)
        net = build_network({"class": "MaskControlNet", "num_classes": classes, "latent_channels": latent,
                             "context_dim": context_dim, "unet": unet_config, "embedding_channels": channels})
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def step():
            features = mask_features(labels, known, list(range(1, classes + 1)), net.mask_pooling(factor))
            down, mid = net(z, t, net.embed(features), context=context)
            prediction = unet(z, t, context=context, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid)
            loss = prediction.abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return step

    def timed(fn) -> float:
        fn()  # warm-up
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        return (time.perf_counter() - start) / args.steps

    pooled = timed(variant([16]))
    full = timed(variant([8, 16, 32]))
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, images {args.size}^3, latents {grid}^3")
    print(f"ControlNet step, mask pooled to the latent grid [16]:   {pooled:.3f} s (baseline)")
    print(f"ControlNet step, mask at full resolution [8, 16, 32]:  {full:.3f} s ({full / pooled:.2f}x the baseline)")


if __name__ == "__main__":
    main()
