"""Small, pure statistics for the benchmark scripts' verdicts (numpy and scipy only; no Ray, no torch).
 - `rank_correlation`: Spearman's rho with a permutation p-value (two-sided; exact when n! is at most
   the resample count) and a percentile bootstrap 95 % interval over resampled (x, y) pairs.
 - `null_p`: the same p-value from a published rho and n alone (no ties), for runs not kept.
 - `mcnemar_exact`: the exact two-sided McNemar test on two models' per-image disagreements (the
   right test for two models scored on the same images; a difference of two accuracies is not).
 - `bootstrap_mean`: the mean of a few paired differences with a percentile bootstrap 95 % interval.
 - `first_reach` / `ratio_summary`: a time-to-target is an index or "not reached" (None), and a
   summary of ratios uses only the runs that reached it, saying how many did not: a failure is never
   turned into a ratio, nor averaged with successes.
Used by bench/search_bench.py and bench/epoch_select.py; checked by tests/test_bench_stats.py."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

RESAMPLES = 9999  # permutation and bootstrap resamples


@dataclass(frozen=True)
class Correlation:
    rho: float
    p: float  # two-sided permutation p-value of rho against "no association"
    low: float  # bootstrap 95 % interval of rho
    high: float
    n: int
    p_floor: float = math.nan  # the smallest p the test can give (2/n! exact, else 2/(resamples+1))

    def __str__(self) -> str:
        if self.n < 3 or math.isnan(self.rho):
            return f"n/a (n={self.n})"
        p = f"p<={self.p_floor:.2g}" if self.p <= self.p_floor * (1 + 1e-9) else f"p={self.p:.2g}"
        return f"{self.rho:.2f} ({p}, 95% CI {self.low:.2f}..{self.high:.2f}, n={self.n})"


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row of x against the same row of y (average ranks for ties); nan for
    a row in which x or y is constant."""
    rx, ry = stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=-1) * (ry * ry).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=-1) / np.where(den > 0, den, 1), np.nan)


def rank_correlation(x, y, seed: int = 0, resamples: int = RESAMPLES) -> Correlation:
    """Spearman's rho of paired samples x, y, its two-sided permutation p-value (y's pairing with x
    shuffled; every permutation when n! <= resamples, else `resamples` random ones, p = (k+1)/(B+1))
    and the 2.5th and 97.5th percentiles of rho over `resamples` bootstrap resamples of the pairs
    (resamples with a constant x or y, where rho is undefined, left out). nan for fewer than 3 pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D and of equal length, got {x.shape} and {y.shape}")
    n = len(x)
    rho = float(_spearman_rows(x, y)) if n >= 3 else math.nan
    if math.isnan(rho):
        return Correlation(rho, math.nan, math.nan, math.nan, n)
    perm = stats.permutation_test(
        (x,),
        lambda xs, axis: _spearman_rows(xs, np.broadcast_to(y, xs.shape)),
        permutation_type="pairings",
        vectorized=True,
        n_resamples=resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    idx = np.random.default_rng(seed + 1).integers(0, n, size=(resamples, n))
    boot = _spearman_rows(x[idx], y[idx])
    boot = boot[~np.isnan(boot)]
    low, high = np.percentile(boot, [2.5, 97.5]) if len(boot) else (math.nan, math.nan)
    floor = 2 / math.factorial(n) if math.factorial(n) <= resamples else 2 / (resamples + 1)
    return Correlation(rho, float(perm.pvalue), float(low), float(high), n, min(1.0, floor))


def null_p(rho: float, n: int, seed: int = 0, resamples: int = 99_999) -> float:
    """Two-sided permutation p-value of a Spearman `rho` between n untied rankings, from rho and n
    alone (without ties its null distribution depends on nothing else): for published figures whose
    data were not kept. Exact when n! <= resamples; (k+1)/(B+1) otherwise."""
    ranks = np.arange(n, dtype=float)
    if math.factorial(n) <= resamples:
        perms = np.array(list(itertools.permutations(range(n))), dtype=float)
        null = _spearman_rows(np.broadcast_to(ranks, perms.shape), perms)
        return float(min(1.0, 2 * min((null >= rho - 1e-12).mean(), (null <= rho + 1e-12).mean())))
    perms = np.random.default_rng(seed).permuted(np.tile(ranks, (resamples, 1)), axis=1)
    null = _spearman_rows(np.broadcast_to(ranks, perms.shape), perms)
    hi, lo = ((null >= rho - 1e-12).sum() + 1) / (resamples + 1), ((null <= rho + 1e-12).sum() + 1) / (resamples + 1)
    return float(min(1.0, 2 * min(hi, lo)))


def mcnemar_exact(a_right, b_right) -> tuple[int, int, float]:
    """Two models' per-image correctness (booleans, same images in the same order) → (images only A
    gets right, images only B gets right, exact two-sided McNemar p-value: the binomial test of the
    first count out of the disagreements at 1/2; 1.0 when they never disagree)."""
    a, b = np.asarray(a_right, dtype=bool), np.asarray(b_right, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"per-image results of different lengths: {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 0, 0, 1.0
    return only_a, only_b, float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def bootstrap_mean(values, seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and the 2.5th and 97.5th percentiles of the means of
    `resamples` bootstrap resamples of them. nan for no values."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return math.nan, math.nan, math.nan
    means = v[np.random.default_rng(seed).integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), float(low), float(high)


def first_reach(values, target: float) -> int | None:
    """1-based position of the first of `values` (in time order) at or above `target`; None when
    none is: the target was not reached, which is not a number of steps."""
    return next((i for i, v in enumerate(values, 1) if v >= target), None)


def ratio_summary(pairs, what: str) -> str:
    """One line about ratios num / den over runs, each pair (num or None when the run never reached
    its target, den): how many reached it, and the median, min and max ratio over those that did
    only. A run that did not reach the target is counted as such, never as a ratio."""
    pairs = list(pairs)
    ratios = [num / den for num, den in pairs if num is not None]
    missed = len(pairs) - len(ratios)
    head = f"{what}: reached in {len(ratios)} of {len(pairs)} runs"
    if not ratios:
        return f"{head} (no ratio: a run that never reached the target has no time to it)"
    tail = f", not reached in {missed}" if missed else ""
    return (
        f"{head}{tail}; ratio over the {len(ratios)} that reached it: median {float(np.median(ratios)):.2f}, "
        f"min {min(ratios):.2f}, max {max(ratios):.2f}"
    )
