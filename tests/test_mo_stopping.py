"""Multi-objective early stopping (issue 21 items 3 and 7): the pure rung core (mo_stopping.py) by
hand and against the single-objective core / Ray's ASHA, the scheduler driven through a real
`tune.Tuner` with synthetic curves and costs, constraints (a trial that breaks one is stopped at its
first result, recorded as infeasible and never chosen), the multi-objective searchers, and the
constraint no model of a space can meet, refused through the real CLI before Ray starts."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
from support.helpers import REPO

from raydigits.errors import UserError
from raydigits.pareto import oriented
from raydigits.search.mo_stopping import MOStoppingCore, point_of
from raydigits.search.stopping import CONTINUE, STOP, StoppingCore
from raydigits.spec import parse_spec

MODES = ["max", "min"]  # (val_acc, latency_ms)


def _pt(acc: float, latency: float) -> tuple[float, ...]:
    return tuple(oriented([[acc, latency]], MODES)[0])


def _rung(points: dict) -> dict:
    return {k: _pt(*v) for k, v in points.items()}


# ------------------------------------------------------------------ the core, by hand
def test_a_dominated_trial_stops_and_a_front_member_is_kept_despite_its_accuracy():
    """keep 1/2. Recorded at epoch 1: a (0.90 acc, 2.0 ms), b (0.80, 1.0). c (0.70, 3.0) is dominated
    by both: n = 2, pos = (2 - 1) * 0.5 = 0.5, lo = 0, and c is ranked ahead of none of them → STOP.
    d (0.50, 0.5) has the lowest accuracy yet the lowest latency: it is on the first front with a and
    b (c behind), an extreme of it (crowding inf, ahead of b's 2.0); with n = 3, pos = 1 (f = 0) it
    needs to be ahead of 2 recorded points and is ahead of 3 (b, c and a by index) → CONTINUE, where
    the single-objective core (accuracy alone) stops it, and b too (0.80 below a's 0.90)."""
    mo = MOStoppingCore(max_t=8, keep=0.5)
    so = StoppingCore(max_t=8, keep=0.5)
    for t in "abcd":
        mo.add(t), so.add(t)
    seq = [("a", 0.90, 2.0), ("b", 0.80, 1.0), ("c", 0.70, 3.0), ("d", 0.50, 0.5)]
    assert [mo.result(t, 1, _pt(acc, lat)) for t, acc, lat in seq] == [CONTINUE, CONTINUE, STOP, CONTINUE]
    assert [so.result(t, 1, acc) for t, acc, _ in seq] == [CONTINUE, STOP, STOP, STOP]


def test_crowding_decides_between_members_of_one_front():
    """Five recorded points on one front (acc 0.80..0.95, latency 1..4 ms): p1 (0.95, 4.0) and p3
    (0.80, 1.0) are its extremes; p2 (0.94, 3.8), p4 (0.93, 3.6) crowd p1 and p5 (0.82, 1.2) crowds
    p3. keep 1/2, n = 5: pos = 2, so a newcomer continues iff it is ranked ahead of 3 of them: behind
    the two extremes, first of the middle ones. Crowding (normalised by the ranges 0.15 and 3):
    x = (0.87, 2.2), in the front's gap: 0.11/0.15 + 2.4/3 = 1.5333, more than p4's 1.0, p5's
    0.8667, p2's 0.2667 → CONTINUE. y = (0.935, 3.7), between p2 and p4: 0.02/0.15 + 0.2/3 = 0.1333,
    the least → STOP. Both are non-dominated; only crowding tells them apart."""
    rung = _rung({"p1": (0.95, 4.0), "p2": (0.94, 3.8), "p3": (0.80, 1.0), "p4": (0.93, 3.6), "p5": (0.82, 1.2)})
    core = MOStoppingCore(max_t=8, keep=0.5)
    assert core.decide(rung, _pt(0.87, 2.2), 1) == CONTINUE
    assert core.decide(rung, _pt(0.935, 3.7), 1) == STOP


def test_the_marginal_slot_interpolates_as_the_percentile_does():
    """keep 1/2, recorded a (0.9, 1.0) and b (0.5, 2.0)... on one objective pos = 0.5: a newcomer
    between them stops iff below their midpoint; with latency equal for all, the virtual cut point
    (0.7, 1.0) dominates 0.65 and not 0.75."""
    core = MOStoppingCore(max_t=8, keep=0.5)
    rung = _rung({"a": (0.9, 1.0), "b": (0.5, 1.0)})
    assert core.decide(rung, _pt(0.65, 1.0), 1) == STOP
    assert core.decide(rung, _pt(0.75, 1.0), 1) == CONTINUE
    assert core.decide(rung, _pt(0.70, 1.0), 1) == CONTINUE  # at the cutoff: continues, as ASHA's `<`


def test_nan_points_are_neither_judged_nor_compared():
    core = MOStoppingCore(max_t=8, keep=0.5)
    assert core.decide(_rung({"a": (0.9, 1.0)}), (float("nan"), 1.0), 1) == CONTINUE
    assert core.decide({"a": (float("nan"), 1.0)}, _pt(0.1, 9.0), 1) == CONTINUE  # nobody to compare with


def test_point_of_orients_the_objectives():
    objs = [("val_acc", "max"), ("latency_ms", "min")]
    assert point_of({"val_acc": 0.9, "latency_ms": 2.0}, objs) == (-0.9, 2.0)
    assert point_of({"val_acc": 0.9}, objs) is None


# ------------------------------------------------------------------ one objective = StoppingCore = Ray's ASHA
@pytest.mark.parametrize(
    "rf,grace,max_t,brackets,keep,stratify",
    [
        (2, 1, 8, 1, None, False),
        (2, 1, 8, 1, [0.75, 0.5, 0.5], True),  # the shipped default's rungs
        (3, 2, 12, 2, None, False),
        (2.5, 1, 10, 1, 0.3, True),
        (4, 1, 16, 3, None, False),
    ],
)
def test_one_objective_decides_exactly_as_the_single_objective_core(rf, grace, max_t, brackets, keep, stratify):
    """Random asynchronous event streams (values continuous, rounded to one decimal for ties, and
    sometimes NaN), both modes: every decision of the MO core on 1-point rungs equals StoppingCore's (which
    tests/test_stopping.py holds equal to Ray's AsyncHyperBandScheduler)."""
    rng = random.Random(f"{rf}{grace}{max_t}{brackets}{keep}{stratify}")
    stops = 0
    for _ in range(15):
        seed = rng.random()
        so = StoppingCore(max_t, grace, rf, brackets, stratify=stratify, keep=keep, rng=random.Random(seed))
        mo = MOStoppingCore(max_t, grace, rf, brackets, stratify=stratify, keep=keep, rng=random.Random(seed))
        mode = rng.choice(MODES)
        sign = 1.0 if mode == "max" else -1.0
        live, epoch = set(), {}
        for i in range(30):
            fam = rng.choice("xy")
            assert so.add(i, fam) == mo.add(i, fam)
            live.add(i)
            epoch[i] = 0
            while len(live) > 3 or (i == 29 and live):
                t = rng.choice(sorted(live))
                epoch[t] += 1
                u = rng.random()  # continuous, rounded (ties), or NaN (a diverged epoch): each as ASHA treats it
                v = rng.random() if u < 0.5 else round(rng.random(), 1) if u < 0.95 else float("nan")
                point = tuple(oriented([[v]], [mode])[0])
                a, b = so.result(t, epoch[t], sign * v), mo.result(t, epoch[t], point)
                assert a == b, (t, epoch[t], v)
                if a == STOP:
                    stops += 1
                    so.complete(t, epoch[t], sign * v)
                    mo.complete(t, epoch[t], point)
                    live.discard(t)
        assert so.num_stopped == mo.num_stopped
    assert stops > 0


def test_one_objective_decides_as_rays_asha():
    """The same through Ray's own scheduler (its bracket draws forced onto ours)."""
    from ray.tune.schedulers import AsyncHyperBandScheduler

    rng = random.Random(7)
    for _ in range(10):
        ray_s = AsyncHyperBandScheduler(metric="m", mode="max", max_t=8, grace_period=1, reduction_factor=2, brackets=2)
        mo = MOStoppingCore(max_t=8, grace_period=1, reduction_factor=2, brackets=2)
        live, epoch = {}, {}
        for i in range(30):
            trial = SimpleNamespace(trial_id=f"t{i}")
            ray_s.on_trial_add(None, trial)
            mo.add(trial.trial_id, bracket=ray_s._brackets.index(ray_s._trial_info[trial.trial_id]))
            live[trial.trial_id], epoch[trial.trial_id] = trial, 0
            while len(live) > 3 or (i == 29 and live):
                tid = rng.choice(sorted(live))
                epoch[tid] += 1
                v = rng.random()
                a = ray_s.on_trial_result(None, live[tid], {"training_iteration": epoch[tid], "m": v})
                assert mo.result(tid, epoch[tid], (-v,)) == a
                if a == STOP:
                    ray_s.on_trial_complete(None, live[tid], {"training_iteration": epoch[tid], "m": v})
                    mo.complete(tid, epoch[tid], (-v,))
                    del live[tid]


# ------------------------------------------------------------------ the scheduler through real Tune
MO = {
    "name": "mo",
    "objectives": {"val_acc": "max", "latency_ms": "min"},
    "constraints": {"latency_ms": {"max": 6.0}},
    "scheduler": {"type": "family_asha", "max_t": 4, "grace_period": 1, "reduction_factor": 2},
}
# run one at a time in this order: (val_acc curve, latency_ms)
CURVES = {
    "big": ([0.90, 0.95, 0.97, 0.98], 5.0),  # first at every rung
    "tiny": ([0.60, 0.70, 0.75, 0.78], 0.5),  # far less accurate, far faster: on the front
    "dominated": ([0.55, 0.60, 0.62, 0.63], 6.0),  # worse than both in both: stops at epoch 1
    "too_slow": ([0.99, 0.99, 0.99, 0.99], 9.0),  # the most accurate, but breaks latency_ms <= 6
    # between big and tiny on the front: kept at epoch 1 (3/4 kept: the cut point between dominated
    # and tiny does not dominate it), stopped at epoch 2 (1/2 kept of big, tiny: the front's extremes
    # go first, and mid is the crowded one between them)
    "mid": ([0.85, 0.90, 0.92, 0.93], 3.0),
}


@pytest.fixture(scope="module")
def local_ray():
    import ray

    # "local": never a cluster another process started; WARNING as the product's own ray.init (ERROR
    # would stay set on Ray's loggers for the tests that run after this module in the same process)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _run(spec, tmp_path) -> tuple[dict, dict]:
    """({name: epochs run}, {name: recorded outcome}) of the synthetic search under the spec's own
    scheduler (build_tune_scheduler), stopper and outcome recorder (runner._run_config)."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from raydigits.experiment.records import read_record
    from raydigits.search.recorder import OutcomeRecorder
    from raydigits.search.runner import _run_config
    from raydigits.search.tune_space import build_tune_scheduler
    from raydigits.storage import as_location

    curves = dict(CURVES)

    def curve_trial(config):
        accs, latency = curves[config["name"]]
        for epoch, acc in enumerate(accs, 1):
            tune.report(
                {"epoch": epoch, "val_acc": acc, "latency_ms": latency, "params": 1e6, "size_mb": 4.0, "mflops": 6.0}
            )

    exp = as_location(tmp_path / "exp")
    exp.mkdir()
    shipped = _run_config(spec, exp, 0)  # the search's own stopper and outcome recorder
    tuner = tune.Tuner(
        tune.with_resources(curve_trial, {"cpu": 1}),
        param_space={"name": tune.grid_search(list(CURVES))},
        tune_config=tune.TuneConfig(
            scheduler=build_tune_scheduler(spec), reuse_actors=True, search_alg=BasicVariantGenerator(max_concurrent=1)
        ),
        run_config=tune.RunConfig(
            name="curves",
            storage_path=str(tmp_path),
            verbose=0,
            stop=shipped.stop,
            callbacks=[c for c in shipped.callbacks if isinstance(c, OutcomeRecorder)],
        ),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = tuner.fit()
    record = read_record(as_location(results.experiment_path))  # the recorder writes into Tune's folder
    ran = {r.config["name"]: int(r.metrics["training_iteration"]) for r in results}
    outcomes = {r.config["name"]: record.outcome(r.metrics["trial_id"]) for r in results}
    return ran, outcomes


def test_moasha_keeps_the_front_and_stops_the_dominated_and_the_infeasible(local_ray, tmp_path):
    ran, outcomes = _run(parse_spec(MO), tmp_path)
    assert ran == {"big": 4, "tiny": 4, "dominated": 1, "too_slow": 1, "mid": 2}, ran
    assert outcomes == {
        "big": "completed",
        "tiny": "completed",
        "dominated": "asha_stopped",
        "too_slow": "infeasible",
        "mid": "asha_stopped",
    }, outcomes


def test_single_objective_stops_the_fast_weak_trial(local_ray, tmp_path):
    """The same trials ranked by accuracy alone (no objectives): tiny stops at epoch 1, so the front
    member above was kept by the multi-objective rule, not by luck."""
    spec = parse_spec({k: v for k, v in MO.items() if k != "objectives"})
    ran, outcomes = _run(spec, tmp_path)
    assert ran["tiny"] == 1 and ran["big"] == 4, ran
    assert outcomes["too_slow"] == "infeasible", outcomes


def test_fifo_stops_an_infeasible_trial_too(local_ray, tmp_path):
    spec = parse_spec({**MO, "scheduler": {"type": "fifo", "max_t": 4}})
    ran, outcomes = _run(spec, tmp_path)
    assert ran == {"big": 4, "tiny": 4, "dominated": 4, "too_slow": 1, "mid": 4}, ran
    assert outcomes["too_slow"] == "infeasible" and outcomes["dominated"] == "completed", outcomes


def test_an_infeasible_trial_is_never_recorded_at_a_rung():
    """FamilyASHA's own hooks (as Tune calls them): the infeasible trial's STOP, and its completion,
    leave the rung empty, so the next trial is the first there."""
    from raydigits.search.family_asha import FamilyASHA

    spec = parse_spec(MO)
    s = FamilyASHA("val_acc", "max", max_t=4, costs=["latency_ms"], broken=spec.broken_constraints)
    slow, ok = SimpleNamespace(trial_id="slow", config={}), SimpleNamespace(trial_id="ok", config={})
    s.on_trial_add(None, slow), s.on_trial_add(None, ok)
    bad = {"training_iteration": 1, "val_acc": 0.99, "latency_ms": 9.0}
    assert s.on_trial_result(None, slow, bad) == STOP
    s.on_trial_complete(None, slow, bad)
    assert all(not r for _, fams in s._core.brackets[0] for r in fams.values())
    assert s.on_trial_result(None, ok, {"training_iteration": 1, "val_acc": 0.1, "latency_ms": 1.0}) == CONTINUE


# ------------------------------------------------------------------ outcomes and the choice
def test_infeasible_outcome_recorded_and_derived():
    from raydigits.experiment.records import derive_outcome, ended_outcome

    spec = parse_spec(MO)
    last = {"epoch": 1, "val_acc": 0.99, "latency_ms": 9.0}
    assert ended_outcome(last, 4, spec.broken_constraints) == "infeasible"
    assert ended_outcome({**last, "latency_ms": 5.0}, 4, spec.broken_constraints) == "asha_stopped"
    assert ended_outcome(last, 4) == "asha_stopped"  # no constraints given: as before
    assert derive_outcome("TERMINATED", [last], 1, spec) == "infeasible"
    assert derive_outcome("TERMINATED", [{**last, "latency_ms": 5.0}], 1, spec) != "infeasible"


def test_choose_best_skips_an_infeasible_trial(tmp_path):
    from raydigits.experiment import Trial, choose_best
    from raydigits.storage import as_location

    spec = parse_spec(MO)
    trials = []
    for trial_id, outcome, acc in (("slow", "infeasible", 0.99), ("ok", "completed", 0.9)):
        ck = tmp_path / trial_id / "checkpoint_000001"
        ck.mkdir(parents=True)
        (ck / "checkpoint.pt").write_bytes(b"x")
        result = {"epoch": 1, "val_acc": acc, "checkpoint_dir_name": ck.name, "config": {}}
        trials.append(
            Trial("search", trial_id, "TERMINATED", outcome, 1, {}, (result,), as_location(tmp_path / trial_id))
        )
    assert choose_best(trials, spec).trial_id == "ok"
    with pytest.raises(UserError, match="broke a constraint"):
        choose_best(trials[:1], spec)


# ------------------------------------------------------------------ the searchers
def test_multi_objective_searchers():
    """tpe with several objectives: a multi-objective Optuna study (TPE) over the metric list;
    nsga2: Optuna's NSGA-II, seeded, sized to run NSGA2_GENERATIONS generations; nsga2 refuses a
    single objective."""
    import optuna

    from raydigits.search.tune_space import NSGA2_GENERATIONS, build_search_alg

    base = {
        **MO,
        "num_samples": 40,
        "parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-1}},
    }
    for method, sampler in (("tpe", optuna.samplers.TPESampler), ("nsga2", optuna.samplers.NSGAIISampler)):
        alg = build_search_alg(parse_spec({**base, "method": method}))
        assert alg.metric == ["val_acc", "latency_ms"] and alg._mode == ["max", "min"], method
        assert isinstance(alg._sampler, sampler), method
        assert [d.name for d in alg._ot_study.directions] == ["MAXIMIZE", "MINIMIZE"]
    nsga = build_search_alg(parse_spec({**base, "method": "nsga2"}))._sampler
    assert nsga._population_size == 40 // NSGA2_GENERATIONS
    single = build_search_alg(parse_spec({**base, "objectives": None, "method": "tpe"}))
    assert single.metric == "val_acc" and single._mode == "max"
    with pytest.raises(UserError, match="nsga2 searches several objectives"):
        parse_spec({**base, "objectives": None, "method": "nsga2"})


def test_extend_refuses_a_multi_objective_optuna_search():
    from raydigits.search.extend import check_request

    with pytest.raises(UserError, match="multi-objective tpe search cannot be extended"):
        check_request(parse_spec({**MO, "method": "tpe"}), 4, None, 0)
    check_request(parse_spec({**MO, "method": "random"}), 4, None, 0)  # random: no warm start, fine


# ------------------------------------------------------------------ a constraint no model meets
def test_static_costs_are_the_measured_ones():
    """costs.static_costs (no timing) gives the numbers `measure` reports for the same model."""
    import torch

    from raydigits.config import TrainConfig
    from raydigits.costs import measure, static_costs
    from raydigits.models import build_model

    got = static_costs("mobilenet_v3_small", 10, 32)
    m = measure(
        build_model(TrainConfig(model="mobilenet_v3_small", img_size=32), 10),
        32,
        torch.device("cpu"),
        calls=1,
        warmup=0,
    )
    assert got == pytest.approx({"params": m.params, "size_mb": m.size_mb, "mflops": m.mflops})
    assert static_costs("mobilenet_v3_small", 10, 64)["mflops"] > got["mflops"]


def test_candidates_enumerate_models_and_sizes():
    from raydigits.search.feasible import candidates

    spec = parse_spec(
        {
            "name": "c",
            "fixed": {"img_size": 48},
            "parameters": {"model": {"values": ["mobilenet_v3_small", "resnet18"]}},
        }
    )
    assert candidates(spec) == [("mobilenet_v3_small", 48, 1.0), ("resnet18", 48, 1.0)]
    widths = parse_spec(
        {
            "name": "c",
            "parameters": {
                "model": {"values": ["mobilenet_v3_small", "resnet18"]},
                "width_mult": {"values": [0.5, 1.0], "when": {"model": "mobilenet_v3_small"}},
            },
        }
    )  # a width only where the model takes one
    assert candidates(widths) == [
        ("mobilenet_v3_small", 32, 0.5),
        ("mobilenet_v3_small", 32, 1.0),
        ("resnet18", 32, 1.0),
    ]
    conditional = parse_spec(
        {
            "name": "c",
            "parameters": {
                "optimizer": {"values": ["sgd", "adamw"]},
                "model": {"values": ["resnet18"], "when": {"optimizer": "sgd"}},
            },
        }
    )  # adamw trials keep TrainConfig's default model and image size
    assert candidates(conditional) == [("resnet18", 32, 1.0), ("mobilenet_v3_small", 32, 1.0)]
    spec = parse_spec({"name": "c", "parameters": {"img_size": {"distribution": "int_uniform", "min": 32, "max": 64}}})
    assert candidates(spec) is None  # a continuum: not enumerated


@pytest.mark.slow  # the real CLI in a subprocess: torch, the dataset, two models built
def test_a_constraint_no_model_meets_is_refused_through_the_cli(tmp_path):
    """`python launch.py --search-space FILE`: one line naming the constraint and the smallest model
    the space builds, exit 2, before Ray starts, nothing written."""
    from raydigits.costs import static_costs

    small = static_costs("mobilenet_v3_small", 10, 32)["params"]
    space = tmp_path / "tight.yaml"
    space.write_text(
        "name: tight\nobjectives: {val_acc: max, params: min}\nconstraints: {params: {max: 1.0e+6}}\n"
        "scheduler: {type: fifo, max_t: 1}\nfixed: {img_size: 32, train_items: 64, val_items: 64}\n"
        "parameters:\n  model: {values: [mobilenet_v3_small, resnet18]}\n"
    )
    storage = tmp_path / "runs"
    storage.mkdir()
    env = {**os.environ, "RAYDIGITS_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    env.setdefault("RAYDIGITS_DATA", str(REPO / "data" / "mnist"))
    p = subprocess.run(
        [sys.executable, "launch.py", "--search-space", str(space), "--storage-path", str(storage)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines == [
        f"error: constraints.params: <= 1e+06 but the smallest model this space builds has {small:g} "
        "(mobilenet_v3_small at 32 px)"
    ], p.stderr
    assert "Ray" not in p.stdout and "dashboard" not in p.stdout.lower(), p.stdout
    assert list(storage.iterdir()) == []
    assert json.dumps(small)  # the figure quoted is the one built


def test_every_outcome_has_a_colour_in_the_report():
    """report.html colours trials by outcome: a new outcome without a colour crashed the final stage."""
    from raydigits.experiment.records import OUTCOMES
    from raydigits.report_html import OUTCOME_COLOURS

    assert set(OUTCOMES) <= set(OUTCOME_COLOURS)
