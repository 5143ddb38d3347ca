"""Search-space YAML → validated `SearchSpec` (its Tune objects are built in tune_space.py). Errors
name the key path (`parameters.lr.min`).

Parameter syntax follows W&B sweeps: `{values: [...]}`, `{value: x}`,
`{distribution: uniform | log_uniform_values | int_uniform | q_uniform | normal, min, max, q, mu, sigma}`.
A parameter that only applies to one choice adds `when: {optimizer: sgd}` (or a list of values):
it is sampled only for trials where the condition holds and otherwise keeps TrainConfig's default.

Schedulers: asha, fifo, pbt and pb2; PBT perturbs searched parameters that may change mid-training
(config.MUTABLE_KNOBS), with the parameter's own distribution (clipped to its range) or list.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import MUTABLE_KNOBS, TrainConfig, format_validation_error, load_yaml_file, make_config
from ..errors import UserError
from .spec_checks import check_conditions, check_semantics

# The shipped spaces: the source tree's search_spaces/, installed as the package data
# raydigits/search_spaces/ (pyproject.toml maps the one onto the other; one copy of each file).
_SOURCE_SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
_PACKAGED_SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
SEARCH_SPACES_DIR = _PACKAGED_SPACES if _PACKAGED_SPACES.is_dir() else _SOURCE_SPACES
DISTRIBUTIONS = ("uniform", "log_uniform_values", "int_uniform", "q_uniform", "normal")
INDEX_SUFFIX = "__index"
SEED_HEX_DIGITS = 8  # a conditional draw's seed: 8 hex digits = 32 bits, what RandomState takes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class Param(_Strict):
    values: list[Any] | None = None
    value: Any = None
    distribution: Literal[DISTRIBUTIONS] | None = None
    min: float | None = None
    max: float | None = None
    q: float | None = None
    mu: float | None = None
    sigma: float | None = None
    when: dict[str, Any] | None = None  # {key: value or [values]} — sample only when it holds
    key: str | None = None              # the TrainConfig key it sets (default: its own name), so
                                        # `lr_sgd` and `lr_adamw` can give `lr` per-optimiser ranges

    @model_validator(mode="after")
    def _shape(self):
        kinds = [k for k in ("values", "value", "distribution") if k in self.model_fields_set]
        if len(kinds) != 1:
            raise ValueError("give exactly one of values, value, distribution")
        if self.values is not None and not self.values:
            raise ValueError("values: empty list")
        d = self.distribution
        if d in ("uniform", "log_uniform_values", "int_uniform", "q_uniform"):
            if self.min is None or self.max is None:
                raise ValueError(f"distribution {d} needs min and max")
            if self.min > self.max:
                raise ValueError(f"min ({self.min:g}) > max ({self.max:g})")
            if d == "log_uniform_values" and self.min <= 0:
                raise ValueError(f"log_uniform_values needs min > 0, got {self.min:g}")
        if d == "normal" and (self.mu is None or self.sigma is None or self.sigma <= 0):
            raise ValueError("distribution normal needs mu and sigma > 0")
        if d == "q_uniform" and self.q is not None and self.q <= 0:
            raise ValueError("q must be > 0")
        return self

    def candidates(self) -> list[tuple[str, Any]]:
        """Representative values to validate against TrainConfig before Ray starts: (key, value)."""
        if self.values is not None:
            return [(f"values[{i}]", v) for i, v in enumerate(self.values)]
        if "value" in self.model_fields_set:
            return [("value", self.value)]
        if self.distribution == "int_uniform":
            return [("min", int(self.min)), ("max", int(self.max))]
        if self.distribution == "normal":
            return [("mu", self.mu)]
        return [("min", self.min), ("max", self.max)]

    def condition_holds(self, config: dict) -> bool:
        for key, want in (self.when or {}).items():
            allowed = want if isinstance(want, list) else [want]
            if config.get(key) not in allowed:
                return False
        return True


class SchedulerSpec(_Strict):
    type: Literal["asha", "fifo", "pbt", "pb2"] = "asha"
    max_t: int | None = Field(None, ge=1)          # epochs a trial may run (= TrainConfig.epochs)
    grace_period: int = Field(1, ge=1)             # epochs before ASHA may stop a trial
    reduction_factor: float = Field(2.0, gt=1.0)
    brackets: int = Field(1, ge=1)
    # pbt / pb2: every `perturbation_interval` epochs a trial in the bottom `quantile_fraction` continues
    # from a top trial's checkpoint with that trial's config, its `mutate` parameters perturbed
    perturbation_interval: int = Field(1, ge=1)
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5)
    resample_probability: float = Field(0.25, ge=0.0, le=1.0)  # pbt: resample instead of x1.2 / x0.8 or a neighbour
    mutate: list[str] | None = None                # searched parameters to perturb (default: every one that may)
    synch: bool = False  # pbt/pb2: trials wait for each other at every interval (else a trial is compared
                         # with the others' latest results, and a fast trial may finish before any is in)


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0.0)
    # per trial: a fraction of a GPU (0.25 = four trials share one), or auto: a probe measures one
    # trial's peak memory and packs as many per GPU as fit (search/packing.py)
    gpu: float | Literal["auto"] = 0.0
    gpu_margin: float = Field(0.15, ge=0.0, lt=0.9)     # gpu: auto — memory kept free, per GPU and per trial
    max_trials_per_gpu: int = Field(8, ge=1)             # gpu: auto — at most this many trials share a GPU

    @model_validator(mode="after")
    def _gpu(self):
        if self.gpu != "auto" and self.gpu < 0:
            raise ValueError(f"gpu must be >= 0 or auto, got {self.gpu:g}")
        return self


class SearchSpec(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    mode: Literal["max", "min"] | None = None      # default: max for val_acc, min for val_loss
    num_samples: int = Field(8, ge=1)
    method: Literal["random", "grid", "tpe"] = "random"
    scheduler: SchedulerSpec = SchedulerSpec()
    resources: Resources = Resources()
    max_concurrent: int | None = Field(None, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0, lt=2**32)  # numpy and Optuna take seeds in [0, 2**32)
    max_failures: int = Field(2, ge=0)             # retries of a crashed trial, from its last checkpoint
    checkpoints_to_keep: int = Field(2, ge=1)      # best-by-metric checkpoints kept per trial
    # the final stage's epoch of the best trial: 'within_se' = the latest kept epoch whose val_acc is
    # within one standard error (binomial, on the validation's size) of the trial's best, since epochs
    # closer than the validation's own noise cannot be told apart and the schedule's end is the model
    # the config meant; 'best' = the best epoch itself (always so for val_loss)
    select_epoch: Literal["within_se", "best"] = "within_se"
    fixed: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Param] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _defaults(self):
        if self.mode is None:
            self.mode = "max" if self.metric == "val_acc" else "min"
        return self

    def to_dict(self) -> dict:
        """Round-trips through `parse_spec` (parameters and the scheduler keep only the keys that were
        given: a scheduler-specific default written out would read as a setting for another type)."""
        d = self.model_dump(mode="json")
        d["scheduler"] = self.scheduler.model_dump(mode="json", exclude_unset=True)
        d["parameters"] = {k: p.model_dump(mode="json", exclude_unset=True) for k, p in self.parameters.items()}
        return d

    def target(self, name: str) -> str:
        return self.parameters[name].key or name

    @property
    def epochs(self) -> int:
        return self.scheduler.max_t or int(self.fixed.get("epochs", TrainConfig().epochs))


# ------------------------------------------------------------------ loading and checks
def resolve_path(arg: str) -> Path:
    """A path, or a file name / bare name looked up in search_spaces/."""
    p = Path(arg)
    if p.exists():
        return p
    for cand in (SEARCH_SPACES_DIR / arg, SEARCH_SPACES_DIR / f"{arg}.yaml", SEARCH_SPACES_DIR / f"{arg}.yml"):
        if cand.exists():
            return cand
    known = sorted(f.stem for f in SEARCH_SPACES_DIR.glob("*.yaml"))
    raise UserError(f"--search-space {arg}: no such file (shipped spaces: {', '.join(known)})")


def load_spec(arg: str | Path) -> SearchSpec:
    path = resolve_path(str(arg))
    return parse_spec(load_yaml_file(path), str(path))


def parse_spec(data: dict, where: str = "search space", saved: bool = False) -> SearchSpec:
    """A validated spec. `saved`: the copy an experiment keeps (resume, export): the semantic
    checks, which read the world (weights files, the dataset) and grew over time, are skipped,
    so an experiment stays readable after its weights file moved or a check was added."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of keys at the top level")
    try:
        spec = SearchSpec(**data)
    except ValidationError as exc:
        raise UserError(f"{where}: {format_validation_error(exc)}") from None
    check_spec(spec, where, semantic=not saved)
    return spec


def check_spec(spec: SearchSpec, where: str, semantic: bool = True) -> None:
    """Everything TrainConfig would reject, found before any trial starts; with `semantic`, also
    what would validate but not work (spec_checks.py)."""
    targets = {name: spec.target(name) for name in spec.parameters}
    for name, target in targets.items():
        why = {"data_dir": "the dataset is loaded once",
               "epochs": "scheduler.max_t or fixed.epochs sets every trial's epochs"}.get(target)
        if why:
            raise UserError(f"{where}: parameters.{name}: {target} cannot be searched ({why})")
    both = sorted(set(spec.fixed) & set(targets.values()))
    if both:
        raise UserError(f"{where}: {both[0]} is in both fixed and parameters")
    for name, target in targets.items():
        same = [n for n, t in targets.items() if t == target and n != name]
        if same and not (spec.parameters[name].when and all(spec.parameters[n].when for n in same)):
            raise UserError(f"{where}: parameters.{name}: sets {target!r} like {same[0]}; parameters "
                            "sharing a key need `when` conditions")
    check_population(spec, where)
    if "epochs" in spec.fixed and spec.scheduler.max_t and spec.fixed["epochs"] != spec.scheduler.max_t:
        raise UserError(f"{where}: fixed.epochs ({spec.fixed['epochs']}) differs from scheduler.max_t "
                        f"({spec.scheduler.max_t}); give one")
    base = {**spec.fixed, "epochs": spec.epochs}
    try:
        TrainConfig(**base)
    except ValidationError as exc:
        raise UserError(f"{where}: {format_validation_error(exc, 'fixed.')}") from None
    for name, p in spec.parameters.items():
        target = targets[name]
        if target not in TrainConfig.model_fields:
            what = f"key {target!r}" if p.key else "parameter"
            raise UserError(f"{where}: parameters.{name}: unknown {what} (not a TrainConfig key)")
        for key in p.when or {}:
            if key not in TrainConfig.model_fields:
                raise UserError(f"{where}: parameters.{name}.when.{key}: unknown key")
            if key in spec.parameters and spec.parameters[key].when:
                raise UserError(f"{where}: parameters.{name}.when.{key}: conditions on conditional "
                                "parameters are not supported")
        if p.when and spec.method == "grid":
            raise UserError(f"{where}: parameters.{name}.when: method grid does not take conditional "
                            "parameters; use random or tpe")
        if spec.method == "grid" and p.distribution is not None:
            raise UserError(f"{where}: parameters.{name}: method grid needs `values` (or `value`)")
        if spec.method == "tpe" and p.distribution == "normal":
            raise UserError(f"{where}: parameters.{name}: method tpe does not support distribution normal")
    for conditional in (False, True):  # a bad value first, then a condition it breaks, then the rest
        if conditional and semantic:
            check_conditions(spec, where)
        for name, p in spec.parameters.items():
            if bool(p.when) != conditional:
                continue
            cond = {k: (v[0] if isinstance(v, list) and v else v) for k, v in (p.when or {}).items()}
            for sub, value in p.candidates():
                try:
                    TrainConfig(**{**base, **cond, targets[name]: value})
                except ValidationError as exc:
                    msg = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
                    raise UserError(f"{where}: parameters.{name}.{sub}: {value!r} rejected: {msg}") from None
    if semantic:
        check_semantics(spec, where)


def asha_rungs(spec: SearchSpec) -> set[int]:
    """Epochs at which ASHA compares trials. Its milestones are grace_period * reduction_factor**k
    below max_t, and a trial is compared at the first epoch that reaches one: a fractional milestone
    (reduction_factor 2.5 from 1: 2.5, 6.25) at its ceiling, 3 and 7 (tests/test_ray_compat.py checks
    this against Ray's own brackets; every bracket's milestones are among the first one's)."""
    if spec.scheduler.type != "asha":
        return set()
    rungs, t = set(), float(spec.scheduler.grace_period)
    while t < spec.epochs:
        rungs.add(math.ceil(t - 1e-9))
        t *= spec.scheduler.reduction_factor
    return {r for r in rungs if r < spec.epochs}


POPULATION = ("pbt", "pb2")
CONTINUOUS = ("uniform", "log_uniform_values", "int_uniform", "q_uniform")  # pb2's bounds: min and max


def check_population(spec: SearchSpec, where: str) -> None:
    """PBT / PB2: the perturbed parameters exist, are unconditional, and can change mid-training."""
    s = spec.scheduler
    if s.type not in POPULATION:
        if s.mutate is not None:
            raise UserError(f"{where}: scheduler.mutate: only for scheduler type pbt or pb2")
        return
    if spec.method == "tpe":
        raise UserError(f"{where}: scheduler.type {s.type}: its trials take their configs from each other; "
                        "use method random or grid")
    if s.perturbation_interval >= spec.epochs:
        raise UserError(f"{where}: scheduler.perturbation_interval ({s.perturbation_interval}) must be below "
                        f"max_t ({spec.epochs}) epochs, or no trial is ever perturbed")
    for i, name in enumerate(s.mutate or []):
        p = spec.parameters.get(name)
        if p is None:
            raise UserError(f"{where}: scheduler.mutate[{i}]: {name!r} is not a searched parameter "
                            f"(parameters: {', '.join(spec.parameters) or 'none'})")
        if spec.target(name) not in MUTABLE_KNOBS:
            raise UserError(f"{where}: scheduler.mutate[{i}]: {name!r} cannot change mid-training (the weights "
                            f"or optimiser state would not fit it); perturbable: {', '.join(MUTABLE_KNOBS)}")
        if p.when:
            raise UserError(f"{where}: scheduler.mutate[{i}]: {name!r} is conditional (when); a trial copying "
                            "another's config could leave it unset")
        if "value" in p.model_fields_set:
            raise UserError(f"{where}: scheduler.mutate[{i}]: {name!r} is a constant; nothing to perturb")
        if s.type == "pb2" and p.distribution not in CONTINUOUS:
            raise UserError(f"{where}: scheduler.mutate[{i}]: pb2 perturbs continuous parameters (min, max) only; "
                            f"{name!r} is not one (use scheduler type pbt)")
    if not mutated(spec):
        raise UserError(f"{where}: scheduler.type {s.type}: no searched parameter can be perturbed; search one "
                        f"of {', '.join(MUTABLE_KNOBS)} without `when`" + (" with a distribution" if s.type == "pb2" else ""))


def mutated(spec: SearchSpec) -> list[str]:
    """The parameters PBT / PB2 perturb: scheduler.mutate, or every searched one that may be."""
    if spec.scheduler.mutate is not None:
        return list(spec.scheduler.mutate)
    return [name for name, p in spec.parameters.items()
            if spec.target(name) in MUTABLE_KNOBS and not p.when and "value" not in p.model_fields_set
            and (spec.scheduler.type != "pb2" or p.distribution in CONTINUOUS)]


MIN_RUNG_STEPS = 100  # below this many optimiser steps, a first rung ranks trials on their start


def early_rung_warning(spec: SearchSpec, train_size: int) -> str | None:
    """A warning when ASHA's first rung comes after so few optimiser steps that it would rank trials
    on how they start rather than how they end (bench/search_bench.py, BENCHMARKS.md: on 1,500
    training images, 11 steps an epoch, epoch-1 validation ranked trials *against* their final one)."""
    if spec.scheduler.type != "asha" or train_size <= 0:
        return None
    items = int(spec.fixed.get("train_items") or 0)
    n = min(items, train_size) if items else train_size
    batches = [int(v) for name, p in spec.parameters.items() if spec.target(name) == "batch_size"
               for v in (p.values or [p.value if "value" in p.model_fields_set else p.max])]
    batches = batches or [int(spec.fixed.get("batch_size", TrainConfig.model_fields["batch_size"].default))]
    steps = max(1, n // max(batches)) * min(spec.scheduler.grace_period, spec.epochs)
    if steps >= MIN_RUNG_STEPS:
        return None
    return (f"warning: scheduler.grace_period {spec.scheduler.grace_period} = {steps} optimiser steps on {n:,} "
            f"training images: ASHA will stop trials on how they start, not how they end; give a "
            f"grace_period of at least {MIN_RUNG_STEPS} steps' worth of epochs, or use scheduler type fifo")


# ------------------------------------------------------------------ trial config → TrainConfig
def trial_values(spec: SearchSpec, config: dict) -> dict:
    """A trial's sampled dict (None = condition did not hold) merged over `fixed`."""
    values = {**spec.fixed, "epochs": spec.epochs}
    for k, v in config.items():
        if v is not None and not k.endswith(INDEX_SUFFIX):
            values[spec.target(k) if k in spec.parameters else k] = v
    return values


def trial_threads(spec: SearchSpec) -> int:
    """Torch CPU threads of a trial: its CPU share (no oversubscription), unless fixed sets `threads`."""
    return max(1, int(spec.resources.cpu))


def trial_train_config(spec: SearchSpec, config: dict, data_dir: str, where: str) -> TrainConfig:
    """The TrainConfig a trial trains with (search/trainable.py), and `launch.py reproduce` retrains with."""
    values = {**trial_values(spec, config), "data_dir": str(data_dir)}
    values.setdefault("threads", trial_threads(spec))
    return make_config(values, where=where)


# ------------------------------------------------------------------ Tune objects
