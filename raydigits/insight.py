"""What a finished search says about itself, as plain data for report_html.py: which searched
parameters mattered (fANOVA through optuna's importance evaluators, with how far to trust it), and
ASHA's decisions rung by rung (from the recorded outcomes, not re-derived). No Ray import here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .experiment import Trial
from .experiment.records import NEVER_CHOSEN
from .spec import SearchSpec, asha_rungs

IMPORTANCE_SEEDS = (0, 1, 2, 3, 4)  # fANOVA's random forest, refitted with each: the spread shown
# (fewest trials, verdict): below the first, fANOVA is not computed at all
TRUST = ((10, "not meaningful"), (30, "rough"), (math.inf, "indicative"))
TRUST_WHY = {
    "not meaningful": "fewer than {lo} trials: fANOVA fits a random forest to {n} points, so any parameter "
    "can look important by chance; read it as a description of these trials, not of the space",
    "rough": "{n} trials: large effects are likely real, the order of small ones is not",
    "indicative": "{n} trials: enough for the forest to separate the parameters' main effects",
}
STOPPED_NOTE = (
    "Each trial's score is its best validation over the epochs it ran, so trials stopped early by "
    "ASHA score lower partly because they trained less: importance mixes 'good parameters' with "
    "'trained longer'."
)


# ------------------------------------------------------------------ the searched parameters
def searched(spec: SearchSpec) -> list[str]:
    """The parameters that vary between trials (a `value:` constant or a single `values` is not searched)."""
    return [name for name, p in spec.parameters.items() if p.varies()]


def category(value) -> str:
    """A categorical value as a label (lists such as betas included)."""
    return str(value)


def _distribution(spec: SearchSpec, name: str, observed: pd.Series):
    """The optuna distribution of a parameter (its kind's entry names the class)."""
    import optuna.distributions as od

    p = spec.parameters[name]
    if p.values is not None:
        return od.CategoricalDistribution([category(v) for v in p.values])
    return getattr(od, p.kind.optuna_distribution)(**p.kind.distribution_kwargs(p, observed))


def _encode(spec: SearchSpec, name: str, value):
    p = spec.parameters[name]
    if p.values is not None:
        return category(value)
    return int(value) if p.kind.integer else float(value)


@dataclass
class Importance:
    n_trials: int  # trials with a score (the points fANOVA was fitted to)
    trust: str
    why: str
    mean: dict[str, float] = field(default_factory=dict)  # parameter → mean importance over the seeds
    spread: dict[str, float] = field(default_factory=dict)  # parameter → std over the seeds
    left_out: list[str] = field(default_factory=list)  # conditional parameters (not in every trial)
    note: str = STOPPED_NOTE


def trust_level(n: int) -> tuple[str, str]:
    lo = TRUST[0][0]
    verdict = next(v for bound, v in TRUST if n < bound)
    return verdict, TRUST_WHY[verdict].format(n=n, lo=lo)


def importance(trials: pd.DataFrame, spec: SearchSpec, seeds=IMPORTANCE_SEEDS) -> Importance:
    """fANOVA importance of each searched parameter for the trials' best validation score: an optuna
    study rebuilt from the finished trials (`optuna.trial.create_trial`, distributions from the spec),
    then `get_param_importances` with `FanovaImportanceEvaluator` once per seed. Parameters sampled
    only under a `when` condition are left out (optuna's evaluators take the parameters every trial
    has). Errored, diverged and out-of-memory trials are left out. Fewer than 2 scored trials: nothing is computed."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    score = f"best_{spec.metric}"
    names = searched(spec)
    unconditional = [n for n in names if not spec.parameters[n].when]
    usable = ~trials["outcome"].isin(NEVER_CHOSEN)  # an error / divergence / OOM scores no parameter
    scored = trials[usable & trials[score].apply(lambda v: v is not None and math.isfinite(v))]
    verdict, why = trust_level(len(scored))
    result = Importance(len(scored), verdict, why, left_out=[n for n in names if n not in unconditional])
    if len(scored) < 2 or not unconditional:
        result.why = (
            f"{len(scored)} scored trial(s)" if len(scored) < 2 else "no parameter is searched in every trial"
        ) + ": nothing to compare"
        return result
    if scored[score].nunique() < 2:  # fANOVA divides by the scores' variance
        result.why = f"every scored trial has the same {score}: no parameter explains a difference"
        return result
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if spec.mode == "max" else "minimize")
    dists = {n: _distribution(spec, n, scored[f"param.{n}"]) for n in unconditional}
    for _, t in scored.iterrows():
        params = {n: _encode(spec, n, t[f"param.{n}"]) for n in unconditional}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(t[score])))
    try:
        runs = [get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=s)) for s in seeds]
    except RuntimeError as exc:  # e.g. "zero total variance in all trees": the forest found no split
        result.why = f"fANOVA could not be computed on these trials ({str(exc).strip()[:120]})"
        return result
    for n in unconditional:
        vals = np.array([float(r.get(n, 0.0)) for r in runs])
        result.mean[n], result.spread[n] = float(vals.mean()), float(vals.std())
    result.mean = dict(sorted(result.mean.items(), key=lambda kv: -kv[1]))
    return result


# ------------------------------------------------------------------ ASHA, rung by rung
@dataclass
class Rung:
    milestone: int  # the epoch at which ASHA compared trials
    reached: dict[str, float]  # trial → its value at this epoch (every trial that reported it)
    stopped: dict[str, float]  # trial → value, for trials ASHA stopped here (recorded outcome)
    continued: dict[str, float]  # trial → value, for trials that trained past this epoch
    ended_otherwise: dict[str, str]  # trial → outcome, trials that ended here for another reason
    quantile: float  # ASHA's rule: stop when below this quantile of earlier arrivals
    bar: float | None  # the weakest value among the trials that continued
    best_stopped: float | None  # the strongest value among the trials stopped here


def _value_at(results: list[dict], epoch: int, metric: str) -> float | None:
    for r in results:
        if int(r.get("epoch") or 0) == epoch and r.get(metric) is not None:
            return float(r[metric])
    return None


def rung_decisions(trials: tuple[Trial, ...] | list[Trial], spec: SearchSpec) -> list[Rung]:
    """ASHA's decisions at each rung milestone (`spec.asha_rungs`: grace_period *
    reduction_factor**k below max_t). A trial counts as stopped at a rung when its recorded outcome
    is `asha_stopped` and it ran exactly that many epochs (what the outcome recorder wrote when Tune
    ended it); as continued when it ran more epochs. `bar` is the weakest value at the milestone among
    the trials that continued: what it took to go on, as observed. It is not the cut-off ASHA
    computed for each arrival: ASHA is asynchronous, comparing each trial only with the trials that
    reached the rung before it (the (1 - 1/reduction_factor) quantile of their values, the first
    arrival always continuing), so a stopped trial can hold a value above `bar`."""
    better = max if spec.mode == "max" else min
    worse = min if spec.mode == "max" else max
    out = []
    for m in sorted(asha_rungs(spec)):
        reached, stopped, continued, other = {}, {}, {}, {}
        for t in trials:
            v = _value_at(list(t.results), m, spec.metric)
            if v is None:
                continue
            reached[t.trial_id] = v
            if t.epochs > m:
                continued[t.trial_id] = v
            elif t.outcome == "asha_stopped":
                stopped[t.trial_id] = v
            else:
                other[t.trial_id] = t.outcome
        out.append(
            Rung(
                m,
                reached,
                stopped,
                continued,
                other,
                1 - 1 / spec.scheduler.reduction_factor,
                worse(continued.values()) if continued else None,
                better(stopped.values()) if stopped else None,
            )
        )
    return out
