"""How each trial ended, recorded when it happens (by `recorder.py`'s Tune callback) into
<experiment>/raydigits_outcomes.json, and read back by the final stage. No Ray import here.

The record: {"trials": {trial_id: {"outcome": ..., "epochs": n}}, "ended": null | "finished" |
"time_budget" | "interrupted", "budget_fired": bool}; "ended" is null while a fit runs (or after a
driver was killed)."""
from __future__ import annotations

import json

from ..storage import Location, as_location

OUTCOMES_FILE = "raydigits_outcomes.json"
OUTCOMES = ("completed", "asha_stopped", "time_budget", "not_started", "early_stopped", "diverged", "oom",
            "error", "interrupted")
NEVER_CHOSEN = ("error", "diverged", "oom")
UNFINISHED = ("RUNNING", "PENDING", "PAUSED")  # Tune statuses of a trial that has not ended
# a trial's own reason to stop (Trainer.stop_reason) → its outcome
STOP_REASONS = {"early_stop": "early_stopped", "oom": "oom", "diverged": "diverged"}


def ended_outcome(result: dict | None, max_epochs: int) -> str:
    """The outcome of a trial that ended cleanly with `result` as its last report: its own stop
    reason, else completed when every epoch ran, else the scheduler stopped it."""
    result = result or {}
    epochs = int(result.get("epoch") or 0)
    if result.get("diverged"):
        return "diverged"
    reason = STOP_REASONS.get(result.get("stop_reason") or "")
    if reason:
        return reason
    if epochs == 0:
        return "not_started"
    return "completed" if epochs >= max_epochs else "asha_stopped"


def read_record(exp_dir: Location | str) -> dict | None:
    """The record, or None for an experiment written before outcomes were recorded."""
    try:
        record = json.loads((as_location(exp_dir) / OUTCOMES_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("trials"), dict) else None


def write_record(exp_dir: Location | str, record: dict) -> None:
    (as_location(exp_dir) / OUTCOMES_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
