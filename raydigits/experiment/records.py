"""The records raydigits keeps beside Tune's state, as small frozen values: how each trial ended
(written by search/recorder.py's Tune callback when it happens), the run record (started,
finished) and the ETA's estimates; plus the one definition of the outcomes and of "unfinished".
Also the legacy path: the outcome of a trial with no record (experiments written before outcomes
were recorded, or trials of a killed driver), derived from its status and results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any

from ..spec import SearchSpec, asha_rungs
from ..storage import Location, as_location
from .layout import ETA_FILE, OUTCOMES_FILE, RUN_FILE

OUTCOMES = (
    "completed",
    "asha_stopped",
    "time_budget",
    "not_started",
    "early_stopped",
    "diverged",
    "oom",
    "error",
    "interrupted",
    "infeasible",
)
# infeasible: its costs break the spec's constraints (stopped at its first result, search/runner.py)
NEVER_CHOSEN = ("error", "diverged", "oom", "infeasible")
UNFINISHED = ("RUNNING", "PENDING", "PAUSED")  # Tune statuses of a trial that has not ended
ACTIVE = ("RUNNING", "PAUSED")  # ... of those, the ones that started (the ETA's running trials)
ENDED = ("TERMINATED", "ERROR")  # every other status
# a trial's own reason to stop (Trainer.stop_reason) → its outcome
STOP_REASONS = {"early_stop": "early_stopped", "oom": "oom", "diverged": "diverged"}
ENDINGS = (None, "finished", "time_budget", "interrupted")  # how a fit ended; None while it runs
MAX_ESTIMATES = 400  # ETA estimates kept in the record (the first one always)


# ------------------------------------------------------------------ outcomes
@dataclass(frozen=True)
class TrialOutcome:
    outcome: str
    epochs: int = 0


@dataclass(frozen=True)
class OutcomeRecord:
    """<experiment>/raydigits_outcomes.json: {"trials": {id: {"outcome", "epochs"}}, "ended",
    "budget_fired"}; `ended` is None while a fit runs (or after its driver was killed)."""

    trials: Mapping[str, TrialOutcome] = field(default_factory=lambda: MappingProxyType({}))
    ended: str | None = None
    budget_fired: bool | None = None  # None: written before the budget was recorded

    def outcome(self, trial_id: str) -> str | None:
        t = self.trials.get(trial_id)
        return t.outcome if t else None

    def with_trial(self, trial_id: str, outcome: str, epochs: int) -> "OutcomeRecord":
        return replace(self, trials=MappingProxyType({**self.trials, trial_id: TrialOutcome(outcome, epochs)}))

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "trials": {k: {"outcome": v.outcome, "epochs": v.epochs} for k, v in self.trials.items()},
            "ended": self.ended,
        }
        if self.budget_fired is not None:
            d["budget_fired"] = self.budget_fired
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "OutcomeRecord":
        trials = {
            str(k): TrialOutcome(str(v.get("outcome")), int(v.get("epochs") or 0))
            for k, v in d["trials"].items()
            if isinstance(v, dict)
        }
        fired = d.get("budget_fired")
        return cls(MappingProxyType(trials), d.get("ended"), None if fired is None else bool(fired))


def read_record(exp_dir: Location | str) -> OutcomeRecord | None:
    """The record, or None for an experiment written before outcomes were recorded."""
    try:
        data = json.loads((as_location(exp_dir) / OUTCOMES_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("trials"), dict):
        return None
    return OutcomeRecord.from_json(data)


def write_record(exp_dir: Location | str, record: OutcomeRecord) -> None:
    (as_location(exp_dir) / OUTCOMES_FILE).write_text(json.dumps(record.to_json(), indent=1, sort_keys=True))


def ended_outcome(
    result: dict[str, Any] | None, max_epochs: int, broken: Callable[[dict[str, Any]], list[str]] | None = None
) -> str:
    """The outcome of a trial that ended cleanly with `result` as its last report: infeasible when
    its costs break a constraint (`broken`: SearchSpec.broken_constraints), else its own stop
    reason, else completed when every epoch ran, else the scheduler stopped it."""
    result = result or {}
    epochs = int(result.get("epoch") or 0)
    if broken is not None and result and broken(result):
        return "infeasible"
    if result.get("diverged"):
        return "diverged"
    reason = STOP_REASONS.get(result.get("stop_reason") or "")
    if reason:
        return reason
    if epochs == 0:
        return "not_started"
    return "completed" if epochs >= max_epochs else "asha_stopped"


def derive_outcome(status: str, results: list[dict[str, Any]], epochs: int, spec: SearchSpec) -> str:
    """Legacy: the outcome of a trial with no record (experiments written before outcomes were
    recorded, or trials of a driver that was killed), re-derived from its status and results."""
    diverged = any(r.get("diverged") for r in results)
    stop = next((r.get("stop_reason") for r in reversed(results) if r.get("stop_reason")), "")
    if status == "ERROR":
        return "error"
    if results and spec.broken_constraints(results[-1]):
        return "infeasible"
    if diverged:
        return "diverged"
    if stop == "oom":
        return "oom"  # out of GPU memory: ended cleanly, never a candidate
    if status in UNFINISHED:
        return "interrupted"
    if stop == "early_stop":
        return "early_stopped"
    if epochs == 0:
        return "not_started"  # the time budget ran out first
    if epochs < spec.epochs:
        # ASHA stops trials at its rungs only; a stop between rungs was the time budget's
        return "asha_stopped" if epochs in asha_rungs(spec) else "time_budget"
    return "completed"


# ------------------------------------------------------------------ the run record
@dataclass(frozen=True)
class RunRecord:
    """<experiment>/raydigits_run.json: when the search started and finished (None: unknown / not yet)."""

    name: str = ""
    started: float | None = None
    finished: float | None = None

    def finishing(self, at: float) -> "RunRecord":
        return replace(self, finished=at)

    def to_json(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (("name", self.name), ("started", self.started), ("finished", self.finished))
            if v is not None
        }

    @classmethod
    def from_json(cls, d: Any) -> "RunRecord":
        if not isinstance(d, dict):
            return cls()
        num = lambda v: float(v) if isinstance(v, (int, float)) else None
        return cls(str(d.get("name") or ""), num(d.get("started")), num(d.get("finished")))


def read_run(exp: Location | str) -> RunRecord:
    """The run record; an empty one when missing or unreadable."""
    try:
        data = json.loads((as_location(exp) / RUN_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return RunRecord()
    return RunRecord.from_json(data)


def start_run(exp: Location) -> None:
    (exp / RUN_FILE).write_text(json.dumps(RunRecord(name=exp.name, started=time.time()).to_json()))


def finish_run(exp: Location) -> None:
    (exp / RUN_FILE).write_text(json.dumps(read_run(exp).finishing(time.time()).to_json()))


# ------------------------------------------------------------------ the ETA's estimates
@dataclass(frozen=True)
class Estimate:
    """One ETA estimate, as progress.py made it."""

    at: float  # wall clock of the estimate
    remaining_s: float  # the time it said was left
    done: int = 0  # trials ended by then, of `total`
    total: int = 0
    running: tuple[int, ...] = ()  # the epochs the running trials had reached
    epoch_s: float | None = None  # the median epoch time it used
    start_s: float | None = None  # a trial's measured start-up
    concurrency: int | None = None  # trials running at once
    budget_left_s: float | None = None  # the time budget left, if any

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "running": list(self.running)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Estimate":
        known = {f: d[f] for f in cls.__dataclass_fields__ if f in d}
        return cls(**{**known, "running": tuple(known.get("running", ()))})


def read_estimates(exp_dir: Location | str) -> list[Estimate]:
    try:
        return [Estimate.from_json(r) for r in json.loads((as_location(exp_dir) / ETA_FILE).read_text())["estimates"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def write_estimates(exp_dir: Location | str, estimates: list[Estimate]) -> None:
    kept = estimates if len(estimates) <= MAX_ESTIMATES else [estimates[0], *estimates[-(MAX_ESTIMATES - 1) :]]
    (as_location(exp_dir) / ETA_FILE).write_text(json.dumps({"estimates": [e.to_json() for e in kept]}, indent=1))
