"""Random search without replacement over a finite space (spec.distinct_configs, search/distinct.py):
every configuration the space can draw, each once, conditions resolved, in a seeded order; the
Tune searcher hands them out, runs given configs first, skips excluded ones, ends when they run out,
and carries its place through a save and restore; a real Tune run of the spec's searcher and
param_space runs each configuration exactly once."""

from __future__ import annotations

import warnings

import pytest

from raydigits.spec import config_key, distinct_configs, distinct_warning, parse_spec

FINITE = {
    "name": "finite",
    "num_samples": 13,
    "seed": 3,
    "fixed": {"train_items": 100},
    "parameters": {
        "model": {"values": ["mobilenet_v3_small", "mobilenet_v3_large", "resnet18"]},
        "width_mult": {"values": [0.5, 1.0], "when": {"model": ["mobilenet_v3_small", "mobilenet_v3_large"]}},
        "img_size": {"values": [32, 48]},
        "optimizer": {"value": "adamw"},
    },
}
# by hand: 2 mobilenets × 2 widths × 2 sizes + resnet18 × 2 sizes (width None)
EXPECTED = {
    (m, w, s)
    for s in (32, 48)
    for m, w in [
        ("mobilenet_v3_small", 0.5),
        ("mobilenet_v3_small", 1.0),
        ("mobilenet_v3_large", 0.5),
        ("mobilenet_v3_large", 1.0),
        ("resnet18", None),
    ]
}


def _triples(configs):
    return [(c["model"], c["width_mult"], c["img_size"]) for c in configs]


def test_a_finite_space_is_every_configuration_once_conditions_resolved_in_a_seeded_order():
    configs = distinct_configs(parse_spec(FINITE))
    assert len(configs) == 10 and set(_triples(configs)) == EXPECTED
    assert all(c["optimizer"] == "adamw" and list(c) == list(FINITE["parameters"]) for c in configs)
    again = distinct_configs(parse_spec(FINITE))
    other = distinct_configs(parse_spec({**FINITE, "seed": 4}))
    assert again == configs and sorted(map(config_key, other)) == sorted(map(config_key, configs))
    assert _triples(other) != _triples(configs)  # the seed shuffles
    twice = {**FINITE, "parameters": {**FINITE["parameters"], "img_size": {"values": [32, 32, 48]}}}
    assert len(distinct_configs(parse_spec(twice))) == 10  # a repeated value is one configuration


@pytest.mark.parametrize(
    "change",
    [
        {"method": "grid", "parameters": {k: v for k, v in FINITE["parameters"].items() if k != "width_mult"}},
        {"method": "tpe"},
        {
            "parameters": {
                **FINITE["parameters"],
                "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
            }
        },
    ],
    ids=["grid", "tpe", "a continuum"],
)
def test_other_searches_draw_as_before(change):
    assert distinct_configs(parse_spec({**FINITE, **change})) is None


def test_more_samples_than_configurations_is_said_in_one_line():
    assert distinct_warning(parse_spec({**FINITE, "num_samples": 10})) is None
    line = distinct_warning(parse_spec(FINITE))
    assert line.startswith("warning: num_samples 13, but this space has 10 distinct configurations: 10 trials run")


def test_the_searcher_runs_points_first_skips_what_ran_and_resumes_where_it_stopped(tmp_path):
    from ray.tune.search import Searcher

    from raydigits.search.distinct import DistinctRandom

    configs = distinct_configs(parse_spec(FINITE))
    ran = [{**configs[0], "__audit": 1}]  # a finished trial's config, with a key of Tune's or ours
    point = {k: configs[4][k] for k in configs[4]}
    s = DistinctRandom(configs, points=[point], exclude=ran)
    first = [s.suggest(f"t{i}") for i in range(3)]
    assert first[0] == point and configs[0] not in first
    s.save(str(tmp_path / "state.pkl"))
    restored = DistinctRandom(configs)
    restored.restore(str(tmp_path / "state.pkl"))
    rest = []
    while (c := restored.suggest("t")) != Searcher.FINISHED:
        rest.append(c)
    got = [*first, *rest]
    assert len(got) == 9 and len({config_key(c) for c in got}) == 9  # 10 less the one that ran
    assert {config_key(c) for c in got} == {config_key(c) for c in configs[1:]}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x04 not JSON (a pickle's first bytes)",
        b"[1, 2]",
        b'{"queue": []}',
        b'{"queue": {"a": 1}, "given": 0}',
        b'{"queue": {}, "given": 0}',
        b'{"queue": [1], "given": 0}',
        b'{"queue": [{"a": 1}], "given": 2}',
        b'{"queue": [{"a": 1}], "given": -1}',
        b'{"queue": [{"a": 1}], "given": true}',
        b'{"queue": [{"a": 1}], "given": 1.0}',
    ],
)
def test_a_damaged_searcher_state_is_one_error_naming_the_file(tmp_path, data):
    from raydigits.errors import UserError
    from raydigits.search.distinct import DistinctRandom

    path = tmp_path / "searcher-state-x.pkl"
    path.write_bytes(data)
    with pytest.raises(UserError, match=f"{path}: the random search's saved state is damaged"):
        DistinctRandom([{"a": 1}]).restore(str(path))


def test_an_intact_state_is_restored_as_saved(tmp_path):
    from raydigits.search.distinct import DistinctRandom

    s = DistinctRandom([{"a": 1}, {"a": 2}])
    s.suggest("t")
    s.save(str(tmp_path / "s.pkl"))
    r = DistinctRandom([])
    r.restore(str(tmp_path / "s.pkl"))
    assert (r.queue, r.given) == ([{"a": 1}, {"a": 2}], 1)
    (tmp_path / "s.pkl").write_text('{"queue": [{"a": 1}], "given": 1}')  # all handed out: valid
    r.restore(str(tmp_path / "s.pkl"))
    assert r.given == 1


def test_a_tune_run_of_the_specs_searcher_runs_each_configuration_once(tmp_path):
    import ray
    from ray import tune

    from raydigits.search.tune_space import build_search_alg, param_space

    spec = parse_spec({**FINITE, "max_concurrent": 2})
    assert param_space(spec) == {}  # the searcher holds the space

    def trial(config):
        tune.report({"val_acc": 0.5})

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        tuner = tune.Tuner(
            tune.with_resources(trial, {"cpu": 1}),
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                search_alg=build_search_alg(spec), num_samples=spec.num_samples, reuse_actors=True
            ),
            run_config=tune.RunConfig(name="distinct", storage_path=str(tmp_path), verbose=0),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = tuner.fit()
    finally:
        ray.shutdown()
    seen = _triples([r.config for r in results])
    assert len(seen) == 10 and set(seen) == EXPECTED  # 13 asked, 10 exist: each once, then it ends


def test_the_eta_counts_the_trials_a_finite_space_will_run(tmp_path):
    from raydigits.search.progress import eta_reporter

    assert eta_reporter(parse_spec(FINITE), tmp_path).schedule.n_trials == 10  # 13 asked, 10 exist
    lr = {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}
    continuous = parse_spec({**FINITE, "parameters": {**FINITE["parameters"], "lr": lr}})
    assert eta_reporter(continuous, tmp_path).schedule.n_trials == 13


@pytest.mark.slow
def test_an_interrupted_finite_search_resumes_each_configuration_once(tmp_path, mnist_dir):
    """The real CLI over the smoke space made finite (2 optimizers × 3 learning rates: 6
    configurations, 6 samples, one trial at a time), Ctrl-C once 2 trials have finished, then
    --resume: the searcher's saved place (DistinctRandom.save/restore, under Tune's
    ConcurrencyLimiter) carries over, so the 6 trials are the 6 configurations, each once, and no
    trial that had finished trains again."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from support.helpers import REPO, launch, launch_ok, results

    from raydigits.experiment import Experiment

    space = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    space["parameters"]["lr"] = {"values": [1e-3, 3e-3, 1e-2]}
    space["scheduler"] = {"type": "fifo", "max_t": 2}  # no trial ends before its last epoch
    space.update(num_samples=6, max_concurrent=1)
    space["fixed"].update(train_items=100, val_items=50)  # seconds a trial
    path = tmp_path / "finite.yaml"
    path.write_text(yaml.safe_dump(space))
    configs = distinct_configs(parse_spec(space))
    assert len(configs) == 6

    exp = tmp_path / "n"
    proc = launch(["--search-space", str(path), "--storage-path", str(tmp_path), "--name", "n", "--no-final"])

    def finished() -> dict[str, list[dict]]:  # the trials that reported their last epoch
        if not exp.is_dir():
            return {}
        return {d.name: rows for d in exp.iterdir() if d.is_dir() and (rows := results(d)) and rows[-1]["epoch"] == 2}

    deadline = time.time() + 300
    while len(finished()) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert len(finished()) >= 2, proc.communicate()[0][-3000:] if proc.poll() is not None else "2 trials did not finish"
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    before = finished()
    assert 2 <= len(before) < 6, out[-3000:]  # the resume has trials left to run

    # a copy whose saved searcher state is damaged is refused in one line, before Tune restores it
    # (given a restore that raises, Tune logs the error and waits for trials that never come)
    broken = tmp_path / "broken"
    shutil.copytree(exp, broken)
    (state,) = broken.glob("searcher-state-*.pkl")
    state.write_text('{"queue": [], "given": 3}')
    done = subprocess.run(
        [sys.executable, "launch.py", "--resume", str(broken), "--no-final"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stdout[-2000:] + done.stderr[-2000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert str(state) in line and "damaged" in line

    launch_ok(["--resume", str(exp), "--no-final"], timeout=300)
    trials = Experiment.open(exp).trials
    names = list(configs[0])
    keys = [config_key({k: t.config.get(k) for k in names}) for t in trials]
    assert len(trials) == 6 and all(t.status == "TERMINATED" and t.epochs == 2 for t in trials)
    assert len(set(keys)) == 6 and set(keys) == {config_key(c) for c in configs}
    for name, rows in before.items():  # a finished trial is not trained again
        assert results(exp / name) == rows
