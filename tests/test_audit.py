"""What early stopping cost (experiment/audit.py), without Ray: which stopped trials are audited,
and the verdict from the audit run's results."""

from __future__ import annotations

import pytest

from raydigits.experiment import Trial
from raydigits.experiment.audit import audit_candidates, early_stopping_cost, regret_line
from raydigits.spec import parse_spec
from raydigits.storage import as_location

SPEC = parse_spec({"name": "t", "scheduler": {"type": "asha", "max_t": 4, "grace_period": 1, "reduction_factor": 2}})


def _trial(root, tid, outcome, vals, run="search", config=None, first_epoch=1, val_n=10_000, keep=True):
    results = []
    for epoch, v in enumerate(vals, first_epoch):
        name = f"checkpoint_{epoch:06d}"
        if keep:
            (root / tid / name).mkdir(parents=True, exist_ok=True)
            (root / tid / name / "checkpoint.pt").write_bytes(b"x")
        results.append({"epoch": epoch, "val_acc": v, "val_n": val_n, "checkpoint_dir_name": name})
    return Trial(
        run,
        tid,
        "TERMINATED",
        outcome,
        first_epoch + len(vals) - 1,
        dict(config or {"lr": 0.1}),
        tuple(results),
        as_location(root / tid),
    )


def test_the_audited_trials_are_the_stopped_ones_best_at_their_last_rung(tmp_path):
    trials = [
        _trial(tmp_path, "done", "completed", [0.5, 0.6, 0.7, 0.8]),
        _trial(tmp_path, "s1", "asha_stopped", [0.9, 0.3]),  # best early, weak at its last rung
        _trial(tmp_path, "s2", "asha_stopped", [0.4, 0.55]),
        _trial(tmp_path, "s3", "asha_stopped", [0.45]),
        _trial(tmp_path, "s4", "asha_stopped", [0.2, 0.7], keep=False),  # no checkpoint left: passed over
        _trial(tmp_path, "bad", "diverged", [0.99]),
    ]
    picked = audit_candidates(trials, SPEC, 2)
    assert [(t.trial_id, c.epoch, c.value) for t, c in picked] == [("s2", 2, 0.55), ("s3", 1, 0.45)]
    assert picked[0][1].location == as_location(tmp_path / "s2" / "checkpoint_000002" / "checkpoint.pt")
    assert audit_candidates(trials, SPEC, 0) == []
    # a trial already audited is not audited again
    again = trials + [
        _trial(tmp_path, "a1", "completed", [0.6, 0.62], run="audit_1", config={"audit_of": "s2"}, first_epoch=3)
    ]
    assert [t.trial_id for t, _ in audit_candidates(again, SPEC, 2)] == ["s3", "s1"]


def test_the_cost_is_how_far_an_audited_trial_ends_above_the_best_kept_one(tmp_path):
    base = [
        _trial(tmp_path, "done", "completed", [0.5, 0.6, 0.7, 0.80]),
        _trial(tmp_path, "s2", "asha_stopped", [0.4, 0.55]),
    ]
    assert early_stopping_cost(base, SPEC) is None  # nothing audited
    far = base + [
        _trial(tmp_path, "a1", "completed", [0.83, 0.85], run="audit_1", config={"audit_of": "s2"}, first_epoch=3)
    ]
    r = early_stopping_cost(far, SPEC)
    assert (r.kept_trial, r.kept_best, r.cost, r.above) == ("done", 0.80, pytest.approx(0.05), ("s2",))
    assert r.margin == pytest.approx(2 * (0.8 * 0.2 / 10_000) ** 0.5) and r.measurable
    a = r.audited[0]
    assert (a.trial_id, a.audit_trial_id, a.stopped_epoch, a.at_stop, a.at_max_t, a.best) == (
        "s2",
        "a1",
        2,
        0.55,
        0.85,
        0.85,
    )
    line = regret_line(r)
    assert line.startswith(
        "early stopping cost 5.00 pp (noise: 0.80 pp, 2 standard errors): best kept trial done 0.8000"
    )
    assert "s2 stopped at epoch 2 at 0.5500, 0.8500 at max_t (best 0.8500)" in line
    assert line.endswith("s2, stopped early, ended above every trial early stopping kept")
    # within two standard errors: not measurable, though above
    close = base + [
        _trial(tmp_path, "a1", "completed", [0.79, 0.805], run="audit_1", config={"audit_of": "s2"}, first_epoch=3)
    ]
    r = early_stopping_cost(close, SPEC)
    assert r.cost == pytest.approx(0.005) and not r.measurable
    assert regret_line(r).startswith("early stopping cost nothing measurable (0.50 pp")
    assert regret_line(r).endswith("(within noise)")
    # below the kept best: costs nothing, and nothing ended above
    below = base + [
        _trial(tmp_path, "a1", "completed", [0.6, 0.7], run="audit_1", config={"audit_of": "s2"}, first_epoch=3)
    ]
    r = early_stopping_cost(below, SPEC)
    assert r.cost == 0.0 and r.above == () and not r.measurable
    assert r.to_json()["line"] == regret_line(r) and r.to_json()["audited"][0]["trial_id"] == "s2"


LOSS = parse_spec(
    {
        "name": "t",
        "metric": "val_loss",
        "scheduler": {"type": "asha", "max_t": 4, "grace_period": 1, "reduction_factor": 2},
    }
)


def _loss_trial(root, tid, outcome, vals, run="search", config=None, first_epoch=1):
    t = _trial(root, tid, outcome, vals, run, config, first_epoch)
    results = tuple({**{k: v for k, v in r.items() if k != "val_acc"}, "val_loss": r["val_acc"]} for r in t.results)
    return Trial(t.run, t.trial_id, t.status, t.outcome, t.epochs, t.config, results, t.path)


def test_a_loss_search_audits_and_scores_the_lowest_losses(tmp_path):
    """mode min: the stopped trials with the lowest loss at their last rung are audited, and the cost
    is how far an audited trial ends below the best kept loss (no binomial margin for a loss)."""
    trials = [
        _loss_trial(tmp_path, "done", "completed", [0.9, 0.5, 0.4, 0.30]),
        _loss_trial(tmp_path, "s1", "asha_stopped", [0.2, 0.6]),  # lowest early, high at its last rung
        _loss_trial(tmp_path, "s2", "asha_stopped", [0.5, 0.35]),
        _loss_trial(tmp_path, "s3", "asha_stopped", [0.45]),
    ]
    assert [t.trial_id for t, _ in audit_candidates(trials, LOSS, 2)] == ["s2", "s3"]
    assert [t.trial_id for t, _ in audit_candidates(trials, LOSS, 1)] == ["s2"]
    runs = trials + [
        _loss_trial(tmp_path, "a1", "completed", [0.28, 0.25], run="audit_1", config={"audit_of": "s2"}, first_epoch=3)
    ]
    r = early_stopping_cost(runs, LOSS)
    assert (r.kept_trial, r.kept_best, r.above, r.margin) == ("done", 0.30, ("s2",), None)
    assert r.cost == pytest.approx(0.05) and r.measurable
    a = r.audited[0]
    assert (a.trial_id, a.stopped_epoch, a.at_stop, a.at_max_t, a.best) == ("s2", 2, 0.35, 0.25, 0.25)
    worse = trials + [
        _loss_trial(tmp_path, "a1", "completed", [0.33, 0.31], run="audit_1", config={"audit_of": "s2"}, first_epoch=3)
    ]
    r = early_stopping_cost(worse, LOSS)
    assert r.cost == 0.0 and r.above == () and not r.measurable


def test_only_usable_audit_runs_of_known_trials_count_against_the_usable_kept_ones(tmp_path):
    base = [
        _trial(tmp_path, "done", "completed", [0.5, 0.6, 0.7, 0.80]),
        _trial(tmp_path, "s2", "asha_stopped", [0.4, 0.55]),
        _trial(tmp_path, "s3", "asha_stopped", [0.4, 0.5]),
    ]
    audit = dict(run="audit_1", first_epoch=3)
    ignored = [
        _trial(tmp_path, "x1", "diverged", [0.95, 0.99], config={"audit_of": "s3"}, **audit),  # not usable
        _trial(tmp_path, "x2", "completed", [], config={"audit_of": "s3"}, **audit),  # no score
        _trial(tmp_path, "x3", "completed", [0.97], config={"audit_of": "gone"}, **audit),  # unknown trial
        _trial(tmp_path, "x4", "completed", [0.98], config={"audit_of": "s3"}),  # not an audit run
        _trial(tmp_path, "bad", "diverged", [0.96]),  # never kept
        _trial(tmp_path, "s9", "asha_stopped", [0.94]),  # stopped: not kept
    ]
    a1 = _trial(tmp_path, "a1", "completed", [0.82, 0.83], config={"audit_of": "s2"}, **audit)
    r = early_stopping_cost(base + ignored + [a1], SPEC)
    assert [a.audit_trial_id for a in r.audited] == ["a1"]
    assert (r.kept_trial, r.kept_best) == ("x4", 0.98) and r.cost == 0.0
    r = early_stopping_cost([t for t in base + ignored + [a1] if t.trial_id != "x4"], SPEC)
    assert (r.kept_trial, r.kept_best, r.cost) == ("done", 0.80, pytest.approx(0.03))
    # nothing usable audited, or nothing kept: no verdict
    assert early_stopping_cost(base + ignored[:3], SPEC) is None
    assert early_stopping_cost([t for t in base[1:]] + [a1], SPEC) is None
    # no val_n on the kept best: no margin, any cost is measurable
    no_n = [_trial(tmp_path, "done", "completed", [0.5, 0.80], val_n=None), base[1], a1]
    r = early_stopping_cost(no_n, SPEC)
    assert r.margin is None and r.measurable


def test_a_loss_verdict_is_in_the_losss_own_units(tmp_path):
    """Found by the mutation run (regret_line's `0 <= kept_best <= 1`): a val_loss cost was multiplied by
    100 and shown in percentage points whenever the kept loss lay in [0, 1], and an audited trial that
    ended with a lower loss was said to end "above" the kept ones."""
    runs = [
        _loss_trial(tmp_path, "done", "completed", [0.9, 0.5, 0.4, 0.30]),
        _loss_trial(tmp_path, "s2", "asha_stopped", [0.5, 0.35]),
        _loss_trial(tmp_path, "a1", "completed", [0.28, 0.25], run="audit_1", config={"audit_of": "s2"}, first_epoch=3),
    ]
    r = early_stopping_cost(runs, LOSS)
    assert regret_line(r).startswith("early stopping cost 0.05: best kept trial done 0.3000; audited: s2 stopped")
    assert regret_line(r).endswith("s2, stopped early, ended below every trial early stopping kept")
    assert r.to_json()["metric"] == "val_loss"
    # a loss above 1 is not scaled either
    big = [
        _loss_trial(tmp_path, "done", "completed", [2.5, 2.0]),
        runs[1],
        _loss_trial(tmp_path, "a1", "completed", [1.6, 1.5], run="audit_1", config={"audit_of": "s2"}, first_epoch=3),
    ]
    assert regret_line(early_stopping_cost(big, LOSS)).startswith(
        "early stopping cost 0.50: best kept trial done 2.0000"
    )
    # accuracy without val_n: no margin, still a fraction shown in pp
    acc = [
        _trial(tmp_path, "done", "completed", [0.5, 0.80], val_n=None),
        _trial(tmp_path, "s2", "asha_stopped", [0.4]),
        _trial(tmp_path, "a1", "completed", [0.9], run="audit_1", config={"audit_of": "s2"}, first_epoch=2),
    ]
    assert regret_line(early_stopping_cost(acc, SPEC)).startswith("early stopping cost 10.00 pp: best kept trial done")


def test_the_verdict_as_metrics_json_holds_it(tmp_path):
    """Regret.to_json is metrics.json's `early_stopping` (read by the report and the e2e test): every key."""
    runs = [
        _trial(tmp_path, "done", "completed", [0.5, 0.80]),
        _trial(tmp_path, "s2", "asha_stopped", [0.4]),
        _trial(tmp_path, "a1", "completed", [0.9], run="audit_1", config={"audit_of": "s2"}, first_epoch=2),
    ]
    r = early_stopping_cost(runs, SPEC)
    assert r.to_json() == {
        "audited": [
            {"trial_id": "s2", "audit_trial_id": "a1", "stopped_epoch": 1, "at_stop": 0.4, "at_max_t": 0.9, "best": 0.9}
        ],
        "kept_best": 0.8,
        "kept_trial": "done",
        "cost": pytest.approx(0.1),
        "margin": pytest.approx(0.008),
        "measurable": True,
        "ended_above_every_kept_trial": ["s2"],
        "metric": "val_acc",
        "line": regret_line(r),
    }


def test_the_audited_values_are_the_last_ones_of_each_run(tmp_path):
    """at_stop is the stopped trial's last report, at_max_t the audit run's last (not their second);
    a stopped trial that reported nothing gives nan at its stop rather than an error."""
    runs = [
        _trial(tmp_path, "done", "completed", [0.5, 0.6, 0.7, 0.80]),
        _trial(tmp_path, "s2", "asha_stopped", [0.4, 0.6, 0.5]),
        _trial(tmp_path, "a1", "completed", [0.7, 0.9, 0.85], run="audit_1", config={"audit_of": "s2"}, first_epoch=4),
        _trial(tmp_path, "s0", "asha_stopped", []),
        _trial(tmp_path, "a0", "completed", [0.6], run="audit_1", config={"audit_of": "s0"}, first_epoch=1),
    ]
    r = early_stopping_cost(runs, SPEC)
    a1, a0 = sorted(r.audited, key=lambda a: a.audit_trial_id, reverse=True)
    assert (a1.stopped_epoch, a1.at_stop, a1.at_max_t, a1.best) == (3, 0.5, 0.85, 0.9)
    assert a0.trial_id == "s0" and a0.at_stop != a0.at_stop and a0.at_max_t == 0.6  # nan


def test_the_kept_best_is_the_kept_trial_with_the_best_best(tmp_path):
    """Two kept trials whose best and worst epochs rank them differently: the one with the best epoch is
    the kept best (max for accuracy, min for a loss)."""
    runs = [
        _trial(tmp_path, "wild", "completed", [0.2, 0.9]),
        _trial(tmp_path, "even", "completed", [0.85, 0.85]),
        _trial(tmp_path, "s2", "asha_stopped", [0.4]),
        _trial(tmp_path, "a1", "completed", [0.95], run="audit_1", config={"audit_of": "s2"}, first_epoch=2),
    ]
    r = early_stopping_cost(runs, SPEC)
    assert (r.kept_trial, r.kept_best, r.cost) == ("wild", 0.9, pytest.approx(0.05))
    loss = [
        _loss_trial(tmp_path, "wild", "completed", [0.9, 0.2]),
        _loss_trial(tmp_path, "even", "completed", [0.25]),
        _loss_trial(tmp_path, "s2", "asha_stopped", [0.4]),
        _loss_trial(tmp_path, "a1", "completed", [0.1], run="audit_1", config={"audit_of": "s2"}, first_epoch=2),
    ]
    r = early_stopping_cost(loss, LOSS)
    assert (r.kept_trial, r.kept_best, r.cost) == ("wild", 0.2, pytest.approx(0.1))


def test_an_audited_trial_ending_level_with_the_kept_best_is_not_above_it(tmp_path):
    runs = [
        _trial(tmp_path, "done", "completed", [0.5, 0.80]),
        _trial(tmp_path, "s2", "asha_stopped", [0.4]),
        _trial(tmp_path, "a1", "completed", [0.80], run="audit_1", config={"audit_of": "s2"}, first_epoch=2),
    ]
    r = early_stopping_cost(runs, SPEC)
    assert r.above == () and r.cost == 0.0 and not r.measurable
    assert not regret_line(r).endswith("kept") and "(within noise)" not in regret_line(r)
