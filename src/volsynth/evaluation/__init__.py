"""Evaluation metrics: 2.5D FID per plane, 3D MMD, MS-SSIM diversity, PSNR/SSIM, Dice and NSD.

Each metric is a class (callable, paired ones with ``aggregate``) plus a plain ``compute_*`` function,
as in MONAI, whose implementations they use where MONAI has one. Names are imported lazily, so that
``volsynth --help`` does not load torch and MONAI.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "distribution": ["GaussianMMD", "compute_mmd", "compute_mmd_volumes", "median_bandwidth", "volume_features"],
    "features": ["FeatureExtractor", "InceptionExtractor", "RandomConvExtractor",
                 "packaged_inception_path"],
    "fid": ["FIDPerPlane", "compute_fid_per_plane", "frechet_distance", "plane_features", "real_vs_real_floor"],
    "overlap": ["DicePerClass", "SurfaceDicePerClass", "compute_dice_per_class", "compute_nsd_per_class",
                "confusion_counts", "confusion_summary"],
    "planes": ["PLANES", "extract_slices", "scale_intensity"],
    "pretrained": ["EXTRACTORS", "LocalWeightsExtractor", "get_extractor"],
    "similarity": ["MSSSIMDiversity", "VolumePSNR", "VolumeSSIM", "compute_ms_ssim_diversity",
                   "compute_ms_ssim_volumes", "compute_psnr", "compute_ssim", "ms_ssim_settings"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """Import a metric's module on first use."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'volsynth.evaluation' has no attribute '{name}'")
    return getattr(importlib.import_module(f"volsynth.evaluation.{_MODULE_OF[name]}"), name)
