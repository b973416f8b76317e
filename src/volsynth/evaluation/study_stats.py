"""Statistics of ``volsynth study run``: two-level bootstrap intervals and paired tests between arms.

Scores form a matrix ``[runs, cases]`` per arm, class and metric (runs = architectures x seeds; cases = the
held-out real test cases; NaN where a case lacks the class). Two arms are paired: the same runs (architecture,
seed) and the same test cases.

- **Interval**: a two-level bootstrap: each replicate resamples the runs and the test cases with replacement and
  takes the mean; the interval holds the central ``confidence`` share of the replicates. The difference of two
  arms is bootstrapped paired (the same resampled runs and cases on both sides).
- **Paired test** (``p_wilcoxon``, the one docs/evidence.md reports): the Wilcoxon signed-rank test, two-sided,
  over the test cases, of each case's difference of the two arms averaged over the runs. Test cases are
  independent draws; runs of one case are not, so they are averaged rather than counted as pairs.
- ``p_bootstrap``: twice the share of paired bootstrap replicates of the difference on the far side of 0 (the
  interval inverted), given beside it; counted as (k + 1) / (B + 1) of B replicates, so it is never 0: with B
  replicates it cannot go below 2 / (B + 1).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def replicate_means(values: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """Means of ``replicates`` two-level bootstrap samples of ``values[runs, cases]`` (NaN cells skipped)."""
    rng = np.random.default_rng(seed)
    runs, cases = values.shape
    rows = rng.integers(runs, size=(replicates, runs))
    cols = rng.integers(cases, size=(replicates, cases))
    sample = values[rows[:, :, None], cols[:, None, :]]  # [replicates, runs, cases]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(sample.reshape(replicates, -1), axis=1)
    return means[np.isfinite(means)]


def bootstrap_interval(values: np.ndarray, replicates: int = 2000, confidence: float = 0.95, seed: int = 0,
                       baseline: np.ndarray | None = None) -> dict:
    """Mean of ``values[runs, cases]`` (minus ``baseline``, paired) with its two-level bootstrap interval and n."""
    values = np.asarray(values, dtype=np.float64)
    if baseline is not None:
        values = values - np.asarray(baseline, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return {"mean": None, "ci": [None, None], "n_cases": 0}
    means = replicate_means(values, replicates, seed)
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    result = {"mean": float(np.nanmean(values)), "ci": [float(lo), float(hi)],
              "n_cases": int(finite.any(axis=0).sum())}
    if baseline is not None:
        beyond = min(int(np.sum(means <= 0)), int(np.sum(means >= 0)))
        result["p_bootstrap"] = float(min(1.0, 2.0 * (beyond + 1) / (len(means) + 1)))
    return result


def wilcoxon_cases(values: np.ndarray, baseline: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value over test cases of the run-averaged paired differences (None when
    fewer than two cases differ)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_case = np.nanmean(np.asarray(values, dtype=np.float64) - np.asarray(baseline, dtype=np.float64), axis=0)
    per_case = per_case[np.isfinite(per_case)]
    if np.count_nonzero(per_case) < 2:
        return None
    return float(stats.wilcoxon(per_case, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_comparison(values: np.ndarray, baseline: np.ndarray, replicates: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> dict:
    """The paired difference (values - baseline): mean, bootstrap interval, p_bootstrap and p_wilcoxon."""
    result = bootstrap_interval(values, replicates, confidence, seed, baseline=baseline)
    if result["mean"] is None:
        return {**result, "p_bootstrap": None, "p_wilcoxon": None}
    return {**result, "p_wilcoxon": wilcoxon_cases(values, baseline)}
