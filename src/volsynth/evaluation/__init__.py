"""Evaluation metrics: 2.5D FID per plane, 3D MMD, MS-SSIM diversity, PSNR/SSIM, Dice and NSD.

Each metric is a class (callable, paired ones with ``aggregate``) plus a plain ``compute_*`` function,
as in MONAI, whose implementations they use where MONAI has one.
"""

from volsynth.evaluation.distribution import (
    GaussianMMD,
    compute_mmd,
    compute_mmd_volumes,
    median_bandwidth,
    volume_features,
)
from volsynth.evaluation.features import (
    FeatureExtractor,
    InceptionExtractor,
    RandomConvExtractor,
    get_extractor,
    packaged_inception_path,
)
from volsynth.evaluation.fid import (
    FIDPerPlane,
    compute_fid_per_plane,
    frechet_distance,
    plane_features,
    real_vs_real_floor,
)
from volsynth.evaluation.overlap import DicePerClass, SurfaceDicePerClass, compute_dice_per_class, compute_nsd_per_class
from volsynth.evaluation.planes import PLANES, extract_slices, scale_intensity
from volsynth.evaluation.pretrained import LocalWeightsExtractor
from volsynth.evaluation.similarity import (
    MSSSIMDiversity,
    VolumePSNR,
    VolumeSSIM,
    compute_ms_ssim_diversity,
    compute_ms_ssim_volumes,
    compute_psnr,
    compute_ssim,
    ms_ssim_settings,
)

__all__ = [
    "PLANES",
    "DicePerClass",
    "FIDPerPlane",
    "FeatureExtractor",
    "GaussianMMD",
    "InceptionExtractor",
    "LocalWeightsExtractor",
    "MSSSIMDiversity",
    "RandomConvExtractor",
    "SurfaceDicePerClass",
    "VolumePSNR",
    "VolumeSSIM",
    "compute_dice_per_class",
    "compute_fid_per_plane",
    "compute_mmd",
    "compute_mmd_volumes",
    "compute_ms_ssim_diversity",
    "compute_ms_ssim_volumes",
    "compute_nsd_per_class",
    "compute_psnr",
    "compute_ssim",
    "extract_slices",
    "frechet_distance",
    "get_extractor",
    "median_bandwidth",
    "ms_ssim_settings",
    "packaged_inception_path",
    "plane_features",
    "real_vs_real_floor",
    "scale_intensity",
    "volume_features",
]
