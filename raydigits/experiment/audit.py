"""What early stopping cost, measured in every search: the trials early stopping ended with the
best value at their last rung are trained on from their last checkpoint to max_t (an audit run,
search/audit.py), and their ends are compared with the best trial early stopping kept. Here, Ray-
and torch-free: which trials to audit, and the verdict from the runs' results."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..spec import AUDIT_KEY, SearchSpec
from .layout import AUDIT_PREFIX
from .trials import Checkpoint, Trial

STOPPED = ("asha_stopped",)  # outcomes of trials the scheduler ended early
NOISE_SE = 2.0  # a cost within this many binomial standard errors is not measurable


def audit_candidates(trials: Iterable[Trial], spec: SearchSpec, top_k: int) -> list[tuple[Trial, Checkpoint]]:
    """The `top_k` trials early stopping ended that were not audited yet, best value at their last
    reported epoch first, each with the checkpoint of that epoch (a trial without one is passed over)."""
    trials = list(trials)
    audited = {t.config.get(AUDIT_KEY) for t in trials if t.run.startswith(AUDIT_PREFIX)}
    sign = 1 if spec.mode == "max" else -1
    ranked = []
    for t in trials:
        if t.outcome not in STOPPED or t.trial_id in audited or t.run.startswith(AUDIT_PREFIX):
            continue
        last = last_checkpoint(t, spec)
        if last is not None:
            ranked.append((t, last))
    ranked.sort(key=lambda tc: (-sign * tc[1].value, tc[0].trial_id))
    kept = (tc for tc in ranked if tc[1].location.exists())  # asked of storage in rank order only
    return [tc for _, tc in zip(range(top_k), kept)]


def last_checkpoint(trial: Trial, spec: SearchSpec) -> Checkpoint | None:
    """The checkpoint of a stopped trial's last reported epoch: where its audit trains on from."""
    return next((c for c in trial.checkpoints(spec.metric) if c.epoch == trial.epochs), None)


@dataclass(frozen=True)
class Audited:
    trial_id: str  # the stopped trial
    audit_trial_id: str  # its continuation
    stopped_epoch: int
    at_stop: float  # its value at the rung where it was stopped
    at_max_t: float  # the continuation's value at its last epoch
    best: float  # the continuation's best value


@dataclass(frozen=True)
class Regret:
    audited: tuple[Audited, ...]
    kept_best: float  # the best value of any usable trial early stopping did not stop
    kept_trial: str
    cost: float  # max(0, best audited - kept_best), in the metric's units
    margin: float | None  # NOISE_SE binomial standard errors of kept_best (None: no val_n / not accuracy)
    above: tuple[str, ...]  # audited trials ending above every trial early stopping kept
    metric: str = "val_acc"  # val_acc: fractions, shown in percentage points; val_loss: in its own units

    @property
    def measurable(self) -> bool:
        return self.cost > (self.margin if self.margin is not None else 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "audited": [a.__dict__ for a in self.audited],
            "kept_best": self.kept_best,
            "kept_trial": self.kept_trial,
            "cost": self.cost,
            "margin": self.margin,
            "measurable": self.measurable,
            "ended_above_every_kept_trial": list(self.above),
            "metric": self.metric,
            "line": regret_line(self),
        }


def early_stopping_cost(trials: Iterable[Trial], spec: SearchSpec) -> Regret | None:
    """The verdict over every audit run; None when nothing was audited."""
    trials = list(trials)
    by_id = {t.trial_id: t for t in trials}
    sign = 1 if spec.mode == "max" else -1
    audited = []
    for a in trials:
        original = by_id.get(str(a.config.get(AUDIT_KEY))) if a.run.startswith(AUDIT_PREFIX) else None
        scores = a.scores(spec.metric)
        if original is None or not scores or not a.usable:
            continue
        stop = original.scores(spec.metric)
        audited.append(
            Audited(
                original.trial_id,
                a.trial_id,
                original.epochs,
                stop[-1][1] if stop else math.nan,
                scores[-1][1],
                a.best(spec.metric, spec.mode or "max"),
            )
        )
    kept = [
        t
        for t in trials
        if t.usable and t.outcome not in STOPPED and not t.run.startswith(AUDIT_PREFIX) and t.scores(spec.metric)
    ]
    if not audited or not kept:
        return None
    top = max(kept, key=lambda t: sign * t.best(spec.metric, spec.mode or "max"))
    kept_best = top.best(spec.metric, spec.mode or "max")
    best_audit = max(sign * a.best for a in audited) * sign
    report = top.best_report(spec.metric, spec.mode or "max") or {}
    n = report.get("val_n")
    margin = (
        NOISE_SE * math.sqrt(kept_best * (1 - kept_best) / n)
        if spec.metric == "val_acc" and n and 0 <= kept_best <= 1
        else None
    )
    above = tuple(a.trial_id for a in audited if sign * (a.best - kept_best) > 0)
    return Regret(
        tuple(audited), kept_best, top.trial_id, max(0.0, sign * (best_audit - kept_best)), margin, above, spec.metric
    )


def regret_line(r: Regret) -> str:
    """The summary's and report's sentence about what early stopping cost in this search."""
    pp = 100 if r.metric == "val_acc" else 1  # a loss in [0, 1] is not a fraction to show in pp
    unit = " pp" if pp == 100 else ""
    each = "; ".join(
        f"{a.trial_id} stopped at epoch {a.stopped_epoch} at {a.at_stop:.4f}, "
        f"{a.at_max_t:.4f} at max_t (best {a.best:.4f})"
        for a in r.audited
    )
    noise = f" (noise: {pp * r.margin:.2f}{unit}, {NOISE_SE:g} standard errors)" if r.margin is not None else ""
    if r.measurable:
        verdict = f"early stopping cost {pp * r.cost:.2f}{unit}{noise}"
    else:
        verdict = f"early stopping cost nothing measurable ({pp * r.cost:.2f}{unit}{noise})"
    line = f"{verdict}: best kept trial {r.kept_trial} {r.kept_best:.4f}; audited: {each}"
    if r.above:
        side = "above" if r.metric == "val_acc" else "below"  # a lower loss is the better end
        line += f". {', '.join(r.above)}, stopped early, ended {side} every trial early stopping kept" + (
            "" if r.measurable else " (within noise)"
        )
    return line
