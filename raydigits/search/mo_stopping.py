"""Multi-objective rung decisions, in pure Python and numpy (no Ray import): `MOStoppingCore` is
`StoppingCore` (stopping.py: the same milestones, brackets, `keep` per milestone, family
stratification, `min_peers`, stop at max_t) whose rungs rank *points* instead of values.

A trial's point at a milestone is its validation value there and the cost objectives of its result
(params, size_mb, mflops, latency_ms: known before its first epoch), oriented so that every column is
minimised (`pareto.oriented`). At a milestone, the newcomer's point is ordered with the points
recorded there (within its family when stratified) by `pareto.rank_order`: non-dominated rank first,
then crowding distance (larger first) within a front, the newcomer ahead of an identical recorded
point (as `value >= cutoff` lets an equal value through). Let n be the number recorded before it, w
how many of them it is ranked ahead of, q = 1 - keep and pos = (n - 1) * q (lo = floor(pos),
f = pos - lo): ASHA's cutoff is the linearly interpolated q-percentile of the recorded values, which
in rank terms says

- w <= lo: STOP (worse than the point at ascending position lo, so below any cutoff);
- w >= lo + 2, or w = lo + 1 with f = 0: CONTINUE (at or above the cutoff);
- w = lo + 1 with f > 0 (the one marginal slot, between the recorded points at ascending positions
  lo and lo + 1, which the percentile interpolates between): the virtual cut point
  c = a + (b - a) * f, a the recorded point ranked just behind the newcomer and b the one just
  ahead of it, computed column by column as numpy's percentile computes the cutoff; the newcomer
  stops iff c dominates it.

With one objective each point is its own front (equal ones share one), the order is the values'
order, a and b are the recorded values at ascending positions lo and lo + 1, and "c dominates x"
is `x < cutoff` to the last bit: the decisions are Ray's ASHA's (tests/test_mo_stopping.py drives
both with the same random event streams). With several, a trial on the rung's first front is kept
while the front is no larger than the kept share, whatever its accuracy; a dominated trial stops
once enough trials dominate it; crowding decides between members of one front. This is MOASHA's
rule (Salinas et al., "A multi-objective perspective on jointly tuning hardware and hyperparameters",
2021: promote by non-dominated rank, ties by crowding distance) with ASHA's own cut-off arithmetic.

A point with a NaN is never judged (it continues, as `nan < cutoff` is false) and is recorded but
never compared, as numpy's nanpercentile ignores NaNs."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

from ..pareto import dominates, rank_order
from .stopping import CONTINUE, STOP, StoppingCore


class MOStoppingCore(StoppingCore):
    """`StoppingCore` whose `result`/`complete` take a point: a sequence of objective values, every
    one to be minimised (`pareto.oriented(values, modes)[0]`). Constructor: as StoppingCore."""

    def result(self, trial_id: Hashable, t: float, value) -> str:  # type: ignore[override]
        return super().result(trial_id, t, tuple(float(v) for v in value))

    def complete(self, trial_id: Hashable, t: float, value) -> None:  # type: ignore[override]
        super().complete(trial_id, t, tuple(float(v) for v in value))

    def decide(self, recorded: dict, point: tuple[float, ...], milestone: float | None = None) -> str:
        """CONTINUE or STOP for `point` at a milestone where `recorded` ({trial: point}) are in."""
        if any(math.isnan(v) for v in point):
            return CONTINUE
        peers = [p for p in recorded.values() if not any(math.isnan(v) for v in p)]
        if len(recorded) < self.min_peers or not peers:
            return CONTINUE
        keep = self.keep.get(milestone, 1 / self.rf)  # type: ignore[arg-type]
        n = len(peers)
        pos = (n - 1) * ((1 - keep) * 100) / 100.0  # stopping.percentile's arithmetic, to the bit
        lo = math.floor(pos)
        f = pos - lo
        pts = np.array([point, *peers], dtype=float)  # the newcomer at index 0: ahead of its equals
        order = rank_order(pts)
        at = order.index(0)
        ahead_of = n - at  # recorded points ranked behind the newcomer
        if ahead_of <= lo:
            return STOP
        if ahead_of >= lo + 2 or f == 0:
            return CONTINUE
        # the marginal slot: between the recorded point just behind (a) and just ahead (b)
        a = pts[order[at + 1]]
        b = pts[order[at - 1]] if at > 0 else a
        cut = a + (b - a) * f
        return STOP if dominates(cut, pts[0]) else CONTINUE

    def _on_result(self, trial_id: Hashable, t: float, value) -> str:
        bracket, family = self.trials[trial_id]
        for milestone, by_family in self.brackets[bracket]:
            recorded = by_family.setdefault(family, {})
            if t < milestone or trial_id in recorded:
                continue
            action = self.decide(recorded, value, milestone)
            recorded[trial_id] = value
            return action
        return CONTINUE


def point_of(result: dict, objectives: Sequence[tuple[str, str]]) -> tuple[float, ...] | None:
    """A result's point (every column minimised) for `objectives` [(metric, mode)], or None when the
    result lacks one of them."""
    if any(k not in result for k, _ in objectives):
        return None
    values = [float(result[k]) for k, _ in objectives]
    return tuple(-v if mode == "max" else v for v, (_, mode) in zip(values, objectives, strict=True))
