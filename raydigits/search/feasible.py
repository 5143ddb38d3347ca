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


def candidates(spec: SearchSpec) -> list[tuple[str, int]] | None:
    """Every (model, img_size) a trial can have; None when one of them is a continuum."""
    models, sizes = possible_values(spec, "model"), possible_values(spec, "img_size")
    if models is None or sizes is None:
        return None
    return [(str(m), int(s)) for m in models for s in sizes]


def check_constraints(spec: SearchSpec, num_classes: int) -> None:
    """UserError naming the first constraint on params / size_mb / mflops that no (model, img_size)
    of the space meets."""
    static = {k: b for k, b in spec.constraints.items() if k in STATIC}
    if not static:
        return
    built = candidates(spec)
    if not built:
        return
    costs = [(m, s, static_costs(m, num_classes, s)) for m, s in built]
    for key, bound in static.items():
        if any(bound.holds(c[key]) for _, _, c in costs):
            continue
        low = [x for x in costs if bound.min is not None and x[2][key] < bound.min]
        if bound.max is not None and not low:
            m, s, c = min(costs, key=lambda x: x[2][key])
            has = f"the smallest model this space builds has {c[key]:g} ({m} at {s} px)"
        elif bound.min is not None and len(low) == len(costs):
            m, s, c = max(costs, key=lambda x: x[2][key])
            has = f"the largest model this space builds has {c[key]:g} ({m} at {s} px)"
        else:
            values = ", ".join(f"{m} at {s} px: {c[key]:g}" for m, s, c in costs)
            has = f"no model this space builds is within it ({values})"
        rule = bound.describe(key).replace(f"{key} ", "", 1) if bound.min is None else bound.describe(key)
        raise UserError(f"constraints.{key}: {rule} but {has}")
