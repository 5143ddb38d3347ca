"""How long a running search still needs: a pure estimate (no Ray here), its one-line rendering,
and the record of the estimates made (<experiment>/raydigits_eta.json, written by progress.py's
Tune callback), read back by the final summary to set the first estimate against the actual time.

The model, and what it assumes:
- every trial-epoch takes `epoch_s` seconds of wall time (the median so far: measured while trials
  share the machine, so contention is in it), and each trial not yet started first costs `start_s`
  (its measured start-up: actor, data, model, until the first epoch begins);
- ASHA: a trial reaches the first rung; at each rung below max_t a fraction of the trials that
  reach it goes on. ASHA compares each arrival with the (1 - 1/rf) quantile of the values recorded
  there before it (the first always goes on), so among n arrivals in random order the expected
  fraction kept is `asha_survival(n, rf)`: 1 for one trial, about 0.48 for 8 trials at rf 3, tending
  to 1/rf for many. The search's size gives n at the first rung, and each rung's survivors the next
  one's (without the size: 1/rf everywhere). A running trial at epoch e has survived the rungs up to
  e, and only the rungs after e thin out its remaining epochs. FIFO: every trial runs max_t epochs.
  Trials that end earlier by themselves (early stopping, divergence, out of memory) are not
  foreseen: the estimate errs long for them. Measured on the CPU headline (8 trials, rf 3) with
  1/rf: the first estimate said 7 min, the search took 13.7 min;
- the expected trial-epochs left are spread over `concurrency` slots (fewer when fewer trials are
  left than slots) with no idle time between trials;
- the time budget caps it: the search ends when the budget does, whatever is left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..experiment.records import read_estimates
from ..storage import Location


@dataclass(frozen=True)
class Schedule:
    max_t: int  # epochs a trial may run
    rungs: tuple[int, ...] = ()  # ASHA's milestones below max_t (experiment.asha_rungs); () = FIFO
    reduction_factor: float = 2.0
    n_trials: int | None = None  # the search's size (None: 1/rf at every rung, the large-search limit)
    audit_k: int = 0  # stopped trials the audit trains on to max_t after the search
    keep: tuple[float, ...] = ()  # the share each rung keeps (family_asha's); () = 1/rf at every rung, as Ray
    families: int = 1  # family_asha: each family has rungs of its own, so n_trials / families arrive at each


def audit_epochs(schedule: Schedule) -> float:
    """Expected trial-epochs of the audit: each of its trials (at most as many as ASHA stops) trains
    on from the rung it was stopped at, taken as the first (the bulk of ASHA's stops), to max_t."""
    rungs = sorted(r for r in schedule.rungs if r < schedule.max_t)
    if not schedule.audit_k or not rungs:
        return 0.0
    stopped = (schedule.n_trials or schedule.audit_k) * (1 - rung_fractions(schedule)[0])
    return min(schedule.audit_k, max(1.0, stopped)) * (schedule.max_t - rungs[0])


def asha_survival(n: int, keep: float) -> float:
    """Expected fraction of `n` trials reaching a rung in random order that ASHA lets go on when the
    rung keeps the share `keep` (Ray: 1/rf): the k-th arrival goes on when its value is at least the
    (1 - keep) quantile (numpy's linear interpolation) of the k - 1 values recorded before it; the
    first always does."""
    q, kept = 1.0 - keep, 1.0
    for k in range(2, n + 1):
        p = q * (k - 2)  # the cut-off's position among the k - 1 earlier values
        lo = math.floor(p)
        above = (k - 1) - (lo + 1)  # ranks strictly above the cut-off's upper neighbour
        between = (1.0 - (p - lo)) if p != lo else 0.0  # between its two neighbours: linear share
        kept += (above + between + (1.0 if p == lo else 0.0)) / k
    return kept / max(1, n)


def rung_fractions(schedule: Schedule) -> list[float]:
    """The expected fraction kept at each rung below max_t, in order."""
    rungs = sorted(r for r in schedule.rungs if r < schedule.max_t)
    keeps = list(schedule.keep) or [1.0 / schedule.reduction_factor] * len(rungs)
    if not schedule.n_trials:
        return keeps
    out, arriving = [], schedule.n_trials / max(1, schedule.families)
    for keep in keeps:
        out.append(asha_survival(max(1, round(arriving)), keep))
        arriving *= out[-1]
    return out


def expected_epochs(schedule: Schedule, done: int = 0) -> float:
    """Expected epochs still to run for a trial that has run `done` epochs and is still going."""
    left, survive, at = 0.0, 1.0, done
    rungs = sorted(r for r in schedule.rungs if r < schedule.max_t)
    kept = dict(zip(rungs, rung_fractions(schedule)))
    for milestone in [*rungs, schedule.max_t]:
        if milestone <= at:
            continue  # a rung it already passed (a running trial at a rung has been kept there)
        left += survive * (milestone - at)
        at = milestone
        if milestone < schedule.max_t:
            survive *= kept[milestone]
    return left


def estimate_remaining_s(
    epoch_s: float,
    running_epochs: list[int],
    not_started: int,
    concurrency: int,
    schedule: Schedule,
    budget_left_s: float | None = None,
    start_s: float = 0.0,
) -> float:
    """Seconds until the search ends: `running_epochs` are the epochs each running trial has
    finished, `not_started` the trials still to run (pending or not yet generated)."""
    active = min(max(1, concurrency), len(running_epochs) + not_started)
    audit = audit_epochs(schedule)
    audit_s = (audit * epoch_s / min(max(1, concurrency), schedule.audit_k) + start_s) if audit else 0.0
    if active == 0:
        return audit_s
    trial_epochs = sum(expected_epochs(schedule, e) for e in running_epochs) + not_started * expected_epochs(
        schedule, 0
    )
    seconds = (trial_epochs * epoch_s + not_started * start_s) / active
    # the time budget caps the search; the audit runs after it
    return (seconds if budget_left_s is None else max(0.0, min(seconds, budget_left_s))) + audit_s


def concurrency(max_concurrent: int | None, cluster: dict, cpu: float, gpu: float) -> int:
    """Trials that run at once: the search's limit and what the cluster's CPUs and GPUs hold."""
    slots = [max_concurrent or math.inf, math.floor(cluster.get("CPU", 0) / cpu) if cpu > 0 else math.inf]
    if gpu > 0:
        slots.append(math.floor(cluster.get("GPU", 0) / gpu))
    n = min(slots)
    return max(1, int(n)) if math.isfinite(n) else 1


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s"


def line(remaining_s: float, done: int, total: int, budget_left_s: float | None) -> str:
    budget = f", budget ends in {duration(budget_left_s)}" if budget_left_s is not None else ""
    return f"ETA: ~{duration(remaining_s)} ({done}/{total} trials done{budget})"


# ------------------------------------------------------------------ the record (experiment/records.py)
def summary(exp_dir: Location | str, started: float | None, finished: float | None) -> dict | None:
    """The first estimate against the actual search time (wall clock from `started` to `finished`),
    or None when no estimate was made."""
    estimates = read_estimates(exp_dir)
    if not estimates or not started or not finished:
        return None
    first = estimates[0]
    return {
        "first_estimate_after_s": first.at - started,
        "first_estimate_total_s": first.at + first.remaining_s - started,
        "actual_s": finished - started,
        "n_estimates": len(estimates),
    }


def summary_line(s: dict) -> str:
    err = (s["first_estimate_total_s"] - s["actual_s"]) / s["actual_s"] * 100 if s["actual_s"] > 0 else 0.0
    return (
        f"ETA: the first estimate (after {duration(s['first_estimate_after_s'])}) said "
        f"{duration(s['first_estimate_total_s'])} in all; the search took {duration(s['actual_s'])} "
        f"({err:+.0f}%)"
    )
