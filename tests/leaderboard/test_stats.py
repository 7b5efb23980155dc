"""Known answers for the reporting statistics."""

from __future__ import annotations

import numpy as np
import pytest

from llm_coop_leaderboard.stats import Interval, iqm, mean, pass_at_k, rank_bands, stratified_bootstrap_ci


def test_iqm_of_a_hand_computed_set() -> None:
    # 8 cells: drop floor(8/4) = 2 from each end of 1..8 -> mean of 3, 4, 5, 6 = 4.5
    assert iqm([[8, 1, 7, 2], [3, 6, 4, 5]]) == pytest.approx(4.5)
    # one outlier does not move the IQM: 10 cells, drop 2 each end -> mean of 3..8 = 5.5
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8, 9, 1000]) == pytest.approx(5.5)
    assert mean([[1.0, 2.0], [3.0, 6.0]]) == pytest.approx(3.0)
    assert iqm([2.0, 4.0]) == pytest.approx(3.0)  # fewer than 4 cells: plain mean


def test_bootstrap_interval_is_deterministic_and_brackets_the_point() -> None:
    scores = np.random.default_rng(7).random((5, 12))
    first = stratified_bootstrap_ci(scores, "mean")
    assert first == stratified_bootstrap_ci(scores, "mean")
    assert first.low < first.point < first.high
    assert first.point == pytest.approx(scores.mean())
    iqm_ci = stratified_bootstrap_ci(scores, "iqm")
    assert iqm_ci.low <= iqm_ci.point <= iqm_ci.high
    assert stratified_bootstrap_ci(scores, "mean", seed=1) != first  # the seed is what fixes it


def test_bootstrap_resamples_seeds_within_tasks() -> None:
    # every seed identical per task -> no seed variability -> a zero-width interval
    same = np.tile(np.linspace(0.1, 0.9, 6), (4, 1))
    interval = stratified_bootstrap_ci(same)
    assert interval.low == pytest.approx(interval.high) == pytest.approx(0.5)
    assert stratified_bootstrap_ci([[0.3, 0.7]]) == Interval(0.5, 0.5, 0.5)  # one seed collapses


def test_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        stratified_bootstrap_ci([[0.1, float("nan")]])
    with pytest.raises(ValueError, match="statistic"):
        stratified_bootstrap_ci([[0.1]], "median")


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [(5, 2, 1, 0.4), (5, 2, 2, 0.7), (5, 0, 3, 0.0), (5, 5, 1, 1.0), (4, 2, 3, 1.0), (10, 3, 5, 1 - 21 / 252)],
)
def test_pass_at_k_known_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, 2, 0), (5, 2, 6), (-1, 0, 1)])
def test_pass_at_k_rejects_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_rank_bands_share_ranks_where_intervals_overlap() -> None:
    a, b, c = Interval(0.6, 0.5, 0.7), Interval(0.55, 0.45, 0.65), Interval(0.2, 0.1, 0.3)
    assert rank_bands([a, b, c]) == [(1, 2), (1, 2), (3, 3)]
    assert rank_bands([a]) == [(1, 1)]
