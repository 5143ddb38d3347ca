"""Semantic checks of a search spec, run by `spec.check_spec` before Ray starts: what validates key by
key but could not work. Conditions that can never hold, distributions whose samples fall outside
what TrainConfig accepts (from the distribution's support, not by sampling), scheduler settings
that contradict each other or go unused, and files named in the spec that cannot be used (a weights
file, the dataset, and the sizes and class weights that must fit that dataset).

Each problem is one UserError naming its key path (`parameters.lr.normal: ...`)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..config import TrainConfig, default_data_dir
from ..errors import UserError

CONTINUOUS = ("uniform", "log_uniform_values", "normal")
ASHA_ONLY = ("grace_period", "reduction_factor", "brackets")
PBT_ONLY = ("perturbation_interval", "quantile_fraction", "resample_probability", "synch")  # mutate: spec.py
BEST_MODE = {"val_acc": "max", "val_loss": "min"}
SUBSET_KEYS = {"train_items": "train", "val_items": "val", "bn_recalibrate": "train"}
INT_TOLERANCE = 1e-9


def check_semantics(spec, where: str) -> None:
    """Everything below but the conditions (`check_conditions`), which `check_spec` runs earlier."""
    _check_metric_mode(spec, where)
    _check_scheduler(spec, where)
    for name, p in spec.parameters.items():
        _check_support(name, p, spec.target(name), where)
    _check_weights(spec, where)
    _check_data(spec, where)


# ------------------------------------------------------------------ metric, scheduler
def _check_metric_mode(spec, where: str) -> None:
    best = BEST_MODE[spec.metric]
    if spec.mode != best:
        raise UserError(f"{where}: mode: {spec.mode} with metric {spec.metric} would pick the worst trial; "
                        f"give mode: {best} (or leave mode out)")


def _check_scheduler(spec, where: str) -> None:
    s = spec.scheduler
    given = s.model_fields_set
    unused = [k for k in ASHA_ONLY if k in given] if s.type != "asha" else []
    if unused:
        raise UserError(f"{where}: scheduler.{unused[0]}: only used by scheduler type asha (this one is {s.type})")
    unused = [k for k in PBT_ONLY if k in given] if s.type not in ("pbt", "pb2") else []
    if unused:
        raise UserError(f"{where}: scheduler.{unused[0]}: only used by scheduler type pbt or pb2 (this one is {s.type})")
    if s.type != "asha":
        return
    epochs = spec.epochs
    source = ("scheduler.max_t" if s.max_t else "fixed.epochs" if "epochs" in spec.fixed
              else "TrainConfig's default epochs")
    if s.grace_period > epochs:
        raise UserError(f"{where}: scheduler.grace_period: {s.grace_period} epochs exceeds the {epochs} a trial "
                        f"runs ({source}), so ASHA could never stop a trial early; lower it or use type fifo")


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
    return ann is int or (getattr(ann, "__args__", None) is not None and int in ann.__args__
                          and float not in ann.__args__)


BROKEN = {"gt": "<=", "ge": "<", "lt": ">=", "le": ">"}   # what a sample breaking a bound looks like
KEPT = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _check_support(name: str, p, key: str, where: str) -> None:
    d = p.distribution
    if d is None or key not in TrainConfig.model_fields:
        return
    path = f"{where}: parameters.{name}.{d}"
    if d in CONTINUOUS and _takes_int(key):
        raise UserError(f"{path}: samples are fractional ({key} takes integers); use int_uniform or values")
    if d == "normal":  # support: all reals
        bounds = _bounds(key)
        if bounds:
            op, value = bounds[0]
            raise UserError(f"{path}: samples can be {BROKEN[op]} {value:g} ({key} must be {KEPT[op]} {value:g}); "
                            "use uniform or log_uniform_values inside the bounds")
    if d == "q_uniform":
        q = p.q or 1.0
        lo, hi = math.ceil(p.min / q - INT_TOLERANCE), math.floor(p.max / q + INT_TOLERANCE)
        if lo > hi:
            raise UserError(f"{path}: no multiple of q={q:g} lies between min {p.min:g} and max {p.max:g}, "
                            "so there is nothing to sample")
        if _takes_int(key) and abs(q - round(q)) > INT_TOLERANCE:
            raise UserError(f"{path}: q={q:g} gives fractional samples ({key} takes integers)")


# ------------------------------------------------------------------ conditions
def _possible(p) -> list[Any] | None:
    """The values a parameter can take, or None when they are a continuum."""
    if p.values is not None:
        return list(p.values)
    if "value" in p.model_fields_set:
        return [p.value]
    return None


def _can_hold(p, allowed: list) -> bool:
    possible = _possible(p)
    if possible is not None:
        return any(a == v for a in allowed for v in possible)
    if p.distribution == "int_uniform":
        return any(isinstance(a, (int, float)) and not isinstance(a, bool) and float(a).is_integer()
                   and int(p.min) <= a <= int(p.max) for a in allowed)
    if p.distribution == "q_uniform":
        q = p.q or 1.0
        return any(isinstance(a, (int, float)) and not isinstance(a, bool) and p.min <= a <= p.max
                   and abs(a / q - round(a / q)) < INT_TOLERANCE for a in allowed)
    return False  # an exact value of a continuous draw


def check_conditions(spec, where: str) -> None:
    """Every `when` can hold for some trial (run before values are validated under their condition)."""
    for name, p in spec.parameters.items():
        for key, want in (p.when or {}).items():
            allowed = want if isinstance(want, list) else [want]
            path = f"{where}: parameters.{name}.when.{key}"
            if not allowed:
                raise UserError(f"{path}: an empty list of values never holds")
            if key not in spec.parameters:
                now = spec.fixed.get(key, TrainConfig().model_dump().get(key))
                raise UserError(f"{path}: {key} is not a searched parameter (every trial has {key} = {now!r}), "
                                "so the condition never changes; drop it or search that key")
            cond = spec.parameters[key]
            if not _can_hold(cond, allowed):
                possible = _possible(cond)
                takes = (f"takes only {possible}" if possible is not None else
                         f"is drawn from {cond.distribution} [{cond.min:g}, {cond.max:g}]"
                         if cond.min is not None else f"is drawn from {cond.distribution}")
                raise UserError(f"{path}: {want!r} can never hold: parameters.{key} {takes}")


# ------------------------------------------------------------------ files the spec names
def _values_of(spec, key: str) -> list[tuple[str, Any]]:
    """(key path, value) for every value `key` can take: fixed, or each candidate of a parameter."""
    if key in spec.fixed:
        return [(f"fixed.{key}", spec.fixed[key])]
    out = [(f"parameters.{name}.{sub}", v) for name, p in spec.parameters.items() if spec.target(name) == key
           for sub, v in p.candidates()]
    return out or [(f"{key} (TrainConfig default)", TrainConfig.model_fields[key].default)]


def _check_weights(spec, where: str) -> None:
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
                raise UserError(f"{where}: {path}: {value}: no tensor matches model {model} (weights of "
                                "another architecture?)")


def _check_data(spec, where: str) -> None:
    """The dataset folder, and the sizes and weights that must fit it (when it is prepared)."""
    from ..data.store import MANIFEST, is_store, read_manifest
    data_dir = Path(spec.fixed.get("data_dir") or default_data_dir())
    key = "fixed.data_dir" if "data_dir" in spec.fixed else "data_dir (default)"
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"{where}: {key}: {data_dir}: is a file, not a prepared dataset folder")
    if not is_store(data_dir):
        if data_dir.name == "mnist":
            return  # prepared on demand
        what = "no such folder" if not data_dir.exists() else f"no prepared dataset (no {MANIFEST})"
        raise UserError(f"{where}: {key}: {data_dir}: {what}; prepare one with `python -m raydigits.data "
                        f"prepare --folder ROOT --out {data_dir}`")
    manifest = read_manifest(data_dir)
    classes = len(manifest["class_names"])
    for size_key, split in SUBSET_KEYS.items():
        info = manifest["splits"].get(split) or {}
        present = sum(1 for c in info.get("class_counts") or [] if c > 0) or classes
        for path, n in _values_of(spec, size_key):
            if isinstance(n, int) and 0 < n < min(present, info.get("count", n + 1)):
                raise UserError(f"{where}: {path}: {n} is fewer than the {present} classes in the {split} "
                                f"split of {data_dir}; give 0 (all) or at least {present}")
    for path, weights in _values_of(spec, "class_weights"):
        if weights is not None and len(weights) != classes:
            raise UserError(f"{where}: {path}: {len(weights)} weights for the {classes} classes of {data_dir}")
