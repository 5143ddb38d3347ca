"""A trial of a finished (or interrupted) experiment as a frozen value: its config, status,
outcome, reported results and checkpoints, read once from Tune's state and result files (plain
JSON: no pickle is loaded). `Trial.best` is the one definition of a trial's best usable score."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..ray_compat import trial_states
from ..spec import SearchSpec
from ..storage import Location, as_location
from .layout import CHECKPOINT_FILE, RESULT_FILE
from .records import NEVER_CHOSEN, UNFINISHED, OutcomeRecord, derive_outcome, read_record

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Checkpoint:
    """One kept epoch of a trial: its reported value and where its weights are."""

    trial_id: str
    epoch: int
    value: float
    location: Location  # .../checkpoint_<n>/checkpoint.pt
    val_n: int | None  # validation images the value was measured on (None: older runs)
    config: dict[str, Any]


@dataclass(frozen=True)
class Trial:
    run: str  # "search", or the `extend_<k>` run it belongs to
    trial_id: str
    status: str  # Tune's
    outcome: str  # records.OUTCOMES
    epochs: int  # the last epoch it reported
    config: dict[str, Any]
    results: tuple[dict[str, Any], ...]  # its reports, epoch by epoch of the weights it ended with
    path: Location
    retries: int = 0

    @property
    def usable(self) -> bool:
        """Whether the final stage may choose it (errored, diverged and out-of-memory trials never)."""
        return self.outcome not in NEVER_CHOSEN

    @property
    def unfinished(self) -> bool:
        return self.status in UNFINISHED

    def scores(self, metric: str) -> list[tuple[int, float]]:
        """(epoch, value) of every report with a finite `metric`, diverged reports left out."""
        return [
            (int(r.get("epoch") or 0), float(r[metric]))
            for r in self.results
            if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric]) and not r.get("diverged")
        ]

    def best(self, metric: str, mode: str) -> float:
        """Its best usable score over the epochs it ran; nan when it has none."""
        values = [v for _, v in self.scores(metric)]
        if not values:
            return float("nan")
        return max(values) if mode == "max" else min(values)

    def best_report(self, metric: str, mode: str) -> dict[str, Any] | None:
        """The report holding `best` (the earliest such epoch)."""
        sign = 1 if mode == "max" else -1
        rows = [
            r
            for r in self.results
            if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric]) and not r.get("diverged")
        ]
        return max(rows, key=lambda r: (sign * r[metric], -int(r.get("epoch") or 0))) if rows else None

    def checkpoints(self, metric: str) -> list[Checkpoint]:
        """Every reported epoch with a checkpoint folder and a finite value. A trial PBT restarted from
        another trial's checkpoint numbers its next checkpoints from that one's index: a folder a later
        epoch wrote again holds that epoch, not the earlier one. Whether the file is still kept is for
        the caller to ask (`Checkpoint.location.exists()`: one request per checkpoint on a store)."""
        last_writer = {r.get("checkpoint_dir_name"): i for i, r in enumerate(self.results)}
        out = []
        for i, r in enumerate(self.results):
            v, name = r.get(metric), r.get("checkpoint_dir_name")
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not name or last_writer[name] != i:
                continue
            out.append(
                Checkpoint(
                    self.trial_id,
                    int(r["epoch"]),
                    float(v),
                    self.path / name / CHECKPOINT_FILE,
                    r.get("val_n"),
                    r.get("config", {}),
                )
            )
        return out

    def row(self, spec: SearchSpec) -> dict[str, Any]:
        """Its row of trials.csv (and of the report's tables)."""
        return {
            "run": self.run,
            "trial_id": self.trial_id,
            "status": self.status,
            "outcome": self.outcome,
            "epochs": self.epochs,
            f"best_{spec.metric}": self.best(spec.metric, spec.mode or "max"),
            "retries": self.retries,
            **{f"param.{k}": v for k, v in self.config.items()},
        }


def read_results(trial_dir: Location | str, keep_reruns: bool = False) -> list[dict[str, Any]]:
    """A trial's reported results (Tune's result.json), epoch by epoch of the weights it ended with: a
    line cut by a crash is skipped, and an epoch reported again (the trial went on from an earlier
    checkpoint: a retry, or PBT handing it another trial's) replaces that epoch and every later one
    of the abandoned run. `keep_reruns`: every line as Tune wrote it, abandoned epochs included."""
    try:
        text = (as_location(trial_dir) / RESULT_FILE).read_text()
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        epoch = row.get("epoch")
        while not keep_reruns and epoch is not None and out and (out[-1].get("epoch") or 0) >= epoch:
            out.pop()
        out.append(row)
    return out


def read_trials(run: Location, run_name: str, run_spec: SearchSpec) -> list[Trial]:
    """The trials of one Tune run (the search, or one extension), each with its outcome: as recorded
    when it ended, else derived (records.derive_outcome) by the run's own spec."""
    record = read_record(run) or OutcomeRecord()
    out = []
    for state in trial_states(run):
        results = read_results(state["path"])
        epochs = max((int(r["epoch"]) for r in results), default=0)
        recorded = record.outcome(state["trial_id"])
        if recorded == "interrupted" and state["status"] not in UNFINISHED:
            recorded = None  # provisional: the trial ran on after a resume
        outcome = recorded or derive_outcome(state["status"], results, epochs, run_spec)
        out.append(
            Trial(
                run_name,
                state["trial_id"],
                state["status"],
                outcome,
                epochs,
                dict(state["config"]),
                tuple(results),
                as_location(state["path"]),
                int(state["num_failures"]),
            )
        )
    return sorted(out, key=lambda t: t.trial_id)


def frame(trials: Iterable[Trial], spec: SearchSpec) -> "pd.DataFrame":
    """One row per trial (`Trial.row`), for trials.csv, the report's tables and fANOVA."""
    import pandas as pd

    return pd.DataFrame([t.row(spec) for t in trials])
