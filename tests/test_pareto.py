"""raydigits/pareto.py against hand-computed cases, and against Optuna's own non-dominated sort and
hypervolume (private functions of optuna 5.x, used here only as an independent second opinion)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raydigits import pareto

# (accuracy to maximise, latency to minimise) of six trials; oriented: (-acc, latency)
TRIALS = [(0.99, 5.0), (0.98, 2.0), (0.95, 1.0), (0.97, 3.0), (0.90, 1.5), (0.98, 2.0)]


def test_oriented_negates_max_columns_and_refuses_unknown_modes():
    assert pareto.oriented([(0.9, 2.0)], ["max", "min"]).tolist() == [[-0.9, 2.0]]
    with pytest.raises(ValueError, match="'maximise'"):
        pareto.oriented([(1, 2)], ["maximise", "min"])


def test_dominates_needs_one_strict_improvement():
    assert pareto.dominates(np.array([1, 1]), np.array([1, 2]))
    assert not pareto.dominates(np.array([1, 2]), np.array([1, 2]))  # equal
    assert not pareto.dominates(np.array([1, 3]), np.array([2, 2]))  # a trade-off


def test_non_dominated_sort_by_hand():
    p = pareto.oriented(TRIALS, ["max", "min"])
    # front 0: (0.99, 5), (0.98, 2) twice (equal points share a front), (0.95, 1)
    # front 1: (0.97, 3) (dominated by 0.98/2), (0.90, 1.5) (dominated by 0.95/1)
    assert pareto.non_dominated_sort(p) == [[0, 1, 2, 5], [3, 4]]
    assert pareto.ranks(p).tolist() == [0, 0, 0, 1, 1, 0]
    assert pareto.front(p) == [0, 1, 2, 5]
    assert pareto.non_dominated_sort(np.zeros((0, 2))) == []


def test_three_fronts_chain():
    p = np.array([[3.0, 3.0], [1.0, 1.0], [2.0, 2.0]])
    assert pareto.non_dominated_sort(p) == [[1], [2], [0]]


def test_crowding_distance_by_hand():
    # a front of four (minimise both): x = 0, 1, 3, 4 ; y = 4, 3, 1, 0 ; ranges 4 and 4
    p = np.array([[0.0, 4.0], [1.0, 3.0], [3.0, 1.0], [4.0, 0.0]])
    d = pareto.crowding_distance(p)
    assert math.isinf(d[0]) and math.isinf(d[3])
    # point 1: neighbours in x are 0 and 3 -> 3/4; in y 4 and 1 -> 3/4; total 1.5. point 2: same
    assert d[1] == pytest.approx(1.5) and d[2] == pytest.approx(1.5)
    p2 = np.array([[0.0, 4.0], [0.5, 3.5], [3.0, 1.0], [4.0, 0.0]])
    d2 = pareto.crowding_distance(p2)
    # point 1: x: (3 - 0)/4, y: (4 - 1)/4 -> 1.5 ; point 2: x: (4 - 0.5)/4, y: (3.5 - 0)/4 -> 1.75
    assert d2[1] == pytest.approx(1.5) and d2[2] == pytest.approx(1.75)
    assert np.isinf(pareto.crowding_distance(np.array([[1.0, 2.0], [2.0, 1.0]]))).all()


def test_rank_order_front_first_then_less_crowded():
    p = np.array([[0.0, 4.0], [0.5, 3.5], [3.0, 1.0], [4.0, 0.0], [5.0, 5.0]])
    # front 0 = 0..3: extremes (inf) first by index, then 2 (1.75) before 1 (1.5); then front 1
    assert pareto.rank_order(p) == [0, 3, 2, 1, 4]


def test_hypervolume_by_hand():
    ref = [4.0, 4.0]
    assert pareto.hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), ref) == pytest.approx(3 * 2 + 2 * 3 - 2 * 2)
    # a dominated point adds nothing, and a point beyond the reference adds nothing
    assert pareto.hypervolume(np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 3.0], [5.0, 0.0]]), ref) == pytest.approx(8.0)
    assert pareto.hypervolume(np.zeros((0, 2)), ref) == 0.0
    # 3-D: one point at the origin with reference (1, 2, 3) -> a box of 6; a second at (0.5, 0.5, 0.5)
    # inside it adds nothing
    assert pareto.hypervolume(np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]), [1, 2, 3]) == pytest.approx(6.0)
    # two boxes overlapping: [0,2]x[0,1]x[0,1] and [0,1]x[0,2]x[0,1] with ref (2,2,1) from points (0,1,0),(1,0,0)
    assert pareto.hypervolume(np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), [2, 2, 1]) == pytest.approx(2 + 2 - 1)


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_optuna(m, seed):
    from optuna._hypervolume import compute_hypervolume
    from optuna.study._multi_objective import _fast_non_domination_rank

    rng = np.random.default_rng(seed)
    p = rng.integers(0, 6, size=(25, m)).astype(float)  # integer grid: many ties and equal points
    assert pareto.ranks(p).tolist() == _fast_non_domination_rank(p).tolist()
    ref = np.full(m, 6.0)
    assert pareto.hypervolume(p, ref) == pytest.approx(compute_hypervolume(p, ref))
