"""Where the evaluation segmentor's liver misses lie, on real held-out images and on generated volumes.

For each case, the segmentor's liver against the conditioning mask's, split by place: false positives on the
vessels and tumours inside the liver or outside the organ, missed liver voxels at its edge (within 1.5 voxels of
the outside) or deeper. Real cases are read as `evaluate` reads them (a prepared folder is mapped back to HU).

    OMP_NUM_THREADS=1 .venv/bin/python research/scripts/liver_errors.py runs/heldout-abdomen-64 runs/gen-refined-g4 \
        --segmentor runs/seg-abdomen-64 --cases abdomen_ct_0003 abdomen_ct_0006
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    """Segment real and generated volumes of the chosen cases; print where the liver errors are."""
    from scipy import ndimage

    from volsynth.evaluation.inputs import read_generated, read_real
    from volsynth.evaluation.segmentor import load_segmentor, predict

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("real", help="held-out dataset whose label maps conditioned the generation")
    parser.add_argument("generated", help="volsynth generate output made from those label maps")
    parser.add_argument("--segmentor", default="runs/seg-abdomen-64")
    parser.add_argument("--cases", nargs="*", default=None, help="case ids (default: all generated cases)")
    args = parser.parse_args()
    segmentor = load_segmentor(args.segmentor)
    info, real_items, _ = read_real(args.real, progress=False)
    real = {item.id: item for item in real_items}
    generated = {item.id: item for item in read_generated(args.generated, segmentor.labels, progress=False)}
    mask_liver, predicted_liver = info["labels"]["liver"], segmentor.labels["liver"]  # each its own label ids
    print("case            source  FP inner  FP outside  FN edge  FN deep  Dice")
    for case in args.cases or sorted(generated):
        mask = real[case].label.array
        liver, organ = mask == mask_liver, mask > 0  # organ: the liver with its vessels and tumours
        edge = ~liver | (ndimage.distance_transform_edt(organ) <= 1.5)
        for source, item in (("real", real[case]), ("gen", generated[case])):
            predicted = predict(segmentor, item.image).array == predicted_liver
            fp, fn = predicted & ~liver, liver & ~predicted
            dice = 2 * (predicted & liver).sum() / (predicted.sum() + liver.sum())
            print(f"{case:15s} {source:6s} {(fp & organ).sum():9d} {(fp & ~organ).sum():11d} "
                  f"{(fn & edge).sum():8d} {(fn & ~edge).sum():8d}  {dice:.3f}", flush=True)


if __name__ == "__main__":
    main()
