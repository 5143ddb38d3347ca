"""Which (trial, epoch) the final stage ships, on validation only, and which other trials the
validation cannot tell from it."""

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


def choose_best(trials: Iterable[Trial], spec: SearchSpec) -> Choice:
    """The trial with the best reported epoch on validation over every usable trial (errored,
    diverged and out-of-memory trials are never chosen), and of it, by `spec.select_epoch`, that
    epoch or the latest kept one within one standard error of it. Its own checkpoint (kept by
    CheckpointConfig's best-by-metric rule, which always keeps the latest too)."""
    candidates = [c for t in trials if t.usable for c in t.checkpoints(spec.metric)]
    sign = 1 if spec.mode == "max" else -1
    candidates.sort(key=lambda c: (sign * c.value, -c.epoch), reverse=True)  # ties: the earlier epoch
    best = next((c for c in candidates if c.location.exists()), None)
    if best is None:
        raise UserError("no usable trial: every trial errored, diverged, ran out of memory, or left no checkpoint")
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


TIE_SE = 2.0  # trials within this many standard errors of the winner's best cannot be ranked apart


@dataclass(frozen=True)
class Ties:
    margin: float  # TIE_SE binomial standard errors of the winner's best, on val_n images
    val_n: int
    best: float  # the winner's best value
    trials: list[tuple[str, float]]  # other usable trials within the margin, best first


def statistical_ties(trials: Iterable[Trial], spec: SearchSpec, winner: str) -> Ties | None:
    """The other usable trials whose best val_acc lies within TIE_SE binomial standard errors
    (√(p(1−p)/n), p the winner's best, n its validation size) of the winner's best: on a validation
    of that size the search cannot tell them from the winner, so its ranking among them is noise.
    None for a metric without a binomial error (val_loss) or results without `val_n`."""
    if spec.metric != "val_acc":
        return None
    best: dict[str, tuple[float, int | None]] = {}
    for t in trials:
        top = t.best_report(spec.metric, "max") if t.usable else None
        if top is not None:
            best[t.trial_id] = (top[spec.metric], top.get("val_n"))
    p, n = best.get(winner, (0.0, None))
    if not n:
        return None
    margin = TIE_SE * math.sqrt(p * (1 - p) / n)
    close = sorted(
        ((tid, v) for tid, (v, _) in best.items() if tid != winner and v >= p - margin), key=lambda tv: -tv[1]
    )
    return Ties(margin, int(n), p, close)


def ties_line(t: Ties, metric: str) -> str:
    """The summary's and report's sentence about `statistical_ties`."""
    within = f"within {TIE_SE:g} standard errors ({t.margin:.4f} on {t.val_n:,} validation images) of its best {metric} {t.best:.4f}"
    if not t.trials:
        return f"no other trial is {within}: the validation ranks it first"
    listed = ", ".join(f"{tid} {v:.4f}" for tid, v in t.trials)
    return (
        f"{len(t.trials)} other trial{'s are' if len(t.trials) > 1 else ' is'} {within}: {listed}; "
        "the validation cannot rank these apart, so any of them is as good a pick"
    )
