"""Which (trial, epoch) the final stage ships, on validation only (which other trials the
validation cannot tell from it: `paired.py`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from ..errors import UserError
from ..spec import SearchSpec
from ..storage import Location
from .trials import Checkpoint, Trial


@dataclass(frozen=True)
class Choice:
    trial_id: str
    epoch: int
    value: float
    checkpoint: Location
    config: dict[str, Any]
    note: str = ""  # why this epoch rather than the trial's best one (select_epoch: within_se)


def _choice(c: Checkpoint) -> Choice:
    return Choice(c.trial_id, c.epoch, c.value, c.location, c.config)


def feasible(trial: Trial, spec: SearchSpec) -> bool:
    """Whether the trial's costs (the same in every report: its first one) keep `spec.constraints`."""
    return not (trial.results and spec.broken_constraints(trial.results[0]))


def choose_best(trials: Iterable[Trial], spec: SearchSpec) -> Choice:
    """The trial with the best reported epoch on validation over every usable, feasible trial
    (errored, diverged and out-of-memory trials, and those whose costs break the constraints, are
    never chosen), and of it, by `spec.select_epoch`, that epoch or the latest kept one within one
    standard error of it. Its own checkpoint (kept by CheckpointConfig's best-by-metric rule, which
    always keeps the latest too)."""
    return choose_epoch([t for t in trials if feasible(t, spec)], spec)


def choose_epoch(trials: Iterable[Trial], spec: SearchSpec) -> Choice:
    """`choose_best`'s rule with no regard to the constraints: over one trial, the epoch the final
    stage would ship of it (the Pareto front places every trial, infeasible ones too, this way)."""
    candidates = [c for t in trials if t.usable for c in t.checkpoints(spec.metric)]
    sign = 1 if spec.mode == "max" else -1
    candidates.sort(key=lambda c: (sign * c.value, -c.epoch), reverse=True)  # ties: the earlier epoch
    best = next((c for c in candidates if c.location.exists()), None)
    if best is None:
        raise UserError(
            "no usable trial: every trial errored, diverged, ran out of memory, broke a constraint, or left no checkpoint"
        )
    if spec.select_epoch == "within_se" and spec.metric == "val_acc" and best.val_n:
        se = math.sqrt(best.value * (1 - best.value) / best.val_n)
        later = sorted(
            (
                c
                for c in candidates
                if c.trial_id == best.trial_id and c.epoch > best.epoch and c.value >= best.value - se
            ),
            key=lambda c: c.epoch,
            reverse=True,
        )
        pick = next((c for c in later if c.location.exists()), None)  # only this trial's folders are asked
        if pick is not None:
            return replace(
                _choice(pick),
                note=f"{spec.metric} {pick.value:.4f}, the latest epoch within one standard "
                f"error ({se:.4f} on {int(best.val_n):,} images) of the trial's best, "
                f"{best.value:.4f} at epoch {best.epoch}",
            )
    return _choice(best)
