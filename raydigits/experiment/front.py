"""The Pareto front of a multi-objective search, on validation only: which usable, feasible trials no
other one dominates in the spec's objectives, each at its chosen epoch (`choose_best`'s rule, applied
to the trial alone) with its objective values there (a cost is the trial's, measured once). The other
trials are listed with why they are not on it (dominated, infeasible, unusable). Also the `--pick`
language of `export`: bounds such as `latency_ms<=2,val_acc>=0.98` and the most accurate member
within them. No Ray, no torch (pareto.py is numpy)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..pareto import non_dominated_sort, oriented
from ..spec import SearchSpec
from ..spec.model import COST_METRICS, QUALITY_METRICS
from .selection import Choice, choose_epoch
from .trials import Trial

FRONT, DOMINATED, INFEASIBLE, UNUSABLE = "front", "dominated", "infeasible", "unusable"
PICKABLE = ("val_acc", *COST_METRICS)  # what a --pick bound may name
OPERATORS = ("<=", ">=", "<", ">")  # longest first: `<=` is not read as `<` then `=2`
_BOUND = re.compile(r"^\s*([A-Za-z_]+)\s*(<=|>=|<|>)\s*([^\s<>=]+)\s*$")


@dataclass(frozen=True)
class Point:
    """One trial placed against the objectives."""

    trial_id: str
    status: str  # FRONT, DOMINATED, INFEASIBLE or UNUSABLE
    why: str  # for the last two: the broken constraints / what made it unusable
    config: dict[str, Any]
    choice: Choice | None = None  # its chosen (epoch, checkpoint) on validation; None when unusable
    values: dict[str, float] = field(default_factory=dict)  # every objective at that epoch, in order
    val_acc: float = float("nan")  # validation accuracy at that epoch (whatever the quality metric is)
    costs: dict[str, float] = field(default_factory=dict)  # every COST_METRIC the trial reported
    rank: int | None = None  # its non-dominated front number among the feasible (0: on the front)

    @property
    def epoch(self) -> int | None:
        return self.choice.epoch if self.choice else None

    def metric(self, name: str) -> float:
        """A --pick bound's metric: val_acc, or one of the costs (nan when it was not reported)."""
        return self.val_acc if name == "val_acc" else self.costs.get(name, float("nan"))


@dataclass(frozen=True)
class Front:
    objectives: tuple[tuple[str, str], ...]  # (metric, mode), the spec's order
    points: tuple[Point, ...]  # every trial, in the experiment's order

    @property
    def members(self) -> tuple[Point, ...]:
        """The front, best quality first (ties: the trial id)."""
        quality = next(m for m in self.objectives if m[0] in QUALITY_METRICS)
        sign = -1 if quality[1] == "max" else 1
        on = [p for p in self.points if p.status == FRONT]
        return tuple(sorted(on, key=lambda p: (sign * p.values[quality[0]], p.trial_id)))

    def status(self, trial_id: str) -> Point:
        for p in self.points:
            if p.trial_id == trial_id:
                return p
        raise KeyError(trial_id)

    def member(self, trial_id: str) -> Point:
        """A front member by trial id; a UserError naming the id and what it is otherwise."""
        try:
            p = self.status(trial_id)
        except KeyError:
            raise UserError(f"--trial {trial_id}: no such trial; front members: {self._ids()}") from None
        if p.status != FRONT:
            raise UserError(
                f"--trial {trial_id}: not on the Pareto front ({p.status}{': ' + p.why if p.why else ''}); "
                f"front members: {self._ids()}"
            )
        return p

    def _ids(self) -> str:
        return ", ".join(p.trial_id for p in self.members) or "none"

    def pick(self, text: str) -> Point:
        """The most accurate member (by validation, `members`' order) within every bound of `text`;
        a UserError naming the bound and the closest member when none is within it."""
        bounds = parse_pick(text)
        if not self.members:
            raise UserError(f"--pick {text}: the front is empty (no usable, feasible trial)")
        for p in self.members:
            if all(_within(p.metric(m), op, v) for m, op, v in bounds):
                return p
        closest = min(self.members, key=lambda p: (_shortfall(p, bounds), p.trial_id))
        got = ", ".join(f"{m} {closest.metric(m):.4g}" for m in dict.fromkeys(m for m, _, _ in bounds))
        raise UserError(
            f"--pick {text.strip()}: no front member satisfies it; the closest is trial {closest.trial_id} ({got})"
        )


def parse_pick(text: str) -> list[tuple[str, str, float]]:
    """`latency_ms<=2, val_acc>=0.98` → [(metric, operator, value)]; a UserError on bad syntax."""
    bounds = []
    for part in text.split(","):
        m = _BOUND.match(part)
        if not m:
            raise UserError(
                f"--pick {text!r}: cannot read {part.strip()!r}; expected METRIC OP NUMBER joined by commas, "
                f"e.g. latency_ms<=2,val_acc>=0.98 (OP: {' '.join(OPERATORS)}; METRIC: {', '.join(PICKABLE)})"
            )
        name, op, raw = m.groups()
        if name not in PICKABLE:
            raise UserError(f"--pick {text!r}: {name} is not a metric a pick may bound; one of {', '.join(PICKABLE)}")
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value):
            raise UserError(f"--pick {text!r}: {raw!r} is not a finite number (in {part.strip()!r})")
        bounds.append((name, op, value))
    return bounds


def _within(x: float, op: str, v: float) -> bool:
    return {"<=": x <= v, "<": x < v, ">=": x >= v, ">": x > v}[op]


def _shortfall(p: Point, bounds: list[tuple[str, str, float]]) -> float:
    """How far `p` is outside the bounds, each relative to its bound's size, summed (inf when unknown)."""
    total = 0.0
    for name, op, v in bounds:
        x = p.metric(name)
        if math.isnan(x):
            return math.inf
        if not _within(x, op, v):
            total += abs(x - v) / max(abs(v), 1e-12)
    return total


def _report_at(trial: Trial, epoch: int) -> dict[str, Any]:
    return next((r for r in trial.results if r.get("epoch") == epoch), {})


def _costs(trial: Trial, at: dict[str, Any]) -> dict[str, float]:
    """The trial's costs (measured once, the same in every report): from `at` when it has them, else
    from its first report that does."""
    source = at if all(k in at for k in COST_METRICS) else next((r for r in trial.results if "latency_ms" in r), at)
    return {k: float(source[k]) for k in COST_METRICS if isinstance(source.get(k), (int, float))}


def _place(trial: Trial, spec: SearchSpec) -> Point:
    """A trial with its chosen epoch and values, or why it cannot be on the front. Infeasible is
    judged on its costs before anything else (a trial stopped for breaking a constraint is that)."""
    measured = _costs(trial, {})  # its costs, whatever else it lacks
    broken = spec.broken_constraints(measured)
    infeasible = "; ".join(f"breaks {b}" for b in broken)
    off = INFEASIBLE if broken else UNUSABLE
    if not trial.usable:
        return Point(trial.trial_id, off, infeasible or trial.outcome, trial.config, costs=measured)
    try:
        choice = choose_epoch([trial], spec)  # the single-objective rule, over this trial alone
    except UserError:
        return Point(trial.trial_id, off, infeasible or "no checkpoint kept", trial.config, costs=measured)
    at = _report_at(trial, choice.epoch)
    costs = _costs(trial, at)
    val_acc = float(at["val_acc"]) if isinstance(at.get("val_acc"), (int, float)) else float("nan")
    values = {}
    for metric, _ in spec.objective_list:
        value = choice.value if metric == spec.metric else costs.get(metric)
        if value is None or not math.isfinite(value):
            why = infeasible or f"no {metric} reported"
            return Point(trial.trial_id, INFEASIBLE if broken else UNUSABLE, why, trial.config, choice, costs=costs)
        values[metric] = float(value)
    return Point(
        trial.trial_id, INFEASIBLE if broken else FRONT, infeasible, trial.config, choice, values, val_acc, costs
    )


def pareto_front(trials: tuple[Trial, ...], spec: SearchSpec) -> Front:
    """Every trial placed; the feasible ones sorted into fronts on validation (pareto.py)."""
    placed = [_place(t, spec) for t in trials]
    feasible = [i for i, p in enumerate(placed) if p.status == FRONT]
    modes = [mode for _, mode in spec.objective_list]
    table = [[placed[i].values[m] for m, _ in spec.objective_list] for i in feasible]
    out = list(placed)
    for rank, members in enumerate(non_dominated_sort(oriented(table, modes)) if feasible else []):
        for j in members:
            p = placed[feasible[j]]
            out[feasible[j]] = Point(
                p.trial_id,
                FRONT if rank == 0 else DOMINATED,
                "" if rank == 0 else f"front {rank + 1}",
                p.config,
                p.choice,
                p.values,
                p.val_acc,
                p.costs,
                rank,
            )
    return Front(tuple(spec.objective_list), tuple(out))
