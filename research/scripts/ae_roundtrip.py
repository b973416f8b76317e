"""Round-trip error of autoencoders on prepared cases, in HU: mean over all voxels and over edge voxels.

    python research/scripts/ae_roundtrip.py runs/heldout-abdomen-64 models/abdomen-ct-64 \
        runs/abdomen-sharp-64/autoencoder/checkpoints/checkpoint-0000700

Each further argument is a model or checkpoint folder with an autoencoder (its EMA weights when it has them). Edge
voxels are those whose intensity differs from their neighbour along the first axis by more than 50 HU; the blur an
autoencoder adds shows there first. Assumes a CT window plan (prepared images in [-1, 1]).
"""

import sys
from pathlib import Path

import numpy as np
import torch

from volsynth.data.plan import Plan
from volsynth.io.formats import read_volume
from volsynth.models.checkpoint import load_checkpoint


def main(prepared: str, *models: str) -> None:
    plan = Plan.load(prepared)
    low, high = plan.normalization[0].window
    hu = (high - low) / 2  # HU per unit of the [-1, 1] range
    images = [torch.from_numpy(read_volume(f).array.astype(np.float32))[None, None]
              for f in sorted((Path(prepared) / "imagesTr").glob("*.nii.gz"))]
    for path in models:
        autoencoder = load_checkpoint(path, use_ema=True).networks["autoencoder"].float().eval()
        mean, edges = [], []
        with torch.no_grad():
            for image in images:
                error = (autoencoder.decode_stage_2_outputs(autoencoder.encode_stage_2_inputs(image)).clamp(-1, 1)
                         - image).abs() * hu
                edge = (image[..., 1:, :, :] - image[..., :-1, :, :]).abs() * hu > 50
                mean.append(float(error.mean()))
                edges.append(float(error[..., 1:, :, :][edge].mean()))
        print(f"{path}: round-trip error {np.mean(mean):.2f} HU, at edges {np.mean(edges):.2f} HU "
              f"({len(images)} cases)")


if __name__ == "__main__":
    main(*sys.argv[1:])
