"""`launch.py extend EXP --num-samples N [--max-t M]`: more trials for a finished search.

Tune cannot add samples to a finished Tuner (a restored one runs what it had), so each extension is
a Tune run of its own, stored inside the experiment as `EXP/extend_<k>/` with its own spec, run
record and outcome record. Every finished trial stays where it is; `Experiment.trials` reads
the main run and every extension, and the final stage chooses among all of them.

- The extension's spec is the experiment's with `num_samples = N` and a seed of its own (the same
  seed would sample the same configs again).
- TPE is warm-started: the study it starts from already holds every finished trial's params and its
  last reported value (what TPE itself would have recorded), failures included: a diverged or
  out-of-memory trial with the value it reported (val_acc 0.0), one without a finite value and an
  errored trial as a failed Optuna trial (Tune told the original searcher `error=True`). Random
  search samples fresh configs.
- `--max-t M` (more epochs than the search allowed) gives the extension's trials up to M epochs, and
  re-runs the `promote` best finished configs first under that budget (from scratch: the learning
  rate schedule spans the whole run, so a finished trial cannot simply train on)."""

from __future__ import annotations

import math
from pathlib import Path

from ..data.store import Dataset
from ..errors import UserError
from ..experiment import Experiment, Trial
from ..experiment.layout import EXTEND_PREFIX, next_extension
from ..spec import OPTUNA_METHODS, POPULATION, SearchSpec, distinct_configs, parse_spec
from ..storage import Location
from .runner import run_search
from .tune_space import build_search_alg

SEED_STEP = 1_000_003  # extension k samples with seed + k * SEED_STEP (mod 2**32): fresh configs


def extension_spec(spec: SearchSpec, k: int, num_samples: int, max_t: int | None) -> SearchSpec:
    d = spec.to_dict()
    d["num_samples"] = num_samples
    d["seed"] = (spec.seed + k * SEED_STEP) % 2**32
    if max_t is not None:
        d["scheduler"]["max_t"] = max_t
    return parse_spec(d, f"extension {k} of {spec.name}")


def check_request(spec: SearchSpec, num_samples: int, max_t: int | None, promote: int) -> None:
    if spec.method == "grid":
        raise UserError("extend: a grid search has no more configs to sample; extend a random or tpe search")
    if spec.multi_objective and spec.method in OPTUNA_METHODS:
        # the warm start replays finished trials into the study with one value each; a
        # multi-objective study needs every objective's value, which is not built yet
        raise UserError(
            f"extend: a multi-objective {spec.method} search cannot be extended yet (its study is not "
            "warm-started with several objectives); start a new search, or extend a random one"
        )
    if spec.scheduler.type in POPULATION:
        raise UserError(f"extend: a {spec.scheduler.type} search's trials evolve together; start a new search instead")
    if num_samples < 1:
        raise UserError(f"--num-samples {num_samples}: must be at least 1")
    if max_t is not None and max_t < spec.epochs:
        raise UserError(
            f"--max-t {max_t}: below the search's {spec.epochs} epochs; the finished trials already ran that long"
        )
    if promote < 0:
        raise UserError(f"--promote {promote}: must be 0 or more")


def finished_scores(trials: tuple[Trial, ...], spec: SearchSpec) -> list[tuple[dict, float, float]]:
    """(config, last reported value, best value) of every trial that reported a finite value and
    neither errored nor diverged."""
    out = []
    for t in trials:
        scores = t.scores(spec.metric)
        if t.usable and scores:
            out.append((dict(t.config), scores[-1][1], t.best(spec.metric, spec.mode)))
    return out


def failed_scores(trials: tuple[Trial, ...], spec: SearchSpec) -> list[tuple[dict, float | None]]:
    """(config, value) of every trial the final stage never chooses (errored, diverged, out of
    memory), as the original searcher was told of it: the metric of its last report when finite (a
    diverged or out-of-memory epoch reports val_acc 0.0), else None, a failed trial (an errored one:
    Tune calls `on_trial_complete(error=True)` without a result)."""
    out: list[tuple[dict, float | None]] = []
    for t in trials:
        if t.usable:
            continue
        last = t.results[-1].get(spec.metric) if t.results and t.outcome != "error" else None
        finite = isinstance(last, (int, float)) and math.isfinite(last)
        out.append((dict(t.config), float(last) if finite else None))
    return out


def warm_start(trials: tuple[Trial, ...], spec: SearchSpec) -> list[tuple[dict, float | None]]:
    """What TPE learns from before its first suggestion: every finished trial's last value and every
    failure (`failed_scores`), as the original search's TPE saw them."""
    return [(cfg, last) for cfg, last, _ in finished_scores(trials, spec)] + failed_scores(trials, spec)


def extend_search(
    exp: Experiment,
    data: Dataset,
    num_samples: int,
    max_t: int | None,
    promote: int,
    verbose: int = 1,
    data_dir: Path | None = None,
) -> Location:
    """Run the next extension of `exp`; returns its folder."""
    spec = exp.spec
    check_request(spec, num_samples, max_t, promote)
    busy = [t for t in exp.trials if t.unfinished]
    if busy:
        raise UserError(
            f"{exp.location}: {len(busy)} trial(s) never finished; continue the search with "
            f"`python launch.py --resume {exp.location}` first"
        )
    run = next_extension(exp.location)
    k = int(run.name.removeprefix(EXTEND_PREFIX))
    ext = extension_spec(spec, k, num_samples, max_t)
    scored = finished_scores(exp.trials, spec)
    points = []
    if max_t is not None and max_t > spec.epochs and promote:
        ranked = sorted(scored, key=lambda s: s[2], reverse=spec.mode == "max")
        points = [cfg for cfg, _, _ in ranked[: min(promote, num_samples)]]
    finite = distinct_configs(ext) is not None  # drawn without replacement (search/distinct.py)
    if ext.method in OPTUNA_METHODS:  # Optuna enqueues whole configs, conditional values included
        starts = [{k: v for k, v in cfg.items() if v is not None} for cfg in points]
    elif finite:  # whole configs too (search/distinct.py)
        starts = [{k: cfg.get(k) for k in ext.parameters} for cfg in points]
    else:  # Tune's points cannot set sample_from keys: the conditional samplers take them (`pinned`)
        plain = [k for k, p in ext.parameters.items() if not p.when]
        starts = [{k: cfg.get(k) for k in plain} for cfg in points]
    warm = warm_start(exp.trials, spec)
    alg = build_search_alg(ext, warm=warm, points=starts)
    print(
        f"extend: run {k} of {exp.name}: {num_samples} more trials (seed {ext.seed}, up to {ext.epochs} "
        f"epochs){f', the {len(points)} best finished configs first' if points else ''}"
        f"{f'; TPE starts from {len(warm)} finished trials ({len(warm) - len(scored)} failed)' if ext.method in OPTUNA_METHODS else ''}",
        flush=True,
    )
    return run_search(
        ext,
        run,
        data,
        verbose,
        data_dir=data_dir,
        search_alg=alg,
        pinned=tuple(points) if ext.method not in OPTUNA_METHODS and not finite else (),
    )
