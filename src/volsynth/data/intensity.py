"""Intensity statistics on a seeded sample of voxels, so that a scanner-sized case (512 x 512 x 600) never
needs full-size temporary copies: percentiles are computed from at most ``MAX_INTENSITY_SAMPLES`` values.

A case with no more candidate voxels than that is measured exactly (every candidate is used), so the
statistics of small volumes do not depend on the seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# 128^3: every voxel of a case up to 128^3 (the phantoms of the shipped recipes) is used, as before sampling
MAX_INTENSITY_SAMPLES = 128**3
SLAB_VOXELS = 1 << 22  # voxels visited at once; bounds the temporaries of one pass

Selector = Callable[[tuple[slice, ...]], np.ndarray]


def _slabs(shape: Sequence[int]) -> list[tuple[slice, ...]]:
    """Index tuples that cover an array in C order, a few million voxels each (whole planes of axis 0)."""
    plane = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    step = max(1, SLAB_VOXELS // max(plane, 1))
    return [(slice(start, min(start + step, shape[0])),) for start in range(0, shape[0], step)]


def sample_values(array: np.ndarray, seed: int | Sequence[int], where: Selector | None = None,
                  limit: int | None = None) -> np.ndarray:
    """Values of ``array`` where ``where(index)`` is true (all voxels without ``where``), in C order.

    ``where`` gets an index tuple of ``array`` (a slab) and returns the boolean mask of that slab. When more
    than ``limit`` voxels qualify (default ``MAX_INTENSITY_SAMPLES``), each one is kept with probability
    limit / count, drawn by a generator seeded with ``seed``: about ``limit`` values, the same ones for the
    same seed. Otherwise every qualifying value is returned (exact statistics).
    """
    limit = MAX_INTENSITY_SAMPLES if limit is None else int(limit)
    slabs = _slabs(array.shape)
    count = array.size if where is None else sum(int(np.count_nonzero(where(index))) for index in slabs)
    if count <= limit:
        if where is None:
            return array.reshape(-1)
        parts = [array[index][where(index)] for index in slabs]
        return np.concatenate(parts) if parts else array.reshape(-1)[:0]
    rng = np.random.default_rng(seed)
    keep = limit / count
    parts = []
    for index in slabs:
        values = array[index].reshape(-1) if where is None else array[index][where(index)]
        parts.append(values[rng.random(values.size) < keep])
    return np.concatenate(parts)


def foreground_values(array: np.ndarray, seed: int | Sequence[int], limit: int | None = None) -> np.ndarray:
    """Sampled values above 0 (the body of an MR image), or of every voxel when none is above 0."""
    values = sample_values(array, seed, lambda index: array[index] > 0, limit)
    return values if values.size else sample_values(array, seed, limit=limit)


def count_labels(labels: np.ndarray, classes: int) -> np.ndarray:
    """Voxels of each label id 0..classes-1, slab by slab (``np.bincount`` of the whole map would copy it to
    int64)."""
    counts = np.zeros(classes, dtype=np.int64)
    for index in _slabs(labels.shape):
        counts += np.bincount(labels[index].reshape(-1), minlength=classes)[:classes]
    return counts
