"""The search ETA's model (search/eta.py), without Ray: every term moves the estimate the way it
should, so dropping one fails a test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raydigits.experiment.layout import ETA_FILE
from raydigits.experiment.records import MAX_ESTIMATES, Estimate, read_estimates, write_estimates
from raydigits.search import eta
from raydigits.spec import asha_rungs, parse_spec

ASHA = eta.Schedule(max_t=4, rungs=(1, 2), reduction_factor=2)  # grace 1, rf 2, max_t 4
FIFO = eta.Schedule(max_t=4)


def test_expected_epochs_follow_the_rung_survival_fractions():
    assert eta.expected_epochs(FIFO) == 4 and eta.expected_epochs(FIFO, 3) == 1
    # 1 epoch surely, half go on to epoch 2, a quarter run epochs 3 and 4
    assert eta.expected_epochs(ASHA) == pytest.approx(1 + 0.5 * 1 + 0.25 * 2)
    # a running trial at a rung has been kept there: only later rungs thin it out
    assert eta.expected_epochs(ASHA, 1) == pytest.approx(1 + 0.5 * 2)
    assert eta.expected_epochs(ASHA, 2) == pytest.approx(2) and eta.expected_epochs(ASHA, 4) == 0
    rf3 = eta.Schedule(max_t=9, rungs=(1, 3), reduction_factor=3)
    assert eta.expected_epochs(rf3) == pytest.approx(1 + 2 / 3 + 6 / 9)
    # the shipped schedule reads its rungs from the spec
    spec = parse_spec(
        {"name": "t", "scheduler": {"type": "asha", "max_t": 4, "grace_period": 1, "reduction_factor": 2}}
    )
    assert tuple(sorted(asha_rungs(spec))) == ASHA.rungs


def test_each_term_of_the_estimate_counts():
    base = dict(epoch_s=10.0, running_epochs=[1, 0], not_started=4, concurrency=2, schedule=ASHA)
    t = eta.estimate_remaining_s(**base)
    work = eta.expected_epochs(ASHA, 1) + eta.expected_epochs(ASHA, 0) + 4 * eta.expected_epochs(ASHA)
    assert t == pytest.approx(work * 10 / 2)
    assert eta.estimate_remaining_s(**{**base, "epoch_s": 20.0}) == pytest.approx(2 * t)  # epoch time
    assert eta.estimate_remaining_s(**{**base, "concurrency": 1}) == pytest.approx(2 * t)  # concurrency
    assert eta.estimate_remaining_s(**{**base, "not_started": 6}) > t  # trials left
    # (a survivor of every rung has more left than a fresh trial: [2, 2] would not be shorter)
    assert eta.estimate_remaining_s(**{**base, "running_epochs": [3, 3]}) < t  # progress made
    assert eta.estimate_remaining_s(**{**base, "schedule": FIFO}) > t  # the scheduler
    assert eta.estimate_remaining_s(**{**base, "schedule": eta.Schedule(4, (1, 2), 4)}) < t  # its rf
    assert eta.estimate_remaining_s(**{**base, "schedule": eta.Schedule(8, (1, 2, 4), 2)}) > t  # its max_t
    assert eta.estimate_remaining_s(**{**base, "schedule": eta.Schedule(4, (2,), 2)}) > t  # its grace
    assert eta.estimate_remaining_s(**base, start_s=5.0) == pytest.approx(t + 4 * 5.0 / 2)  # start-up
    assert eta.estimate_remaining_s(**base, budget_left_s=7.0) == 7.0  # the budget caps
    assert eta.estimate_remaining_s(**base, budget_left_s=1e6) == pytest.approx(t)
    # fewer trials left than slots: they cannot use the idle slots
    assert eta.estimate_remaining_s(10.0, [0], 0, 4, FIFO) == pytest.approx(40.0)
    assert eta.estimate_remaining_s(10.0, [], 0, 4, FIFO) == 0.0


def test_concurrency_is_the_tightest_of_the_limit_and_the_cluster():
    assert eta.concurrency(2, {"CPU": 8}, 1, 0) == 2
    assert eta.concurrency(None, {"CPU": 8}, 2, 0) == 4
    assert eta.concurrency(None, {"CPU": 16, "GPU": 1}, 1, 0.25) == 4
    assert eta.concurrency(8, {"CPU": 1}, 2, 0) == 1  # never 0


def test_line_and_the_first_estimate_against_the_actual_time(tmp_path):
    assert eta.line(125, 3, 6, 900) == "ETA: ~2m 05s (3/6 trials done, budget ends in 15m 00s)"
    assert eta.line(3725, 0, 6, None) == "ETA: ~1h 02m (0/6 trials done)"
    assert eta.summary(tmp_path, 100.0, 200.0) is None
    write_estimates(tmp_path, [Estimate(110.0, 80.0, 0, 6), Estimate(150.0, 45.0, 3, 6)])
    s = eta.summary(tmp_path, 100.0, 200.0)
    assert s == {"first_estimate_after_s": 10.0, "first_estimate_total_s": 90.0, "actual_s": 100.0, "n_estimates": 2}
    assert (
        eta.summary_line(s)
        == "ETA: the first estimate (after 0m 10s) said 1m 30s in all; the search took 1m 40s (-10%)"
    )
    write_estimates(tmp_path, [Estimate(float(i), 1.0) for i in range(MAX_ESTIMATES + 50)])
    kept = json.loads((tmp_path / ETA_FILE).read_text())["estimates"]
    assert len(kept) == MAX_ESTIMATES and kept[0]["at"] == 0.0 and kept[-1]["at"] == MAX_ESTIMATES + 49
    assert read_estimates(tmp_path)[-1] == Estimate(MAX_ESTIMATES + 49.0, 1.0)


@pytest.mark.parametrize("n, rf", [(1, 3), (2, 3), (3, 3), (8, 3), (6, 2), (30, 3), (9, 4 / 3)])
def test_asha_survival_matches_ashas_rule_on_random_arrivals(n, rf):
    """The expected fraction kept at a rung equals a simulation of ASHA's rule (each arrival against
    the (1 - 1/rf) quantile of those recorded before it; the first always goes on); 1/rf is the
    share the rung keeps (3/4: family_asha's first rung)."""
    rng = np.random.default_rng(n)
    kept = []
    for _ in range(3000):
        recorded, going_on = [], 0
        for v in rng.random(n):
            going_on += not recorded or v >= np.percentile(recorded, (1 - 1 / rf) * 100)
            recorded.append(v)
        kept.append(going_on / n)
    assert eta.asha_survival(n, 1 / rf) == pytest.approx(np.mean(kept), abs=0.015)


def test_a_small_search_keeps_more_than_one_in_rf():
    """8 trials at rf 3 (the CPU headline's ASHA): more trial-epochs than the 1/rf model says, and
    the size's effect fades for a large search."""
    small = eta.Schedule(12, (2, 6), 3, n_trials=8)
    assert eta.rung_fractions(small)[0] == pytest.approx(eta.asha_survival(8, 1 / 3))
    assert eta.expected_epochs(small) > 1.3 * eta.expected_epochs(eta.Schedule(12, (2, 6), 3))
    big = eta.Schedule(12, (2, 6), 3, n_trials=2000)
    assert eta.expected_epochs(big) == pytest.approx(eta.expected_epochs(eta.Schedule(12, (2, 6), 3)), rel=0.02)


def test_the_eta_counts_the_audit_after_the_search():
    """The audit trains up to audit_k stopped trials on from the first rung to max_t, after the search
    (outside its time budget)."""
    plain = eta.Schedule(8, (1, 2, 4), 2.0, n_trials=12)
    audited = eta.Schedule(8, (1, 2, 4), 2.0, n_trials=12, audit_k=2)
    assert eta.audit_epochs(plain) == 0.0 and eta.audit_epochs(audited) == 2 * (8 - 1)
    assert eta.audit_epochs(eta.Schedule(8, (), 2.0, n_trials=12, audit_k=2)) == 0.0  # FIFO stops none
    base = eta.estimate_remaining_s(10.0, [], 12, 2, plain, start_s=3.0)
    more = eta.estimate_remaining_s(10.0, [], 12, 2, audited, start_s=3.0)
    assert more == pytest.approx(base + 2 * 7 * 10.0 / 2 + 3.0)
    capped = eta.estimate_remaining_s(10.0, [], 12, 2, audited, budget_left_s=60.0, start_s=3.0)
    assert capped == pytest.approx(60.0 + 2 * 7 * 10.0 / 2 + 3.0)
    assert eta.estimate_remaining_s(10.0, [], 0, 2, audited) == pytest.approx(70.0)  # search done, audit left


def test_family_asha_rungs_keep_their_share_of_each_familys_trials():
    """family_asha: each family has rungs of its own (12 trials, 2 families: 6 arrive at each) and the
    first rung keeps 3/4 — more trial-epochs than Ray's rule over all 12 trials."""
    ray = eta.Schedule(8, (1, 2, 4), 2.0, n_trials=12)
    fam = eta.Schedule(8, (1, 2, 4), 2.0, n_trials=12, keep=(0.75, 0.5, 0.5), families=2)
    first = eta.rung_fractions(fam)
    assert first[0] == pytest.approx(eta.asha_survival(6, 0.75))
    assert first[1] == pytest.approx(eta.asha_survival(round(6 * first[0]), 0.5))
    assert eta.expected_epochs(fam) > eta.expected_epochs(ray)


def test_the_search_eta_uses_the_schedulers_own_rungs(tmp_path):
    """The reporter of a family_asha search gets its keep shares and its number of families (the
    searched categorical parameters' values); an asha search gets Ray's rule."""
    from raydigits.search.progress import eta_reporter
    from raydigits.spec import parse_spec

    space = {
        "name": "t",
        "num_samples": 12,
        "scheduler": {"type": "family_asha", "max_t": 8},
        "parameters": {"optimizer": {"values": ["sgd", "adamw"]}, "lr": {"values": [0.1, 0.01, 0.001]}},
    }
    fam = eta_reporter(parse_spec(space, "t"), tmp_path).schedule
    assert fam.keep == (0.75, 0.5, 0.5) and fam.families == 6 and fam.rungs == (1, 2, 4)
    ray = eta_reporter(parse_spec({**space, "scheduler": {"type": "asha", "max_t": 8}}, "t"), tmp_path).schedule
    assert ray.keep == () and ray.families == 1
    third = {"type": "family_asha", "max_t": 8, "first_keep": 1 / 3}
    assert eta_reporter(parse_spec({**space, "scheduler": third}, "t"), tmp_path).schedule.keep[0] == pytest.approx(
        1 / 3
    )
