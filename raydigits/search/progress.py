"""The search's ETA while it runs: a Tune callback on the driver that measures trial-epoch and
trial start-up times, prints `eta.line` at most every PRINT_EVERY_S seconds and records each
estimate printed in <experiment>/raydigits_eta.json (eta.py: the model). Public Tune API only."""

from __future__ import annotations

import math
import statistics
import time

from ray import tune

from ..experiment.records import ACTIVE as RUNNING
from ..experiment.records import ENDED, Estimate, read_estimates, write_estimates
from ..ray_compat import experiment_dir_now
from ..spec import EARLY_STOPPING, asha_rungs, distinct_configs
from ..storage import Location, as_location
from . import eta

PRINT_EVERY_S = 15.0


class EtaReporter(tune.Callback):
    def __init__(
        self,
        exp_dir: Location | str,
        schedule: eta.Schedule,
        total_trials: int,
        max_concurrent: int | None,
        cpu: float,
        gpu: float,
        time_budget_s: float | None,
    ):
        self.exp_dir = as_location(exp_dir)
        self.schedule, self.total = schedule, total_trials
        self.max_concurrent, self.cpu, self.gpu = max_concurrent, cpu, gpu
        self.budget_left_s = time_budget_s  # what is left of the budget (travels with a resume)
        self._budget_end: float | None = None
        self._slots = 1
        self._epoch_s: list[float] = []  # Tune's time_this_iter_s, start-up iterations excluded
        self._start_s: list[float] = []  # trial start → its first epoch began
        self._started: dict[str, float] = {}  # trials starting: when a slot was free for them
        self._printed = 0.0

    def __getstate__(self) -> dict:
        # pickled with the experiment (tuner.pkl): a resume continues with the budget that was left
        state = {**self.__dict__, "_started": {}, "_printed": 0.0}
        if self._budget_end is not None:
            state["budget_left_s"] = max(0.0, self._budget_end - time.time())
        return state

    def setup(self, **info) -> None:
        import ray

        self._budget_end = time.time() + self.budget_left_s if self.budget_left_s is not None else None
        self._slots = eta.concurrency(self.max_concurrent, ray.cluster_resources(), self.cpu, self.gpu)

    def on_step_begin(self, iteration, trials, **info) -> None:
        # a pending trial starts (actor, imports, data) once a slot is free for it: from then on
        # until its first epoch begins is its start-up (a trial queueing for a slot is not starting)
        busy = sum(t.status in RUNNING and t.trial_id not in self._started for t in trials) + len(self._started)
        for t in trials:
            if t.status == "PENDING" and t.trial_id not in self._started and busy < self._slots:
                self._started[t.trial_id] = time.time()
                busy += 1

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._started.pop(trial.trial_id, None)  # ended before its first epoch (out of memory...)

    on_trial_error = on_trial_complete

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        took = result.get("time_this_iter_s")
        if took is not None and not result.get("stop_reason") == "oom":  # an OOM'd epoch trained nothing
            if result.get("iterations_since_restore") == 1:  # includes start-up: measured apart
                epoch = float(result.get("epoch_time_s") or took)
                began = self._started.pop(trial.trial_id, None)
                if began is not None:
                    self._start_s.append(max(0.0, time.time() - began - epoch))
                if epoch > 0:
                    self._epoch_s.append(epoch)
            elif took > 0:
                self._epoch_s.append(float(took))
        if self._epoch_s and time.time() - self._printed >= PRINT_EVERY_S:
            self._report(trials)

    def estimate(self, trials) -> Estimate:
        running = [int((t.last_result or {}).get("epoch") or 0) for t in trials if t.status in RUNNING]
        done = sum(t.status in ENDED for t in trials)
        budget_left = None if self._budget_end is None else max(0.0, self._budget_end - time.time())
        epoch_s = statistics.median(self._epoch_s)
        start_s = statistics.median(self._start_s) if self._start_s else 0.0
        seconds = eta.estimate_remaining_s(
            epoch_s, running, max(0, self.total - done - len(running)), self._slots, self.schedule, budget_left, start_s
        )
        return Estimate(
            time.time(), seconds, done, self.total, tuple(running), epoch_s, start_s, self._slots, budget_left
        )

    def _report(self, trials) -> None:
        self._printed = time.time()
        est = self.estimate(trials)
        print(eta.line(est.remaining_s, est.done, self.total, est.budget_left_s), flush=True)
        self.exp_dir = experiment_dir_now(trials, self.exp_dir)
        try:
            write_estimates(self.exp_dir, [*read_estimates(self.exp_dir), est])
        except Exception as exc:  # noqa: BLE001 — never let bookkeeping end a search
            print(f"raydigits: could not record the ETA in {self.exp_dir}: {exc}", flush=True)


def _family_rungs(spec) -> dict:
    """family_asha's keep shares and number of families, for the ETA's Schedule."""
    if spec.scheduler.type != "family_asha":
        return {}
    from .family_asha import default_keep
    from .tune_space import family_parameters

    s = spec.scheduler
    keep = default_keep(spec.epochs, min(s.grace_period, spec.epochs), s.reduction_factor, s.first_keep) or ()
    families = math.prod(len(spec.parameters[name].values or ()) or 1 for name in family_parameters(spec))
    return {"keep": tuple(keep), "families": families}


def eta_reporter(spec, exp_dir: Location | str) -> EtaReporter:
    """The reporter for a search: its trial count (a grid multiplies num_samples by the grid's
    size; a finite random space runs at most its configurations), scheduler, concurrency limit,
    per-trial resources and time budget."""
    total = spec.num_samples
    if spec.method == "grid":
        for p in spec.parameters.values():
            total *= len(p.values) if p.values is not None else 1
    distinct = distinct_configs(spec)
    if distinct is not None:  # a finite random space runs each configuration once (distinct.py)
        total = min(total, len(distinct))
    schedule = eta.Schedule(
        spec.epochs,
        tuple(sorted(asha_rungs(spec))),
        spec.scheduler.reduction_factor,
        total,
        audit_k=spec.audit.top_k if spec.scheduler.type in EARLY_STOPPING else 0,
        **_family_rungs(spec),
    )
    gpu = 0.0 if spec.resources.gpu == "auto" else float(spec.resources.gpu)
    return EtaReporter(exp_dir, schedule, total, spec.max_concurrent, spec.resources.cpu, gpu, spec.time_budget_s)
