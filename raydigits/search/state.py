"""Tune's experiment state read as plain JSON: each trial's id, status, config and directory.
Tune's own reader (ExperimentAnalysis) unpickles parts of the state; the final stage and `export`
need none of those parts, so they load no pickle at all."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def trial_states(exp_dir: Path) -> list[dict]:
    """[{trial_id, status, config, path, num_failures}] from the newest experiment_state-*.json."""
    exp_dir = Path(exp_dir)
    files = sorted(exp_dir.glob("experiment_state-*.json"))
    if not files:
        raise UserError(f"{exp_dir}: no Tune experiment state (experiment_state-*.json)")
    try:
        data = json.loads(files[-1].read_text())
        trials = []
        for state_json, runtime_json in data["trial_data"]:
            state, runtime = json.loads(state_json), json.loads(runtime_json)
            config = state.get("config") or {}
            trials.append({"trial_id": state["trial_id"], "status": state["status"],
                           "config": config if isinstance(config, dict) else {},
                           "path": exp_dir / state.get("relative_logdir", state["trial_id"]),
                           "num_failures": int(runtime.get("num_failures", 0))})
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{files[-1]}: unreadable Tune experiment state ({type(exc).__name__}: {exc})") from None
    return trials


def unfinished_trials(exp_dir: Path) -> list[str]:
    """Trials neither TERMINATED nor ERROR (a search stopped by Ctrl-C leaves some)."""
    return [t["trial_id"] for t in trial_states(exp_dir) if t["status"] not in ("TERMINATED", "ERROR")]
