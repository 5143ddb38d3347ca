"""A trial's scores (experiment/trials.py): which reports count, its best, and the report holding it."""

from __future__ import annotations

import math

from raydigits.experiment import Trial
from raydigits.storage import as_location


def _trial(tmp_path, results):
    return Trial("search", "t", "TERMINATED", "completed", 5, {}, tuple(results), as_location(tmp_path))


def test_scores_best_and_best_report_count_only_finite_undiverged_reports(tmp_path):
    t = _trial(
        tmp_path,
        [
            {"epoch": 1, "val_acc": 0.5, "val_loss": 0.9, "val_n": 10},
            {"epoch": 2, "val_acc": 0.99, "val_loss": 0.01, "diverged": True},  # never counts
            {"epoch": 3, "val_acc": float("nan"), "val_loss": float("inf")},
            {"epoch": 4, "val_acc": "0.9"},  # not a number
            {"epoch": 5, "val_acc": 0.7, "val_loss": 0.3, "val_n": 20},
            {"epoch": 6, "val_acc": 0.7, "val_loss": 0.3, "val_n": 30},  # a tie: the earlier wins
            {"val_acc": 0.1, "val_loss": 0.95},
        ],
    )  # no epoch: 0
    assert t.scores("val_acc") == [(1, 0.5), (5, 0.7), (6, 0.7), (0, 0.1)]
    assert t.best("val_acc", "max") == 0.7 and t.best("val_acc", "min") == 0.1
    assert t.best("val_loss", "min") == 0.3 and t.best("val_loss", "max") == 0.95
    assert t.best_report("val_acc", "max")["val_n"] == 20
    assert t.best_report("val_loss", "min")["val_n"] == 20
    assert t.best_report("val_loss", "max") == {"val_acc": 0.1, "val_loss": 0.95}
    assert t.best_report("val_acc", "min") == {"val_acc": 0.1, "val_loss": 0.95}
    none = _trial(tmp_path, [{"epoch": 1, "val_acc": 0.9, "diverged": True}, {"epoch": 2}])
    assert (
        none.scores("val_acc") == []
        and math.isnan(none.best("val_acc", "max"))
        and math.isnan(none.best("val_acc", "min"))
    )
    assert none.best_report("val_acc", "max") is None
