"""The search-space language's kinds of parameter, one frozen entry each (as timm's `OptimInfo`):
what a kind needs, what it draws, and how Tune, Optuna and the semantic checks spell it. Readers
look a kind up here instead of branching on its name. Entries hold names and arguments only, so
this module imports neither Ray nor Optuna: `search/tune_space.py` and `insight.py` turn an entry
into `getattr(ray.tune, entry.tune)(*args)` and `getattr(optuna_trial, entry.suggest)(...)`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

INT_TOLERANCE = 1e-9


def _q(p: Any) -> float:
    return float(p.q or 1.0)


def _on_grid(p: Any, a: Any) -> bool:
    return (
        isinstance(a, (int, float))
        and not isinstance(a, bool)
        and p.min <= a <= p.max
        and abs(a / _q(p) - round(a / _q(p))) < INT_TOLERANCE
    )


def _in_int_range(p: Any, a: Any) -> bool:
    return (
        isinstance(a, (int, float))
        and not isinstance(a, bool)
        and float(a).is_integer()
        and int(p.min) <= a <= int(p.max)
    )


@dataclass(frozen=True)
class Kind:
    name: str
    required: tuple[str, ...]  # fields a parameter of this kind must give
    bounded: bool  # draws lie in [min, max] (PB2 perturbs within them)
    fractional: bool  # draws are not whole numbers (rejected for integer knobs)
    integer: bool  # draws are whole numbers
    tune: str  # the `ray.tune` domain function ...
    tune_args: Callable[[Any], tuple[Any, ...]]  # ... and its arguments for a parameter
    suggest: str  # the `optuna.Trial` method ...
    suggest_kwargs: Callable[[Any], dict[str, Any]]  # ... and its keyword arguments (besides the name)
    optuna_distribution: str  # the `optuna.distributions` class importance is computed with
    # (parameter, the values the trials drew) → that class's keyword arguments
    distribution_kwargs: Callable[[Any, Any], dict[str, Any]]
    candidates: Callable[[Any], list[tuple[str, Any]]]  # representative values checked against TrainConfig
    can_hold: Callable[[Any, Any], bool] = lambda p, a: False  # can a draw equal `a` exactly?


DISTRIBUTIONS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "uniform",
            ("min", "max"),
            bounded=True,
            fractional=True,
            integer=False,
            tune="uniform",
            tune_args=lambda p: (p.min, p.max),
            suggest="suggest_float",
            suggest_kwargs=lambda p: {"low": p.min, "high": p.max},
            optuna_distribution="FloatDistribution",
            distribution_kwargs=lambda p, seen: {"low": float(p.min), "high": float(p.max)},
            candidates=lambda p: [("min", p.min), ("max", p.max)],
        ),
        Kind(
            "log_uniform_values",
            ("min", "max"),
            bounded=True,
            fractional=True,
            integer=False,
            tune="loguniform",
            tune_args=lambda p: (p.min, p.max),
            suggest="suggest_float",
            suggest_kwargs=lambda p: {"low": p.min, "high": p.max, "log": True},
            optuna_distribution="FloatDistribution",
            distribution_kwargs=lambda p, seen: {"low": float(p.min), "high": float(p.max), "log": True},
            candidates=lambda p: [("min", p.min), ("max", p.max)],
        ),
        Kind(
            "int_uniform",
            ("min", "max"),
            bounded=True,
            fractional=False,
            integer=True,
            tune="randint",
            tune_args=lambda p: (int(p.min), int(p.max) + 1),  # W&B's int_uniform includes max
            suggest="suggest_int",
            suggest_kwargs=lambda p: {"low": int(p.min), "high": int(p.max)},
            optuna_distribution="IntDistribution",
            distribution_kwargs=lambda p, seen: {"low": int(p.min), "high": int(p.max)},
            candidates=lambda p: [("min", int(p.min)), ("max", int(p.max))],
            can_hold=_in_int_range,
        ),
        Kind(
            "q_uniform",
            ("min", "max"),
            bounded=True,
            fractional=False,
            integer=False,
            tune="quniform",
            tune_args=lambda p: (p.min, p.max, _q(p)),
            suggest="suggest_float",
            suggest_kwargs=lambda p: {"low": p.min, "high": p.max, "step": _q(p)},
            optuna_distribution="FloatDistribution",
            distribution_kwargs=lambda p, seen: {"low": float(p.min), "high": float(p.max)},
            candidates=lambda p: [("min", p.min), ("max", p.max)],
            can_hold=_on_grid,
        ),
        Kind(
            "normal",
            ("mu", "sigma"),
            bounded=False,
            fractional=True,
            integer=False,
            tune="randn",
            tune_args=lambda p: (p.mu, p.sigma),
            suggest="",
            suggest_kwargs=lambda p: {},  # TPE has no normal: refused by the checks
            optuna_distribution="FloatDistribution",  # unbounded: the range the trials drew
            distribution_kwargs=lambda p, seen: {"low": float(min(seen)), "high": float(max(seen))},
            candidates=lambda p: [("mu", p.mu)],
        ),
    )
}


def kind(name: str) -> Kind:
    """The entry of a distribution name (a ValueError naming the known ones otherwise)."""
    try:
        return DISTRIBUTIONS[name]
    except KeyError:
        raise ValueError(f"unknown distribution {name!r}; valid: {', '.join(DISTRIBUTIONS)}") from None


def list_distributions() -> list[str]:
    return list(DISTRIBUTIONS)


def q_grid(p: Any) -> tuple[int, int]:
    """The first and last multiple of q inside [min, max], as multiples (lo > hi: none)."""
    return math.ceil(p.min / _q(p) - INT_TOLERANCE), math.floor(p.max / _q(p) + INT_TOLERANCE)
