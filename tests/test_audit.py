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
    return Trial(run, tid, "TERMINATED", outcome, first_epoch + len(vals) - 1, dict(config or {"lr": 0.1}),
                 tuple(results), as_location(root / tid))


def test_the_audited_trials_are_the_stopped_ones_best_at_their_last_rung(tmp_path):
    trials = [_trial(tmp_path, "done", "completed", [0.5, 0.6, 0.7, 0.8]),
              _trial(tmp_path, "s1", "asha_stopped", [0.9, 0.3]),        # best early, weak at its last rung
              _trial(tmp_path, "s2", "asha_stopped", [0.4, 0.55]),
              _trial(tmp_path, "s3", "asha_stopped", [0.45]),
              _trial(tmp_path, "s4", "asha_stopped", [0.2, 0.7], keep=False),  # no checkpoint left: passed over
              _trial(tmp_path, "bad", "diverged", [0.99])]
    picked = audit_candidates(trials, SPEC, 2)
    assert [(t.trial_id, c.epoch, c.value) for t, c in picked] == [("s2", 2, 0.55), ("s3", 1, 0.45)]
    assert picked[0][1].location == as_location(tmp_path / "s2" / "checkpoint_000002" / "checkpoint.pt")
    assert audit_candidates(trials, SPEC, 0) == []
    # a trial already audited is not audited again
    again = trials + [_trial(tmp_path, "a1", "completed", [0.6, 0.62], run="audit_1", config={"audit_of": "s2"},
                             first_epoch=3)]
    assert [t.trial_id for t, _ in audit_candidates(again, SPEC, 2)] == ["s3", "s1"]


def test_the_cost_is_how_far_an_audited_trial_ends_above_the_best_kept_one(tmp_path):
    base = [_trial(tmp_path, "done", "completed", [0.5, 0.6, 0.7, 0.80]),
            _trial(tmp_path, "s2", "asha_stopped", [0.4, 0.55])]
    assert early_stopping_cost(base, SPEC) is None  # nothing audited
    far = base + [_trial(tmp_path, "a1", "completed", [0.83, 0.85], run="audit_1", config={"audit_of": "s2"},
                         first_epoch=3)]
    r = early_stopping_cost(far, SPEC)
    assert (r.kept_trial, r.kept_best, r.cost, r.above) == ("done", 0.80, pytest.approx(0.05), ("s2",))
    assert r.margin == pytest.approx(2 * (0.8 * 0.2 / 10_000) ** 0.5) and r.measurable
    a = r.audited[0]
    assert (a.trial_id, a.audit_trial_id, a.stopped_epoch, a.at_stop, a.at_max_t, a.best) == ("s2", "a1", 2, 0.55, 0.85, 0.85)
    line = regret_line(r)
    assert line.startswith("early stopping cost 5.00 pp (noise: 0.80 pp, 2 standard errors): best kept trial done 0.8000")
    assert "s2 stopped at epoch 2 at 0.5500, 0.8500 at max_t (best 0.8500)" in line
    assert line.endswith("s2, stopped early, ended above every trial early stopping kept")
    # within two standard errors: not measurable, though above
    close = base + [_trial(tmp_path, "a1", "completed", [0.79, 0.805], run="audit_1", config={"audit_of": "s2"},
                           first_epoch=3)]
    r = early_stopping_cost(close, SPEC)
    assert r.cost == pytest.approx(0.005) and not r.measurable
    assert regret_line(r).startswith("early stopping cost nothing measurable (0.50 pp")
    assert regret_line(r).endswith("(within noise)")
    # below the kept best: costs nothing, and nothing ended above
    below = base + [_trial(tmp_path, "a1", "completed", [0.6, 0.7], run="audit_1", config={"audit_of": "s2"},
                           first_epoch=3)]
    r = early_stopping_cost(below, SPEC)
    assert r.cost == 0.0 and r.above == () and not r.measurable
    assert r.to_json()["line"] == regret_line(r) and r.to_json()["audited"][0]["trial_id"] == "s2"
