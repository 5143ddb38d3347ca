"""Constraints no trial can meet by construction, refused before Ray starts: for the costs a model
has by construction (params, size_mb, mflops: costs.static_costs), every (model, img_size) the
search space can produce is built once and measured; if none meets a constraint, one line says
which constraint and the best this space can do. Latency is only known on the trial's device, under
its load: nothing is said about it. A space whose model or image size is a continuum (a
distribution) is not enumerated and not checked.

It lives in search/ (it builds torch models; spec/ may not import torch) and runs from the command
line's search path after the data is read (the class count sizes the head) and before Ray starts."""

from __future__ import annotations

from typing import Any

from ..config import TrainConfig
from ..costs import STATIC, static_costs
from ..errors import UserError
from ..models import WIDTH_MULT_MODELS
from ..spec import SearchSpec


def possible_values(spec: SearchSpec, key: str) -> list[Any] | None:
    """Every value TrainConfig `key` can take in a trial of `spec`, in order of first appearance, or
    None when a parameter setting it is a continuum. A conditional parameter leaves the fixed value
    (or TrainConfig's default) possible where its condition does not hold."""
    setting = [p for name, p in spec.parameters.items() if spec.target(name) == key]
    values: list[Any] = []
    for p in setting:
        possible = p.possible()
        if possible is None:
            return None
        values.extend(possible)
    if not setting or any(p.when for p in setting):
        values.append(spec.fixed.get(key, TrainConfig.model_fields[key].default))
    return list(dict.fromkeys(values))


def candidates(spec: SearchSpec) -> list[tuple[str, int, float]] | None:
    """Every (model, img_size, width_mult) a trial can have (a width only on the models that take
    one: TrainConfig refuses it elsewhere); None when one of them is a continuum. A superset where a
    condition ties them together: the check then refuses less, never a space that works."""
    models, sizes = possible_values(spec, "model"), possible_values(spec, "img_size")
    widths = possible_values(spec, "width_mult")
    if models is None or sizes is None or widths is None:
        return None
    return [
        (str(m), int(s), float(w)) for m in models for s in sizes for w in (widths if m in WIDTH_MULT_MODELS else [1.0])
    ]


def _named(m: str, s: int, w: float) -> str:
    return f"{m}{f' x{w:g}' if w != 1.0 else ''} at {s} px"


def check_constraints(spec: SearchSpec, num_classes: int) -> None:
    """UserError naming the first constraint on params / size_mb / mflops that no (model, img_size)
    of the space meets."""
    static = {k: b for k, b in spec.constraints.items() if k in STATIC}
    if not static:
        return
    built = candidates(spec)
    if not built:
        return
    costs = [(_named(m, s, w), static_costs(m, num_classes, s, w)) for m, s, w in dict.fromkeys(built)]
    for key, bound in static.items():
        if any(bound.holds(c[key]) for _, c in costs):
            continue
        low = [x for x in costs if bound.min is not None and x[1][key] < bound.min]
        if bound.max is not None and not low:
            name, c = min(costs, key=lambda x: x[1][key])
            has = f"the smallest model this space builds has {c[key]:g} ({name})"
        elif bound.min is not None and len(low) == len(costs):
            name, c = max(costs, key=lambda x: x[1][key])
            has = f"the largest model this space builds has {c[key]:g} ({name})"
        else:
            values = ", ".join(f"{name}: {c[key]:g}" for name, c in costs)
            has = f"no model this space builds is within it ({values})"
        rule = bound.describe(key).replace(f"{key} ", "", 1) if bound.min is None else bound.describe(key)
        raise UserError(f"constraints.{key}: {rule} but {has}")
