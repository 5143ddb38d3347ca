"""The audit run: after an ASHA search, the `audit.top_k` trials it stopped with the best value at
their last rung train on from their last checkpoint to max_t, as Tune trials of the same experiment
(`EXP/audit_<k>/`: resumable and on the dashboard like any run). They are ordinary finished trials
afterwards: the final stage may choose one, and experiment/audit.py measures what early stopping
cost. Ray cannot pause and resume a trial ASHA stopped (ray-project/ray#44256), hence a run of its own."""

from __future__ import annotations

from pathlib import Path

from ..data.store import Dataset
from ..errors import UserError
from ..experiment import Experiment
from ..experiment.audit import audit_candidates, last_checkpoint
from ..experiment.layout import audit_runs, next_audit
from ..experiment.records import UNFINISHED
from ..ray_compat import STATE_GLOB, trial_states
from ..spec import AUDIT_KEY, SearchSpec, parse_spec
from ..storage import Location
from .runner import resume_search, run_search


def audit_spec(spec: SearchSpec, n: int) -> SearchSpec:
    """The audit run's spec: the search's, with every trial run to max_t (FIFO), no time budget."""
    d = spec.to_dict()
    d.update(num_samples=1, time_budget_s=None, max_concurrent=spec.max_concurrent or n)
    d["scheduler"] = {"type": "fifo", "max_t": spec.epochs}
    return parse_spec(d, f"audit of {spec.name}", saved=True)


def audit_space(configs: dict[str, dict]) -> dict:
    """One trial per stopped trial (a grid over their ids), each with that trial's config."""
    from ray import tune

    from ..ray_compat import read_config_key as get

    keys = sorted({k for c in configs.values() for k in c})

    def value(key: str):
        def draw(s):
            cfg = get(s, "config") if "config" in s else s
            return configs[get(cfg, AUDIT_KEY)].get(key)

        return tune.sample_from(draw)

    return {AUDIT_KEY: tune.grid_search(sorted(configs)), **{k: value(k) for k in keys if k != AUDIT_KEY}}


def resume_audit(exp: Experiment, data: Dataset, data_dir: Path | None = None) -> tuple[Location, int] | None:
    """The experiment's last audit run continued when a Ctrl-C left trials of it unfinished (its
    folder and how many trials it audits), else None. Its trials are in Tune's state from its
    first step (a grid of at most top_k), so the stopped trials it audits, and the checkpoints
    they start from, are known again."""
    runs = audit_runs(exp.location)
    states = trial_states(runs[-1]) if runs and runs[-1].glob(STATE_GLOB) else []
    if not any(s["status"] in UNFINISHED for s in states):
        return None
    configs, starts = {}, {}
    for s in states:
        stopped = exp.trial(str(s["config"].get(AUDIT_KEY)))
        start = last_checkpoint(stopped, exp.spec)
        if start is None:
            raise UserError(f"{runs[-1]}: the checkpoint trial {stopped.trial_id} was audited from is gone")
        configs[stopped.trial_id], starts[stopped.trial_id] = dict(stopped.config), str(start.location)
    print(f"audit: continuing the interrupted {runs[-1].name} ({', '.join(sorted(configs))})", flush=True)
    spec = audit_spec(exp.spec, len(configs))
    return resume_search(runs[-1], spec, data, data_dir, space=audit_space(configs), starts=starts), len(configs)


def run_audit(
    exp: Experiment, data: Dataset, top_k: int, verbose: int = 1, data_dir: Path | None = None
) -> Location | None:
    """Audit the experiment's best `top_k` stopped trials not audited yet; the run's folder, or None
    when there is nothing to audit. An audit run a Ctrl-C interrupted is continued first, and its
    trials count towards `top_k`."""
    resumed = resume_audit(exp, data, data_dir)
    if resumed is not None:
        exp, top_k = Experiment.open(exp.location), top_k - resumed[1]
    picked = audit_candidates(exp.trials, exp.spec, top_k) if top_k > 0 else []
    if not picked:
        return resumed[0] if resumed else None
    configs = {t.trial_id: dict(t.config) for t, _ in picked}
    starts = {t.trial_id: str(c.location) for t, c in picked}
    spec = audit_spec(exp.spec, len(picked))
    listed = ", ".join(f"{t.trial_id} ({exp.spec.metric} {c.value:.4f} at epoch {c.epoch})" for t, c in picked)
    print(
        f"audit: training on to epoch {spec.epochs} the {len(picked)} best trial(s) early stopping ended: {listed}",
        flush=True,
    )
    from ray.tune.search.basic_variant import BasicVariantGenerator

    alg = BasicVariantGenerator(max_concurrent=spec.max_concurrent or 0)
    return run_search(
        spec,
        next_audit(exp.location),
        data,
        verbose,
        data_dir=data_dir,
        search_alg=alg,
        space=audit_space(configs),
        starts=starts,
    )
