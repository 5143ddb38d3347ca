"""The search space as validated pydantic models: `SearchSpec` with its `Param`s, `SchedulerSpec`
and `Resources`. Structure only; what needs TrainConfig or the world is checked in checks.py.

Parameter syntax follows W&B sweeps: `{values: [...]}`, `{value: x}`,
`{distribution: uniform | log_uniform_values | int_uniform | q_uniform | normal, min, max, q, mu, sigma}`
(kinds.py: one entry per distribution). A parameter that only applies to one choice adds
`when: {optimizer: sgd}` (or a list of values): it is sampled only for trials where the condition
holds and otherwise keeps TrainConfig's default."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import TrainConfig, no_bool_for_number
from .kinds import DISTRIBUTIONS, Kind

AUDIT_KEY = "audit_of"  # an audit trial's config: the id of the stopped trial it continues
INDEX_SUFFIX = "__index"  # Optuna picks an index for values it cannot store (lists): `<name>__index`
SEED_HEX_DIGITS = 8  # a conditional draw's seed: 8 hex digits = 32 bits, what RandomState takes
POPULATION = ("pbt", "pb2")  # schedulers whose trials take their configs from each other
SCHEDULERS = ("family_asha", "asha", "fifo", "pbt", "pb2")
# schedulers that stop trials at rungs (grace_period * reduction_factor**k): family_asha, the default,
# compares a trial only with trials of its own family (search/family_asha.py); asha is Ray's own
EARLY_STOPPING = ("family_asha", "asha")
# methods whose configs Optuna suggests (define-by-run: search/tune_space.OptunaSpace): tpe (one or
# several objectives: Optuna's TPESampler handles both) and nsga2 (Optuna's NSGAIISampler: several)
OPTUNA_METHODS = ("tpe", "nsga2")
# what a search can optimise: how good a trial is (measured every epoch, on validation) ...
QUALITY_METRICS = {"val_acc": "max", "val_loss": "min"}  # the metric and its better direction
# ... and what its model costs to deploy, known before its first epoch (raydigits/costs.py measures them,
# every result carries them): parameters, MiB on disk, MFLOPs per image, batch-1 latency on its device
COST_METRICS = ("params", "size_mb", "mflops", "latency_ms")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    _no_bool = field_validator("*", mode="before")(classmethod(no_bool_for_number))  # num_samples: true


def _printable_keys(keys: dict[str, Any] | None) -> dict[str, Any] | None:
    """Names the checks quote as written (`parameters.NAME.when.KEY`) hold no line break."""
    for key in keys or {}:
        if not key.isprintable():
            raise ValueError(f"{key!r}: a name with a line break or another control character")
    return keys


class Param(_Strict):
    values: list[Any] | None = None
    value: Any = None
    distribution: Literal[tuple(DISTRIBUTIONS)] | None = None  # type: ignore[valid-type]
    min: float | None = None
    max: float | None = None
    q: float | None = None
    mu: float | None = None
    sigma: float | None = None
    when: dict[str, Any] | None = None  # {key: value or [values]} — sample only when it holds
    key: str | None = None  # the TrainConfig key it sets (default: its own name), so
    # `lr_sgd` and `lr_adamw` can give `lr` per-optimiser ranges

    _when_keys = field_validator("when")(_printable_keys)

    @model_validator(mode="after")
    def _shape(self) -> "Param":
        shapes = [k for k in ("values", "value", "distribution") if k in self.model_fields_set]
        if len(shapes) != 1:
            raise ValueError("give exactly one of values, value, distribution")
        if self.values is not None and not self.values:
            raise ValueError("values: empty list")
        k = self.kind
        if k is None:
            return self
        if k.bounded and (self.min is None or self.max is None):
            raise ValueError(f"distribution {k.name} needs min and max")
        if k.bounded and self.min > self.max:  # type: ignore[operator]
            raise ValueError(f"min ({self.min:g}) > max ({self.max:g})")
        if k.name == "log_uniform_values" and self.min <= 0:  # type: ignore[operator]
            raise ValueError(f"log_uniform_values needs min > 0, got {self.min:g}")
        if k.name == "normal" and (self.mu is None or self.sigma is None or self.sigma <= 0):
            raise ValueError("distribution normal needs mu and sigma > 0")
        if k.name == "q_uniform" and self.q is not None and self.q <= 0:
            raise ValueError("q must be > 0")
        return self

    @property
    def kind(self) -> Kind | None:
        """The distribution's registry entry; None for `values` and `value`."""
        return DISTRIBUTIONS[self.distribution] if self.distribution else None

    @property
    def is_constant(self) -> bool:
        return "value" in self.model_fields_set

    def possible(self) -> list[Any] | None:
        """The values it can take, or None when they are a continuum."""
        if self.values is not None:
            return list(self.values)
        return [self.value] if self.is_constant else None

    def varies(self) -> bool:
        """Whether trials can differ in it (a constant, one value or min == max do not)."""
        possible = self.possible()
        if possible is not None:
            return len(possible) > 1
        return not (self.kind is not None and self.kind.bounded and self.min == self.max)

    def candidates(self) -> list[tuple[str, Any]]:
        """Representative values to validate against TrainConfig before Ray starts: (key, value)."""
        if self.values is not None:
            return [(f"values[{i}]", v) for i, v in enumerate(self.values)]
        if self.is_constant:
            return [("value", self.value)]
        return self.kind.candidates(self)  # type: ignore[union-attr]

    def can_hold(self, allowed: list[Any]) -> bool:
        """Whether some draw equals one of `allowed` (a `when` on it can hold)."""
        possible = self.possible()
        if possible is not None:
            return any(a == v for a in allowed for v in possible)
        return any(self.kind.can_hold(self, a) for a in allowed)  # type: ignore[union-attr]

    def condition_holds(self, config: dict[str, Any]) -> bool:
        for key, want in (self.when or {}).items():
            allowed = want if isinstance(want, list) else [want]
            if config.get(key) not in allowed:
                return False
        return True


class SchedulerSpec(_Strict):
    type: Literal["family_asha", "asha", "fifo", "pbt", "pb2"] = "family_asha"
    max_t: int | None = Field(None, ge=1)  # epochs a trial may run (= TrainConfig.epochs)
    grace_period: int = Field(1, ge=1)  # epochs before ASHA may stop a trial
    reduction_factor: float = Field(2.0, gt=1.0)
    brackets: int = Field(1, ge=1)
    # family_asha: the share of a family its first rung keeps (later rungs 1/reduction_factor). 3/4 lets
    # a slow starter through a first rung that ranks how trials start; 1/3 spends less and pays off
    # only when the first rung ranks well, as with `fixed: {scheduler: rung_cosine}` (BENCHMARKS.md)
    first_keep: float = Field(0.75, gt=0.0, lt=1.0)
    # pbt / pb2: every `perturbation_interval` epochs a trial in the bottom `quantile_fraction` continues
    # from a top trial's checkpoint with that trial's config, its `mutate` parameters perturbed
    perturbation_interval: int = Field(1, ge=1)
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5)
    resample_probability: float = Field(0.25, ge=0.0, le=1.0)  # pbt: resample instead of x1.2 / x0.8 or a neighbour
    mutate: list[str] | None = None  # searched parameters to perturb (default: every one that may)
    synch: bool = False  # pbt/pb2: trials wait for each other at every interval (else a trial is compared
    # with the others' latest results, and a fast trial may finish before any is in)


class AuditSpec(_Strict):
    # after an ASHA search, the `top_k` trials it stopped with the best value at their last rung train
    # on from their last checkpoint to max_t (search/audit.py): what early stopping cost is then
    # measured, and the final stage may choose one of them. 0 turns it off.
    top_k: int = Field(2, ge=0)


class Bound(_Strict):
    """A constraint on a cost: `{max: 2.0}`, `{min: ..., max: ...}`; a trial outside it is infeasible."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _given(self) -> "Bound":
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) > max ({self.max:g})")
        return self

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self, metric: str) -> str:
        """`latency_ms <= 2`, `1e+06 <= params <= 2e+06`."""
        low = f"{self.min:g} <= " if self.min is not None else ""
        high = f" <= {self.max:g}" if self.max is not None else ""
        return f"{low}{metric}{high}"


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0.0)
    # per trial: a fraction of a GPU (0.25 = four trials share one), or auto: a probe measures one
    # trial's peak memory and packs as many per GPU as fit (search/packing.py)
    gpu: float | Literal["auto"] = 0.0
    gpu_margin: float = Field(0.15, ge=0.0, lt=0.9)  # gpu: auto — memory kept free, per GPU and per trial
    max_trials_per_gpu: int = Field(8, ge=1)  # gpu: auto — at most this many trials share a GPU

    @model_validator(mode="after")
    def _gpu(self) -> "Resources":
        if self.gpu != "auto" and self.gpu < 0:
            raise ValueError(f"gpu must be >= 0 or auto, got {self.gpu:g}")
        return self


class SearchSpec(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    mode: Literal["max", "min"] | None = None  # default: max for val_acc, min for val_loss
    num_samples: int = Field(8, ge=1)
    method: Literal["random", "grid", "tpe", "nsga2"] = "random"  # nsga2: several objectives only
    scheduler: SchedulerSpec = SchedulerSpec()
    resources: Resources = Resources()
    audit: AuditSpec = AuditSpec()
    max_concurrent: int | None = Field(None, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0, lt=2**32)  # numpy and Optuna take seeds in [0, 2**32)
    max_failures: int = Field(2, ge=0)  # retries of a crashed trial, from its last checkpoint
    checkpoints_to_keep: int = Field(2, ge=1)  # best-by-metric checkpoints kept per trial
    # the final stage's epoch of the best trial: 'within_se' = the latest kept epoch whose val_acc is
    # within one standard error (binomial, on the validation's size) of the trial's best, since epochs
    # closer than the validation's own noise cannot be told apart and the schedule's end is the model
    # the config meant; 'best' = the best epoch itself (always so for val_loss)
    select_epoch: Literal["within_se", "best"] = "within_se"
    # multi-objective search: {metric: max | min, ...} in order, exactly one of them a quality metric
    # (val_acc / val_loss, which then is `metric`), the others costs (COST_METRICS), e.g.
    # {val_acc: max, latency_ms: min}. None, or a single entry, is the single-objective search on `metric`
    objectives: dict[str, Literal["max", "min"]] | None = None
    # bounds on costs, {latency_ms: {max: 2.0}, params: {max: 2e6}}: a trial outside them is infeasible
    # (stopped at its first result) and never chosen
    constraints: dict[str, Bound] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Param] = Field(default_factory=dict)

    _parameter_names = field_validator("parameters")(_printable_keys)

    @model_validator(mode="after")
    def _defaults(self) -> "SearchSpec":
        if self.objectives is not None:
            self._objectives_set_metric()
        if self.mode is None:
            self.mode = "max" if self.metric == "val_acc" else "min"
        for key in self.constraints:
            if key not in COST_METRICS:
                raise ValueError(
                    f"constraints.{key}: not a cost known before a trial's first epoch; "
                    f"constraints bound {', '.join(COST_METRICS)}"
                )
        return self

    def _objectives_set_metric(self) -> None:
        """The quality objective becomes `metric` / `mode` (checkpoints, the choice of a trial)."""
        objectives = self.objectives or {}
        known = (*QUALITY_METRICS, *COST_METRICS)
        for key in objectives:
            if key not in known:
                raise ValueError(f"objectives.{key}: unknown metric; known: {', '.join(known)}")
        quality = [k for k in objectives if k in QUALITY_METRICS]
        if len(quality) != 1:
            raise ValueError(
                f"objectives: exactly one of {', '.join(QUALITY_METRICS)} (how good a trial is), got "
                f"{', '.join(quality) or 'none'}"
            )
        q = quality[0]
        for field, value in (("metric", q), ("mode", objectives[q])):
            given = getattr(self, field)
            if field in self.model_fields_set and given is not None and given != value:
                raise ValueError(f"{field}: {given} contradicts objectives ({q}: {objectives[q]}); leave {field} out")
        self.metric, self.mode = q, objectives[q]  # type: ignore[assignment]

    @property
    def objective_list(self) -> list[tuple[str, str]]:
        """(metric, mode) of every objective in order; [(metric, mode)] for a single-objective search."""
        if self.objectives:
            return list(self.objectives.items())
        return [(self.metric, self.mode or "max")]

    def broken_constraints(self, result: dict[str, Any]) -> list[str]:
        """The constraints a result's costs break, described (`latency_ms <= 2`); [] when feasible.
        A result without a constrained cost (an older run) breaks nothing."""
        return [b.describe(k) for k, b in self.constraints.items() if k in result and not b.holds(float(result[k]))]

    @property
    def multi_objective(self) -> bool:
        return len(self.objective_list) > 1

    def to_dict(self) -> dict[str, Any]:
        """Round-trips through `parse_spec` (parameters and the scheduler keep only the keys that were
        given: a scheduler-specific default written out would read as a setting for another type)."""
        d = self.model_dump(mode="json")
        # the type always: an experiment keeps the scheduler it ran with when the default changes
        d["scheduler"] = {**self.scheduler.model_dump(mode="json", exclude_unset=True), "type": self.scheduler.type}
        d["parameters"] = {k: p.model_dump(mode="json", exclude_unset=True) for k, p in self.parameters.items()}
        d["constraints"] = {k: b.model_dump(mode="json", exclude_none=True) for k, b in self.constraints.items()}
        return d

    def target(self, name: str) -> str:
        return self.parameters[name].key or name

    @property
    def epochs(self) -> int:
        return self.scheduler.max_t or int(self.fixed.get("epochs", TrainConfig.model_fields["epochs"].default))
