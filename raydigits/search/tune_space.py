"""The validated `SearchSpec` as Ray Tune objects: the param_space (random and grid search, with
conditional parameters as seeded `sample_from`s), the Optuna define-by-run space (tpe), the search
algorithm (optionally warm-started, with configs to run first) and the trial scheduler (ASHA, FIFO,
PBT, PB2). Ray is imported only inside the builders."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from ..spec import (
    INDEX_SUFFIX,
    OPTUNA_METHODS,
    POPULATION,
    SEED_HEX_DIGITS,
    Param,
    SearchSpec,
    distinct_configs,
    mutated,
)


def _conditional(name: str, p: Param, seed: int, pinned: tuple[dict, ...] = ()):
    """`tune.sample_from` that samples `p` only when its condition holds (else None). Reading the
    condition keys by attribute lets Tune's resolver retry while they are still unsampled. The draw
    is seeded by the search seed and the trial's already-sampled plain values. `pinned`: full configs
    to reproduce (a trial whose unconditional values equal one of them takes its value; Tune's
    points_to_evaluate cannot carry values for sample_from keys)."""
    from ray import tune

    from ..ray_compat import read_config_key as get  # Tune retries while a condition key is unsampled

    domain = _domain(p)

    def sample(spec):
        cfg = get(spec, "config") if "config" in spec else spec
        if not p.condition_holds({k: get(cfg, k) for k in p.when or {} if k in cfg}):
            return None
        plain = {k: v for k, v in dict.items(cfg) if isinstance(v, (str, int, float, bool, list, tuple))}
        for keys, config in pinned:  # (the unconditional values that identify it, the whole config)
            if all(k in plain and plain[k] == v for k, v in keys.items()):
                return config.get(name)
        key = json.dumps(plain, sort_keys=True, default=str)
        rs = np.random.RandomState(
            int(hashlib.sha256(f"{seed}:{name}:{key}".encode()).hexdigest()[:SEED_HEX_DIGITS], 16)
        )
        return domain.sample(random_state=rs) if hasattr(domain, "sample") else domain

    return tune.sample_from(sample)


def _domain(p: Param):
    """The parameter as a Tune domain (its kind's entry names the `ray.tune` function), or its constant."""
    from ray import tune

    if p.values is not None:
        return tune.choice(p.values)
    if p.is_constant:
        return p.value
    return getattr(tune, p.kind.tune)(*p.kind.tune_args(p))


def param_space(spec: SearchSpec, pinned: tuple[dict, ...] = ()) -> dict:
    """Tune param_space for random and grid search; empty for tpe / nsga2 (their space is `OptunaSpace`).
    `pinned`: full configs that points_to_evaluate re-runs (see `_conditional`)."""
    from ray import tune

    space = {}
    if spec.method in OPTUNA_METHODS or distinct_configs(spec) is not None:  # the searcher holds the space
        return space
    plain = [k for k, p in spec.parameters.items() if not p.when]
    pinned = tuple(({k: c.get(k) for k in plain}, c) for c in pinned)
    for name, p in spec.parameters.items():
        if spec.method == "grid" and p.values is not None:
            space[name] = tune.grid_search(p.values)
        elif p.when:
            space[name] = _conditional(name, p, spec.seed, pinned)
        else:
            space[name] = _domain(p)
    return space


class OptunaSpace:
    """Define-by-run space for Ray's OptunaSearch: conditional parameters are only suggested when
    their condition holds, so TPE never models values that were not used."""

    def __init__(self, spec: SearchSpec):
        self.params = sorted(spec.parameters.items(), key=lambda kv: bool(kv[1].when))
        self.fixed = dict(spec.fixed)

    def __call__(self, trial):
        chosen, constants = {}, {}
        for name, p in self.params:
            if not p.condition_holds({**self.fixed, **chosen, **constants}):
                continue
            if p.is_constant:
                constants[name] = p.value
            elif p.values is not None and all(isinstance(v, (str, int, float, bool)) for v in p.values):
                chosen[name] = trial.suggest_categorical(name, p.values)
            elif p.values is not None:  # lists etc.: Optuna picks an index
                idx = trial.suggest_categorical(f"{name}{INDEX_SUFFIX}", list(range(len(p.values))))
                constants[name] = p.values[idx]
            else:
                chosen[name] = getattr(trial, p.kind.suggest)(name, **p.kind.suggest_kwargs(p))
        return constants


def build_search_alg(spec: SearchSpec, warm: list[tuple[dict, float | None]] = (), points: list[dict] = ()):
    """The searcher, limiting concurrent trials itself: Tune ignores `max_concurrent_trials` for a
    BasicVariantGenerator, so that knob is never used. `points`: configs to run first (as Tune's
    `points_to_evaluate`); `warm`: (config, value) of trials run before, which TPE learns from
    before its first suggestion (`launch.py extend`; random search ignores them, except that over a
    finite space it never draws their configs again); a value of None is a failed trial.

    Several objectives (tpe, nsga2): OptunaSearch gets the metric and mode *lists* (a multi-objective
    study: Optuna's TPE or NSGA-II); Tune's TuneConfig names no metric (runner.py), so each of the
    searcher and the scheduler keeps its own (the scheduler: the quality metric and the costs,
    build_tune_scheduler). A stopped trial is told to the study with its last result's values, as in
    the single-objective search. Warm starts take one value per trial (extend refuses several)."""
    configs = distinct_configs(spec)
    if configs is not None:  # a finite random space: each configuration once (search/distinct.py)
        from ray.tune.search import ConcurrencyLimiter

        from .distinct import DistinctRandom

        searcher = DistinctRandom(configs, points=list(points), exclude=[cfg for cfg, _ in warm])
        return ConcurrencyLimiter(searcher, spec.max_concurrent) if spec.max_concurrent else searcher
    if spec.method not in OPTUNA_METHODS:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(
            random_state=spec.seed, max_concurrent=spec.max_concurrent or 0, points_to_evaluate=list(points) or None
        )
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if spec.multi_objective and warm:
        raise ValueError("a multi-objective study is not warm-started (extend refuses it)")
    metric, mode = (
        ([k for k, _ in spec.objective_list], [m for _, m in spec.objective_list])
        if spec.multi_objective
        else (spec.metric, spec.mode)
    )
    sampler = (
        optuna.samplers.NSGAIISampler(population_size=nsga2_population(spec.num_samples), seed=spec.seed)
        if spec.method == "nsga2"
        else optuna.samplers.TPESampler(seed=spec.seed)
    )
    searcher = OptunaSearch(
        space=OptunaSpace(spec),
        metric=metric,
        mode=mode,
        sampler=sampler,
        points_to_evaluate=list(points) or None,
        **_warm_study(spec, warm),
    )
    return ConcurrencyLimiter(searcher, spec.max_concurrent) if spec.max_concurrent else searcher


NSGA2_GENERATIONS = 4  # the population is sized so that a search runs this many generations (Optuna's
# default of 50 would leave a search of tens of trials in its first, random, generation)
NSGA2_MIN_POPULATION = 4  # at least two parent pairs to cross over


def nsga2_population(num_samples: int) -> int:
    """NSGA-II's population for a search of `num_samples` trials."""
    return max(NSGA2_MIN_POPULATION, num_samples // NSGA2_GENERATIONS)


WARM_STUDY = "raydigits"


def _warm_study(spec: SearchSpec, warm: list[tuple[dict, float | None]]) -> dict:
    """OptunaSearch's `storage`/`study_name` for a study that already holds the finished trials
    (OptunaSearch loads an existing study by name; Ray's own `evaluated_rewards` does not work with a
    define-by-run space). Each trial's params and distributions come from replaying the space on
    its config, so they are exactly what TPE would have suggested. A value of None is added as a
    failed trial (state FAIL), as OptunaSearch tells the study of an errored trial; Optuna's TPE
    itself models only complete and pruned trials."""
    if not warm:
        return {}
    import optuna

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage, study_name=WARM_STUDY, direction="maximize" if spec.mode == "max" else "minimize"
    )
    space = OptunaSpace(spec)
    for config, value in warm:
        fixed = optuna.trial.FixedTrial(config)
        try:
            space(fixed)
        except ValueError:  # a config from another space (e.g. a conditional the spec no longer has)
            continue
        state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
        study.add_trial(
            optuna.trial.create_trial(params=fixed.params, distributions=fixed.distributions, value=value, state=state)
        )
    return {"storage": storage, "study_name": WARM_STUDY}


class ClipToRange:
    """PBT's explore step multiplies a value by 1.2 or 0.8, which can leave the searched range (a
    momentum of 1.1 TrainConfig rejects): perturbed values are clipped back into [min, max]."""

    def __init__(self, bounds: dict[str, tuple[float, float]]):
        self.bounds = bounds

    def __call__(self, config: dict) -> dict:
        for key, (lo, hi) in self.bounds.items():
            if isinstance(config.get(key), (int, float)) and not isinstance(config[key], bool):
                config[key] = type(config[key])(min(max(config[key], lo), hi))
        return config


def _population_scheduler(spec: SearchSpec):
    """PBT (perturbed parameters: the same distribution, or the list of values) or PB2 (their bounds)."""
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pb2 import PB2

    s, names = spec.scheduler, mutated(spec)
    bounds = {
        n: (spec.parameters[n].min, spec.parameters[n].max)
        for n in names
        if spec.parameters[n].kind is not None and spec.parameters[n].kind.bounded
    }
    common = dict(
        time_attr="training_iteration",
        metric=spec.metric,
        mode=spec.mode,
        perturbation_interval=s.perturbation_interval,
        quantile_fraction=s.quantile_fraction,
        synch=s.synch,
    )
    if s.type == "pb2":
        return PB2(hyperparam_bounds={n: list(b) for n, b in bounds.items()}, **common)
    mutations = {
        n: list(spec.parameters[n].values) if spec.parameters[n].values is not None else _domain(spec.parameters[n])
        for n in names
    }
    return PopulationBasedTraining(
        hyperparam_mutations=mutations,
        resample_probability=s.resample_probability,
        custom_explore_fn=ClipToRange(bounds),
        **common,
    )


def family_parameters(spec: SearchSpec) -> list[str]:
    """family_asha's families: the searched categorical parameters (optimiser, schedule, ...), whose
    values change how a learning curve starts, so trials are compared only within one of them. With
    several objectives, not those that choose the architecture (costs.ARCHITECTURE_KEYS): the costs
    the rungs rank by already tell architectures apart, and comparing across them is the search's point
    (families of one architecture would leave each rung a handful of trials, or one, and stop none)."""
    from ..costs import ARCHITECTURE_KEYS

    skip = ARCHITECTURE_KEYS if spec.multi_objective else ()
    return [
        name
        for name, p in spec.parameters.items()
        if p.values is not None and p.varies() and not p.when and spec.target(name) not in skip
    ]


def cost_objectives(spec: SearchSpec) -> list[str]:
    """The objectives besides the quality metric: costs, all minimised (spec checks)."""
    return [k for k, _ in spec.objective_list if k != spec.metric]


def build_tune_scheduler(spec: SearchSpec):
    """Tune's trial scheduler (family ASHA, Ray's ASHA, FIFO, PBT or PB2); optim.build_scheduler is the
    learning-rate schedule. With several objectives, family_asha and asha rank their rungs by Pareto
    dominance (family_asha.py's `costs`); with constraints, our ASHA keeps infeasible trials off its
    rungs (every scheduler type: runner.py's stopper ends them)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = spec.scheduler
    broken = spec.broken_constraints if spec.constraints else None
    if s.type == "fifo":
        return FIFOScheduler()
    if s.type in POPULATION:
        return _population_scheduler(spec)
    # the rungs and the quality metric, as Ray's ASHA and ours both take them
    rungs = dict(
        metric=spec.metric,
        mode=spec.mode,
        max_t=spec.epochs,
        grace_period=min(s.grace_period, spec.epochs),
        reduction_factor=s.reduction_factor,
    )
    # what our ASHA takes in either form: the rungs, the seed and the cost objectives
    ours = dict(**rungs, seed=spec.seed, costs=cost_objectives(spec), broken=broken)
    if s.type == "family_asha":
        from .family_asha import default_scheduler

        return default_scheduler(family=family_parameters(spec), first_keep=s.first_keep, **ours)
    if spec.multi_objective:  # asha: Ray's rule (every trial compared, 1/rf kept, its brackets), on points
        from .family_asha import FamilyASHA

        return FamilyASHA(brackets=s.brackets, **ours)
    return ASHAScheduler(time_attr="training_iteration", brackets=s.brackets, **rungs)
