"""Peak memory of ``volsynth prepare`` on one scanner-sized CT case, measured in a subprocess.

The case is synthetic: 512 x 512 x 300 voxels of 0.7 x 0.7 x 1.0 mm, int16 HU in -1024..3071 (air, a body
cylinder, a bony ring, a liver-like ellipsoid with its label), stored as a scanner would (int16 NIfTI, an
LPS-oriented affine tilted 12 degrees about the left-right axis). It is prepared to 128^3 at 1.5 mm (ROI: liver).
``--baseline-src`` runs the same command with another source tree (e.g. a checkout of an earlier commit) in the
same run and prints the ratio. Prints seconds and peak RSS (``ru_maxrss`` of the prepare process).

    .venv/bin/python benchmarks/prepare_memory.py [--shape 512,512,300] [--baseline-src OTHER/src]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

HU_RANGE = (-1024, 3071)


def scanner_affine(shape: tuple[int, ...], spacing: tuple[float, ...], tilt_degrees: float = 12.0) -> np.ndarray:
    """An LPS-oriented (RAS affine with x and y flipped) oblique affine, centred on the origin."""
    angle = np.deg2rad(tilt_degrees)
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = tilt @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def write_case(root: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 0) -> None:
    """Write the synthetic case as a one-case nnU-Net dataset, slab by slab to stay small itself."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    image = np.empty(shape, dtype=np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    x = (np.arange(shape[0]) - shape[0] / 2) * spacing[0]
    y = (np.arange(shape[1]) - shape[1] / 2) * spacing[1]
    xx, yy = np.meshgrid(x, y, indexing="ij")
    radius = np.hypot(xx, yy / 0.8)
    body, bone = radius < 160, (radius > 140) & (radius < 150)
    for k in range(shape[2]):
        z = (k - shape[2] / 2) * spacing[2]
        liver = ((xx + 60) / 80) ** 2 + ((yy - 10) / 60) ** 2 + (z / 90) ** 2 < 1
        plane = np.where(body, 40, -1000) + rng.normal(0, 20, shape[:2])
        plane[bone] = 700 + rng.normal(0, 200, int(bone.sum()))
        plane[liver] = 60 + rng.normal(0, 15, int(liver.sum()))
        image[:, :, k] = np.clip(plane, *HU_RANGE)
        label[:, :, k] = liver
    affine = scanner_affine(shape, spacing)
    nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / "ct_000_0000.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / "ct_000.nii.gz"))
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": 1,
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))


def measure(dataset: Path, out: Path, src: str | None) -> dict:
    """Run ``volsynth prepare`` in a subprocess; its seconds and peak RSS (GB)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if src:
        env["PYTHONPATH"] = src
    command = [sys.executable, "-m", "volsynth.cli", "prepare", str(dataset), str(out), "--size", "128",
               "--spacing", "1.5", "--roi", "liver", "--no-progress"]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, not every child's maximum
    seconds = time.perf_counter() - start
    stderr = process.stderr.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"prepare failed ({src or 'this checkout'}):\n{stderr}")
    return {"seconds": seconds, "peak_rss_gb": usage.ru_maxrss / 1024**2}


def main() -> None:
    """Write the case, prepare it (and with the baseline tree when given), print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="512,512,300", help="voxels of the synthetic case")
    parser.add_argument("--spacing", default="0.7,0.7,1.0", help="its spacing in mm")
    parser.add_argument("--baseline-src", default=None, help="another volsynth src/ folder to compare with")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    spacing = tuple(float(s) for s in args.spacing.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_case(Path(tmp) / "ds", shape, spacing)
        print(f"case {shape} int16, {np.prod(shape) * 2 / 1e9:.2f} GB as int16, "
              f"{np.prod(shape) * 4 / 1e9:.2f} GB as float32; written in {time.perf_counter() - start:.1f} s")
        rows = [("this checkout", measure(Path(tmp) / "ds", Path(tmp) / "prep", None))]
        if args.baseline_src:
            rows.append(("baseline", measure(Path(tmp) / "ds", Path(tmp) / "prep-baseline", args.baseline_src)))
    print(f"{'code':<14} {'seconds':>8} {'peak RSS GB':>12}")
    for name, row in rows:
        print(f"{name:<14} {row['seconds']:8.1f} {row['peak_rss_gb']:12.2f}")
    if len(rows) == 2:
        print(f"peak RSS ratio this/baseline: {rows[0][1]['peak_rss_gb'] / rows[1][1]['peak_rss_gb']:.2f}")


if __name__ == "__main__":
    main()
