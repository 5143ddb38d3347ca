"""Early-stopping decisions, in pure Python (no Ray import): the rule of Ray Tune's
AsyncHyperBandScheduler (ASHA) reproduced exactly, and the variants issue 19 measured against it.

`StoppingCore` takes events — a trial is added (with its *family*: the values of the searched
categorical parameters, e.g. ("sgd",)), a trial reports a value at an epoch, a trial completes —
and answers CONTINUE or STOP. The same object decides in the Tune scheduler
(`raydigits.search.family_asha.FamilyASHA`) and in the offline replay (`bench/replay.py`), so a
replayed policy is the shipped one.

The rule (Ray's `_Bracket.on_result`): a bracket has milestones grace * rf**(k + s) below max_t
(plus max_t itself); a trial reaching a milestone it has not been recorded at is compared with the
values already recorded there — it stops when its value is below their (1 - 1/rf) nanpercentile —
and its value is recorded. A trial is assigned a bracket at random on arrival, with Ray's weights
(softmax of each bracket's number of milestones). The variants:

- `stratify`: a trial is compared only with the values recorded at that milestone by trials of its
  own family (short-horizon bias: SGD starts slower than AdamW and ends higher, so a global rung
  stops the slow family's best trials);
- `min_peers`: a trial is never stopped while fewer than this many comparable values are recorded at
  its milestone (Ray: 1 — the second trial at a rung is judged against the first alone);
- `keep`: the share of a rung's comparable trials that go on, per milestone (Ray: 1/rf at every one;
  the shipped default keeps 3/4 at the first rung, where an SGD trial with a high lr still trails
  its family);
- `brackets` / `bracket_weights`: Hyperband's hedge; bracket s starts its milestones at grace * rf**s,
  and the last one may have none below max_t (it never stops a trial). "ray" weights as Ray does,
  "equal" gives every bracket the same share, or an explicit list of weights.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Iterable, Sequence

CONTINUE = "CONTINUE"
STOP = "STOP"


def percentile(values: Sequence[float], q: float) -> float:
    """numpy.nanpercentile(values, q) with its default linear interpolation, NaNs ignored."""
    xs = sorted(v for v in values if not math.isnan(v))
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def bracket_milestones(grace_period: float, max_t: float, reduction_factor: float, s: int) -> list[float]:
    """Bracket s's milestones, ascending, as Ray builds them (max_t itself included when it is one)."""
    n = int(math.log(max_t / grace_period) / math.log(reduction_factor) - s + 1)
    return [grace_period * reduction_factor ** (k + s) for k in range(max(n, 0))]


def ray_bracket_weights(milestone_counts: Sequence[int]) -> list[float]:
    """Ray's bracket probabilities: softmax of each bracket's number of milestones."""
    top = max(milestone_counts)
    w = [math.e ** (c - top) for c in milestone_counts]
    return [x / sum(w) for x in w]


class StoppingCore:
    """Decides CONTINUE / STOP from (trial, family, epoch, value) events; values are "higher is
    better" here (the Tune scheduler negates a metric to minimise).

    max_t, grace_period, reduction_factor, brackets: as Ray's AsyncHyperBandScheduler.
    stratify: compare a trial only with its own family at each milestone.
    min_peers: stop nobody at a milestone with fewer comparable values recorded (Ray: 1).
    bracket_weights: "ray" (softmax of milestone counts), "equal", or one weight per bracket.
    rng: a random.Random for the bracket draw (seeded by the caller for replays).
    keep: the share of trials a milestone keeps (Ray: 1 / reduction_factor; the milestones stay at
        grace * reduction_factor**k), one share or one per milestone below max_t (ascending).
    stop_last_trials: STOP a trial at max_t (Ray's default)."""

    def __init__(
        self,
        max_t: float,
        grace_period: float = 1,
        reduction_factor: float = 2.0,
        brackets: int = 1,
        stratify: bool = False,
        min_peers: int = 1,
        bracket_weights="ray",
        rng: random.Random | None = None,
        stop_last_trials: bool = True,
        keep: float | Sequence[float] | None = None,
    ):
        if not (max_t > 0 and 0 < grace_period <= max_t and reduction_factor > 1 and brackets >= 1 and min_peers >= 1):
            raise ValueError(
                f"bad early stopping: max_t {max_t}, grace_period {grace_period}, "
                f"reduction_factor {reduction_factor}, brackets {brackets}, min_peers {min_peers}"
            )
        self.max_t, self.grace_period, self.rf = max_t, grace_period, reduction_factor
        self.stratify, self.min_peers, self.stop_last_trials = stratify, min_peers, stop_last_trials
        # the share each milestone keeps, by milestone (a list: one per first-bracket milestone below max_t)
        first = [m for m in bracket_milestones(grace_period, max_t, reduction_factor, 0) if m < max_t]
        keeps = (
            [1 / reduction_factor if keep is None else keep] * len(first)
            if keep is None or isinstance(keep, (int, float))
            else [float(k) for k in keep]
        )
        if len(keeps) != len(first) or not all(0 < k < 1 for k in keeps):
            raise ValueError(f"keep: one share in (0, 1) per milestone {first}, got {keep}")
        self.keep = dict(zip(first, keeps))
        # per bracket: [(milestone, {(family or None): {trial_id: value}})], descending as Ray's
        self.brackets = [
            [(m, {}) for m in reversed(bracket_milestones(grace_period, max_t, reduction_factor, s))]
            for s in range(brackets)
        ]
        counts = [len(b) for b in self.brackets]
        if bracket_weights == "ray":
            self.weights = ray_bracket_weights(counts)
        elif bracket_weights == "equal":
            self.weights = [1.0 / brackets] * brackets
        else:
            w = [float(x) for x in bracket_weights]
            if len(w) != brackets or min(w) < 0 or sum(w) <= 0:
                raise ValueError(f"bracket_weights: {brackets} non-negative weights expected, got {bracket_weights}")
            self.weights = [x / sum(w) for x in w]
        self.rng = rng or random.Random()
        self.trials: dict[Hashable, tuple[int, Hashable]] = {}  # trial -> (bracket, family)
        self.num_stopped = 0

    # ------------------------------------------------------------------ events
    def add(self, trial_id: Hashable, family: Hashable = None, bracket: int | None = None) -> int:
        """A new trial; its bracket (drawn unless given)."""
        if bracket is None:
            bracket = self._draw()
        self.trials[trial_id] = (bracket, family if self.stratify else None)
        return bracket

    def result(self, trial_id: Hashable, t: float, value: float) -> str:
        """A trial reported `value` after `t` epochs: CONTINUE or STOP (Ray's on_trial_result)."""
        if self.stop_last_trials and t >= self.max_t:
            action = STOP
        else:
            action = self._on_result(trial_id, t, value)
        if action == STOP:
            self.num_stopped += 1
        return action

    def complete(self, trial_id: Hashable, t: float, value: float) -> None:
        """A trial ended (stopped or finished): its last value is recorded, as Ray does."""
        if trial_id in self.trials:
            self._on_result(trial_id, t, value)
            del self.trials[trial_id]

    def remove(self, trial_id: Hashable) -> None:
        self.trials.pop(trial_id, None)

    # ------------------------------------------------------------------ the rule
    def _draw(self) -> int:
        if len(self.weights) == 1:
            return 0
        x, acc = self.rng.random(), 0.0
        for i, w in enumerate(self.weights):
            acc += w
            if x < acc:
                return i
        return len(self.weights) - 1

    def cutoff(self, recorded: dict, milestone: float | None = None) -> float | None:
        """The value a trial must reach at a milestone, given the comparable values recorded there
        (None: too few to judge)."""
        if len(recorded) < self.min_peers or not recorded:
            return None
        keep = self.keep.get(milestone, 1 / self.rf)
        return percentile(list(recorded.values()), (1 - keep) * 100)

    def _on_result(self, trial_id: Hashable, t: float, value: float) -> str:
        bracket, family = self.trials[trial_id]
        for milestone, by_family in self.brackets[bracket]:
            recorded = by_family.setdefault(family, {})
            if t < milestone or trial_id in recorded:
                continue
            cut = self.cutoff(recorded, milestone)
            recorded[trial_id] = value
            return STOP if cut is not None and value < cut else CONTINUE
        return CONTINUE

    def milestones(self, bracket: int = 0) -> list[float]:
        return sorted(m for m, _ in self.brackets[bracket])

    def debug_string(self) -> str:
        lines = []
        for s, b in enumerate(self.brackets):
            rungs = " | ".join(
                f"t={m:g}: "
                + ", ".join(
                    f"{fam if fam is not None else 'all'} n={len(r)}" for fam, r in sorted(fams.items(), key=str)
                )
                for m, fams in b
            )
            lines.append(f"bracket {s} (p={self.weights[s]:.2f}): {rungs or 'never stops'}")
        return "\n".join(lines)


def family_of(config: dict, names: Iterable[str]) -> tuple:
    """A trial's family: the values of the family parameters in its config (missing: None)."""
    return tuple(str(config.get(n)) for n in names)
