"""Statistics for reporting results: mean, IQM, stratified bootstrap intervals, rank bands, pass@k.

Scores of one method on one environment form a matrix ``scores[seed, task]`` (one row per training or
evaluation seed, one column per task of the evaluation split, each cell already averaged over the samples
drawn for that task). Following Agarwal et al. 2021 ("Deep RL at the edge of the statistical precipice"):

* ``mean``: the mean of every cell.
* ``iqm``: the interquartile mean of every cell: sort the ``n`` cells, drop ``floor(n / 4)`` from each end,
  average the rest (``scipy.stats.trim_mean(x, 0.25)``). Robust to a few outlier seeds or tasks.
* ``stratified_bootstrap_ci``: a percentile bootstrap interval where every replicate resamples, for each
  task (the stratum) independently, the seeds with replacement. The task set is held fixed (every method is
  evaluated on the same split), so the interval describes run-to-run variability on that split. With one
  seed the interval collapses to a point: run more seeds.
* ``rank_bands``: which ranks each method could hold given its interval: ranked no better than
  ``1 + #(methods whose lower bound is above its upper bound)`` and no worse than
  ``n - #(methods whose upper bound is below its lower bound)``. Overlapping intervals share a band.
* ``pass_at_k``: the unbiased estimator of Chen et al. 2021, ``1 - C(n - c, k) / C(n, k)``.

The bootstrap draws from ``numpy.random.default_rng(BOOTSTRAP_SEED)``, restarted for every interval, so
the same scores always give the same interval and regenerated leaderboards are byte-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import comb

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "BOOTSTRAP_REPLICATES",
    "BOOTSTRAP_SEED",
    "MIN_INTERVAL_SEEDS",
    "Interval",
    "iqm",
    "mean",
    "pass_at_k",
    "rank_bands",
    "stratified_bootstrap_ci",
]

BOOTSTRAP_SEED = 20250806
"""Fixed seed of every bootstrap (the MAGRPO paper's arXiv date), so intervals are reproducible."""

MIN_INTERVAL_SEEDS = 2
"""Fewest seeds whose stratified bootstrap interval means anything: it resamples seeds within each task, so
with one seed every replicate is the same matrix and the interval has zero width."""
BOOTSTRAP_REPLICATES = 2000

Statistic = Callable[[NDArray[np.float64]], NDArray[np.float64]]
"""Maps replicates of shape (B, S, T) to one value per replicate, shape (B,)."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval."""

    point: float
    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


def _matrix(scores: ArrayLike) -> NDArray[np.float64]:
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]  # one value per seed: a single task
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"scores must be a non-empty (seeds, tasks) matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("scores contain NaN or infinity")
    return matrix


def _batched_mean(replicates: NDArray[np.float64]) -> NDArray[np.float64]:
    return replicates.reshape(replicates.shape[0], -1).mean(axis=1)  # (B,)


def _batched_iqm(replicates: NDArray[np.float64]) -> NDArray[np.float64]:
    flat = np.sort(replicates.reshape(replicates.shape[0], -1), axis=1)  # (B, S*T)
    cut = flat.shape[1] // 4
    return flat[:, cut : flat.shape[1] - cut].mean(axis=1)  # (B,)


STATISTICS: dict[str, Statistic] = {"mean": _batched_mean, "iqm": _batched_iqm}


def mean(scores: ArrayLike) -> float:
    """Mean over every (seed, task) cell."""
    return float(_batched_mean(_matrix(scores)[None])[0])


def iqm(scores: ArrayLike) -> float:
    """Interquartile mean over every (seed, task) cell (``floor(n/4)`` cells trimmed from each end)."""
    return float(_batched_iqm(_matrix(scores)[None])[0])


def stratified_bootstrap_ci(
    scores: ArrayLike,
    statistic: str = "mean",
    *,
    confidence: float = 0.95,
    replicates: int = BOOTSTRAP_REPLICATES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval:
    """Point estimate and percentile interval of ``statistic`` ("mean" or "iqm"); seeds resampled per task."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {sorted(STATISTICS)}, got {statistic!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    matrix = _matrix(scores)  # (S, T)
    n_seeds, n_tasks = matrix.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_seeds, size=(replicates, n_seeds, n_tasks))  # (B, S, T)
    resampled = np.take_along_axis(np.broadcast_to(matrix, rows.shape), rows, axis=1)  # (B, S, T)
    values = STATISTICS[statistic](resampled)  # (B,)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    point = float(STATISTICS[statistic](matrix[None])[0])
    return Interval(point=point, low=float(low), high=float(high))


def rank_bands(intervals: Sequence[Interval]) -> list[tuple[int, int]]:
    """For each interval, the (best, worst) rank it could hold; higher scores rank first."""
    bands = []
    for this in intervals:
        clearly_better = sum(other.low > this.high for other in intervals)
        clearly_worse = sum(other.high < this.low for other in intervals)
        bands.append((1 + clearly_better, len(intervals) - clearly_worse))
    return bands


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"pass_at_k: {name} must be a non-negative int, got {value!r}")
    if c > n:
        raise ValueError(f"pass_at_k: c={c} correct samples cannot exceed n={n} samples")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be in [1, n={n}], got {k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)
