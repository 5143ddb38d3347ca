"""The search-space language: YAML → validated `SearchSpec`. A peer of `config.py` (TrainConfig),
below the Ray runtime (`search/`) and the experiment folder (`experiment/`); it imports neither
Ray nor torch (tests/test_layers.py).

- `model.py`   the pydantic models (`SearchSpec`, `Param`, `SchedulerSpec`, `Resources`, `Bound`;
               objectives and constraints)
- `kinds.py`   one registry entry per distribution: its fields, its Tune domain, its Optuna
               suggestion and distribution, how the checks read it
- `checks.py`  `check_spec` in named steps, the semantic checks, PBT's checks
- `load.py`    file / shipped name / dict → validated spec
- `derived.py` what follows from a spec: ASHA's rungs, PBT's perturbed parameters, a trial's TrainConfig

Errors name the key path (`parameters.lr.min`)."""

from .derived import (
    MIN_RUNG_STEPS,
    asha_rungs,
    config_key,
    distinct_configs,
    distinct_warning,
    early_rung_warning,
    mutated,
    trial_threads,
    trial_train_config,
    trial_values,
)
from .kinds import DISTRIBUTIONS, Kind, kind, list_distributions
from .load import SEARCH_SPACES_DIR, load_spec, parse_spec, resolve_path
from .model import (
    AUDIT_KEY,
    COST_METRICS,
    EARLY_STOPPING,
    INDEX_SUFFIX,
    OPTUNA_METHODS,
    POPULATION,
    QUALITY_METRICS,
    SEED_HEX_DIGITS,
    AuditSpec,
    Bound,
    Param,
    Resources,
    SchedulerSpec,
    SearchSpec,
)

__all__ = [
    "AUDIT_KEY",
    "AuditSpec",
    "Bound",
    "COST_METRICS",
    "DISTRIBUTIONS",
    "EARLY_STOPPING",
    "INDEX_SUFFIX",
    "OPTUNA_METHODS",
    "MIN_RUNG_STEPS",
    "POPULATION",
    "QUALITY_METRICS",
    "SEARCH_SPACES_DIR",
    "SEED_HEX_DIGITS",
    "Kind",
    "Param",
    "Resources",
    "SchedulerSpec",
    "SearchSpec",
    "asha_rungs",
    "config_key",
    "distinct_configs",
    "distinct_warning",
    "early_rung_warning",
    "kind",
    "list_distributions",
    "load_spec",
    "mutated",
    "parse_spec",
    "resolve_path",
    "trial_threads",
    "trial_train_config",
    "trial_values",
]
