"""Paired ties: which trials the validation cannot tell from the winner. The winner's shipped
checkpoint and each candidate's best checkpoint predict the same validation images; an exact
McNemar test on the images only one of the two gets right (a two-sided binomial test of those
discordant pairs at 1/2) gives a p-value per candidate, Holm-corrected for the number of candidates.
A candidate whose corrected p-value is above `ALPHA` is a tie: the test could not reject equal
accuracy. That is not evidence of equal accuracy (a small validation rejects little), and the
winner's value is the best of every trial and epoch on this same validation, so it is optimistically
biased. Pure Python (no Ray, no torch, no numpy needed), so every number is checkable by hand."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..spec import SearchSpec
from .selection import Choice
from .trials import Checkpoint, Trial

ALPHA = 0.05  # family-wise error rate of the tie tests (Holm over the candidates tested)
CANDIDATE_CAP = 5  # at most this many candidates are evaluated (the final stage predicts once each)
# Candidates are the usable trials whose best val_acc is at most SCREEN_Z "paired standard errors"
# √((q_w + q_t)/n) below the winner's shipped value (q: error rates, n: validation images). McNemar's
# statistic (b − c)/√(b + c) is at least the accuracy gap over that (b ≤ n·q_t and c ≤ n·q_w), so a
# trial further below would be told apart at z > 4 (p ≈ 1e-4; approximately, as the screen reads the
# reported values, each on its own trial's validation draw). Holm over the whole family would reject
# those first (1e-4 < ALPHA/m for m < 500 trials) and then test the rest at exactly the thresholds of
# Holm over the tested alone, so leaving them out changes nothing. Candidates beyond CANDIDATE_CAP are
# not tested and are named as such, neither tie nor told apart.
SCREEN_Z = 4.0


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b images only the first model gets right, c only the second;
    under equal accuracy each of the b + c is either's with probability 1/2 (scipy's
    `binomtest(b, b + c, 0.5)`). 1.0 when they never disagree."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0), then C(n, i) from C(n, i − 1): exact integers, one pass
    for i in range(1, k + 1):
        term = term * (n - i + 1) // i
        tail += term
    return min(1.0, 2 * tail / (1 << n))  # int / int: correctly rounded, however large


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the i-th smallest times (m − i + 1),
    made non-decreasing, capped at 1. A hypothesis is rejected at family-wise level α when its
    adjusted p-value is ≤ α."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


@dataclass(frozen=True)
class Screen:
    """The candidates to test and what the screen left out."""

    tested: list[Checkpoint]  # each candidate trial's best kept checkpoint, best first
    untested: list[str]  # trials within the screen beyond CANDIDATE_CAP
    screened_out: int  # usable trials further below the winner than the screen


def candidates(trials: Iterable[Trial], spec: SearchSpec, choice: Choice, n: int, cap: int = CANDIDATE_CAP) -> Screen:
    """The other usable trials whose best val_acc is within SCREEN_Z paired standard errors below the
    winner's shipped value on `n` images (any above it included), the best `cap` of them tested."""
    if n < 1:
        raise ValueError("paired ties: no validation images to compare on")
    near: list[Checkpoint] = []
    out = 0
    for t in trials:
        if not t.usable or t.trial_id == choice.trial_id:
            continue
        kept = [c for c in t.checkpoints(spec.metric) if c.location.exists()]
        if not kept:
            continue
        best = max(kept, key=lambda c: (c.value, -c.epoch))
        q_w, q_t = 1 - choice.value, max(0.0, 1 - best.value)
        if choice.value - best.value <= SCREEN_Z * math.sqrt((q_w + q_t) / n):
            near.append(best)
        else:
            out += 1
    near.sort(key=lambda c: (-c.value, c.trial_id))
    return Screen(near[:cap], [c.trial_id for c in near[cap:]], out)


@dataclass(frozen=True)
class Compared:
    """One candidate against the winner on the same validation images."""

    trial_id: str
    epoch: int
    reported: float  # its best val_acc as the trial reported it
    accuracy: float  # on the images compared
    winner_only: int  # images the winner gets right and it does not (b)
    other_only: int  # images it gets right and the winner does not (c)
    p: float  # exact McNemar
    p_holm: float
    tie: bool  # p_holm > alpha: the test cannot tell it from the winner


@dataclass(frozen=True)
class PairedTies:
    winner: str
    epoch: int  # the shipped epoch
    accuracy: float  # the shipped checkpoint's on the images compared
    n: int  # validation images compared
    alpha: float
    compared: list[Compared]
    untested: list[str]
    screened_out: int
    seconds: float = 0.0  # what predicting and testing cost the final stage

    @property
    def tied(self) -> list[str]:
        return [c.trial_id for c in self.compared if c.tie]

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "correction": "holm",
            "test": "exact McNemar (two-sided)",
            "screen_z": SCREEN_Z,
            "candidate_cap": CANDIDATE_CAP,
            "tied": self.tied,
        }


def paired_ties(
    winner: tuple[str, int, Sequence[bool]],
    others: Sequence[tuple[str, int, float, Sequence[bool]]],
    screen: Screen,
    alpha: float = ALPHA,
    seconds: float = 0.0,
) -> PairedTies:
    """`winner`: (trial, shipped epoch, per-image correct); `others`: (trial, epoch, reported value,
    per-image correct) of each screened candidate, on the same images in the same order."""
    trial_id, epoch, right = winner
    n = len(right)
    counts = []
    for _, _, _, theirs in others:
        if len(theirs) != n:
            raise ValueError(f"paired ties: {len(theirs)} predictions against the winner's {n}")
        b = sum(1 for w, o in zip(right, theirs) if w and not o)
        c = sum(1 for w, o in zip(right, theirs) if o and not w)
        counts.append((b, c, sum(1 for o in theirs if o)))
    ps = [mcnemar_exact(b, c) for b, c, _ in counts]
    adjusted = holm(ps)
    compared = [
        Compared(tid, ep, reported, k / n, b, c, p, ph, ph > alpha)
        for (tid, ep, reported, _), (b, c, k), p, ph in zip(others, counts, ps, adjusted)
    ]
    wins = sum(1 for w in right if w)
    return PairedTies(
        trial_id, epoch, wins / n if n else 0.0, n, alpha, compared, screen.untested, screen.screened_out, seconds
    )


def ties_line(t: PairedTies) -> str:
    """The summary's, metrics.json's and the report's sentence: what the test found, and what it
    cannot say (a tie is "not distinguishable on these n images", never "as good a pick")."""
    m = len(t.compared)
    shipped = f"the shipped checkpoint ({t.winner} epoch {t.epoch}, {t.accuracy:.4f} on {t.n:,} validation images)"
    if m:
        parts = [
            f"exact McNemar test (two-sided, on the images only one of the two gets right) of {shipped} against "
            f"the best checkpoint of {m} other trial{'s' if m != 1 else ''}, alpha {t.alpha:g} Holm-corrected over {m}"
        ]
    else:
        parts = [f"no other usable trial is within {SCREEN_Z:g} paired standard errors of {shipped}: nothing to test"]
    if t.tied:
        listed = ", ".join(
            f"{c.trial_id} {c.accuracy:.4f} ({c.winner_only} vs {c.other_only} images, p={c.p_holm:.2g})"
            for c in t.compared
            if c.tie
        )
        parts.append(
            f"not distinguishable from it on these {t.n:,} validation images at alpha {t.alpha:g} after correction: "
            f"{listed} (not evidence that they are as good: too few disagreements to rank them either way)"
        )
    apart = [c for c in t.compared if not c.tie]
    if apart:
        parts.append(
            "distinguishable: "
            + ", ".join(
                f"{c.trial_id} {c.accuracy:.4f} ({'lower' if c.accuracy < t.accuracy else 'higher'}, p={c.p_holm:.2g})"
                for c in apart
            )
        )
    if t.untested:
        parts.append(
            f"{len(t.untested)} more within the screen not tested (at most {CANDIDATE_CAP}): {', '.join(t.untested)}"
        )
    parts.append(
        "the winner is the maximum over every trial and epoch on these same images, so its validation score is "
        "optimistic; only images no choice saw (a test split) measure it"
    )
    return "; ".join(parts)
