"""A multi-objective search's Pareto front on validation (experiment/front.py), fast and without Ray:
which trials are on it, each at the epoch the single-objective rule ships of it; dominated,
infeasible and unusable trials listed as such; the winner never an infeasible trial; and
`export --pick`'s bounds: the most accurate member within them, one clear line otherwise."""

from __future__ import annotations

import pytest

from raydigits.errors import UserError
from raydigits.experiment import Trial, choose_best
from raydigits.experiment.front import DOMINATED, FRONT, INFEASIBLE, UNUSABLE, pareto_front, parse_pick
from raydigits.spec import parse_spec
from raydigits.storage import as_location

SPEC = parse_spec(
    {
        "name": "t",
        "objectives": {"val_acc": "max", "latency_ms": "min"},
        "constraints": {"params": {"max": 2e6}},
        "scheduler": {"type": "fifo", "max_t": 3},
    }
)


def _trial(tmp_path, trial_id, vals, latency, params=1e6, outcome="completed", val_n=None):
    results = []
    for epoch, v in enumerate(vals, 1):
        ck = tmp_path / trial_id / f"checkpoint_{epoch:06d}"
        ck.mkdir(parents=True)
        (ck / "checkpoint.pt").write_bytes(b"x")
        results.append(
            {
                "epoch": epoch,
                "val_acc": v,
                "val_n": val_n,
                "checkpoint_dir_name": ck.name,
                "config": {"id": trial_id},
                "latency_ms": latency,
                "params": params,
                "size_mb": params * 4 / 2**20,
                "mflops": 10.0,
            }
        )
    return Trial(
        "search",
        trial_id,
        "TERMINATED",
        outcome,
        len(vals),
        {"model": trial_id},
        tuple(results),
        as_location(tmp_path / trial_id),
    )


@pytest.fixture
def trials(tmp_path):
    return [
        _trial(tmp_path, "fast", [0.80, 0.90], 1.0),  # front: the fastest
        _trial(tmp_path, "mid", [0.93, 0.95], 2.0),  # front
        _trial(tmp_path, "slow", [0.96, 0.97], 5.0),  # front: the most accurate feasible
        _trial(tmp_path, "worse", [0.91, 0.94], 3.0),  # dominated by mid (slower, less accurate)
        _trial(tmp_path, "huge", [0.99, 0.99], 0.5, params=5e6),  # would dominate all, but infeasible
        _trial(tmp_path, "nan", [0.999], 0.1, outcome="diverged"),  # never placed
    ]


def test_front_places_every_trial_on_validation(trials):
    front = pareto_front(tuple(trials), SPEC)
    status = {p.trial_id: p.status for p in front.points}
    assert status == {
        "fast": FRONT,
        "mid": FRONT,
        "slow": FRONT,
        "worse": DOMINATED,
        "huge": INFEASIBLE,
        "nan": UNUSABLE,
    }
    assert [p.trial_id for p in front.members] == ["slow", "mid", "fast"]  # most accurate first
    assert front.status("huge").why == "breaks params <= 2e+06"
    assert front.status("nan").costs["latency_ms"] == 0.1  # its costs, though it has no epoch to place
    assert front.status("worse").rank == 1 and front.status("mid").rank == 0
    slow = front.status("slow")
    assert (slow.epoch, slow.values, slow.val_acc) == (2, {"val_acc": 0.97, "latency_ms": 5.0}, 0.97)
    # the winner of the single-objective rule is never the infeasible trial
    assert choose_best(trials, SPEC).trial_id == "slow"


def test_a_members_epoch_is_the_single_objective_rule_applied_to_it(tmp_path):
    """within_se: the latest epoch within one standard error of the trial's best, per trial."""
    t = _trial(tmp_path, "a", [0.5, 0.9900, 0.9892, 0.9891, 0.9880], 1.0, val_n=10_000)
    p = pareto_front((t,), SPEC).status("a")
    assert (p.status, p.epoch, p.values["val_acc"]) == (FRONT, 4, 0.9891)
    best = parse_spec({**SPEC.to_dict(), "select_epoch": "best"})
    assert pareto_front((t,), best).status("a").epoch == 2


def test_equal_points_share_the_front_and_costs_minimise(tmp_path):
    a = _trial(tmp_path, "a", [0.9], 1.0)
    b = _trial(tmp_path, "b", [0.9], 1.0)
    c = _trial(tmp_path, "c", [0.9], 1.5)  # as accurate, slower: dominated
    front = pareto_front((a, b, c), SPEC)
    assert [p.status for p in front.points] == [FRONT, FRONT, DOMINATED]


def test_pick_takes_the_most_accurate_member_within_every_bound(trials):
    front = pareto_front(tuple(trials), SPEC)
    assert front.pick("latency_ms<=2").trial_id == "mid"
    assert front.pick("latency_ms<2").trial_id == "fast"
    assert front.pick(" latency_ms <= 10 , val_acc>0.95").trial_id == "slow"
    assert front.pick("val_acc>=0.9,latency_ms<=1").trial_id == "fast"
    assert front.pick("params<=2e6").trial_id == "slow"
    assert front.member("mid").trial_id == "mid"


def test_pick_nothing_satisfies_names_the_bound_and_the_closest_member(trials):
    front = pareto_front(tuple(trials), SPEC)
    with pytest.raises(UserError) as e:
        front.pick("latency_ms<=0.9")
    assert str(e.value) == (
        "--pick latency_ms<=0.9: no front member satisfies it; the closest is trial fast (latency_ms 1)"
    )
    with pytest.raises(UserError) as e:
        front.pick("val_acc>=0.96,latency_ms<=4")
    assert "the closest is trial mid (val_acc 0.95, latency_ms 2)" in str(e.value)
    for not_member in ("worse", "huge"):
        with pytest.raises(UserError, match=f"--trial {not_member}: not on the Pareto front"):
            front.member(not_member)
    with pytest.raises(UserError, match="--trial zz: no such trial; front members: slow, mid, fast"):
        front.member("zz")


@pytest.mark.parametrize(
    "text, says",
    [
        ("latency_ms=2", "cannot read 'latency_ms=2'"),
        ("latency_ms<=", "cannot read 'latency_ms<='"),
        ("latency_ms<=2,", "cannot read ''"),
        ("latency_ms=<2", "cannot read 'latency_ms=<2'"),
        ("val_loss<=0.1", "val_loss is not a metric a pick may bound"),
        ("latency<=2", "latency is not a metric a pick may bound"),
        ("latency_ms<=two", "'two' is not a finite number"),
        ("latency_ms<=nan", "'nan' is not a finite number"),
    ],
)
def test_bad_pick_syntax_is_one_line_naming_it(text, says):
    with pytest.raises(UserError) as e:
        parse_pick(text)
    assert says in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("--pick ")


def test_pick_parses_operators_and_numbers():
    assert parse_pick("latency_ms<=2, val_acc>0.9,params<1e6,size_mb>=0.5") == [
        ("latency_ms", "<=", 2.0),
        ("val_acc", ">", 0.9),
        ("params", "<", 1e6),
        ("size_mb", ">=", 0.5),
    ]
