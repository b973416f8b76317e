"""Memorisation: is a generated volume a near-copy of a training volume?

For every generated volume, its nearest training volume by two similarities:
- **SSIM** (3D, Gaussian window σ = 1.5, MONAI ``SSIMMetric`` as in ``similarity.compute_ssim``) between
  the volumes in RAS, scaled to [-1, 1] by one intensity range and area-resized to ``size``³ (the MMD
  features of ``distribution.volume_features``), so volumes of any shape compare, with data range 2;
- **feature cosine** between embeddings from the FID extractor: per plane, the mean feature of
  ``slices_per_volume`` slices (``fid.per_volume_features``), the three planes concatenated, standardised
  per dimension with the training set's mean and SD (raw pooled activations are all positive, so their
  plain cosine sits near 1 for any two volumes and tells little apart).

Calibration: every training volume's nearest *other* training volume (leave one out) gives the
real-vs-real nearest-neighbour similarity. The threshold of each similarity is the largest of those
(``quantile=None``, the default) or their ``quantile`` (e.g. 0.99). A generated volume closer to a
training volume than that is flagged: closer than any two independent real volumes are to each other
(with ``quantile=None``). ``near_copy`` needs both similarities to flag it: a copy is close in voxels and in
features, while one measure alone exceeds the largest of n real-vs-real values for about 1 in n+1 independent
volumes by chance. With very few training volumes the thresholds are noisy; with duplicates in the training
set they are ~1 and nothing is flagged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import SSIMMetric

from volsynth.errors import ConfigError
from volsynth.evaluation.distribution import volume_features
from volsynth.evaluation.features import FeatureExtractor
from volsynth.evaluation.fid import per_volume_features
from volsynth.evaluation.similarity import KERNEL_SIGMA, ssim_window
from volsynth.io.volume import Volume
from volsynth.parallel import progress_bar

DEFAULT_SIZE = 32
DEFAULT_SLICES = 16


def comparison_arrays(volumes: Sequence[Volume], size: int = DEFAULT_SIZE,
                      intensity_range: tuple[float, float] | None = None) -> torch.Tensor:
    """``[n, 1, size, size, size]`` float32: volumes in RAS, scaled to [-1, 1], area-resized (as for MMD)."""
    flat = volume_features(volumes, size, intensity_range)
    return flat.float().reshape(len(volumes), 1, size, size, size)


def ssim_matrix(queries: torch.Tensor, references: torch.Tensor, progress: bool = False,
                description: str = "memorisation SSIM") -> np.ndarray:
    """SSIM of every query ``[m, 1, ...]`` against every reference ``[n, 1, ...]`` -> ``[m, n]``."""
    metric = SSIMMetric(spatial_dims=3, data_range=2.0, win_size=ssim_window(references.shape[2:]),
                        kernel_sigma=KERNEL_SIGMA, reduction="none")
    rows = []
    with progress_bar(progress) as bar:
        task = bar.add_task(description, total=len(queries))
        for query in queries:
            rows.append(metric(query[None].expand_as(references), references).reshape(-1).numpy())
            bar.advance(task)
    return np.stack(rows).astype(np.float64)


def feature_embeddings(volumes: Sequence[Volume], extractor: FeatureExtractor, slices_per_volume: int = DEFAULT_SLICES,
                       intensity_range: tuple[float, float] | None = None) -> np.ndarray:
    """``[n, 3 * dim]``: per plane the mean slice feature, planes concatenated."""
    per_plane = per_volume_features(volumes, extractor, slices_per_volume, intensity_range=intensity_range)
    return np.stack([np.concatenate([chunks[i].mean(dim=0).numpy() for chunks in per_plane.values()])
                     for i in range(len(volumes))])


def cosine_matrix(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Cosine similarity of every query row against every reference row -> ``[m, n]``."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    r = references / np.maximum(np.linalg.norm(references, axis=1, keepdims=True), 1e-12)
    return q @ r.T


def leave_one_out_nearest(self_similarity: np.ndarray) -> np.ndarray:
    """Each row's largest similarity to another row (the diagonal left out)."""
    masked = np.array(self_similarity, dtype=np.float64)
    np.fill_diagonal(masked, -np.inf)
    return masked.max(axis=1)


def threshold_of(nearest: np.ndarray, quantile: float | None = None) -> float:
    """The flagging threshold: the largest real-vs-real nearest similarity, or its ``quantile``."""
    return float(np.max(nearest) if quantile is None else np.quantile(nearest, quantile))


def check_memorization(generated: Sequence[Volume], training: Sequence[Volume], extractor: FeatureExtractor,
                       generated_ids: Sequence[str] | None = None, training_ids: Sequence[str] | None = None,
                       size: int = DEFAULT_SIZE, slices_per_volume: int = DEFAULT_SLICES,
                       intensity_range: tuple[float, float] | None = None, quantile: float | None = None,
                       progress: bool = True) -> dict:
    """Nearest training volume of each generated one by SSIM and feature cosine, thresholds and near-copy flags."""
    if len(training) < 2:
        raise ConfigError(None, f"memorisation needs at least 2 training volumes to calibrate, got {len(training)}")
    if not generated:
        raise ConfigError(None, "no generated volumes to check for memorisation")
    if quantile is not None and not 0 < quantile <= 1:
        raise ConfigError(None, f"quantile must be in (0, 1], got {quantile}")
    generated_ids = list(generated_ids or [f"generated_{i}" for i in range(len(generated))])
    training_ids = list(training_ids or [f"training_{i}" for i in range(len(training))])
    train_arrays = comparison_arrays(training, size, intensity_range)
    gen_arrays = comparison_arrays(generated, size, intensity_range)
    ssim_real = ssim_matrix(train_arrays, train_arrays, progress, "memorisation SSIM (real vs real)")
    ssim_gen = ssim_matrix(gen_arrays, train_arrays, progress, "memorisation SSIM (generated)")
    train_features = feature_embeddings(training, extractor, slices_per_volume, intensity_range)
    gen_features = feature_embeddings(generated, extractor, slices_per_volume, intensity_range)
    mean, sd = train_features.mean(axis=0), train_features.std(axis=0) + 1e-8
    train_features, gen_features = (train_features - mean) / sd, (gen_features - mean) / sd
    cos_real, cos_gen = cosine_matrix(train_features, train_features), cosine_matrix(gen_features, train_features)
    real_nn = {"ssim": leave_one_out_nearest(ssim_real), "feature_cosine": leave_one_out_nearest(cos_real)}
    thresholds = {name: threshold_of(values, quantile) for name, values in real_nn.items()}
    per_volume = []
    for i, name in enumerate(generated_ids):
        entry: dict = {"id": name}
        for metric, matrix in (("ssim", ssim_gen), ("feature_cosine", cos_gen)):
            j = int(np.argmax(matrix[i]))
            entry[metric] = {"nearest": training_ids[j], "similarity": float(matrix[i, j]),
                             "flagged": bool(matrix[i, j] > thresholds[metric])}
        entry["near_copy"] = entry["ssim"]["flagged"] and entry["feature_cosine"]["flagged"]
        per_volume.append(entry)
    return {
        "settings": {"size": size, "slices_per_volume": slices_per_volume, "intensity_range": intensity_range,
                     "extractor": extractor.name, "threshold_rule": "max" if quantile is None else f"q{quantile}",
                     "training_volumes": len(training)},
        "thresholds": thresholds,
        "real_vs_real_nearest": {k: [float(x) for x in v] for k, v in real_nn.items()},
        "per_volume": per_volume,
        "near_copies": sum(e["near_copy"] for e in per_volume),
        "fraction_near_copies": float(np.mean([e["near_copy"] for e in per_volume])),
    }
