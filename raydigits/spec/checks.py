"""Every check of a search spec beyond its structure, run by `load.parse_spec` before Ray starts,
each a named step of `check_spec`: what TrainConfig would reject (keys, fixed values, each
parameter's candidate values, conditions), and with `semantic`, what would validate key by key but
could not work: conditions that can never hold, distributions whose samples fall outside what
TrainConfig accepts (from the distribution's support, kinds.py, not by sampling), scheduler settings
that contradict each other or go unused, PBT settings, and files named in the spec that cannot be
used (a weights file, the dataset, and the sizes and class weights that must fit that dataset).

Each problem is one UserError naming its key path (`parameters.lr.normal: ...`)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..config import MUTABLE_KNOBS, TrainConfig, data_dir_path, format_validation_error, numeric_field
from ..errors import UserError
from .derived import mutated
from .kinds import INT_TOLERANCE, q_grid
from .model import COST_METRICS, EARLY_STOPPING, OPTUNA_METHODS, POPULATION, Param, SearchSpec


# ------------------------------------------------------------------ check_spec, step by step
def check_spec(spec: SearchSpec, where: str, semantic: bool = True) -> None:
    """Everything TrainConfig would reject, found before any trial starts; with `semantic`, also
    what would validate but not work (`check_semantics`)."""
    targets = {name: spec.target(name) for name in spec.parameters}
    _check_targets(spec, targets, where)
    check_population(spec, where)
    base = _check_fixed(spec, where)
    for name, p in spec.parameters.items():
        _check_param_keys(spec, name, p, targets[name], where)
    for conditional in (False, True):  # a bad value first, then a condition it breaks, then the rest
        if conditional and semantic:
            check_conditions(spec, where)
        for name, p in spec.parameters.items():
            if bool(p.when) == conditional:
                _check_candidates(name, p, targets[name], base, where)
    if semantic:
        check_semantics(spec, where)


def _check_targets(spec: SearchSpec, targets: dict[str, str], where: str) -> None:
    """Each parameter sets a key that may be searched, once (or under `when` conditions)."""
    for name, target in targets.items():
        why = {
            "data_dir": "the dataset is loaded once",
            "epochs": "scheduler.max_t or fixed.epochs sets every trial's epochs",
        }.get(target)
        if why:
            raise UserError(f"{where}: parameters.{name}: {target} cannot be searched ({why})")
    both = sorted(set(spec.fixed) & set(targets.values()))
    if both:
        raise UserError(f"{where}: {both[0]} is in both fixed and parameters")
    for name, target in targets.items():
        same = [n for n, t in targets.items() if t == target and n != name]
        if same and not (spec.parameters[name].when and all(spec.parameters[n].when for n in same)):
            raise UserError(
                f"{where}: parameters.{name}: sets {target!r} like {same[0]}; parameters "
                "sharing a key need `when` conditions"
            )


def _check_fixed(spec: SearchSpec, where: str) -> dict[str, Any]:
    """`fixed` (with the epochs) is a valid TrainConfig; returns it as the base of every trial."""
    if "epochs" in spec.fixed and spec.scheduler.max_t and spec.fixed["epochs"] != spec.scheduler.max_t:
        raise UserError(
            f"{where}: fixed.epochs ({spec.fixed['epochs']}) differs from scheduler.max_t "
            f"({spec.scheduler.max_t}); give one"
        )
    base = {**spec.fixed, "epochs": spec.epochs}
    try:
        TrainConfig(**base)
    except ValidationError as exc:
        raise UserError(f"{where}: {format_validation_error(exc, 'fixed.')}") from None
    return base


def _check_param_keys(spec: SearchSpec, name: str, p: Param, target: str, where: str) -> None:
    """The parameter's key and its condition keys are TrainConfig keys; the method can sample it."""
    if target not in TrainConfig.model_fields:
        what = f"key {target!r}" if p.key else "parameter"
        raise UserError(f"{where}: parameters.{name}: unknown {what} (not a TrainConfig key)")
    for key in p.when or {}:
        if key not in TrainConfig.model_fields:
            raise UserError(f"{where}: parameters.{name}.when.{key}: unknown key")
        if key in spec.parameters and spec.parameters[key].when:
            raise UserError(
                f"{where}: parameters.{name}.when.{key}: conditions on conditional parameters are not supported"
            )
    if p.when and spec.method == "grid":
        raise UserError(
            f"{where}: parameters.{name}.when: method grid does not take conditional parameters; use random or tpe"
        )
    if spec.method == "grid" and p.distribution is not None:
        raise UserError(f"{where}: parameters.{name}: method grid needs `values` (or `value`)")
    if spec.method in OPTUNA_METHODS and p.kind is not None and not p.kind.suggest:
        raise UserError(
            f"{where}: parameters.{name}: method {spec.method} does not support distribution {p.distribution}"
        )


def _check_candidates(name: str, p: Param, target: str, base: dict[str, Any], where: str) -> None:
    """Each representative value, under its condition, is one TrainConfig accepts."""
    cond = {k: (v[0] if isinstance(v, list) and v else v) for k, v in (p.when or {}).items()}
    for sub, value in p.candidates():
        if isinstance(value, str) and numeric_field(target):  # TrainConfig would take "0.001", Tune not
            raise UserError(
                f"{where}: parameters.{name}.{sub}: {value!r} is text, not a number; {target} takes a "
                "number (unquoted: 1e-3 or 0.001)"
            )
        try:
            TrainConfig(**{**base, **cond, target: value})
        except ValidationError as exc:
            msg = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            raise UserError(f"{where}: parameters.{name}.{sub}: {value!r} rejected: {msg}") from None


def check_population(spec: SearchSpec, where: str) -> None:
    """PBT / PB2: the perturbed parameters exist, are unconditional, and can change mid-training."""
    s = spec.scheduler
    if s.type not in POPULATION:
        if s.mutate is not None:
            raise UserError(f"{where}: scheduler.mutate: only for scheduler type pbt or pb2")
        return
    if spec.method in OPTUNA_METHODS:
        raise UserError(
            f"{where}: scheduler.type {s.type}: its trials take their configs from each other; "
            "use method random or grid"
        )
    if s.perturbation_interval >= spec.epochs:
        raise UserError(
            f"{where}: scheduler.perturbation_interval ({s.perturbation_interval}) must be below "
            f"max_t ({spec.epochs}) epochs, or no trial is ever perturbed"
        )
    for i, name in enumerate(s.mutate or []):
        _check_mutated(spec, i, name, where)
    if not mutated(spec):
        raise UserError(
            f"{where}: scheduler.type {s.type}: no searched parameter can be perturbed; search one "
            f"of {', '.join(MUTABLE_KNOBS)} without `when`" + (" with a distribution" if s.type == "pb2" else "")
        )


def _check_mutated(spec: SearchSpec, i: int, name: str, where: str) -> None:
    p = spec.parameters.get(name)
    if p is None:
        raise UserError(
            f"{where}: scheduler.mutate[{i}]: {name!r} is not a searched parameter "
            f"(parameters: {', '.join(spec.parameters) or 'none'})"
        )
    if spec.target(name) not in MUTABLE_KNOBS:
        raise UserError(
            f"{where}: scheduler.mutate[{i}]: {name!r} cannot change mid-training (the weights "
            f"or optimiser state would not fit it); perturbable: {', '.join(MUTABLE_KNOBS)}"
        )
    if p.when:
        raise UserError(
            f"{where}: scheduler.mutate[{i}]: {name!r} is conditional (when); a trial copying "
            "another's config could leave it unset"
        )
    if p.is_constant:
        raise UserError(f"{where}: scheduler.mutate[{i}]: {name!r} is a constant; nothing to perturb")
    if spec.scheduler.type == "pb2" and not (p.kind and p.kind.bounded):
        raise UserError(
            f"{where}: scheduler.mutate[{i}]: pb2 perturbs continuous parameters (min, max) only; "
            f"{name!r} is not one (use scheduler type pbt)"
        )


# ------------------------------------------------------------------ semantic checks
ASHA_ONLY = ("grace_period", "reduction_factor", "brackets")
PBT_ONLY = ("perturbation_interval", "quantile_fraction", "resample_probability", "synch")  # mutate: spec.py
BEST_MODE = {"val_acc": "max", "val_loss": "min"}
SUBSET_KEYS = {"train_items": "train", "val_items": "val", "bn_recalibrate": "train"}


def check_semantics(spec: SearchSpec, where: str) -> None:
    """Everything below but the conditions (`check_conditions`), which `check_spec` runs earlier."""
    _check_metric_mode(spec, where)
    _check_objectives(spec, where)
    _check_scheduler(spec, where)
    for name, p in spec.parameters.items():
        _check_support(name, p, spec.target(name), where)
    _check_weights(spec, where)
    _check_data(spec, where)


# ------------------------------------------------------------------ metric, scheduler
def _check_metric_mode(spec: SearchSpec, where: str) -> None:
    best = BEST_MODE[spec.metric]
    if spec.mode != best:
        raise UserError(
            f"{where}: mode: {spec.mode} with metric {spec.metric} would pick the worst trial; "
            f"give mode: {best} (or leave mode out)"
        )


def _check_objectives(spec: SearchSpec, where: str) -> None:
    """Costs are minimised; a population scheduler copies one metric's winners (no front)."""
    for key, mode in (spec.objectives or {}).items():
        if key in COST_METRICS and mode != "min":
            raise UserError(f"{where}: objectives.{key}: {mode} would prefer the costlier model; give min")
    if spec.method == "nsga2" and not spec.multi_objective:
        # NSGA-II's selection is non-dominated sorting: with one objective it is a plain genetic
        # algorithm whose first generation is random, which TPE beats at this number of trials
        raise UserError(
            f"{where}: method: nsga2 searches several objectives (give objectives with a cost); "
            "with one objective use tpe"
        )
    if spec.multi_objective and spec.scheduler.type in POPULATION:
        raise UserError(
            f"{where}: objectives: scheduler type {spec.scheduler.type} follows one metric; with several "
            "objectives use family_asha, asha or fifo"
        )


def _check_scheduler(spec: SearchSpec, where: str) -> None:
    s = spec.scheduler
    given = s.model_fields_set
    unused = [k for k in ASHA_ONLY if k in given] if s.type not in EARLY_STOPPING else []
    if unused:
        raise UserError(
            f"{where}: scheduler.{unused[0]}: only used by scheduler type family_asha or asha (this one is {s.type})"
        )
    unused = [k for k in PBT_ONLY if k in given] if s.type not in ("pbt", "pb2") else []
    if unused:
        raise UserError(
            f"{where}: scheduler.{unused[0]}: only used by scheduler type pbt or pb2 (this one is {s.type})"
        )
    if "first_keep" in given and s.type != "family_asha":
        raise UserError(
            f"{where}: scheduler.first_keep: only used by scheduler type family_asha (this one is {s.type})"
        )
    if s.type not in EARLY_STOPPING:
        return
    if s.type == "family_asha" and s.brackets != 1:
        raise UserError(
            f"{where}: scheduler.brackets: family_asha runs one bracket (BENCHMARKS.md: a hedge bracket "
            "protected less than comparing within families); use type asha for Ray's brackets"
        )
    epochs = spec.epochs
    source = (
        "scheduler.max_t" if s.max_t else "fixed.epochs" if "epochs" in spec.fixed else "TrainConfig's default epochs"
    )
    if s.grace_period > epochs:
        raise UserError(
            f"{where}: scheduler.grace_period: {s.grace_period} epochs exceeds the {epochs} a trial "
            f"runs ({source}), so ASHA could never stop a trial early; lower it or use type fifo"
        )


# ------------------------------------------------------------------ distributions vs TrainConfig bounds
def _bounds(key: str) -> list[tuple[str, float]]:
    out = []
    for m in TrainConfig.model_fields[key].metadata:
        for op in ("gt", "ge", "lt", "le"):
            value = getattr(m, op, None)
            if value is not None:
                out.append((op, value))
    return out


def _takes_int(key: str) -> bool:
    ann = TrainConfig.model_fields[key].annotation
    args = getattr(ann, "__args__", None) or ()
    return ann is int or (int in args and float not in args)


BROKEN = {"gt": "<=", "ge": "<", "lt": ">=", "le": ">"}  # what a sample breaking a bound looks like
KEPT = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _check_support(name: str, p: Param, key: str, where: str) -> None:
    k = p.kind
    if k is None or key not in TrainConfig.model_fields:
        return
    path = f"{where}: parameters.{name}.{k.name}"
    if k.fractional and _takes_int(key):
        raise UserError(f"{path}: samples are fractional ({key} takes integers); use int_uniform or values")
    if not k.bounded:  # support: all reals
        bounds = _bounds(key)
        if bounds:
            op, value = bounds[0]
            raise UserError(
                f"{path}: samples can be {BROKEN[op]} {value:g} ({key} must be {KEPT[op]} {value:g}); "
                "use uniform or log_uniform_values inside the bounds"
            )
    if k.name == "q_uniform":
        q = p.q or 1.0
        lo, hi = q_grid(p)
        if lo > hi:
            raise UserError(
                f"{path}: no multiple of q={q:g} lies between min {p.min:g} and max {p.max:g}, "
                "so there is nothing to sample"
            )
        if _takes_int(key) and abs(q - round(q)) > INT_TOLERANCE:
            raise UserError(f"{path}: q={q:g} gives fractional samples ({key} takes integers)")


# ------------------------------------------------------------------ conditions
def check_conditions(spec: SearchSpec, where: str) -> None:
    """Every `when` can hold for some trial (run before values are validated under their condition)."""
    for name, p in spec.parameters.items():
        for key, want in (p.when or {}).items():
            allowed = want if isinstance(want, list) else [want]
            path = f"{where}: parameters.{name}.when.{key}"
            if not allowed:
                raise UserError(f"{path}: an empty list of values never holds")
            if key not in spec.parameters:
                now = spec.fixed.get(key, TrainConfig().model_dump().get(key))
                raise UserError(
                    f"{path}: {key} is not a searched parameter (every trial has {key} = {now!r}), "
                    "so the condition never changes; drop it or search that key"
                )
            cond = spec.parameters[key]
            if not cond.can_hold(allowed):
                possible = cond.possible()
                takes = (
                    f"takes only {possible}"
                    if possible is not None
                    else f"is drawn from {cond.distribution} [{cond.min:g}, {cond.max:g}]"
                    if cond.min is not None
                    else f"is drawn from {cond.distribution}"
                )
                raise UserError(f"{path}: {want!r} can never hold: parameters.{key} {takes}")


# ------------------------------------------------------------------ files the spec names
def _values_of(spec: SearchSpec, key: str) -> list[tuple[str, Any]]:
    """(key path, value) for every value `key` can take: fixed, or each candidate of a parameter."""
    if key in spec.fixed:
        return [(f"fixed.{key}", spec.fixed[key])]
    out = [
        (f"parameters.{name}.{sub}", v)
        for name, p in spec.parameters.items()
        if spec.target(name) == key
        for sub, v in p.candidates()
    ]
    return out or [(f"{key} (TrainConfig default)", TrainConfig.model_fields[key].default)]


def _check_weights(spec: SearchSpec, where: str) -> None:
    """A `pretrained` state-dict path must load, and share tensors with each model it is used with."""
    paths = [(k, v) for k, v in _values_of(spec, "pretrained") if v not in (None, "imagenet")]
    models = [v for _, v in _values_of(spec, "model")]
    for path in [k for k, v in _values_of(spec, "pretrained") if v == "imagenet"][:1]:
        from ..models import imagenet_file

        for model in models:
            file = imagenet_file(model)
            if file is None or not file.exists():
                place = f"at {file} (downloads are not attempted)" if file else "in torchvision"
                raise UserError(f"{where}: {path}: imagenet: no ImageNet weights for {model} {place}")
    if not paths:
        return
    import torchvision

    from ..models import read_state_dict

    for path, value in paths:
        try:
            state = read_state_dict(value)
        except UserError as exc:
            raise UserError(f"{where}: {path}: {str(exc).removeprefix('pretrained: ')}") from None
        for model in models:
            own = torchvision.models.get_model(model, weights=None).state_dict()
            if not any(k in own and getattr(v, "shape", None) == own[k].shape for k, v in state.items()):
                raise UserError(
                    f"{where}: {path}: {value}: no tensor matches model {model} (weights of another architecture?)"
                )


def _check_data(spec: SearchSpec, where: str) -> None:
    """The dataset folder, and the sizes and weights that must fit it (when it is prepared)."""
    from ..data.store import MANIFEST, is_store, read_manifest

    key = "fixed.data_dir" if "data_dir" in spec.fixed else "data_dir (default)"
    data_dir = data_dir_path(spec.fixed.get("data_dir"), f"{where}: {key}:")
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"{where}: {key}: {data_dir}: is a file, not a prepared dataset folder")
    if not is_store(data_dir):
        if data_dir.name == "mnist":
            return  # prepared on demand
        what = "no such folder" if not data_dir.exists() else f"no prepared dataset (no {MANIFEST})"
        raise UserError(
            f"{where}: {key}: {data_dir}: {what}; prepare one with `python -m raydigits.data "
            f"prepare --folder ROOT --out {data_dir}`"
        )
    manifest = read_manifest(data_dir)
    classes = len(manifest["class_names"])
    for size_key, split in SUBSET_KEYS.items():
        info = manifest["splits"].get(split) or {}
        present = sum(1 for c in info.get("class_counts") or [] if c > 0) or classes
        for path, n in _values_of(spec, size_key):
            if isinstance(n, int) and 0 < n < min(present, info.get("count", n + 1)):
                raise UserError(
                    f"{where}: {path}: {n} is fewer than the {present} classes in the {split} "
                    f"split of {data_dir}; give 0 (all) or at least {present}"
                )
    for path, weights in _values_of(spec, "class_weights"):
        if weights is not None and len(weights) != classes:
            raise UserError(f"{where}: {path}: {len(weights)} weights for the {classes} classes of {data_dir}")
