"""The experiment folder as values, shaped like Ray's `ResultGrid` / `Result` but on raydigits'
records: one `Experiment` per folder (`Experiment.open(location)`, the one way in), one frozen
`Trial` per trial of the search and of every `extend` run inside it. Ray-free and torch-free:
reading a finished experiment (report, export, reproduce, extend's bookkeeping) starts neither
(tests/test_layers.py).

- `layout.py`    every file name of the folder; the spec and run records read and written
- `records.py`   outcome, run and ETA records (frozen); the outcomes and "unfinished"; the legacy derivation
- `trials.py`    `Trial` (its best score, scores, checkpoints) and `read_results`, Tune's result.json read once
- `selection.py` the best (trial, epoch) on validation (`choose_best`)
- `front.py`     a multi-objective search's Pareto front on validation (`Front`), and export's `--pick`
- `paired.py`    its paired ties: the candidates, exact McNemar tests, Holm's correction
- `completion.py` final/'s completion marker: written last, checked by every reader of final/"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from ..errors import UserError
from ..ray_compat import trial_states
from ..spec import SearchSpec
from ..storage import Location, as_location
from .completion import FinalState, final_state
from .front import Front, Point, pareto_front
from .layout import FINAL_DIR, audit_runs, extension_runs, read_spec
from .paired import PairedTies, Screen, candidates, paired_ties, ties_line
from .records import UNFINISHED, OutcomeRecord, RunRecord, read_record, read_run
from .selection import Choice, choose_best
from .trials import Checkpoint, Trial, frame, read_results, read_trials

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Checkpoint",
    "Choice",
    "Experiment",
    "FinalState",
    "Front",
    "Point",
    "Run",
    "PairedTies",
    "Screen",
    "Trial",
    "candidates",
    "choose_best",
    "paired_ties",
    "read_results",
    "ties_line",
]


@dataclass(frozen=True)
class Run:
    """One Tune run of the experiment: the search itself, or an `extend` run inside it."""

    name: str  # "search" or "extend_<k>"
    location: Location
    spec: SearchSpec


@dataclass(frozen=True)
class Experiment:
    location: Location
    spec: SearchSpec

    @classmethod
    def open(cls, location: Location | str) -> "Experiment":
        """The experiment at `location` (local folder or any storage URI); a UserError naming the
        place when it holds no raydigits search."""
        location = as_location(location)
        return cls(location, read_spec(location))

    @property
    def name(self) -> str:
        return self.location.name

    @property
    def final(self) -> Location:
        return self.location / FINAL_DIR

    def final_state(self) -> FinalState:
        """Whether final/ is complete (its marker there) and current (made from the trials as they are)."""
        return final_state(self.final, self._trials)

    @cached_property
    def runs(self) -> tuple[Run, ...]:
        """The search, every extension and every audit run, each with its own spec."""
        subs = [*extension_runs(self.location), *audit_runs(self.location)]
        return (Run("search", self.location, self.spec), *(Run(r.name, r, read_spec(r)) for r in subs))

    @cached_property
    def _trials(self) -> tuple[Trial, ...]:
        return tuple(t for run in self.runs for t in read_trials(run.location, run.name, run.spec))

    @property
    def trials(self) -> tuple[Trial, ...]:
        """Every trial of every run (run order, then trial id); read once."""
        if not self._trials:
            raise UserError(f"{self.location}: the experiment has no trials")
        return self._trials

    def trial(self, trial_id: str) -> Trial:
        for t in self.trials:
            if t.trial_id == trial_id:
                return t
        raise KeyError(trial_id)

    def frame(self) -> "pd.DataFrame":
        """One row per trial (trials.csv's columns) as a pandas DataFrame."""
        return frame(self.trials, self.spec)

    def unfinished(self) -> list[str]:
        """The search's own trials that neither finished nor errored (a Ctrl-C leaves some), from
        Tune's state alone."""
        return [s["trial_id"] for s in trial_states(self.location) if s["status"] in UNFINISHED]

    def best(self) -> Choice:
        return choose_best(self.trials, self.spec)

    def front(self) -> Front:
        """Every trial placed against the spec's objectives on validation, each at its chosen epoch: the
        non-dominated usable, feasible ones are the front; the others dominated, infeasible or unusable."""
        return pareto_front(self.trials, self.spec)

    def tie_candidates(self, choice: Choice, n: int) -> Screen:
        """The trials to test against the shipped `choice` on `n` validation images (paired.py)."""
        return candidates(self.trials, self.spec, choice, n)

    @property
    def outcomes(self) -> OutcomeRecord | None:
        return read_record(self.location)

    @property
    def run_record(self) -> RunRecord:
        return read_run(self.location)
