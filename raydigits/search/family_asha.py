"""`FamilyASHA`: ASHA whose rungs compare a trial only with trials of its own family (the values of
the searched categorical parameters, e.g. the optimizer), as a Ray Tune `TrialScheduler` on Tune's
public API. The decisions come from `raydigits.search.stopping.StoppingCore`, the same core the
replay (`bench/replay.py`) measured; with `family=()` and `min_peers=1` it decides exactly as Ray's
AsyncHyperBandScheduler (tests/test_stopping.py).

Multi-objective (`costs`: the cost metrics that are objectives too, all minimised): the rungs rank
each trial's point (its `metric` at the milestone, its costs from the same result) by
non-dominated rank and crowding distance, with ASHA's cut-off arithmetic (`MOStoppingCore`,
mo_stopping.py); with no costs it is the single-objective core. This is the MOASHA that
`build_tune_scheduler` gives a search with several objectives, stratified for type family_asha,
Ray's rule (no families, keep 1/rf, its brackets) for type asha.

Constraints (`broken`: result -> the constraints it breaks): an infeasible trial is stopped at its
first result and never recorded at a rung, so it neither raises nor lowers any feasible trial's bar
(runner.py also stops it with a Stopper, under every scheduler type)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from ray.tune.result import DEFAULT_METRIC
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from .mo_stopping import MOStoppingCore, point_of
from .stopping import StoppingCore, bracket_milestones, family_of


class FamilyASHA(FIFOScheduler):
    """Asynchronous successive halving with stratified rungs.

    metric, mode, time_attr, max_t, grace_period, reduction_factor, brackets: as Ray's
    AsyncHyperBandScheduler.
    family: the trial.config keys whose values make a trial's family (the spec's searched categorical
        parameters); () compares every trial with every other one (plain ASHA).
    min_peers: a trial is not stopped at a milestone where fewer than this many trials of its family
        are recorded (1: Ray's rule).
    bracket_weights: "ray" (Ray's softmax of the brackets' rung counts), "equal", or one weight per
        bracket (e.g. brackets=4, [3, 0, 0, 1] with max_t 8 / grace 1 / factor 2: a quarter of the
        trials in a bracket that never stops early).
    seed: the bracket draws (None: unseeded).
    keep: the share of trials each milestone keeps (None: 1 / reduction_factor, as Ray).
    costs: cost metrics that are objectives too (minimised): () is single-objective ASHA.
    broken: result -> the constraints it breaks ([] or None: feasible); None checks nothing."""

    def __init__(
        self,
        metric: str | None = None,
        mode: str | None = None,
        max_t: int = 100,
        grace_period: int = 1,
        reduction_factor: float = 2.0,
        brackets: int = 1,
        family: Sequence[str] = (),
        min_peers: int = 1,
        bracket_weights="ray",
        time_attr: str = "training_iteration",
        seed: int | None = None,
        keep: float | Sequence[float] | None = None,
        costs: Sequence[str] = (),
        broken: Callable[[dict], list[str]] | None = None,
    ):
        if mode and mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        super().__init__()
        self._metric, self._mode, self._time_attr = metric, mode, time_attr
        self._family = tuple(family)
        self._costs, self._broken = tuple(costs), broken
        self._infeasible: set[str] = set()
        core = MOStoppingCore if self._costs else StoppingCore
        self._core = core(
            max_t=max_t,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            brackets=brackets,
            stratify=bool(self._family),
            min_peers=min_peers,
            bracket_weights=bracket_weights,
            rng=random.Random(seed),
            keep=keep,
        )

    @property
    def _sign(self) -> float:
        return -1.0 if self._mode == "min" else 1.0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        if self._metric is None and self._mode:
            self._metric = DEFAULT_METRIC
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        if not self._metric or not self._mode:
            raise ValueError(
                f"{type(self).__name__} needs a metric and a mode (got {self._metric!r}, {self._mode!r}): "
                "pass them here or to tune.TuneConfig()"
            )
        self._core.add(trial.trial_id, family_of(trial.config, self._family))

    def _value(self, result: dict):
        """What the core compares: the metric, higher-is-better; with costs, the point (minimised)."""
        if self._costs:
            return point_of(result, [(self._metric, self._mode), *((c, "min") for c in self._costs)])
        return self._sign * result[self._metric] if self._metric in result else None

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._broken is not None and self._broken(result):
            self._infeasible.add(trial.trial_id)  # never recorded at a rung
            self._core.remove(trial.trial_id)
            return TrialScheduler.STOP
        value = self._value(result)
        if self._time_attr not in result or value is None or trial.trial_id not in self._core.trials:
            return TrialScheduler.CONTINUE
        action = self._core.result(trial.trial_id, result[self._time_attr], value)
        return TrialScheduler.STOP if action == "STOP" else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        value = self._value(result) if result else None
        if value is not None and self._time_attr in result and trial.trial_id not in self._infeasible:
            self._core.complete(trial.trial_id, result[self._time_attr], value)
        self._core.remove(trial.trial_id)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._core.remove(trial.trial_id)

    def debug_string(self) -> str:
        by = f"within families of {', '.join(self._family)}" if self._family else "across all trials"
        on = f"; objectives {self._metric} ({self._mode}), {', '.join(self._costs)} (min)" if self._costs else ""
        return (
            f"Using FamilyASHA ({by}{on}): num_stopped={self._core.num_stopped}, "
            f"infeasible={len(self._infeasible)}\n{self._core.debug_string()}"
        )

    # No save / restore: Tune's controller never calls them (the scheduler travels inside Tune's own
    # experiment state), and raydigits itself unpickles nothing but the verified MNIST archive
    # (tests/test_security.py).


# The default early stopping (issue 19, BENCHMARKS.md "Early stopping that keeps the winners"):
# stratified rungs, chosen by replaying every policy on recorded FIFO curves (bench/replay.py).
DEFAULT_MIN_PEERS = 1  # Ray's rule: the second trial of a family at a rung is judged
DEFAULT_BRACKETS = 1  # no Hyperband hedge: it bought little protection for its cost
DEFAULT_BRACKET_WEIGHTS = "ray"
DEFAULT_FIRST_KEEP = 0.75  # the first rung keeps the top 3/4 of a family, later ones 1/rf


def default_keep(
    max_t: int, grace_period: int, reduction_factor: float, first_keep: float | None = DEFAULT_FIRST_KEEP
) -> list[float] | None:
    """The share each milestone below max_t keeps: `first_keep` at the first, 1/rf after (None: 1/rf
    everywhere, Ray's rule)."""
    n = len([m for m in bracket_milestones(grace_period, max_t, reduction_factor, 0) if m < max_t])
    if first_keep is None or n == 0:
        return None
    return [first_keep] + [1 / reduction_factor] * (n - 1)


def default_scheduler(
    metric: str | None = None,
    mode: str | None = None,
    max_t: int = 100,
    grace_period: int = 1,
    reduction_factor: float = 2.0,
    family: Sequence[str] = (),
    seed: int | None = None,
    time_attr: str = "training_iteration",
    costs: Sequence[str] = (),
    broken: Callable[[dict], list[str]] | None = None,
    first_keep: float = DEFAULT_FIRST_KEEP,
) -> FamilyASHA:
    """The shipped default: FamilyASHA stratified by `family` (the spec's searched categorical
    parameters: `[k for k, p in spec.parameters.items() if p.values is not None]`), one bracket,
    Ray's rule (min_peers 1), a gentler first rung (`first_keep`, the spec's scheduler.first_keep);
    with `costs`, the same rungs ranked by Pareto dominance (multi-objective)."""
    return FamilyASHA(
        metric=metric,
        mode=mode,
        max_t=max_t,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        brackets=DEFAULT_BRACKETS,
        family=family,
        min_peers=DEFAULT_MIN_PEERS,
        bracket_weights=DEFAULT_BRACKET_WEIGHTS,
        time_attr=time_attr,
        seed=seed,
        keep=default_keep(max_t, grace_period, reduction_factor, first_keep),
        costs=costs,
        broken=broken,
    )
