"""bench/stats.py against hand-computed cases (fast: numpy and scipy only, no Ray, no torch)."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_stats", REPO / "bench" / "stats.py")
assert _spec is not None and _spec.loader is not None
bs = importlib.util.module_from_spec(_spec)
sys.modules["bench_stats"] = bs  # dataclasses look their module up
_spec.loader.exec_module(bs)


def test_perfect_ranking_of_four_has_the_exact_permutation_p():
    # rho = 1; of the 4! = 24 pairings one gives rho >= 1 and one rho <= -1: two-sided p = 2 * 1/24
    c = bs.rank_correlation([1, 2, 3, 4], [10, 20, 30, 40])
    assert c.rho == pytest.approx(1.0)
    assert c.p == pytest.approx(2 / 24)
    assert (c.low, c.high) == pytest.approx((1.0, 1.0))  # every resample with two distinct x ranks them alike


def test_one_adjacent_swap_of_four():
    # y's ranks 1 2 4 3: sum d^2 = 2, rho = 1 - 6*2/(4*15) = 0.8. Pairings with rho >= 0.8: the identity
    # and the 3 adjacent swaps (4 of 24); rho <= 0.8: 23 of 24. Two-sided: 2 * min(4/24, 23/24) = 1/3
    c = bs.rank_correlation([1, 2, 3, 4], [1, 2, 4, 3])
    assert c.rho == pytest.approx(0.8)
    assert c.p == pytest.approx(1 / 3)
    assert -1.0 <= c.low <= c.rho <= c.high <= 1.0


def test_reversed_order_is_minus_one_with_its_interval():
    c = bs.rank_correlation([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    assert c.rho == pytest.approx(-1.0)
    assert c.p == pytest.approx(2 / 120)  # exact over the 5! = 120 pairings
    assert (c.low, c.high) == pytest.approx((-1.0, -1.0))


def test_a_published_rho_gets_its_p_from_n_alone():
    assert bs.null_p(0.8, 4) == pytest.approx(1 / 3)  # the hand count above, without the data
    assert bs.null_p(1.0, 5) == pytest.approx(2 / 120)
    # 12 untied points: rho 0.83 is far in the tail (Monte Carlo, 99,999 resamples), rho 0 is not
    assert 2e-5 <= bs.null_p(0.83, 12) <= 3e-3
    assert bs.null_p(0.0, 12) > 0.9
    # no random pairing of 12 reaches rho = 1 (1 in 12! ~ 2e-9), none falls short of it on the other side:
    # k = 0 of 99,999 above, so p = 2 * (0 + 1) / (99,999 + 1), never 0
    assert bs.null_p(1.0, 12) == pytest.approx(2 / 100_000)


def test_bootstrap_interval_of_rho_is_the_2_5th_and_97_5th_percentile():
    # y swaps the 3rd and 4th of 5 pairs. Of the 5^5 = 3,125 equally likely resamples of the pairs, the 5
    # that repeat one pair have no rho, and the 2^5 - 2 = 30 drawn from the swapped pair alone (both of
    # them) have rho = -1: 30 / 3,120 = 0.96 % < 2.5 %. Enumerated below: 1/9 is the next value and takes the
    # cumulative share to 3.85 % (>= 2.5 %, < 5 %); rho = 1 holds from 42.3 % to 100 %. So the 95 %
    # interval is 1/9..1 (a 90 % one would start at the next value, 0.25)
    x, y = np.arange(1.0, 6.0), np.array([1.0, 2.0, 4.0, 3.0, 5.0])
    boot = []
    for idx in itertools.product(range(5), repeat=5):
        xs, ys = x[list(idx)], y[list(idx)]
        if len(set(xs)) > 1:
            boot.append(round(float(np.corrcoef(stats.rankdata(xs), stats.rankdata(ys))[0, 1]), 9))
    values, counts = np.unique(boot, return_counts=True)
    share = dict(zip(values.tolist(), (np.cumsum(counts) / len(boot)).tolist()))
    assert len(boot) == 3120 and counts[0] == 30 and values[0] == -1.0
    assert share[round(1 / 9, 9)] == pytest.approx(120 / 3120) and values[2] == 0.25
    assert share[values[-2]] == pytest.approx(1 - 1800 / 3120)
    c = bs.rank_correlation(x, y)
    assert (c.low, c.high) == pytest.approx((1 / 9, 1.0))


def test_the_smallest_p_is_shown_as_a_bound():
    assert str(bs.rank_correlation([1, 2, 3, 4], [1, 2, 3, 4])).startswith("1.00 (p<=0.083, 95% CI 1.00..1.00, n=4)")
    x = np.arange(20)
    assert "p<=0.0002," in str(bs.rank_correlation(x, x))  # 9,999 random pairings: 2 / 10,000 at best
    assert "p=0.33," in str(bs.rank_correlation([1, 2, 3, 4], [1, 2, 4, 3]))


def test_ties_use_average_ranks():
    # x ranks 1.5 1.5 3 4, y ranks 1 2 3 4: Pearson of the ranks = 4.5 / sqrt(4.5 * 5)
    c = bs.rank_correlation([7, 7, 8, 9], [1, 2, 3, 4])
    assert c.rho == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_random_permutation_p_for_twelve_points_is_small_for_a_strong_ranking():
    # 12! pairings are too many: 9,999 random ones, p = (k + 1) / 10,000 >= 1e-4, two-sided
    x = np.arange(12)
    y = np.array([0, 1, 3, 2, 4, 5, 7, 6, 8, 9, 11, 10])
    c = bs.rank_correlation(x, y, seed=3)
    assert c.rho == pytest.approx(1 - 6 * 6 / (12 * 143))  # three adjacent swaps: sum d^2 = 6
    assert 1e-4 <= c.p <= 3e-4
    assert c.low > 0.8


def test_no_correlation_below_three_points_or_for_a_constant():
    assert math.isnan(bs.rank_correlation([1, 2], [2, 1]).rho)
    c = bs.rank_correlation([1, 1, 1], [1, 2, 3])
    assert math.isnan(c.rho) and str(c) == "n/a (n=3)"


def test_mcnemar_counts_only_the_disagreements():
    a = [True] * 90 + [False] * 5 + [True] * 0 + [False] * 5
    b = [True] * 90 + [True] * 5 + [False] * 0 + [False] * 5
    # A right and B wrong: 0 images; B right and A wrong: 5. Exact: 2 * (1/2)^5
    assert bs.mcnemar_exact(a, b) == (0, 5, pytest.approx(2 / 32))
    # one against nine: 2 * (C(10,0) + C(10,1)) / 2^10
    a = [True] + [False] * 9
    assert bs.mcnemar_exact(a, [not v for v in a]) == (1, 9, pytest.approx(22 / 1024))
    assert bs.mcnemar_exact([True, False], [True, False]) == (0, 0, 1.0)


def test_bootstrap_mean():
    assert bs.bootstrap_mean([0.5, 0.5, 0.5]) == pytest.approx((0.5, 0.5, 0.5))
    mean, low, high = bs.bootstrap_mean([0.0, 1.0])
    # resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5 and 97.5 percentiles are 0 and 1
    assert (mean, low, high) == pytest.approx((0.5, 0.0, 1.0))
    assert all(math.isnan(v) for v in bs.bootstrap_mean([]))


def test_bootstrap_mean_interval_is_the_2_5th_and_97_5th_percentile():
    # a resample of [0, 1, 2] sums to 0..6 in 1, 3, 6, 7, 6, 3, 1 of the 27 equally likely draws: cumulative
    # 1/27 = 3.7 % at sum 0 (>= 2.5 %, < 5 %) and 26/27 = 96.3 % at sum 5 (< 97.5 %, >= 95 %), so the 95 %
    # interval of the mean is 0..2 exactly (a 90 % one would be 1/3..5/3); 9,999 resamples estimate those
    # shares within about 0.2 pp
    assert bs.bootstrap_mean([0.0, 1.0, 2.0]) == pytest.approx((1.0, 0.0, 2.0))


def test_time_to_target_is_a_position_or_not_reached():
    assert bs.first_reach([0.1, 0.5, 0.92, 0.95], 0.92) == 3
    assert bs.first_reach([0.1, 0.5, 0.91], 0.92) is None
    assert bs.first_reach([], 0.5) is None


def test_ratio_summary_never_makes_a_ratio_of_a_failure():
    line = bs.ratio_summary([(13, 13), (11, 13), (None, 91)], "trial-epochs")
    assert line == (
        "trial-epochs: reached in 2 of 3 runs, not reached in 1; ratio over the 2 that reached it: "
        "median 0.92, min 0.85, max 1.00"
    )
    # ratios 1.00, 0.85, 0.25: the median is the middle one (the mean would be 0.70); the failure is left out
    line = bs.ratio_summary([(13, 13), (11, 13), (3, 12), (None, 91)], "x")
    assert line.endswith("ratio over the 3 that reached it: median 0.85, min 0.25, max 1.00")
    line = bs.ratio_summary([(None, 96), (None, 96)], "wall time")
    assert line.startswith("wall time: reached in 0 of 2 runs (no ratio")
