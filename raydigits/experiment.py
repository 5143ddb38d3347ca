"""Reading a finished (or interrupted) experiment: its trials from Tune's state and result files,
each trial's outcome (as recorded by search/recorder.py when it happened), and the best
(trial, epoch) on validation. Plain JSON: no pickle is loaded."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import pandas as pd

from .errors import UserError
from .search.outcomes import NEVER_CHOSEN, UNFINISHED, read_record
from .search.ray_compat import trial_states
from .spec import SearchSpec, asha_rungs  # noqa: F401  (asha_rungs: read here too)
from .search.trainable import CHECKPOINT_FILE
from .storage import Location, as_location

INTERNAL = ["path", "results", "config"]  # load_trials columns kept out of trials.csv


@dataclass
class Choice:
    trial_id: str
    epoch: int
    value: float
    checkpoint: Location
    config: dict
    note: str = ""  # why this epoch rather than the trial's best one (select_epoch: within_se)


def load_trials(exp_dir: Location | str, spec: SearchSpec) -> pd.DataFrame:
    """One row per trial of the search and of every `extend` run inside it (search/extend.py): run,
    id, status, outcome, epochs, best val, params, and its path, config and reported results (read
    once here; `INTERNAL` columns are not written to trials.csv). Each run's outcomes are judged by
    its own spec (an extension may allow more epochs)."""
    from .search.extend import run_specs
    exp_dir = as_location(exp_dir)
    rows = []
    for order, (run, run_spec) in enumerate(run_specs(exp_dir, spec)):
        record = (read_record(run) or {"trials": {}})["trials"]
        for trial in trial_states(run):
            row = _trial_row(trial, record, run_spec, spec)
            rows.append({"run": run.name if order else "search", "run_order": order, **row})
    if not rows:
        raise UserError(f"{exp_dir}: the experiment has no trials")
    df = pd.DataFrame(rows).sort_values(["run_order", "trial_id"]).reset_index(drop=True)
    return df.drop(columns="run_order")


def _trial_row(trial: dict, record: dict, run_spec: SearchSpec, spec: SearchSpec) -> dict:
    path = trial["path"]
    results = read_results(path)
    epochs = max((int(r["epoch"]) for r in results), default=0)
    recorded = record.get(trial["trial_id"], {}).get("outcome")
    if recorded == "interrupted" and trial["status"] not in UNFINISHED:
        recorded = None  # provisional: the trial ran on after a resume
    outcome = recorded or derive_outcome(trial["status"], results, epochs, run_spec)
    vals = [r[spec.metric] for r in results if r.get(spec.metric) is not None and not r.get("diverged")]
    best = (max(vals) if spec.mode == "max" else min(vals)) if vals else float("nan")
    row = {"trial_id": trial["trial_id"], "status": trial["status"], "outcome": outcome, "epochs": epochs,
           f"best_{spec.metric}": best, "path": str(path), "results": results, "config": trial["config"]}
    row["retries"] = trial["num_failures"]
    row.update({f"param.{k}": v for k, v in trial["config"].items()})
    return row


def derive_outcome(status: str, results: list[dict], epochs: int, spec: SearchSpec) -> str:
    """The outcome of a trial with no record: experiments written before outcomes were recorded,
    or trials of a driver that was killed. Re-derived from the status and the reported results."""
    diverged = any(r.get("diverged") for r in results)
    stop = next((r.get("stop_reason") for r in reversed(results) if r.get("stop_reason")), "")
    if status == "ERROR":
        return "error"
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


def read_results(trial_dir: Location | str) -> list[dict]:
    """A trial's reported results (Tune's result.json), epoch by epoch of the weights it ended with: a
    line cut by a crash is skipped, and an epoch reported again (the trial went on from an earlier
    checkpoint: a retry, or PBT handing it another trial's) replaces that epoch and every later one
    of the abandoned run."""
    try:
        text = (as_location(trial_dir) / "result.json").read_text()
    except FileNotFoundError:
        return []
    out: list[dict] = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        epoch = row.get("epoch")
        while epoch is not None and out and (out[-1].get("epoch") or 0) >= epoch:
            out.pop()
        out.append(row)
    return out


def unfinished_trials(exp_dir: Location | str) -> list[str]:
    """Trials neither TERMINATED nor ERROR (a search stopped by Ctrl-C leaves some)."""
    return [t["trial_id"] for t in trial_states(exp_dir) if t["status"] not in ("TERMINATED", "ERROR")]


def choose_best(trials: pd.DataFrame, spec: SearchSpec) -> Choice:
    """The trial with the best reported epoch on validation over every usable trial (errored,
    diverged and out-of-memory trials are never chosen), and of it, by `spec.select_epoch`, that
    epoch or the latest kept one within one standard error of it. Its own checkpoint (kept by
    CheckpointConfig's best-by-metric rule, which always keeps the latest too)."""
    candidates = []  # (Choice, validation size)
    for _, t in trials.iterrows():
        if t["outcome"] in NEVER_CHOSEN:
            continue
        # a trial PBT restarted from another trial's checkpoint numbers its next checkpoints from that
        # one's index: a folder a later epoch wrote again holds that epoch, not the earlier one
        last_writer = {r.get("checkpoint_dir_name"): id(r) for r in t["results"]}
        for r in t["results"]:
            v = r.get(spec.metric)
            if v is None or not math.isfinite(v) or not r.get("checkpoint_dir_name"):
                continue
            if last_writer[r["checkpoint_dir_name"]] != id(r):
                continue
            ck = as_location(t["path"]) / r["checkpoint_dir_name"] / CHECKPOINT_FILE
            candidates.append((Choice(t["trial_id"], int(r["epoch"]), v, ck, r.get("config", {})), r.get("val_n")))
    sign = 1 if spec.mode == "max" else -1
    candidates.sort(key=lambda c: (sign * c[0].value, -c[0].epoch), reverse=True)  # ties: the earlier epoch
    best, val_n = next(((c, n) for c, n in candidates if c.checkpoint.exists()), (None, None))
    if best is None:
        raise UserError("no usable trial: every trial errored, diverged, ran out of memory, or left no checkpoint")
    if spec.select_epoch == "within_se" and spec.metric == "val_acc" and val_n:
        se = math.sqrt(best.value * (1 - best.value) / val_n)
        later = sorted((c for c, _ in candidates if c.trial_id == best.trial_id and c.epoch > best.epoch
                        and c.value >= best.value - se), key=lambda c: c.epoch, reverse=True)
        pick = next((c for c in later if c.checkpoint.exists()), None)  # only this trial's folders are asked
        if pick is not None:
            return replace(pick, note=f"{spec.metric} {pick.value:.4f}, the latest epoch within one standard error "
                                      f"({se:.4f} on {int(val_n):,} images) of the trial's best, {best.value:.4f} "
                                      f"at epoch {best.epoch}")
    return best


TIE_SE = 2.0  # trials within this many standard errors of the winner's best cannot be ranked apart


@dataclass
class Ties:
    margin: float                # TIE_SE binomial standard errors of the winner's best, on val_n images
    val_n: int
    best: float                  # the winner's best value
    trials: list[tuple[str, float]]  # other usable trials within the margin, best first


def statistical_ties(trials: pd.DataFrame, spec: SearchSpec, winner: str) -> Ties | None:
    """The other usable trials whose best val_acc lies within TIE_SE binomial standard errors
    (√(p(1−p)/n), p the winner's best, n its validation size) of the winner's best: on a validation
    of that size the search cannot tell them from the winner, so its ranking among them is noise.
    None for a metric without a binomial error (val_loss) or results without `val_n`."""
    if spec.metric != "val_acc":
        return None
    best: dict[str, tuple[float, int | None]] = {}
    for _, t in trials.iterrows():
        rows = [r for r in t["results"] if r.get(spec.metric) is not None and math.isfinite(r[spec.metric])]
        if t["outcome"] not in NEVER_CHOSEN and rows:
            top = max(rows, key=lambda r: r[spec.metric])
            best[t["trial_id"]] = (top[spec.metric], top.get("val_n"))
    if winner not in best or not best[winner][1]:
        return None
    p, n = best[winner]
    margin = TIE_SE * math.sqrt(p * (1 - p) / n)
    close = sorted(((tid, v) for tid, (v, _) in best.items() if tid != winner and v >= p - margin),
                   key=lambda tv: -tv[1])
    return Ties(margin, int(n), p, close)


def ties_line(t: Ties, metric: str) -> str:
    """The summary's and report's sentence about `statistical_ties`."""
    within = f"within {TIE_SE:g} standard errors ({t.margin:.4f} on {t.val_n:,} validation images) of its best {metric} {t.best:.4f}"
    if not t.trials:
        return f"no other trial is {within}: the validation ranks it first"
    listed = ", ".join(f"{tid} {v:.4f}" for tid, v in t.trials)
    return (f"{len(t.trials)} other trial{'s are' if len(t.trials) > 1 else ' is'} {within}: {listed}; "
            "the validation cannot rank these apart, so any of them is as good a pick")
