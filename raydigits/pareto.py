"""Pareto dominance for multi-objective search: non-dominated sorting, crowding distance and the
hypervolume of a front. Pure numpy, no Ray, no torch: the scheduler (search/), the experiment's front
(experiment/) and the benchmark all use these.

Every function takes points as an (n, m) array to be *minimised* in every column; `oriented` turns
(values, modes) into that form (a `max` column is negated). Deb et al., "A fast and elitist
multiobjective genetic algorithm: NSGA-II" (2002) for the sort and the crowding distance; the
hypervolume is computed exactly by slicing (Fonseca et al. 2006 in spirit; fine for the two or three
objectives and the tens of trials a search has). tests/test_pareto.py checks them against
hand-computed cases and against Optuna's own implementations."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def oriented(values: Sequence[Sequence[float]] | np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """(n, m) values with each column's mode ('max' or 'min') → an array where smaller is better."""
    a = np.asarray(values, dtype=float).reshape(-1, len(modes))
    unknown = [m for m in modes if m not in ("max", "min")]
    if unknown:
        raise ValueError(f"mode must be 'max' or 'min', got {unknown[0]!r}")
    return a * np.array([-1.0 if m == "max" else 1.0 for m in modes])


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """`a` is no worse than `b` in every objective and better in one (minimising)."""
    return bool(np.all(a <= b) and np.any(a < b))


def non_dominated_sort(points: np.ndarray) -> list[list[int]]:
    """The fronts, best first, as lists of row indices (each in increasing order): front 0 holds the
    points no other point dominates, front k those dominated only by points of fronts < k. Equal
    points share a front."""
    p = np.asarray(points, dtype=float)
    n = len(p)
    if n == 0:
        return []
    # better[i, j]: i dominates j
    le = np.all(p[:, None, :] <= p[None, :, :], axis=2)
    lt = np.any(p[:, None, :] < p[None, :, :], axis=2)
    better = le & lt
    dominated_by = better.sum(axis=0)  # how many points dominate each one
    fronts, current = [], [i for i in range(n) if dominated_by[i] == 0]
    while current:
        fronts.append(current)
        nxt = []
        for i in current:
            for j in np.flatnonzero(better[i]):
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    nxt.append(int(j))
        current = sorted(nxt)
    return fronts


def ranks(points: np.ndarray) -> np.ndarray:
    """Each point's front number (0: non-dominated)."""
    out = np.zeros(len(points), dtype=int)
    for k, front in enumerate(non_dominated_sort(points)):
        out[front] = k
    return out


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each point *within the set given* (pass one front): per
    objective, the gap between its two neighbours divided by the objective's range, summed; the
    extremes of each objective get infinity. Larger = a less crowded part of the front."""
    p = np.asarray(points, dtype=float)
    n, m = p.shape if p.ndim == 2 else (len(p), 0)
    d = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(p[:, k], kind="stable")
        col = p[order, k]
        span = col[-1] - col[0]
        d[order[0]] = d[order[-1]] = np.inf
        if span == 0:
            continue
        d[order[1:-1]] += (col[2:] - col[:-2]) / span
    return d


def rank_order(points: np.ndarray) -> list[int]:
    """All indices, best first: by front, then by crowding distance (larger first) within a front,
    then by index (a stable, deterministic order). What a multi-objective rung keeps the head of."""
    p = np.asarray(points, dtype=float)
    out: list[int] = []
    for front in non_dominated_sort(p):
        crowd = crowding_distance(p[front])
        out.extend(i for _, i in sorted(zip(-crowd, front, strict=True)))
    return out


def front(points: np.ndarray) -> list[int]:
    """Indices of the non-dominated points."""
    fronts = non_dominated_sort(points)
    return fronts[0] if fronts else []


def hypervolume(points: np.ndarray, reference: Sequence[float]) -> float:
    """The volume dominated by `points` and bounded by `reference` (minimising; points not strictly
    better than the reference in every objective add nothing). Exact, by slicing along the last
    objective; O(n^(m-1) log n), meant for m <= 3."""
    ref = np.asarray(reference, dtype=float)
    p = np.asarray(points, dtype=float).reshape(-1, len(ref))
    p = p[np.all(p < ref, axis=1)]
    if len(p) == 0:
        return 0.0
    p = p[front(p)]
    if len(ref) == 1:
        return float(ref[0] - p[:, 0].min())
    if len(ref) == 2:
        p = p[np.lexsort((p[:, 1], p[:, 0]))]  # by the first objective, then the second
        volume, best_y = 0.0, ref[1]
        for x, y in p:
            if y < best_y:
                volume += (ref[0] - x) * (best_y - y)
                best_y = y
        return float(volume)
    # slices between consecutive values of the last objective: each is the (m-1)-dimensional
    # hypervolume of the points at or below that value, times the slice's thickness
    p = p[np.argsort(p[:, -1], kind="stable")]
    levels = [*p[:, -1], ref[-1]]
    volume = 0.0
    for i in range(len(p)):
        thickness = levels[i + 1] - levels[i]
        if thickness > 0:
            volume += thickness * hypervolume(p[: i + 1, :-1], ref[:-1])
    return float(volume)
