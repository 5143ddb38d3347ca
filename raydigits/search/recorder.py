"""Tune hooks that record each trial's outcome when it happens (experiment/records.py): a `tune.Callback`
and the time budget as a `TimeoutStopper` that remembers it fired; and Tune's result loggers with
their restore step fixed (ray_compat.KeepDriverResults), which replace Tune's defaults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.stopper import TimeoutStopper

from ..experiment.records import UNFINISHED, OutcomeRecord, ended_outcome, read_record, write_record
from ..ray_compat import KeepDriverResults, experiment_dir_now
from ..storage import Location, as_location


class BudgetStopper(TimeoutStopper):
    """Tune's own time-budget stopper (what `TuneConfig(time_budget_s=...)` builds), which also
    records in the experiment's outcome file that it ended the run (Tune hands callbacks no
    reference to the stopper, so the file is where the recorder learns it)."""

    def __init__(self, timeout: float, exp_dir: Location | str):
        super().__init__(timeout)
        self.exp_dir = as_location(exp_dir)
        self.fired = False

    def stop_all(self) -> bool:
        stop = super().stop_all()
        if stop and not self.fired:
            self.fired = True
            record = read_record(self.exp_dir) or OutcomeRecord()
            try:
                write_record(self.exp_dir, replace(record, budget_fired=True))
            except Exception as exc:  # noqa: BLE001 — bookkeeping never ends a search
                print(f"raydigits: could not record the time budget in {self.exp_dir}: {exc}", flush=True)
        return stop


class ConstraintStopper(tune.Stopper):
    """Stops a trial whose result breaks the spec's constraints (`broken`: SearchSpec.broken_constraints):
    the costs are measured before the first epoch, so that is its first result. A Stopper, so it works
    under every scheduler type (fifo and pbt included); the recorder names the outcome infeasible."""

    def __init__(self, broken: Callable[[dict], list[str]]):
        self.broken = broken

    def __call__(self, trial_id: str, result: dict) -> bool:
        return bool(self.broken(result))

    def stop_all(self) -> bool:
        return False


class JsonResults(KeepDriverResults, JsonLoggerCallback):
    """result.json, the trial history every raydigits reader uses (given as a callback, it replaces
    Tune's default: Tune adds a logger only where none of its class is present)."""


class CsvResults(KeepDriverResults, CSVLoggerCallback):
    """progress.csv, for users' own tools."""


def result_loggers() -> list:
    return [JsonResults(), CsvResults()]


class OutcomeRecorder(tune.Callback):
    """Writes <experiment>/raydigits_outcomes.json (atomically) as trials end: completed,
    asha_stopped (the scheduler's STOP before the last epoch), infeasible (its costs break the spec's
    constraints: `broken`, SearchSpec.broken_constraints), early_stopped / diverged / oom (the
    trial's own stop reason), error (retries exhausted); at the end of a fit, trials it cut:
    time_budget / not_started when the budget fired (Tune marks those TERMINATED), interrupted
    for those a Ctrl-C left unfinished. A trial it has no record of is derived (records.derive_outcome)."""

    def __init__(self, exp_dir: Location | str, max_epochs: int, broken: Callable[[dict], list[str]] | None = None):
        self.exp_dir = as_location(exp_dir)
        self.max_epochs = max_epochs
        self.broken = broken
        self._record: OutcomeRecord | None = None

    # ------------------------------------------------------------ the file
    def _locate(self, trials) -> None:
        found = experiment_dir_now(trials, self.exp_dir)
        if found != self.exp_dir:
            self.exp_dir, self._record = found, None

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the experiment (tuner.pkl) and restores them on --resume:
        # the cached record must not travel, or the resumed run would write a stale copy over the file
        return {**self.__dict__, "_record": None}

    def _load(self) -> OutcomeRecord:
        if self._record is None:
            self._record = read_record(self.exp_dir) or OutcomeRecord()
        return self._record

    def _set(self, trial, outcome: str) -> None:
        self._locate([trial])
        epochs = int((trial.last_result or {}).get("epoch") or 0)
        self._save(self._load().with_trial(trial.trial_id, outcome, epochs))

    def _save(self, record: OutcomeRecord) -> None:
        self._record = record
        try:
            write_record(self.exp_dir, record)
        except Exception as exc:  # noqa: BLE001 — never let bookkeeping end a search
            print(f"raydigits: could not record trial outcomes in {self.exp_dir}: {exc}", flush=True)

    # ------------------------------------------------------------ Tune's hooks
    def setup(self, **info) -> None:
        self._record = None  # read what an earlier (interrupted) run of this experiment recorded
        self._save(replace(self._load(), ended=None, budget_fired=False))  # running

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._set(trial, ended_outcome(trial.last_result, self.max_epochs, self.broken))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._set(trial, "error")

    def on_experiment_end(self, trials, **info) -> None:
        self._locate(trials)
        self._record = None  # re-read: BudgetStopper may have written that it fired
        record = self._load()
        budget = bool(record.budget_fired)
        cut = False
        for t in trials:
            known = record.outcome(t.trial_id)
            if known not in (None, "interrupted"):
                continue
            epochs = int((t.last_result or {}).get("epoch") or 0)
            if t.status == "ERROR":
                outcome = "error"
            elif budget and t.status in (*UNFINISHED, "TERMINATED"):
                cut, outcome = True, ("time_budget" if epochs else "not_started")
            elif t.status in UNFINISHED:
                cut, outcome = True, "interrupted"
            else:  # TERMINATED with no record (Tune's cleanup after a Ctrl-C): left to derivation
                continue
            record = record.with_trial(t.trial_id, outcome, epochs)
        self._save(replace(record, ended="time_budget" if budget else ("interrupted" if cut else "finished")))
