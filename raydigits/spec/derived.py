"""What follows from a validated spec: ASHA's rungs and the early-rung warning, the parameters PBT
perturbs, and a trial's sampled config as the TrainConfig it trains with."""

from __future__ import annotations

import json
import math
import random
from typing import Any

from ..config import MUTABLE_KNOBS, TrainConfig, make_config
from .model import AUDIT_KEY, EARLY_STOPPING, INDEX_SUFFIX, SearchSpec


def asha_rungs(spec: SearchSpec) -> set[int]:
    """Epochs at which ASHA compares trials. Its milestones are grace_period * reduction_factor**k
    below max_t, and a trial is compared at the first epoch that reaches one: a fractional milestone
    (reduction_factor 2.5 from 1: 2.5, 6.25) at its ceiling, 3 and 7 (tests/test_ray_compat.py checks
    this against Ray's own brackets; every bracket's milestones are among the first one's)."""
    if spec.scheduler.type not in EARLY_STOPPING:
        return set()
    rungs, t = set(), float(spec.scheduler.grace_period)
    while t < spec.epochs:
        rungs.add(math.ceil(t - 1e-9))
        t *= spec.scheduler.reduction_factor
    return {r for r in rungs if r < spec.epochs}


def mutated(spec: SearchSpec) -> list[str]:
    """The parameters PBT / PB2 perturb: scheduler.mutate, or every searched one that may be."""
    if spec.scheduler.mutate is not None:
        return list(spec.scheduler.mutate)
    return [
        name
        for name, p in spec.parameters.items()
        if spec.target(name) in MUTABLE_KNOBS
        and not p.when
        and not p.is_constant
        and (spec.scheduler.type != "pb2" or (p.kind is not None and p.kind.bounded))
    ]


RUNG_SCHEDULE = "rung_cosine"  # the lr schedule whose milestone defaults to the search's first rung (optim.py)
MIN_RUNG_STEPS = 100  # below this many optimiser steps, a first rung ranks trials on their start


def early_rung_warning(spec: SearchSpec, train_size: int) -> str | None:
    """A warning when ASHA's first rung comes after so few optimiser steps that it would rank trials
    on how they start rather than how they end (bench/search_bench.py, BENCHMARKS.md: on 1,500
    training images, 11 steps an epoch, epoch-1 validation ranked trials *against* their final one)."""
    if spec.scheduler.type not in EARLY_STOPPING or train_size <= 0:
        return None
    items = int(spec.fixed.get("train_items") or 0)
    n = min(items, train_size) if items else train_size
    batches = [
        int(v)
        for name, p in spec.parameters.items()
        if spec.target(name) == "batch_size"
        for v in (p.values or [p.value if p.is_constant else p.max])
    ]
    batches = batches or [int(spec.fixed.get("batch_size", TrainConfig.model_fields["batch_size"].default))]
    steps = max(1, n // max(batches)) * min(spec.scheduler.grace_period, spec.epochs)
    if steps >= MIN_RUNG_STEPS:
        return None
    return (
        f"warning: scheduler.grace_period {spec.scheduler.grace_period} = {steps} optimiser steps on {n:,} "
        f"training images: ASHA will stop trials on how they start, not how they end; give a "
        f"grace_period of at least {MIN_RUNG_STEPS} steps' worth of epochs, or use scheduler type fifo"
    )


# ------------------------------------------------------------------ random search without replacement
DISTINCT_LIMIT = 100_000  # a finite space with more configurations than this is drawn as Tune draws


def distinct_configs(spec: SearchSpec) -> list[dict[str, Any]] | None:
    """Every configuration a random search can draw when each parameter takes listed values (or a
    constant): each once, a parameter whose condition fails as None (as the random draw gives it),
    shuffled by the spec's seed. Such a search takes them in this order, without replacement: a
    repeated configuration trains the same model again (a trial is seeded by its config), and drawn
    independently 16 of accuracy_vs_latency's 28 would repeat 3.6 on average. None for any other
    search (a continuum, another method, or more than DISTINCT_LIMIT configurations)."""
    if spec.method != "random" or any(p.possible() is None for p in spec.parameters.values()):
        return None
    configs: list[dict[str, Any]] = [{}]
    for name, p in sorted(spec.parameters.items(), key=lambda kv: bool(kv[1].when)):  # conditions last
        configs = [
            {**c, name: v}
            for c in configs
            for v in (p.possible() if not p.when or p.condition_holds(c) else [None])  # type: ignore[union-attr]
        ]
        if len(configs) > DISTINCT_LIMIT:
            return None
    unique = {config_key(c): {k: c[k] for k in spec.parameters} for c in configs}  # `values: [1, 1]` once
    order = sorted(unique)
    random.Random(spec.seed).shuffle(order)
    return [unique[k] for k in order]


def config_key(config: dict[str, Any]) -> str:
    """A configuration's identity (its values, None for a parameter its condition left out)."""
    return json.dumps(config, sort_keys=True, default=str)


def distinct_warning(spec: SearchSpec) -> str | None:
    """A warning when a search without replacement has fewer configurations than num_samples."""
    configs = distinct_configs(spec)
    if configs is None or len(configs) >= spec.num_samples:
        return None
    return (
        f"warning: num_samples {spec.num_samples}, but this space has {len(configs)} distinct "
        f"configurations: {len(configs)} trials run, each once (a repeat would train the same model again)"
    )


# ------------------------------------------------------------------ trial config → TrainConfig
def trial_values(spec: SearchSpec, config: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled dict (None = condition did not hold) merged over `fixed`."""
    values = {**spec.fixed, "epochs": spec.epochs}
    for k, v in config.items():
        if v is not None and not k.endswith(INDEX_SUFFIX) and k != AUDIT_KEY:
            values[spec.target(k) if k in spec.parameters else k] = v
    if values.get("scheduler") == RUNG_SCHEDULE and "milestones" not in values and asha_rungs(spec):
        # anneal where the first rung judges, the rung whose ranking a mid-schedule lr spoils; annealing
        # at every rung cost the best trials ~1 pp by the end (BENCHMARKS.md, budget-aware rungs). With
        # asha's brackets > 1 a later bracket's first rung is later: its trials are judged mid-schedule
        # there (family_asha runs one bracket)
        values["milestones"] = [float(min(asha_rungs(spec)))]
    return values


def trial_threads(spec: SearchSpec) -> int:
    """Torch CPU threads of a trial: its CPU share (no oversubscription), unless fixed sets `threads`."""
    return max(1, int(spec.resources.cpu))


def trial_train_config(spec: SearchSpec, config: dict[str, Any], data_dir: str, where: str) -> TrainConfig:
    """The TrainConfig a trial trains with (search/trainable.py), and `launch.py reproduce` retrains with."""
    values = {**trial_values(spec, config), "data_dir": str(data_dir)}
    values.setdefault("threads", trial_threads(spec))
    return make_config(values, where=where)
