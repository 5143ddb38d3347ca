"""The paired-ties statistics (experiment/paired.py) against hand-computed values: the exact McNemar
p-value, Holm's correction, the discordant counts, the 100 % edge and what the sentence says."""

from __future__ import annotations

import math

import pytest
from scipy.stats import binomtest

from raydigits.experiment.paired import ALPHA, Screen, holm, mcnemar_exact, paired_ties, ties_line


@pytest.mark.parametrize(
    "b, c, p",
    [
        (10, 2, 2 * (1 + 12 + 66) / 2**12),  # 0.0386: C(12,0..2) of 2^12, both tails
        (2, 10, 2 * (1 + 12 + 66) / 2**12),  # symmetric
        (5, 0, 2 / 2**5),  # 0.0625: five disagreements all one way cannot reach 0.05
        (6, 0, 2 / 2**6),  # 0.03125: six can
        (3, 3, 1.0),  # the two-sided tails overlap: capped at 1
        (0, 0, 1.0),  # never disagree
        (12, 1, 2 * (1 + 13) / 2**13),
    ],
)
def test_mcnemar_exact_is_the_two_sided_binomial_test_of_the_discordant_pairs(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)
    if b + c:
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_mcnemar_exact_on_a_large_validation_matches_scipy():
    for b, c in ((480, 400), (5000, 4999), (70, 0)):
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9, abs=1e-300)


def test_holm_adjusts_step_down_in_the_input_order():
    # sorted 0.01, 0.03, 0.04: 3 × 0.01 = 0.03; 2 × 0.03 = 0.06; 1 × 0.04 = 0.04 → kept non-decreasing: 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # 2 × 0.6 = 1.2: an adjusted p-value is never above 1
    assert holm([0.02]) == [0.02] and holm([]) == []


def _right(n, wrong):
    return [i not in wrong for i in range(n)]


def test_paired_ties_count_the_images_only_one_model_gets_right_and_correct_for_the_candidates():
    """100 images. The winner misses 0-4. A misses 5-16 and 0 but gets 1-4 right: b = 12, c = 4 ...
    arranged so each candidate's (b, c) is known; Holm then decides over the candidates together."""
    winner = _right(100, set(range(5)))
    a = _right(100, set(range(5, 17)) | {0})  # b = 12 (5..16), c = 4 (1..4): p = 2·Σ_{k≤4} C(16,k)/2^16
    b = _right(100, set(range(5)) | {50, 60})  # b = 2, c = 0: p = 0.5
    t = paired_ties(("w", 3, winner), [("a", 2, 0.9, a), ("b", 1, 0.95, b)], Screen([], ["z"], 4))
    ca, cb = t.compared
    assert (ca.winner_only, ca.other_only, cb.winner_only, cb.other_only) == (12, 4, 2, 0)
    assert (ca.trial_id, ca.epoch, ca.reported, cb.trial_id, cb.epoch, cb.reported) == ("a", 2, 0.9, "b", 1, 0.95)
    pa = 2 * sum(math.comb(16, k) for k in range(5)) / 2**16  # 0.0768
    assert ca.p == pytest.approx(pa) and cb.p == pytest.approx(0.5)
    assert ca.p_holm == pytest.approx(min(1, 2 * pa)) and cb.p_holm == pytest.approx(max(2 * pa, 0.5))
    assert (ca.accuracy, cb.accuracy, t.accuracy, t.n) == (0.87, 0.93, 0.95, 100)
    assert t.tied == ["a", "b"] and t.untested == ["z"] and t.screened_out == 4
    # alone, b = 10 and c = 2 is told apart (p 0.0386 < 0.05); beside a second candidate Holm doubles it
    ten = _right(100, set(range(5, 15)) | {0, 1, 2})  # b = 10 (5..14), c = 2 (3, 4)
    alone = paired_ties(("w", 3, winner), [("x", 1, 0.9, ten)], Screen([], [], 0))
    assert alone.compared[0].p == pytest.approx(0.0386, abs=5e-5) and alone.tied == []
    both = paired_ties(("w", 3, winner), [("x", 1, 0.9, ten), ("b", 1, 0.95, b)], Screen([], [], 0))
    assert both.compared[0].p_holm == pytest.approx(2 * 0.03857, abs=1e-4) and both.tied == ["x", "b"]
    j = both.to_json()
    assert j["alpha"] == ALPHA and j["correction"] == "holm" and j["tied"] == ["x", "b"]
    assert j["test"] == "exact McNemar (two-sided)" and (j["screen_z"], j["candidate_cap"]) == (4.0, 5)
    assert both.seconds == 0.0 and j["seconds"] == 0.0  # no cost unless the caller measured one
    timed = paired_ties(("w", 3, winner), [("x", 1, 0.9, ten)], Screen([], [], 0), seconds=2.5)
    assert timed.seconds == 2.5 and timed.to_json()["seconds"] == 2.5
    assert j["compared"][0]["p"] == pytest.approx(0.0386, abs=5e-5) and j["compared"][0]["winner_only"] == 10
    with pytest.raises(ValueError, match="99 predictions against the winner's 100"):
        paired_ties(("w", 3, winner), [("x", 1, 0.9, ten[:99])], Screen([], [], 0))


def test_a_winner_at_100_percent_is_compared_like_any_other():
    """Every disagreement is then the candidate's miss (c = 0): 3 misses cannot be told apart
    (p 0.25), 8 can (p 0.0078); a candidate also at 100 % never disagrees (p 1)."""
    winner = _right(500, set())
    t = paired_ties(
        ("w", 2, winner),
        [
            ("same", 2, 1.0, winner),
            ("three", 2, 0.994, _right(500, {1, 2, 3})),
            ("eight", 2, 0.98, _right(500, set(range(8)))),
        ],
        Screen([], [], 0),
    )
    assert [(c.trial_id, c.winner_only, c.other_only) for c in t.compared] == [
        ("same", 0, 0),
        ("three", 3, 0),
        ("eight", 8, 0),
    ]
    assert [c.p for c in t.compared] == pytest.approx([1.0, 0.25, 2 / 2**8])
    assert t.tied == ["same", "three"] and t.accuracy == 1.0
    line = ties_line(t)
    assert "(w epoch 2, 1.0000 on 500 validation images)" in line
    assert "after correction: same 1.0000 (0 vs 0 images, p=1), three 0.9940 (3 vs 0 images, p=0.5)" in line
    assert "distinguishable: eight 0.9840 (lower, p=0.023)" in line  # Holm: 3 × 2/256
    assert "against the best checkpoint of 3 other trials, alpha 0.05 Holm-corrected over 3;" in line


def test_a_corrected_p_value_at_alpha_is_told_apart():
    """A tie is a corrected p-value above alpha; at alpha itself the test rejects (Holm: adjusted p ≤ α).
    Three disagreements all one way: p = 2/8 = 0.25 exactly."""
    winner = _right(100, set())
    t = paired_ties(("w", 1, winner), [("c", 1, 0.97, _right(100, {0, 1, 2}))], Screen([], [], 0), alpha=0.25)
    assert t.compared[0].p_holm == 0.25 and t.compared[0].tie is False and t.tied == []
    assert paired_ties(("w", 1, winner), [("c", 1, 0.97, _right(100, {0, 1, 2}))], Screen([], [], 0), alpha=0.24).tied


def test_the_sentence_lists_every_candidate_told_apart():
    winner = _right(100, set(range(20)))
    t = paired_ties(
        ("w", 3, winner),
        [("h", 1, 0.99, _right(100, {0})), ("g", 2, 0.98, _right(100, {0, 1}))],
        Screen([], [], 0),
    )
    assert t.tied == [] and "distinguishable: h 0.9900 (higher, p=7.6e-06), g 0.9800 (higher, p=7.6e-06)" in ties_line(
        t
    )


def test_the_sentence_says_what_the_test_cannot_say():
    winner = _right(100, set(range(5)))
    t = paired_ties(("w", 3, winner), [("b", 1, 0.95, _right(100, set(range(5)) | {50}))], Screen([], ["y", "z"], 0))
    line = ties_line(t)
    assert line.startswith(
        "exact McNemar test (two-sided, on the images only one of the two gets right) of the shipped checkpoint "
        "(w epoch 3, 0.9500 on 100 validation images) against the best checkpoint of 1 other trial, alpha 0.05 "
        "Holm-corrected over 1; not distinguishable from it on these 100 validation images at alpha 0.05 after "
        "correction: b 0.9400 (1 vs 0 images, p=1) (not evidence that they are as good"
    )
    assert "2 more within the screen not tested (at most 5): y, z" in line and "as good a pick" not in line
    assert line.endswith("so its validation score is optimistic; only images no choice saw (a test split) measure it")
    # a candidate the shipped checkpoint is worse than, told apart: said to be higher
    better = paired_ties(("w", 3, _right(100, set(range(20)))), [("h", 1, 0.99, _right(100, {0}))], Screen([], [], 0))
    assert "distinguishable: h 0.9900 (higher, p=3.8e-06)" in ties_line(better) and better.tied == []
    none = ties_line(paired_ties(("w", 3, winner), [], Screen([], [], 3)))
    assert none.startswith(
        "no other usable trial is within 4 paired standard errors of the shipped checkpoint (w epoch 3, 0.9500 on "
        "100 validation images): nothing to test;"
    )
    assert "not distinguishable" not in none and "optimistic" in none
