"""reproduce's verdict from per-epoch values alone (no training, no GPU needed): a CPU retraining must be
equal every epoch; a GPU one is judged in binomial standard errors, and while that tolerance is
unmeasured (GPU_TOLERANCE_SE is None) any difference is "not verified", never "reproduced"."""

from __future__ import annotations

import pytest

from raydigits import reproduce
from raydigits.reproduce import Reproduction, summary


def _result(recorded, again, device, was="cuda", tolerance_se=reproduce.GPU_TOLERANCE_SE, val_n=10_000):
    rows = [
        {
            "epoch": e,
            "val_n": val_n,
            "recorded_val_acc": a,
            "reproduced_val_acc": b,
            "recorded_val_loss": 0.1,
            "reproduced_val_loss": None if b is None else 0.1,
        }
        for e, (a, b) in enumerate(zip(recorded, again), 1)
    ]
    return Reproduction("t1", was, device, "python -m raydigits.train ...", "/out", rows, tolerance_se)


def test_the_gpu_tolerance_is_unmeasured_so_a_gpu_difference_is_not_verified():
    assert reproduce.GPU_TOLERANCE_SE is None  # set it only from bench/gpu_check.sh's measured spread
    r = _result([0.9, 0.95], [0.9, 0.9501], "cuda:0")  # one image of 10,000 apart: tiny, but unmeasured
    assert (r.verdict, r.reproduced) == ("not verified", False)
    text = summary(r)
    assert "trial t1: not verified (on a GPU; no run-to-run tolerance has been measured yet" in text
    assert "reproduced (" not in text and "NOT reproduced" not in text
    assert r.max_acc_diff_se == pytest.approx(0.0001 / (0.95 * 0.05 / 10_000) ** 0.5)
    far = _result([0.9, 0.95], [0.8, 0.95], "cuda")  # 0.1 apart is still only "not verified"
    assert far.verdict == "not verified" and not far.reproduced
    # equal every epoch needs no tolerance, on a GPU too; a missing epoch never reproduces
    assert _result([0.9, 0.95], [0.9, 0.95], "cuda").verdict == "reproduced"
    assert _result([0.9, 0.95], [0.9, None], "cuda").verdict == "NOT reproduced"
    # a record without val_n (older runs) cannot be put in standard errors: not verified either
    assert _result([0.9], [0.91], "cuda", tolerance_se=3.0, val_n=None).verdict == "not verified"


def test_a_measured_gpu_tolerance_is_in_binomial_standard_errors_of_each_epoch():
    """SE of 0.95 on 10,000 images is 0.00218: 3 SE = 0.00654. At 100 % the SE floor is one image."""
    assert _result([0.9, 0.95], [0.9, 0.944], "cuda", tolerance_se=3.0).verdict == "reproduced"  # 2.75 SE
    assert _result([0.9, 0.95], [0.9, 0.943], "cuda", tolerance_se=3.0).verdict == "NOT reproduced"  # 3.2 SE
    assert _result([1.0], [0.9998], "cuda", tolerance_se=3.0).verdict == "reproduced"  # 2 images of 10,000
    assert _result([1.0], [0.9996], "cuda", tolerance_se=3.0).verdict == "NOT reproduced"
    ok = summary(_result([0.95], [0.944], "cuda", tolerance_se=3.0))
    assert "reproduced (required val_acc within 3 binomial standard errors every epoch (GPU))" in ok


def test_cpu_runs_are_deterministic_so_only_equal_reproduces():
    assert _result([0.9, 0.95], [0.9, 0.95], "cpu", was="cpu").verdict == "reproduced"
    r = _result([0.9, 0.95], [0.9, 0.9501], "cpu", was="cpu", tolerance_se=100.0)  # no tolerance on the CPU
    assert (r.verdict, r.reproduced) == ("NOT reproduced", False)
    assert "NOT reproduced (required val_acc equal every epoch (CPU))" in summary(r)
    # a CPU trial retrained on a GPU is a GPU comparison
    assert _result([0.9], [0.9001], "cuda", was="cpu").verdict == "not verified"
