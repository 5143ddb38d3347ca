"""Early stopping (issue 19): the pure decision core against Ray's own ASHA rule and hand-computed
cases, and the shipped Tune scheduler driven through a real `tune.Tuner` with synthetic learning
curves (a function trainable that reports a given curve: no training)."""

from __future__ import annotations

import random
import sys
import warnings
from types import SimpleNamespace

import pytest
from support.helpers import REPO

from raydigits.search.stopping import CONTINUE, STOP, StoppingCore, bracket_milestones, family_of, percentile


# ------------------------------------------------------------------ the core, by hand
def test_percentile_matches_numpy():
    np = pytest.importorskip("numpy")
    rng = random.Random(0)
    for n in range(1, 12):
        xs = [rng.random() for _ in range(n)]
        for qq in (0, 25, 50, 66.67, 75, 100):
            assert percentile(xs, qq) == pytest.approx(float(np.nanpercentile(xs, qq)), abs=1e-12)
    assert percentile([1.0, float("nan"), 3.0], 50) == 2.0


def test_milestones_as_ray_builds_them():
    assert bracket_milestones(1, 8, 2, 0) == [1, 2, 4, 8]
    assert bracket_milestones(1, 8, 2, 1) == [2, 4, 8]
    assert bracket_milestones(1, 8, 2, 3) == [8]  # the hedge: never stops before max_t
    assert bracket_milestones(2, 12, 3, 0) == [2, 6]  # the headline's grace 2 / factor 3


def test_plain_asha_by_hand():
    """Two trials recorded at epoch 1 (0.4, 0.6): the median is 0.5; 0.45 stops, 0.55 continues.
    The first trial at a rung has nobody to be compared with and continues."""
    c = StoppingCore(max_t=8, grace_period=1, reduction_factor=2)
    for t in "abcd":
        c.add(t, ("x",))
    assert c.result("a", 1, 0.4) == CONTINUE
    assert c.result("b", 1, 0.6) == CONTINUE  # 0.6 >= cutoff of [0.4]
    assert c.result("c", 1, 0.45) == STOP  # below 0.5
    assert c.result("d", 1, 0.55) == CONTINUE  # cutoff of [0.4, 0.6, 0.45] = 0.45... 0.55 above
    assert c.result("a", 2, 0.1) == CONTINUE  # first at epoch 2
    assert c.result("a", 3, 0.1) == CONTINUE  # no milestone at 3
    assert c.result("b", 2, 0.05) == STOP  # below [0.1]
    assert c.result("d", 8, 0.9) == STOP  # max_t ends every trial
    assert c.num_stopped == 3


def test_stratified_compares_within_the_family_only():
    """A slow SGD trial (0.2) after fast AdamW ones (0.5, 0.45) continues: its family has nobody
    better at epoch 1; a worse SGD trial after it stops; the same events without stratification
    stop the slow one."""
    fam = {"a1": ("adamw",), "a2": ("adamw",), "s1": ("sgd",), "s2": ("sgd",)}
    seq = [("a1", 0.5), ("a2", 0.45), ("s1", 0.2), ("s2", 0.1)]
    for stratify, want in ((True, [CONTINUE, STOP, CONTINUE, STOP]), (False, [CONTINUE, STOP, STOP, STOP])):
        c = StoppingCore(max_t=8, grace_period=1, reduction_factor=2, stratify=stratify)
        for t, f in fam.items():
            c.add(t, f)
        assert [c.result(t, 1, v) for t, v in seq] == want, stratify


def test_min_peers_waits_for_enough_of_the_family():
    c = StoppingCore(max_t=8, grace_period=1, reduction_factor=2, stratify=True, min_peers=2)
    for t in "abcd":
        c.add(t, ("sgd",))
    assert c.result("a", 1, 0.5) == CONTINUE
    assert c.result("b", 1, 0.1) == CONTINUE  # only one peer recorded: not judged
    assert c.result("c", 1, 0.2) == STOP  # two peers: cutoff 0.3
    assert c.result("d", 1, 0.45) == CONTINUE  # cutoff of [0.5, 0.1, 0.2] = 0.2


def test_keep_per_milestone():
    """keep [1/2, 1/2, 1/4]: the third milestone (epoch 4) keeps the top quarter: with [0.2, 0.4,
    0.6, 0.8] recorded its cutoff is the 75th percentile, 0.65, where a half would be 0.5."""
    c = StoppingCore(max_t=8, grace_period=1, reduction_factor=2, keep=[0.5, 0.5, 0.25])
    for i in (4, 5):
        c.add(i)
    rung4 = dict(c.brackets[0])[4]
    rung4[None] = {"p": 0.2, "q": 0.4, "r": 0.6, "s": 0.8}
    assert c.cutoff(rung4[None], 4) == pytest.approx(0.65)
    assert c.cutoff(rung4[None], 2) == pytest.approx(0.5)
    assert c.result(4, 4, 0.62) == STOP
    assert c.result(5, 4, 0.66) == CONTINUE
    with pytest.raises(ValueError):
        StoppingCore(max_t=8, keep=[0.5, 0.5])  # three milestones below max_t


def test_hedge_bracket_never_stops():
    c = StoppingCore(max_t=8, grace_period=1, reduction_factor=2, brackets=4, bracket_weights=[0, 0, 0, 1])
    for i in range(20):
        assert c.add(i) == 3
        assert all(c.result(i, e, -i - e) == CONTINUE for e in range(1, 8))
        assert c.result(i, 8, 0.0) == STOP
    with pytest.raises(ValueError):
        StoppingCore(max_t=8, brackets=2, bracket_weights=[1.0])


def test_ray_bracket_weights():
    c = StoppingCore(max_t=8, grace_period=1, reduction_factor=2, brackets=4)
    # Ray: softmax of the rung counts 4, 3, 2, 1
    assert c.weights == pytest.approx([0.6439, 0.2369, 0.0871, 0.0321], abs=1e-4)
    draws = [c._draw() for _ in range(4000)]
    assert abs(draws.count(0) / 4000 - 0.644) < 0.03


def test_default_keep():
    from raydigits.search.family_asha import default_keep

    assert default_keep(8, 1, 2, 0.75) == [0.75, 0.5, 0.5]  # milestones 1, 2, 4
    assert default_keep(12, 2, 3, 0.75) == pytest.approx([0.75, 1 / 3])  # the headline's 2, 6
    assert default_keep(8, 8, 2, 0.75) is None and default_keep(8, 1, 2, None) is None


def test_family_of():
    assert family_of({"optimizer": "sgd", "lr": 0.1}, ["optimizer"]) == ("sgd",)
    assert family_of({"lr": 0.1}, ["optimizer"]) == ("None",)
    assert family_of({"optimizer": "sgd"}, []) == ()


# ------------------------------------------------------------------ the core = Ray's rule
@pytest.mark.parametrize(
    "rf,grace,max_t,brackets", [(2, 1, 8, 1), (2, 1, 8, 3), (3, 2, 12, 2), (4, 1, 16, 1), (2.5, 1, 10, 1)]
)
def test_core_decides_as_rays_asha(rf, grace, max_t, brackets):
    """Random asynchronous event streams: every decision equals Ray's AsyncHyperBandScheduler's
    (its brackets forced to the same draw as ours)."""
    from ray.tune.schedulers import AsyncHyperBandScheduler

    rng = random.Random(f"{rf}{grace}{max_t}{brackets}")
    for _ in range(20):
        ray_s = AsyncHyperBandScheduler(
            metric="m", mode="max", max_t=max_t, grace_period=grace, reduction_factor=rf, brackets=brackets
        )
        core = StoppingCore(max_t=max_t, grace_period=grace, reduction_factor=rf, brackets=brackets)
        live, epoch, n_stops = {}, {}, 0
        for i in range(30):
            trial = SimpleNamespace(trial_id=f"t{i}")
            ray_s.on_trial_add(None, trial)
            b = ray_s._brackets.index(ray_s._trial_info[trial.trial_id])
            assert core.add(trial.trial_id, bracket=b) == b
            live[trial.trial_id], epoch[trial.trial_id] = trial, 0
            while len(live) > 3 or (i == 29 and live):  # 3 at a time, results in random order
                tid = rng.choice(sorted(live))
                epoch[tid] += 1
                v = rng.random()
                a = ray_s.on_trial_result(None, live[tid], {"training_iteration": epoch[tid], "m": v})
                assert core.result(tid, epoch[tid], v) == a
                if a == STOP:
                    n_stops += epoch[tid] < max_t
                    ray_s.on_trial_complete(None, live[tid], {"training_iteration": epoch[tid], "m": v})
                    core.complete(tid, epoch[tid], v)
                    del live[tid]
        assert core.num_stopped == ray_s._num_stopped
    assert n_stops > 0


# ------------------------------------------------------------------ the Tune scheduler, real Tune
# Trials run one at a time in this order, so every decision is deterministic. max_t 8, grace 1, factor 2.
CURVES = {
    # AdamW starts fast and ends lower
    "a1_adamw": ("adamw", [0.50, 0.60, 0.70, 0.75, 0.78, 0.80, 0.81, 0.82]),
    "a2_adamw": ("adamw", [0.45, 0.58, 0.68, 0.74, 0.77, 0.79, 0.80, 0.81]),
    "a3_adamw": ("adamw", [0.48, 0.59, 0.69, 0.745, 0.775, 0.795, 0.805, 0.815]),
    # SGD: a poor trial, two mid-lr trials that lead their family after epoch 1 and end low, then the
    # slow starter that ends best (below every AdamW trial until epoch 4, and below the mid-lr SGD
    # trials at epoch 1, as SGD with a high lr is on MNIST: BENCHMARKS.md, issue 19)
    "s1_sgd": ("sgd", [0.10, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17, 0.17]),
    "s_mid1_sgd": ("sgd", [0.26, 0.24, 0.30, 0.37, 0.47, 0.56, 0.60, 0.60]),
    "s_mid2_sgd": ("sgd", [0.25, 0.25, 0.34, 0.46, 0.57, 0.65, 0.67, 0.68]),
    "s2_sgd": ("sgd", [0.20, 0.38, 0.63, 0.82, 0.87, 0.91, 0.92, 0.95]),
    # clearly bad: far below everyone of its family at epoch 1
    "x_adamw_bad": ("adamw", [0.10, 0.10, 0.10, 0.10, 0.10, 0.10, 0.10, 0.10]),
    "x_sgd_bad": ("sgd", [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]),
}
ORDER = list(CURVES)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _run(scheduler, tmp_path) -> dict:
    """{name: epochs run} of the synthetic search under `scheduler`."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    curves = {k: v for k, (_, v) in CURVES.items()}

    def curve_trial(config):  # a closure: shipped to the workers by value
        for epoch, v in enumerate(curves[config["name"]], 1):
            tune.report({"epoch": epoch, "val_acc": v})

    families = {k: f for k, (f, _) in CURVES.items()}
    tuner = tune.Tuner(
        tune.with_resources(curve_trial, {"cpu": 1}),
        param_space={"name": tune.grid_search(ORDER), "optimizer": tune.sample_from(lambda s: families[s.config.name])},
        tune_config=tune.TuneConfig(
            scheduler=scheduler, reuse_actors=True, search_alg=BasicVariantGenerator(max_concurrent=1)
        ),
        run_config=tune.RunConfig(name="curves", storage_path=str(tmp_path), verbose=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = tuner.fit()
    return {r.config["name"]: int(r.metrics["training_iteration"]) for r in results}


def test_default_keeps_the_slow_starter_and_stops_the_bad(local_ray, tmp_path):
    from raydigits.search.family_asha import default_scheduler

    ran = _run(
        default_scheduler(
            metric="val_acc", mode="max", max_t=8, grace_period=1, reduction_factor=2, family=["optimizer"], seed=0
        ),
        tmp_path,
    )
    assert ran["s2_sgd"] == 8, ran  # the slow starter that ends best is kept to the end
    assert ran["x_adamw_bad"] == 1, ran  # a clearly bad trial still stops at the first rung
    assert ran["x_sgd_bad"] == 1, ran
    assert sum(ran.values()) < 8 * len(ORDER), ran  # it is early stopping: something stopped
    from raydigits.search import family_asha as fa

    assert (
        _replayed(
            dict(
                grace_period=1,
                reduction_factor=2,
                stratify=True,
                min_peers=fa.DEFAULT_MIN_PEERS,
                brackets=fa.DEFAULT_BRACKETS,
                bracket_weights=fa.DEFAULT_BRACKET_WEIGHTS,
                keep=fa.default_keep(8, 1, 2),
            )
        )
        == ran
    )


def test_stratified_with_rays_first_rung_stops_the_slow_starter(local_ray, tmp_path):
    """Stratified, but the first rung keeping half of the family (Ray's 1/rf): the slow starter is
    behind the mid-lr SGD trials at epoch 1 and stops; the default's gentler first rung is why it
    survives above."""
    from raydigits.search.family_asha import FamilyASHA

    ran = _run(
        FamilyASHA(
            metric="val_acc", mode="max", max_t=8, grace_period=1, reduction_factor=2, family=["optimizer"], seed=0
        ),
        tmp_path,
    )
    assert ran["s2_sgd"] == 1, ran
    assert ran["s_mid1_sgd"] == 8 and ran["s_mid2_sgd"] == 8, ran  # compared within SGD only, they go on


def test_plain_asha_stops_the_slow_starter(local_ray, tmp_path):
    """Ray's own ASHA, and FamilyASHA without families, stop the slow starter at epoch 1: the case
    above is one the stratified policy exists for."""
    from ray.tune.schedulers import ASHAScheduler

    from raydigits.search.family_asha import FamilyASHA

    ray_ran = _run(
        ASHAScheduler(metric="val_acc", mode="max", max_t=8, grace_period=1, reduction_factor=2), tmp_path / "ray"
    )
    ours = _run(
        FamilyASHA(metric="val_acc", mode="max", max_t=8, grace_period=1, reduction_factor=2), tmp_path / "ours"
    )
    assert ray_ran["s2_sgd"] == 1, ray_ran
    assert ours == ray_ran
    assert _replayed(dict(grace_period=1, reduction_factor=2)) == ray_ran  # the replay decides as Tune did


def _replayed(policy: dict) -> dict:
    """The same synthetic search, one trial at a time, in bench/replay.py's simulation."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("replay", REPO / "bench" / "replay.py")
    replay = importlib.util.module_from_spec(spec)
    sys.modules["replay"] = replay  # dataclasses look their module up there
    spec.loader.exec_module(replay)
    trials = [replay.Trial(k, (f,), v, [1.0] * 8) for k, (f, v) in CURVES.items()]
    return replay.simulate(trials, policy, 8, random.Random(0), slots=1, unit=True)["ran"]
