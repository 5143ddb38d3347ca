"""The report's analyses (insight.py) without Ray: ASHA's rung table from recorded outcomes, and
fANOVA importance with its trust level."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from raydigits.experiment import Trial
from raydigits.experiment.trials import frame
from raydigits.insight import importance, rung_decisions, searched, trust_level
from raydigits.spec import parse_spec
from raydigits.storage import as_location

SPEC = parse_spec(
    {
        "name": "t",
        "scheduler": {"type": "asha", "max_t": 4, "grace_period": 1, "reduction_factor": 2},
        "parameters": {
            "optimizer": {"values": ["sgd", "adamw"]},
            "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
            "wd": {"key": "weight_decay", "distribution": "uniform", "min": 0.0, "max": 1e-3},
            "momentum": {"distribution": "uniform", "min": 0.8, "max": 0.95, "when": {"optimizer": "sgd"}},
            "nesterov": {"value": True, "when": {"optimizer": "sgd"}},
        },
    }
)


def _trials(rows):
    return [
        Trial(
            "search",
            tid,
            "TERMINATED",
            outcome,
            len(vals),
            dict(params),
            tuple({"epoch": e, "val_acc": v} for e, v in enumerate(vals, 1)),
            as_location("/nowhere") / tid,
        )
        for tid, outcome, vals, params in rows
    ]


def _frame(rows):
    return frame(_trials(rows), SPEC)


def test_rung_table_comes_from_the_recorded_outcomes():
    p = {"optimizer": "adamw", "lr": 1e-3, "wd": 0.0, "momentum": None}
    trials = _trials(
        [
            ("a", "completed", [0.5, 0.7, 0.8, 0.9], p),
            ("b", "asha_stopped", [0.4], p),
            ("c", "asha_stopped", [0.6, 0.65], p),
            ("d", "early_stopped", [0.3], p),
            ("e", "completed", [0.55, 0.6, 0.7, 0.8], p),
            ("f", "oom", [], p),
        ]
    )
    r1, r2 = rung_decisions(trials, SPEC)
    assert (r1.milestone, r2.milestone) == (1, 2)  # rungs below max_t 4
    assert r1.reached == {"a": 0.5, "b": 0.4, "c": 0.6, "d": 0.3, "e": 0.55}
    assert r1.stopped == {"b": 0.4} and r1.ended_otherwise == {"d": "early_stopped"}
    assert set(r1.continued) == {"a", "c", "e"} and r1.bar == 0.5 and r1.best_stopped == 0.4
    assert r2.stopped == {"c": 0.65} and set(r2.continued) == {"a", "e"} and r2.bar == 0.6
    assert r2.quantile == 0.5
    # a loss is minimised: the weakest that went on is the highest
    loss = parse_spec({**SPEC.to_dict(), "metric": "val_loss", "mode": None})
    lt = [replace(t, results=tuple({**r, "val_loss": 1 - r["val_acc"]} for r in t.results)) for t in trials]
    assert rung_decisions(lt, loss)[0].bar == pytest.approx(0.5)
    assert rung_decisions(trials, parse_spec({"name": "t", "scheduler": {"type": "fifo", "max_t": 4}})) == []


def test_searched_parameters_leave_constants_out():
    assert searched(SPEC) == ["optimizer", "lr", "wd", "momentum"]


@pytest.mark.parametrize(
    "n, verdict", [(3, "not meaningful"), (9, "not meaningful"), (10, "rough"), (29, "rough"), (30, "indicative")]
)
def test_trust_depends_on_the_number_of_trials(n, verdict):
    assert trust_level(n)[0] == verdict and str(n) in trust_level(n)[1]


def test_fanova_finds_the_parameter_that_drives_the_score():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        opt = ["sgd", "adamw"][i % 2]
        lr = float(10 ** rng.uniform(-4, -1))
        score = 0.5 + 0.1 * np.log10(lr) + 0.001 * rng.normal()  # lr matters; optimizer and wd do not
        rows.append(
            (
                f"t{i:02d}",
                "completed",
                [score],
                {
                    "optimizer": opt,
                    "lr": lr,
                    "wd": float(rng.uniform(0, 1e-3)),
                    "momentum": 0.9 if opt == "sgd" else None,
                },
            )
        )
    rows.append(("bad", "diverged", [0.99], {"optimizer": "sgd", "lr": 1e-4, "wd": 0.0, "momentum": 0.9}))
    imp = importance(_frame(rows), SPEC, seeds=(0, 1, 2))
    assert imp.n_trials == 24 and imp.trust == "rough"  # the diverged trial is left out
    assert list(imp.mean)[0] == "lr" and imp.mean["lr"] > 0.8
    assert set(imp.mean) == {"optimizer", "lr", "wd"} and imp.left_out == ["momentum"]
    assert sum(imp.mean.values()) == pytest.approx(1.0) and all(s >= 0 for s in imp.spread.values())
    few = importance(_frame(rows[:1]), SPEC)
    assert not few.mean and "nothing to compare" in few.why


def test_equal_scores_give_no_importance_instead_of_an_error():
    """Every trial at the same score (a tiny dataset): fANOVA's forest has zero variance; the report
    says so instead of failing the final stage."""
    rng = np.random.default_rng(1)
    rows = [
        (
            f"t{i}",
            "completed",
            [0.5],
            {"optimizer": ["sgd", "adamw"][i % 2], "lr": float(10 ** rng.uniform(-4, -1)), "wd": 0.0, "momentum": None},
        )
        for i in range(6)
    ]
    imp = importance(_frame(rows), SPEC, seeds=(0,))
    assert not imp.mean and "same best_val_acc" in imp.why


def test_the_rung_table_says_it_pools_brackets():
    from raydigits.report_html import _asha_section

    p = {"optimizer": "adamw", "lr": 1e-3, "wd": 0.0, "momentum": None}
    trials = _trials([("a", "completed", [0.5, 0.7, 0.8, 0.9], p), ("b", "asha_stopped", [0.4], p)])
    two = parse_spec({**SPEC.to_dict(), "scheduler": {**SPEC.to_dict()["scheduler"], "brackets": 2}})
    assert "pools them" in _asha_section(trials, two) and "2 brackets" in _asha_section(trials, two)
    assert "pools them" not in _asha_section(trials, SPEC)
