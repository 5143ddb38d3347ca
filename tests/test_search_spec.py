"""Search-space YAML: each mistake gives one message naming the key path and exit 2, before Ray
starts; W&B-style parameters become the right Tune / Optuna objects; conditionals apply only when
their condition holds."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from support.helpers import REPO

from raydigits.errors import UserError
from raydigits.search.tune_space import OptunaSpace, param_space
from raydigits.spec import load_spec, parse_spec, trial_values

GOOD = {
    "name": "t",
    "num_samples": 2,
    "fixed": {"train_items": 100},
    "parameters": {
        "optimizer": {"values": ["sgd", "adamw"]},
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "momentum": {"distribution": "uniform", "min": 0.8, "max": 0.95, "when": {"optimizer": "sgd"}},
        "betas": {"values": [[0.9, 0.999], [0.9, 0.99]], "when": {"optimizer": ["adam", "adamw"]}},
    },
}


def _bad(mutate):
    import copy

    d = copy.deepcopy(GOOD)
    mutate(d)
    return d


CASES = [
    ("unknown top-level key", lambda d: d.update(trials=3), "trials: unknown key"),
    (
        "unknown parameter name",
        lambda d: d["parameters"].update(learning_rate={"values": [1]}),
        "parameters.learning_rate: unknown parameter",
    ),
    ("unknown parameter key", lambda d: d["parameters"]["lr"].update(mean=1), "parameters.lr.mean: unknown key"),
    ("min > max", lambda d: d["parameters"]["lr"].update(min=0.1, max=0.01), "parameters.lr: min (0.1) > max (0.01)"),
    (
        "log over non-positive",
        lambda d: d["parameters"]["lr"].update(min=0.0),
        "parameters.lr: log_uniform_values needs min > 0",
    ),
    ("in fixed and parameters", lambda d: d["fixed"].update(lr=0.1), "lr is in both fixed and parameters"),
    (
        "TrainConfig rejects a value",
        lambda d: d["parameters"]["optimizer"].update(values=["sgd", "adamx"]),
        "parameters.optimizer.values[1]: 'adamx' rejected: unknown optimizer",
    ),
    (
        "TrainConfig rejects a range end",
        lambda d: d["parameters"]["momentum"].update(max=1.5),
        "parameters.momentum.max: 1.5 rejected",
    ),
    ("wrong type", lambda d: d.update(num_samples="many"), "num_samples: Input should be a valid integer"),
    (
        "bad fixed value",
        lambda d: d["fixed"].update(batch_size=0),
        "fixed.batch_size: Input should be greater than or equal to 1",
    ),
    ("unknown fixed key", lambda d: d["fixed"].update(lr_decay=0.1), "fixed.lr_decay: unknown key"),
    (
        "unknown method",
        lambda d: d.update(method="bayes"),
        "method: Input should be 'random', 'grid', 'tpe' or 'nsga2'",
    ),
    (
        "grid over a distribution",
        lambda d: (d.update(method="grid"), d["parameters"].pop("momentum"), d["parameters"].pop("betas")),
        "parameters.lr: method grid needs `values`",
    ),
    ("two kinds", lambda d: d["parameters"]["lr"].update(values=[1]), "parameters.lr: give exactly one of"),
    ("unknown model", lambda d: d["fixed"].update(model="mobilenetv3"), "fixed.model: unknown model 'mobilenetv3'"),
    (
        "impossible scheduler",
        lambda d: d.update(scheduler={"type": "pbt2"}),
        "scheduler.type: Input should be 'family_asha', 'asha', 'fifo', 'pbt' or 'pb2'",
    ),
    (
        "uniform without max",
        lambda d: d["parameters"]["momentum"].pop("max"),
        "parameters.momentum: distribution uniform needs min and max",
    ),
    (
        "int_uniform without min",
        lambda d: d["parameters"].update(batch_size={"distribution": "int_uniform", "max": 64}),
        "parameters.batch_size: distribution int_uniform needs min and max",
    ),
    (
        "q_uniform without either",
        lambda d: d["parameters"].update(dropout={"distribution": "q_uniform", "q": 0.1}),
        "parameters.dropout: distribution q_uniform needs min and max",
    ),
    (
        "uniform min > max",
        lambda d: d["parameters"]["momentum"].update(min=0.95, max=0.8),
        "parameters.momentum: min (0.95) > max (0.8)",
    ),
    (
        "int_uniform min > max",
        lambda d: d["parameters"].update(batch_size={"distribution": "int_uniform", "min": 64, "max": 16}),
        "parameters.batch_size: min (64) > max (16)",
    ),
    (
        "q_uniform min > max",
        lambda d: d["parameters"].update(dropout={"distribution": "q_uniform", "min": 0.5, "max": 0.1}),
        "parameters.dropout: min (0.5) > max (0.1)",
    ),
    (
        "q_uniform q 0",
        lambda d: d["parameters"].update(dropout={"distribution": "q_uniform", "min": 0.1, "max": 0.5, "q": 0}),
        "parameters.dropout: q must be > 0",
    ),
    (
        "normal without sigma",
        lambda d: d["parameters"].update(weight_decay={"distribution": "normal", "mu": 1e-4}),
        "parameters.weight_decay: distribution normal needs mu and sigma > 0",
    ),
    (
        "normal without mu",
        lambda d: d["parameters"].update(weight_decay={"distribution": "normal", "sigma": 1e-4}),
        "parameters.weight_decay: distribution normal needs mu and sigma > 0",
    ),
    (
        "normal sigma 0",
        lambda d: d["parameters"].update(weight_decay={"distribution": "normal", "mu": 1e-4, "sigma": 0}),
        "parameters.weight_decay: distribution normal needs mu and sigma > 0",
    ),
    ("negative gpu", lambda d: d.update(resources={"gpu": -1}), "resources: gpu must be >= 0 or auto, got -1"),
    # names holding a line break are quoted (the message stays one line; found by tests/test_fuzz.py)
    (
        "parameter name with a line break",
        lambda d: d["parameters"].update({"lr\nx": {"value": 0.1}}),
        "parameters: 'lr\\nx': a name with a line break or another control character",
    ),
    (
        "when key with a line break",
        lambda d: d["parameters"]["momentum"].update(when={"optimizer\r": "sgd"}),
        "parameters.momentum.when: 'optimizer\\r': a name with a line break",
    ),
    ("unknown key with a line break", lambda d: d.update(scheduler={"\r": 1}), "scheduler.'\\r': unknown key"),
]


@pytest.mark.parametrize("label,mutate,message", CASES, ids=[c[0] for c in CASES])
def test_each_mistake_names_its_key(label, mutate, message):
    with pytest.raises(UserError) as err:
        parse_spec(_bad(mutate), "space.yaml")
    assert message in str(err.value), str(err.value)


ANCHORED = [  # the whole start of the line: the file, then the key path
    (
        "a key shared with an unconditional parameter",
        lambda d: d["parameters"].update(lr_sgd={"key": "lr", "values": [0.1], "when": {"optimizer": "sgd"}}),
        "space.yaml: parameters.lr: sets 'lr' like lr_sgd; parameters sharing a key need `when` conditions",
    ),
    (
        "fixed.epochs against max_t",
        lambda d: (d["fixed"].update(epochs=4), d.update(scheduler={"max_t": 3})),
        "space.yaml: fixed.epochs (4) differs from scheduler.max_t (3); give one",
    ),
    (
        "an unknown key through key",
        lambda d: d["parameters"].update(lr_x={"key": "learning_rate", "values": [1]}),
        "space.yaml: parameters.lr_x: unknown key 'learning_rate' (not a TrainConfig key)",
    ),
    (
        "grid over a conditional",
        lambda d: (d.update(method="grid"), d["parameters"].update(lr={"values": [0.1]})),
        "space.yaml: parameters.momentum.when: method grid does not take conditional parameters",
    ),
    (
        "tpe over normal",
        lambda d: (
            d.update(method="tpe"),
            d["parameters"].update(weight_decay={"distribution": "normal", "mu": 0.1, "sigma": 0.01}),
        ),
        "space.yaml: parameters.weight_decay: method tpe does not support distribution normal",
    ),
    (
        "population check",
        lambda d: d.update(scheduler={"type": "pbt", "max_t": 4, "mutate": ["weight_decay"]}),
        "space.yaml: scheduler.mutate[0]: 'weight_decay' is not a searched parameter",
    ),
    (
        "condition check",
        lambda d: d["parameters"]["momentum"].update(when={"optimizer": "sgdd"}),
        "space.yaml: parameters.momentum.when.optimizer: 'sgdd' can never hold",
    ),
    ("semantic check", lambda d: d["fixed"].update(train_items=5), "space.yaml: fixed.train_items: 5 is fewer"),
    # objectives and constraints (issue 21)
    (
        "an unknown objective",
        lambda d: d.update(objectives={"val_acc": "max", "latncy_ms": "min"}),
        "space.yaml: objectives.latncy_ms: unknown metric; known: val_acc, val_loss, params, size_mb, mflops,",
    ),
    (
        "objectives without a quality metric",
        lambda d: d.update(objectives={"latency_ms": "min", "params": "min"}),
        "space.yaml: objectives: exactly one of val_acc, val_loss (how good a trial is), got none",
    ),
    (
        "two quality objectives",
        lambda d: d.update(objectives={"val_acc": "max", "val_loss": "min"}),
        "space.yaml: objectives: exactly one of val_acc, val_loss (how good a trial is), got val_acc, val_loss",
    ),
    (
        "a cost maximised",
        lambda d: d.update(objectives={"val_acc": "max", "latency_ms": "max"}),
        "space.yaml: objectives.latency_ms: max would prefer the costlier model; give min",
    ),
    (
        "metric contradicting the objectives",
        lambda d: d.update(metric="val_loss", objectives={"val_acc": "max", "params": "min"}),
        "space.yaml: metric: val_loss contradicts objectives (val_acc: max); leave metric out",
    ),
    (
        "a constraint on a result",
        lambda d: d.update(constraints={"val_acc": {"min": 0.9}}),
        "space.yaml: constraints.val_acc: not a cost known before a trial's first epoch",
    ),
    ("an empty constraint", lambda d: d.update(constraints={"params": {}}), "space.yaml: constraints.params: give min"),
    (
        "several objectives under pbt",
        lambda d: d.update(objectives={"val_acc": "max", "params": "min"}, scheduler={"type": "pbt", "max_t": 4}),
        "space.yaml: objectives: scheduler type pbt follows one metric",
    ),
]


@pytest.mark.parametrize("label,mutate,message", ANCHORED, ids=[c[0] for c in ANCHORED])
def test_each_check_names_the_file_then_the_key(label, mutate, message, mnist_dir):
    with pytest.raises(UserError) as err:
        parse_spec(_bad(mutate), "space.yaml")
    assert str(err.value).startswith(message), str(err.value)


def test_objectives_set_the_metric_and_round_trip():
    """The quality objective is the search's metric; one objective is today's single-objective
    search; a saved spec reads back the same objectives and constraints."""
    spec = parse_spec(
        _bad(
            lambda d: d.update(
                objectives={"val_loss": "min", "latency_ms": "min"}, constraints={"params": {"max": 2e6}}
            )
        )
    )
    assert (spec.metric, spec.mode, spec.multi_objective) == ("val_loss", "min", True)
    assert spec.objective_list == [("val_loss", "min"), ("latency_ms", "min")]
    assert spec.constraints["params"].holds(1.9e6) and not spec.constraints["params"].holds(2.1e6)
    assert spec.broken_constraints({"params": 2.1e6}) == ["params <= 2e+06"]
    assert spec.broken_constraints({"params": 2e6, "latency_ms": 9.0}) == []  # the bound itself holds
    again = parse_spec(spec.to_dict(), saved=True)
    assert again.objective_list == spec.objective_list and again.constraints == spec.constraints
    one = parse_spec(_bad(lambda d: d.update(objectives={"val_acc": "max"})))
    assert not one.multi_objective and one.objective_list == [("val_acc", "max")]
    plain = parse_spec(_bad(lambda d: None))
    assert plain.objective_list == [("val_acc", "max")] and not plain.multi_objective


def test_what_the_checks_let_through():
    """Equal fixed.epochs and max_t; a condition on a one-element list; fixed.epochs without max_t;
    mode from the metric; gpu auto; a range of one value."""
    ok = parse_spec(_bad(lambda d: (d["fixed"].update(epochs=3), d.update(scheduler={"max_t": 3}))))
    assert ok.epochs == 3
    one = parse_spec(_bad(lambda d: d["parameters"]["momentum"].update(when={"optimizer": ["sgd"]})))
    assert one.parameters["momentum"].when == {"optimizer": ["sgd"]}
    fixed = parse_spec(_bad(lambda d: d["fixed"].update(epochs=3)))  # no max_t: fixed.epochs counts
    assert fixed.epochs == 3 and trial_values(fixed, {"optimizer": "adamw", "lr": 1e-3})["epochs"] == 3
    assert parse_spec(_bad(lambda d: d.update(metric="val_loss"))).mode == "min"  # the best is the lowest
    assert parse_spec(GOOD).mode == "max"
    assert parse_spec(_bad(lambda d: d.update(resources={"gpu": "auto"}))).resources.gpu == "auto"
    single = parse_spec(
        _bad(lambda d: d["parameters"].update(batch_size={"distribution": "int_uniform", "min": 32, "max": 32}))
    )  # a one-value range
    assert single.parameters["batch_size"].min == single.parameters["batch_size"].max == 32


def test_cli_reports_yaml_mistakes_in_one_line_exit_2(tmp_path):
    cases = {
        "malformed.yaml": "name: x\nparameters: {lr: [1, 2\n",
        "minmax.yaml": yaml.safe_dump(_bad(lambda d: d["parameters"]["lr"].update(min=0.1, max=0.01))),
    }
    for fname, text in cases.items():
        (tmp_path / fname).write_text(text)
        proc = subprocess.run(
            [sys.executable, "launch.py", "--search-space", str(tmp_path / fname)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
        assert fname in lines[0]
    assert (
        "malformed YAML (line 3"
        in subprocess.run(
            [sys.executable, "launch.py", "--search-space", str(tmp_path / "malformed.yaml")],
            capture_output=True,
            text=True,
            cwd=REPO,
        ).stderr
    )
    proc = subprocess.run(
        [sys.executable, "launch.py", "--search-space", "nope"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 2 and "smoke" in proc.stderr  # lists the shipped spaces


def test_shipped_spaces_are_valid_and_found_by_name():
    for name in ("smoke", "smoke.yaml", "sgd_vs_adamw", "sgd_vs_adamw.yaml", "gpu_large"):
        assert load_spec(name).num_samples >= 1


def test_random_space_samples_conditionals_only_when_they_apply():
    from ray.tune.search.variant_generator import generate_variants

    spec = parse_spec(GOOD)
    seen = set()
    for _ in range(20):
        _, resolved = next(generate_variants({"config": param_space(spec)}))
        cfg = resolved["config"]
        seen.add(cfg["optimizer"])
        assert 1e-4 <= cfg["lr"] <= 1e-2
        if cfg["optimizer"] == "sgd":
            assert 0.8 <= cfg["momentum"] <= 0.95 and cfg["betas"] is None
        else:
            assert cfg["momentum"] is None and cfg["betas"] in ([0.9, 0.999], [0.9, 0.99])
        values = trial_values(spec, cfg)
        assert ("momentum" in values) == (cfg["optimizer"] == "sgd")
    assert seen == {"sgd", "adamw"}


def test_per_choice_ranges_through_key():
    from ray.tune.search.variant_generator import generate_variants

    spec = load_spec("sgd_vs_adamw")
    for _ in range(20):
        _, resolved = next(generate_variants({"config": param_space(spec)}))
        values = trial_values(spec, resolved["config"])
        lo, hi = (0.05, 0.3) if values["optimizer"] == "sgd" else (1.5e-3, 6e-3)
        assert lo <= values["lr"] <= hi and "lr_sgd" not in values and "lr_adamw" not in values
    bad = {"name": "k", "parameters": {"a": {"key": "lr", "values": [0.1]}, "b": {"key": "lr", "values": [0.2]}}}
    with pytest.raises(UserError, match="parameters sharing a key need `when`"):
        parse_spec(bad)


def test_tpe_space_is_define_by_run_and_seeded():
    import optuna

    spec = parse_spec({**GOOD, "method": "tpe"})
    space = OptunaSpace(spec)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(12):
        trial = study.ask()
        constants = space(trial)
        params = {**trial.params, **constants}
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
        assert ("betas" in params) == (params["optimizer"] == "adamw")
        study.tell(trial, 0.5)


def test_load_spec_names_the_file_and_lists_the_shipped_spaces(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_bad(lambda d: d["parameters"]["lr"].update(min=0.1, max=0.01))))
    with pytest.raises(UserError) as err:
        load_spec(bad)
    assert str(err.value).startswith(f"{bad}: parameters.lr: min (0.1)"), str(err.value)
    shipped = ", ".join(sorted(f.stem for f in (REPO / "search_spaces").glob("*.yaml")))
    with pytest.raises(UserError, match=f"no such file \\(shipped spaces: {shipped}\\)"):
        load_spec("no_such_space")


def test_trial_config_runs_the_spec_epochs_and_sets_each_target():
    from raydigits.spec import trial_train_config

    spec = load_spec("sgd_vs_adamw")
    config = {"optimizer": "sgd", "lr_sgd": 0.1, "lr_adamw": None}
    cfg = trial_train_config(spec, config, "data/mnist", "trial t")
    assert cfg.epochs == spec.epochs and spec.epochs != type(cfg)().epochs  # not TrainConfig's default
    assert cfg.optimizer == "sgd" and cfg.lr == 0.1 and cfg.data_dir == "data/mnist"
    short = parse_spec({**GOOD, "scheduler": {"max_t": 3}})
    assert trial_values(short, {"optimizer": "adamw", "lr": 0.001})["epochs"] == 3


def test_the_rung_schedule_anneals_at_the_searchs_rungs_unless_milestones_are_given():
    """`scheduler: rung_cosine` (budget-aware rungs): a trial's milestone is the first epoch early
    stopping judges it at (grace 1, factor 2, max_t 8: rungs 1, 2, 4, milestone 1; grace 2: 2);
    milestones the space gives win; FIFO has no rungs (TrainConfig's default stays); other
    schedules are left alone."""
    from raydigits.spec import trial_train_config

    def cfg(scheduler, fixed=None, sched=None):
        spec = parse_spec(
            {
                **GOOD,
                "scheduler": sched or {"type": "asha", "max_t": 8, "grace_period": 1, "reduction_factor": 2},
                "fixed": {"train_items": 100, "scheduler": scheduler, **(fixed or {})},
            }
        )
        return trial_train_config(spec, {"optimizer": "adamw", "lr": 1e-3}, "data/mnist", "trial t")

    default = type(cfg("cosine"))().milestones
    assert cfg("rung_cosine").milestones == [1.0]
    assert cfg(
        "rung_cosine", sched={"type": "family_asha", "max_t": 9, "grace_period": 2, "reduction_factor": 3}
    ).milestones == [2.0]
    assert cfg("rung_cosine", fixed={"milestones": [3]}).milestones == [3.0]
    assert cfg("rung_cosine", sched={"type": "fifo", "max_t": 8}).milestones == default
    assert cfg("cosine").milestones == default


def test_the_rung_schedule_when_searched_its_rungs_in_order_and_searched_milestones_win():
    """A trial that samples `scheduler: rung_cosine` from the space gets the first rung as its
    milestone (one that samples cosine does not): the smallest rung past 8 epochs too (max_t 16:
    rungs 1, 2, 4, 8, where a set iterates 8 first); milestones sampled from the space win."""
    asha = {"type": "asha", "max_t": 16, "grace_period": 1, "reduction_factor": 2}
    params = {**GOOD["parameters"], "scheduler": {"values": ["cosine", "rung_cosine"]}}
    spec = parse_spec({**GOOD, "scheduler": asha, "parameters": params})
    sampled = {"optimizer": "adamw", "lr": 1e-3}
    assert trial_values(spec, {**sampled, "scheduler": "rung_cosine"})["milestones"] == [1.0]
    assert "milestones" not in trial_values(spec, {**sampled, "scheduler": "cosine"})
    spec = parse_spec({**GOOD, "scheduler": asha, "parameters": {**params, "milestones": {"values": [[3.0], [5.0]]}}})
    assert trial_values(spec, {**sampled, "scheduler": "rung_cosine", "milestones": [5.0]})["milestones"] == [5.0]


def _momentum_sampler(seed=0, param=None):
    param = param or GOOD["parameters"]["momentum"]
    spec = parse_spec({**GOOD, "seed": seed, "parameters": {**GOOD["parameters"], "momentum": param}})
    return param_space(spec)["momentum"].func


def test_conditional_draws_are_seeded_by_the_search_seed_and_the_trial_values():
    """A conditional value is the same for the same trial values and search seed (a resumed or
    reproduced search draws it again), in whatever order Tune resolved the keys, and differs between
    trials and between seeds (not one value for every trial)."""
    sample = _momentum_sampler()
    trial = {"optimizer": "sgd", "lr": 0.001}
    first = sample({"config": dict(trial)})
    assert 0.8 <= first <= 0.95
    assert sample({"config": dict(trial)}) == first == _momentum_sampler()({"config": dict(trial)})
    assert sample({"config": dict(reversed(list(trial.items())))}) == first
    others = {sample({"config": {"optimizer": "sgd", "lr": lr}}) for lr in (0.002, 0.003, 0.004, 0.005)}
    assert len(others | {first}) == 5
    assert _momentum_sampler(seed=1)({"config": dict(trial)}) != first
    constant = _momentum_sampler(param={"value": 0.9, "when": {"optimizer": "sgd"}})
    assert constant({"config": dict(trial)}) == 0.9
    assert constant({"config": {"optimizer": "adamw", "lr": 0.001}}) is None


def test_tpe_space_gives_each_kind_of_parameter_its_values():
    """Constants, lists (Optuna picks an index), int_uniform (ints), q_uniform (multiples of q) and a
    conditional listed before the key it depends on."""
    import optuna

    params = {
        "momentum": {"distribution": "uniform", "min": 0.8, "max": 0.95, "when": {"optimizer": "sgd"}},
        "optimizer": {"values": ["sgd", "adamw"]},
        "betas": {"values": [[0.9, 0.999], [0.9, 0.99]], "when": {"optimizer": "adamw"}},
        "batch_size": {"distribution": "int_uniform", "min": 16, "max": 64},
        "dropout": {"distribution": "q_uniform", "min": 0.1, "max": 0.5, "q": 0.1},
        "nesterov": {"value": True},
    }
    spec = parse_spec({"name": "k", "method": "tpe", "parameters": params})
    assert param_space(spec) == {}  # Tune gets no param_space to resolve: the searcher owns the space
    space = OptunaSpace(spec)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    seen = set()
    for _ in range(16):
        trial = study.ask()
        constants = space(trial)
        values = trial_values(spec, {**trial.params, **constants})
        seen.add(values["optimizer"])
        assert ("momentum" in values) == (values["optimizer"] == "sgd")
        assert values.get("betas", [0.9, 0.99]) in ([0.9, 0.999], [0.9, 0.99])
        assert ("betas" in values) == (values["optimizer"] == "adamw")
        assert isinstance(values["batch_size"], int) and 16 <= values["batch_size"] <= 64
        assert values["dropout"] == pytest.approx(round(values["dropout"], 1)) and 0.1 <= values["dropout"] <= 0.5
        assert values["nesterov"] is True
        study.tell(trial, 0.5)
    assert seen == {"sgd", "adamw"}


TPE = {
    "name": "s",
    "method": "tpe",
    "seed": 3,
    "num_samples": 8,
    "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        "optimizer": {"values": ["sgd", "adamw"]},
    },
}


def _tpe_searcher(spec, **kwargs):
    """The searcher as Tune sets it up (TuneConfig passes neither metric nor mode)."""
    from raydigits.search.tune_space import build_search_alg

    alg = build_search_alg(spec, **kwargs)
    alg.set_search_properties(None, None, param_space(spec))
    return alg


def test_tpe_searcher_is_seeded_runs_given_points_first_and_limits_concurrency():
    spec = parse_spec(TPE)
    suggest = lambda alg, n: [alg.suggest(f"t{i}") for i in range(n)]  # noqa: E731
    first = suggest(_tpe_searcher(spec), 4)
    assert first == suggest(_tpe_searcher(spec), 4)
    assert first != suggest(_tpe_searcher(parse_spec({**TPE, "seed": 4})), 4)
    point = {"lr": 0.0123, "optimizer": "sgd"}
    assert suggest(_tpe_searcher(spec, points=[point]), 1) == [point]
    limited = suggest(_tpe_searcher(parse_spec({**TPE, "max_concurrent": 2})), 3)
    assert limited[0] and limited[1] and limited[2] is None  # two running: the third waits


def test_tpe_minimises_val_loss_from_its_own_and_from_finished_trials():
    """With metric val_loss TPE moves towards the lowest loss, both from the results Tune reports to
    it and from finished trials it is warm-started with (`extend`)."""
    import numpy as np

    spec = parse_spec({**TPE, "metric": "val_loss", "parameters": {"lr": TPE["parameters"]["lr"]}})
    loss = lambda lr: abs(np.log10(lr) - np.log10(3e-2))  # noqa: E731  best near lr = 3e-2
    dist = lambda lrs: float(np.median([loss(lr) for lr in lrs]))  # noqa: E731
    alg = _tpe_searcher(spec)
    for i in range(30):
        lr = alg.suggest(f"r{i}")["lr"]
        alg.on_trial_complete(f"r{i}", {"val_loss": loss(lr)})
    assert dist([alg.suggest(f"n{i}")["lr"] for i in range(12)]) < 0.5
    rng = np.random.default_rng(0)
    warm = [({"lr": float(lr)}, loss(lr)) for lr in np.exp(rng.uniform(np.log(1e-4), np.log(1e-1), 40))]
    hot = _tpe_searcher(spec, warm=warm)
    assert dist([hot.suggest(f"w{i}")["lr"] for i in range(12)]) < 0.5


def test_rejected_values_name_the_key_that_holds_them():
    """A value TrainConfig rejects is named by where it is in the parameter: value, min / max, mu."""
    cases = [
        ("batch_size", {"value": 0}, "parameters.batch_size.value: 0 rejected"),
        ("batch_size", {"distribution": "int_uniform", "min": 0, "max": 64}, "parameters.batch_size.min: 0 rejected"),
        ("img_size", {"distribution": "int_uniform", "min": 32, "max": 2048}, "parameters.img_size.max: 2048 rejected"),
        ("batch_size", {"distribution": "normal", "mu": -16, "sigma": 4}, "parameters.batch_size.mu: -16.0 rejected"),
    ]
    for name, param, message in cases:
        with pytest.raises(UserError) as err:
            parse_spec({"name": "r", "parameters": {name: param}}, "space.yaml")
        assert message in str(err.value), str(err.value)


def test_a_condition_matches_whole_values_only():
    from raydigits.spec import Param

    adamw = Param(values=[[0.9, 0.99]], when={"optimizer": "adamw"})
    assert adamw.condition_holds({"optimizer": "adamw"})
    assert not adamw.condition_holds({"optimizer": "adam"})  # not a substring match
    assert not adamw.condition_holds({})  # a key not (yet) sampled
    either = Param(value=0.9, when={"optimizer": ["sgd", "adam"], "nesterov": True})
    assert either.condition_holds({"optimizer": "adam", "nesterov": True})
    assert not either.condition_holds({"optimizer": "adam", "nesterov": False})


def test_grid_expands_values():
    spec = parse_spec(
        {
            "name": "g",
            "method": "grid",
            "parameters": {"optimizer": {"values": ["sgd", "adam"]}, "lr": {"values": [0.1, 0.01]}},
        }
    )
    space = param_space(spec)
    assert space["optimizer"] == {"grid_search": ["sgd", "adam"]}


def test_readme_examples_are_valid_spaces():
    """README's full space example parses; each fragment (a block without a name) parses merged over
    it, top-level keys replaced (the budget-aware recipe among them)."""
    text = (REPO / "README.md").read_text()
    blocks = [yaml.safe_load(b.split("```")[0]) for b in text.split("```yaml\n")[1:]]
    (full,) = [b for b in blocks if "name" in b]
    spec = parse_spec(full, "README")
    assert spec.target("lr_sgd") == "lr" and spec.parameters["momentum"].when == {"optimizer": "sgd"}
    fragments = [b for b in blocks if "name" not in b]
    assert fragments
    for fragment in fragments:
        parse_spec({**full, **fragment}, "README fragment")


def test_a_first_rung_of_a_few_steps_is_warned_about():
    from raydigits.spec import early_rung_warning

    smoke = load_spec("smoke")  # 1,500 images, batch 32: 46 steps before ASHA's first decision
    w = early_rung_warning(smoke, 50_000)
    assert w and "46 optimiser steps on 1,500 training images" in w
    assert early_rung_warning(load_spec("sgd_vs_adamw"), 50_000) is None  # 2 × 390 steps
    grid = parse_spec(
        {
            "name": "g",
            "method": "grid",
            "fixed": {"train_items": 3000},
            "parameters": {"batch_size": {"values": [16, 64]}},
        }
    )
    assert "46 optimiser steps" in early_rung_warning(grid, 50_000)  # the largest batch counts
    assert (
        early_rung_warning(
            parse_spec({"name": "f", "scheduler": {"type": "fifo"}, "fixed": {"train_items": 100}}), 50_000
        )
        is None
    )


def test_the_first_rung_warning_counts_steps_as_the_trainer_takes_them():
    """Steps an epoch = images // the largest batch (one step when the split is smaller than a batch,
    as the trainer does), with the batch size from a constant, a range's max or TrainConfig's default."""
    from raydigits.spec import MIN_RUNG_STEPS, early_rung_warning

    def warning(fixed, batch=None, train_size=50_000):
        d = {"name": "w", "scheduler": {"max_t": 2, "grace_period": 1}, "fixed": fixed}
        if batch is not None:
            d["parameters"] = {"batch_size": batch}
        return early_rung_warning(parse_spec(d), train_size)

    assert "23 optimiser steps on 3,000" in warning({"train_items": 3000})  # default batch 128
    assert "46 optimiser steps on 3,000" in warning({"train_items": 3000}, {"value": 64})
    assert "30 optimiser steps on 3,000" in warning(
        {"train_items": 3000}, {"distribution": "int_uniform", "min": 16, "max": 100}
    )
    assert "1 optimiser steps on 100 " in warning({"train_items": 100})  # fewer images than a batch
    assert "25 optimiser steps on 3,200" in warning({}, train_size=3200)  # the whole split
    assert warning({"train_items": 128 * MIN_RUNG_STEPS}) is None  # exactly enough steps
    assert "99 optimiser steps" in warning({"train_items": 128 * MIN_RUNG_STEPS - 1})
    assert warning({}, train_size=0) is None  # the split's size is not known


# ------------------------------------------------------------------ PBT / PB2
PBT = {
    "name": "p",
    "num_samples": 2,
    "scheduler": {"type": "pbt", "max_t": 4, "perturbation_interval": 2},
    "parameters": {
        "optimizer": {"values": ["sgd", "adamw"]},
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "momentum": {"distribution": "uniform", "min": 0.8, "max": 0.95, "when": {"optimizer": "sgd"}},
        "label_smoothing": {"values": [0.0, 0.05, 0.1]},
        "img_size": {"values": [32, 48]},
        "nesterov": {"value": True},
    },
}


def _pbt(**scheduler):
    import copy

    d = copy.deepcopy(PBT)
    d["scheduler"].update(scheduler)
    return d


PBT_CASES = [
    ("structural knob", {"mutate": ["lr", "img_size"]}, "scheduler.mutate[1]: 'img_size' cannot change mid-training"),
    ("optimizer type", {"mutate": ["optimizer"]}, "scheduler.mutate[0]: 'optimizer' cannot change mid-training"),
    ("not searched", {"mutate": ["weight_decay"]}, "scheduler.mutate[0]: 'weight_decay' is not a searched parameter"),
    ("conditional", {"mutate": ["momentum"]}, "scheduler.mutate[0]: 'momentum' is conditional"),
    ("constant", {"mutate": ["nesterov"]}, "scheduler.mutate[0]: 'nesterov' is a constant"),
    (
        "pb2 over values",
        {"type": "pb2", "mutate": ["label_smoothing"]},
        "scheduler.mutate[0]: pb2 perturbs continuous parameters (min, max) only",
    ),
    ("interval too long", {"perturbation_interval": 4}, "scheduler.perturbation_interval (4) must be below max_t (4)"),
    ("mutate without pbt", {"type": "asha", "mutate": ["lr"]}, "scheduler.mutate: only for scheduler type pbt or pb2"),
]


@pytest.mark.parametrize("label,scheduler,message", PBT_CASES, ids=[c[0] for c in PBT_CASES])
def test_pbt_mistakes_name_the_key(label, scheduler, message):
    with pytest.raises(UserError) as err:
        parse_spec(_pbt(**scheduler), "space.yaml")
    assert message in str(err.value), str(err.value)


def test_pbt_refuses_tpe_and_a_space_with_nothing_to_perturb():
    with pytest.raises(UserError, match="scheduler.type pbt: its trials take their configs from each other"):
        parse_spec({**_pbt(), "method": "tpe"})
    nothing = _pbt()
    nothing["parameters"] = {"img_size": {"values": [32, 48]}}
    with pytest.raises(UserError, match="no searched parameter can be perturbed"):
        parse_spec(nothing)


def test_pbt_perturbs_what_the_space_searches_within_its_ranges():
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pb2 import PB2
    from ray.tune.search.sample import Float

    from raydigits.search.tune_space import ClipToRange, build_tune_scheduler
    from raydigits.spec import mutated

    spec = parse_spec(_pbt())
    assert mutated(spec) == ["lr", "label_smoothing"]  # not structural, conditional or constant ones
    pbt = build_tune_scheduler(spec)
    assert isinstance(pbt, PopulationBasedTraining) and not isinstance(pbt, PB2)
    lr = pbt._hyperparam_mutations["lr"]
    assert isinstance(lr, Float) and (lr.lower, lr.upper) == (1e-4, 1e-2)  # the same distribution
    assert pbt._hyperparam_mutations["label_smoothing"] == [0.0, 0.05, 0.1]  # the list of choices
    assert pbt._perturbation_interval == 2 and pbt._metric == "val_acc"
    clip = ClipToRange({"lr": (1e-4, 1e-2), "batch": (16, 64)})
    assert clip({"lr": 0.012, "batch": 70, "other": 5.0}) == {"lr": 1e-2, "batch": 64, "other": 5.0}
    assert clip({"lr": 5e-5, "batch": 20})["lr"] == 1e-4
    pb2 = build_tune_scheduler(parse_spec(_pbt(type="pb2")))
    assert isinstance(pb2, PB2) and pb2._hyperparam_bounds == {"lr": [1e-4, 1e-2]}


def test_population_schedulers_take_the_spec_settings_in_epochs():
    """PBT and PB2 count `perturbation_interval` in epochs (Tune's default would be seconds), rank on
    the spec's metric and mode, and take its quantile, resample probability and synch; PBT's explore
    step is clipped into the searched range."""
    from ray.tune.schedulers.pb2 import PB2

    from raydigits.search.tune_space import build_tune_scheduler

    d = {**_pbt(quantile_fraction=0.5, resample_probability=0.5, synch=True), "metric": "val_loss"}
    pbt = build_tune_scheduler(parse_spec(d))
    assert (pbt._time_attr, pbt._metric, pbt._mode) == ("training_iteration", "val_loss", "min")
    assert (pbt._quantile_fraction, pbt._resample_probability, pbt._synch) == (0.5, 0.5, True)
    assert pbt._custom_explore_fn({"lr": 1.2e-2, "label_smoothing": 0.1})["lr"] == 1e-2
    d["scheduler"]["type"] = "pb2"
    d["scheduler"].pop("resample_probability")
    pb2 = build_tune_scheduler(parse_spec(d))
    assert isinstance(pb2, PB2) and (pb2._time_attr, pb2._metric, pb2._mode) == (
        "training_iteration",
        "val_loss",
        "min",
    )
    assert (pb2._quantile_fraction, pb2._synch, pb2._perturbation_interval) == (0.5, True, 2)


def test_fifo_never_stops_a_trial_early_and_asha_takes_its_settings():
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    from raydigits.search.family_asha import FamilyASHA
    from raydigits.search.tune_space import build_tune_scheduler, family_parameters

    fifo = build_tune_scheduler(parse_spec({**GOOD, "scheduler": {"type": "fifo"}}))
    assert isinstance(fifo, FIFOScheduler) and not isinstance(fifo, (AsyncHyperBandScheduler, FamilyASHA))
    ray_asha = build_tune_scheduler(parse_spec({**GOOD, "scheduler": {"type": "asha"}}))
    assert isinstance(ray_asha, AsyncHyperBandScheduler)
    # the default: family_asha, its families the searched unconditional categorical parameters
    spec = parse_spec(GOOD)
    assert spec.scheduler.type == "family_asha" and family_parameters(spec) == ["optimizer"]
    default = build_tune_scheduler(spec)
    assert isinstance(default, FamilyASHA) and default._family == ("optimizer",)
    assert parse_spec(spec.to_dict()).scheduler.type == "family_asha"  # saved with its type
    with pytest.raises(UserError, match="scheduler.brackets: family_asha runs one bracket"):
        parse_spec({**GOOD, "scheduler": {"brackets": 2}})


def test_first_keep_sets_the_share_family_ashas_first_rung_keeps():
    """scheduler.first_keep: the share of a family the first rung keeps (default 3/4, the scheduler's
    own default), later rungs 1/rf; given with another scheduler type, or outside (0, 1), it is
    refused in one line naming the key; it round-trips through the saved spec."""
    from raydigits.search.family_asha import DEFAULT_FIRST_KEEP
    from raydigits.search.tune_space import build_tune_scheduler

    sched = {"type": "family_asha", "max_t": 8, "grace_period": 1, "reduction_factor": 2}
    default = parse_spec({**GOOD, "scheduler": sched})
    assert default.scheduler.first_keep == DEFAULT_FIRST_KEEP
    assert build_tune_scheduler(default)._core.keep == {1: 0.75, 2: 0.5, 4: 0.5}
    spec = parse_spec({**GOOD, "scheduler": {**sched, "first_keep": 1 / 3}})
    assert build_tune_scheduler(spec)._core.keep == pytest.approx({1: 1 / 3, 2: 0.5, 4: 0.5})
    assert parse_spec(spec.to_dict()).scheduler.first_keep == pytest.approx(1 / 3)
    for other in ("asha", "fifo", "pbt", "pb2"):
        with pytest.raises(
            UserError, match=rf"scheduler.first_keep: only used by .* family_asha \(this one is {other}\)"
        ):
            parse_spec({**GOOD, "scheduler": {"type": other, "first_keep": 0.5}})
    for bad in (0, 1, 1.5, -0.2):
        with pytest.raises(UserError, match="first_keep"):
            parse_spec({**GOOD, "scheduler": {**sched, "first_keep": bad}})


def test_pbt_checks_name_what_is_searched_and_what_may_be_perturbed():
    """PBT perturbs lists as well as distributions (only PB2 needs a range); the messages list the
    searched parameters and the perturbable keys."""
    from raydigits.config import MUTABLE_KNOBS
    from raydigits.spec import mutated

    assert mutated(parse_spec(_pbt(mutate=["label_smoothing", "lr"]))) == ["label_smoothing", "lr"]
    assert mutated(parse_spec(_pbt(type="pb2"))) == ["lr"]  # a list has no range for PB2
    hint = f"no searched parameter can be perturbed; search one of {', '.join(MUTABLE_KNOBS)} without `when`"
    only_lists = _pbt(type="pb2")
    only_lists["parameters"] = {"label_smoothing": {"values": [0.0, 0.1]}}
    with pytest.raises(UserError) as err:
        parse_spec(only_lists)
    assert str(err.value).endswith(hint + " with a distribution"), str(err.value)
    only_structural = _pbt()
    only_structural["parameters"] = {"img_size": {"values": [32, 48]}}
    with pytest.raises(UserError) as err:
        parse_spec(only_structural)
    assert str(err.value).endswith(hint), str(err.value)  # PBT perturbs lists too
    with pytest.raises(UserError) as err:
        parse_spec(_pbt(mutate=["weight_decay"]))
    assert f"(parameters: {', '.join(PBT['parameters'])})" in str(err.value), str(err.value)
    with pytest.raises(UserError) as err:
        parse_spec(_pbt(mutate=["img_size"]))
    assert str(err.value).endswith(f"perturbable: {', '.join(MUTABLE_KNOBS)}"), str(err.value)
    with pytest.raises(UserError, match=r"'lr' is not a searched parameter \(parameters: none\)"):
        parse_spec({**_pbt(mutate=["lr"]), "parameters": {}})


def test_shipped_pbt_space_is_valid():
    from raydigits.spec import mutated

    spec = load_spec("pbt")
    assert spec.scheduler.type == "pbt" and mutated(spec) == ["lr", "weight_decay", "label_smoothing"]


# ---------------------------------------------------------------- semantic checks: valid keys that could not work
SEMANTIC = [
    (
        "when: a value its parameter never takes",
        lambda d: d["parameters"]["momentum"].update(when={"optimizer": "sgdd"}),
        "parameters.momentum.when.optimizer: 'sgdd' can never hold: parameters.optimizer takes only ['sgd', 'adamw']",
    ),
    (
        "when: an empty list",
        lambda d: d["parameters"]["momentum"].update(when={"optimizer": []}),
        "parameters.momentum.when.optimizer: an empty list of values never holds",
    ),
    (
        "when: a key that is not searched",
        lambda d: d["parameters"]["momentum"].update(when={"scheduler": "step"}),
        "parameters.momentum.when.scheduler: scheduler is not a searched parameter (every trial has scheduler = 'cosine')",
    ),
    (
        "when: an exact value of a continuous draw",
        lambda d: d["parameters"]["momentum"].update(when={"lr": 0.001}),
        "parameters.momentum.when.lr: 0.001 can never hold: parameters.lr is drawn from log_uniform_values [0.0001, 0.01]",
    ),
    (
        "when: an int_uniform value out of range",
        lambda d: (
            d["parameters"].update(plateau_patience={"distribution": "int_uniform", "min": 1, "max": 3}),
            d["parameters"]["momentum"].update(when={"plateau_patience": 7}),
        ),
        "parameters.momentum.when.plateau_patience: 7 can never hold",
    ),
    (
        "normal over a bound",
        lambda d: d["parameters"].update(lr={"distribution": "normal", "mu": 0.01, "sigma": 0.005}),
        "parameters.lr.normal: samples can be <= 0 (lr must be > 0)",
    ),
    (
        "normal over a lower bound of 0",
        lambda d: d["parameters"].update(weight_decay={"distribution": "normal", "mu": 1e-4, "sigma": 1e-4}),
        "parameters.weight_decay.normal: samples can be < 0 (weight_decay must be >= 0)",
    ),
    (
        "uniform reaching an exclusive bound",
        lambda d: d["parameters"].update(dropout={"distribution": "uniform", "min": 0.1, "max": 1.0}),
        "parameters.dropout.max: 1.0 rejected: Input should be less than 1",
    ),
    (
        "uniform crossing a bound",
        lambda d: d["parameters"]["lr"].update(distribution="uniform", min=-0.01),
        "parameters.lr.min: -0.01 rejected: Input should be greater than 0",
    ),
    (
        "fractional samples of an integer key",
        lambda d: d["parameters"].update(batch_size={"distribution": "uniform", "min": 16, "max": 64}),
        "parameters.batch_size.uniform: samples are fractional (batch_size takes integers); use int_uniform",
    ),
    (
        "fractional q for an integer key",
        lambda d: d["parameters"].update(batch_size={"distribution": "q_uniform", "min": 16, "max": 64, "q": 0.5}),
        "parameters.batch_size.q_uniform: q=0.5 gives fractional samples",
    ),
    (
        "q_uniform with no grid point",
        lambda d: d["parameters"].update(dropout={"distribution": "q_uniform", "min": 0.11, "max": 0.19, "q": 0.1}),
        "parameters.dropout.q_uniform: no multiple of q=0.1 lies between min 0.11 and max 0.19",
    ),
    (
        "inf in a range",
        lambda d: d["parameters"]["lr"].update(max=float("inf")),
        "parameters.lr.max: Input should be a finite number",
    ),
    (
        "epochs searched",
        lambda d: d["parameters"].update(epochs={"values": [2, 4]}),
        "parameters.epochs: epochs cannot be searched",
    ),
    (
        "data_dir searched through key",
        lambda d: d["parameters"].update(dd={"key": "data_dir", "values": ["a", "b"]}),
        "parameters.dd: data_dir cannot be searched",
    ),
    (
        "grace_period beyond max_t",
        lambda d: d.update(scheduler={"max_t": 3, "grace_period": 5}),
        "scheduler.grace_period: 5 epochs exceeds the 3 a trial runs (scheduler.max_t)",
    ),
    (
        "grace_period beyond default epochs",
        lambda d: d.update(scheduler={"grace_period": 9}),
        "exceeds the 5 a trial runs (TrainConfig's default epochs)",
    ),
    (
        "fifo with ASHA settings",
        lambda d: d.update(scheduler={"type": "fifo", "reduction_factor": 3}),
        "scheduler.reduction_factor: only used by scheduler type family_asha or asha (this one is fifo)",
    ),
    (
        "reduction_factor 1",
        lambda d: d.update(scheduler={"reduction_factor": 1}),
        "scheduler.reduction_factor: Input should be greater than 1",
    ),
    ("time budget 0", lambda d: d.update(time_budget_s=0), "time_budget_s: Input should be greater than 0"),
    (
        "time budget inf",
        lambda d: d.update(time_budget_s=float("inf")),
        "time_budget_s: Input should be a finite number",
    ),
    ("num_samples 0", lambda d: d.update(num_samples=0), "num_samples: Input should be greater than or equal to 1"),
    ("negative seed", lambda d: d.update(seed=-1), "seed: Input should be greater than or equal to 0"),
    (
        "mode against metric",
        lambda d: d.update(metric="val_loss", mode="max"),
        "mode: max with metric val_loss would pick the worst trial",
    ),
    (
        "train_items below the classes",
        lambda d: d["fixed"].update(train_items=5),
        "fixed.train_items: 5 is fewer than the 10 classes in the train split",
    ),
    (
        "searched val_items below the classes",
        lambda d: d["parameters"].update(val_items={"values": [200, 4]}),
        "parameters.val_items.values[1]: 4 is fewer than the 10 classes in the val split",
    ),
    (
        "class weights for other classes",
        lambda d: d["fixed"].update(class_weights=[1.0, 2.0]),
        "fixed.class_weights: 2 weights for the 10 classes",
    ),
]


@pytest.mark.parametrize("label,mutate,message", SEMANTIC, ids=[c[0] for c in SEMANTIC])
def test_semantic_mistakes_are_named(label, mutate, message, mnist_dir):
    with pytest.raises(UserError) as err:
        parse_spec(_bad(mutate), "space.yaml")
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def _weights_files(tmp_path):
    import torch
    import torchvision

    files = {
        "missing": tmp_path / "none.pt",
        "folder": tmp_path / "a folder",
        "text": tmp_path / "notes.txt",
        "resnet": tmp_path / "resnet18.pt",
        "store_file": tmp_path / "store.txt",
        "not_store": tmp_path / "imgs",
    }
    files["folder"].mkdir()
    files["text"].write_text("not torch")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), files["resnet"])
    files["store_file"].write_text("x")
    files["not_store"].mkdir()
    return files


FILE_CASES = {
    "weights file missing": ("pretrained", "missing", "fixed.pretrained: {path}: no such file"),
    "weights path a folder": ("pretrained", "folder", "fixed.pretrained: {path}: not a loadable state dict"),
    "weights not a torch file": ("pretrained", "text", "fixed.pretrained: {path}: not a loadable state dict"),
    "weights of another architecture": ("pretrained", "resnet", "{path}: no tensor matches model mobilenet_v3_small"),
    "data_dir a file": ("data_dir", "store_file", "fixed.data_dir: {path}: is a file, not a prepared dataset folder"),
    "data_dir not a store": ("data_dir", "not_store", "fixed.data_dir: {path}: no prepared dataset (no manifest.json)"),
    "data_dir missing": ("data_dir", "missing", "fixed.data_dir: {path}: no such folder"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_unusable_files_named_in_fixed(case, tmp_path):
    key, name, message = FILE_CASES[case]
    path = _weights_files(tmp_path)[name]
    with pytest.raises(UserError) as err:
        parse_spec(_bad(lambda d: d["fixed"].update({key: str(path)})), "space.yaml")
    assert message.format(path=path) in str(err.value), str(err.value)


def test_usable_weights_pass(tmp_path, small_mnist):
    from support.helpers import tiny_cfg

    from raydigits.trainer import Trainer

    ckpt = Trainer(tiny_cfg(epochs=1), small_mnist).save(tmp_path / "last.pt")
    assert parse_spec(_bad(lambda d: d["fixed"].update(pretrained=str(ckpt)))).fixed["pretrained"] == str(ckpt)


def test_a_saved_spec_is_read_without_the_semantic_checks(tmp_path):
    """An experiment stays readable (resume, export) when its weights file has gone or a check was added."""
    from raydigits.experiment.layout import SPEC_FILE, read_spec

    saved = _bad(
        lambda d: (
            d["fixed"].update(pretrained=str(tmp_path / "gone.pt")),
            d.update(scheduler={"max_t": 2, "grace_period": 4}),
        )
    )
    (tmp_path / SPEC_FILE).write_text(yaml.safe_dump(saved))
    assert read_spec(tmp_path).scheduler.grace_period == 4
    with pytest.raises(UserError, match="scheduler.grace_period: 4 epochs exceeds"):
        parse_spec(saved)  # a new search with it is refused


def test_semantic_mistakes_stop_launch_before_ray(tmp_path):
    """Through the real CLI: one line naming the key path, exit 2, in seconds, no experiment folder."""
    import time

    cases = {
        "normal.yaml": (
            _bad(lambda d: d["parameters"].update(lr={"distribution": "normal", "mu": 0.01, "sigma": 0.005})),
            "parameters.lr.normal: samples can be <= 0 (lr must be > 0)",
        ),
        "when.yaml": (
            _bad(lambda d: d["parameters"]["momentum"].update(when={"optimizer": "sgdd"})),
            "parameters.momentum.when.optimizer: 'sgdd' can never hold",
        ),
        "weights.yaml": (
            _bad(lambda d: d["fixed"].update(pretrained=str(tmp_path / "none.pt"))),
            f"fixed.pretrained: {tmp_path / 'none.pt'}: no such file",
        ),
    }
    storage = tmp_path / "results"
    for fname, (content, message) in cases.items():
        (tmp_path / fname).write_text(yaml.safe_dump(content))
        start = time.time()
        proc = subprocess.run(
            [
                sys.executable,
                "launch.py",
                "--search-space",
                str(tmp_path / fname),
                "--storage-path",
                str(storage),
                "--name",
                "n",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        took = time.time() - start
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith(f"error: {tmp_path / fname}: {message}"), lines[0]
        assert took < 20, took  # no Ray was started (that alone takes longer)
    assert not storage.exists()


@pytest.mark.parametrize("name", ["smoke", "sgd_vs_adamw", "gpu_headline", "gpu_large", "pbt"])
def test_every_shipped_space_round_trips_through_to_dict_with_its_checks(name):
    """to_dict → parse_spec (with the semantic checks) gives the same spec: what `extend` and the
    saved copy beside an experiment rely on."""
    from raydigits.spec import load_spec

    spec = load_spec(name)
    again = parse_spec(spec.to_dict(), name)
    assert again == spec


# ------------------------------------------------------------------ the distribution registry (spec/kinds.py)
KIND_PARAMS = {
    "uniform": {"min": 0.1, "max": 0.3},
    "log_uniform_values": {"min": 1e-4, "max": 1e-1},
    "int_uniform": {"min": 2, "max": 5},
    "q_uniform": {"min": 0.0, "max": 1.0, "q": 0.25},
    "normal": {"mu": 0.5, "sigma": 0.1},
}


def test_every_distribution_kind_has_a_case():
    from raydigits.spec import list_distributions

    assert sorted(list_distributions()) == sorted(KIND_PARAMS)


@pytest.mark.parametrize("name", sorted(KIND_PARAMS))
def test_each_distribution_kind_draws_what_its_entry_says_in_tune_and_optuna(name):
    """A kind's Tune domain and Optuna suggestion draw inside its bounds, whole numbers when it says
    integer, fractions when it says fractional, on q's grid for q_uniform; its optuna distribution
    holds the draws; a `when` on it holds exactly for values a draw can take."""
    import numpy as np
    import optuna
    import pandas as pd
    from optuna.distributions import BaseDistribution
    from ray import tune  # noqa: F401  (the registry names ray.tune functions)

    from raydigits.insight import _distribution
    from raydigits.search.tune_space import _domain
    from raydigits.spec import Param

    p = Param(distribution=name, **KIND_PARAMS[name])
    k = p.kind
    rs = np.random.RandomState(0)
    tune_draws = [_domain(p).sample(random_state=rs) for _ in range(300)]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    optuna_draws = []
    if k.suggest:
        for _ in range(100):
            trial = study.ask()
            optuna_draws.append(getattr(trial, k.suggest)("x", **k.suggest_kwargs(p)))
    for draws in (tune_draws, optuna_draws):
        for v in draws:
            if k.bounded:
                assert p.min <= v <= p.max, (name, v)
            if k.integer:
                assert float(v).is_integer(), (name, v)
            if name == "q_uniform":
                assert abs(v / p.q - round(v / p.q)) < 1e-9, v
        if not draws:
            continue
        if name in ("int_uniform", "q_uniform"):  # every point of the grid, both ends included
            step = p.q or 1
            assert sorted(set(draws)) == pytest.approx(
                [p.min + i * step for i in range(int((p.max - p.min) / step) + 1)]
            )
        centre = {
            "uniform": ((p.min or 0) + (p.max or 0)) / 2,
            "normal": p.mu,
            "log_uniform_values": float(np.sqrt((p.min or 1) * (p.max or 1))),
        }.get(name)
        if centre is not None:  # linear, logarithmic or normal as the name says (median of the draws)
            spread = (
                np.log(p.max / p.min)
                if name == "log_uniform_values"
                else (p.sigma * 4 if name == "normal" else p.max - p.min)
            )
            mid = np.log(np.median(draws) / centre) if name == "log_uniform_values" else np.median(draws) - centre
            assert abs(mid) < 0.15 * spread, (name, np.median(draws), centre)
    if k.fractional:
        assert any(not float(v).is_integer() for v in tune_draws)
    dist = _distribution(_KindSpec(p), "x", pd.Series(tune_draws))
    assert isinstance(dist, BaseDistribution) and all(dist._contains(dist.to_internal_repr(v)) for v in tune_draws[:50])
    if name == "int_uniform":
        assert p.can_hold([3]) and not p.can_hold([3.5]) and not p.can_hold([6])
    elif name == "q_uniform":
        assert p.can_hold([0.75]) and not p.can_hold([0.6])
    else:
        assert not p.can_hold([KIND_PARAMS[name].get("min", 0.5)])  # an exact value of a continuous draw


class _KindSpec:
    """The slice of a SearchSpec that `insight._distribution` reads."""

    def __init__(self, p):
        self.parameters = {"x": p}


def test_which_exact_values_a_grid_kind_can_draw_and_its_grid():
    """`can_hold` (what a `when` on the parameter can match) at the edges of the range and of the grid,
    q defaulting to 1, booleans never; `q_grid` the first and last multiples of q inside [min, max]."""
    from raydigits.spec import Param
    from raydigits.spec.kinds import kind, q_grid

    q = Param(distribution="q_uniform", min=0.25, max=1.0, q=0.25)
    assert q.can_hold([0.25]) and q.can_hold([1.0]) and q.can_hold([0.5 + 1e-12]) and q.can_hold([1])
    assert not q.can_hold([0.0]) and not q.can_hold([1.25]) and not q.can_hold([0.5 + 1e-6])
    assert not q.can_hold(["0.5"]) and not q.can_hold([None])
    no_q = Param(distribution="q_uniform", min=1, max=3)  # q: 1
    assert no_q.can_hold([2]) and no_q.can_hold([3.0]) and not no_q.can_hold([2.5]) and not no_q.can_hold([True])
    assert q_grid(no_q) == (1, 3) and q_grid(q) == (1, 4)
    assert q_grid(Param(distribution="q_uniform", min=0.3, max=1.1, q=0.25)) == (2, 4)
    assert q_grid(Param(distribution="q_uniform", min=0.26, max=0.49, q=0.25)) == (2, 1)  # none inside
    assert q_grid(Param(distribution="q_uniform", min=0.1 * 3, max=0.7, q=0.1)) == (3, 7)  # float noise
    i = Param(distribution="int_uniform", min=2, max=5)
    assert i.can_hold([2]) and i.can_hold([5]) and i.can_hold([4.0])
    assert not i.can_hold([1]) and not i.can_hold([6]) and not i.can_hold(["3"])
    assert not Param(distribution="int_uniform", min=0, max=1).can_hold([True, False])  # a bool is no draw
    with pytest.raises(
        ValueError,
        match=r"^unknown distribution 'gauss'; valid: uniform, log_uniform_values, "
        r"int_uniform, q_uniform, normal$",
    ):
        kind("gauss")
    assert kind("normal").name == "normal"


def test_a_multi_objective_search_compares_architectures_on_one_rung():
    """family_asha's families leave out the parameters that choose the architecture when costs are
    objectives (the rungs rank them by cost); a single-objective search keeps them as families."""
    from raydigits.search.tune_space import build_tune_scheduler, family_parameters

    params = {
        "model": {"values": ["mobilenet_v3_small", "resnet18"]},
        "size": {"key": "img_size", "values": [32, 48]},
        "optimizer": {"values": ["sgd", "adamw"]},
    }
    single = parse_spec({"name": "a", "parameters": params})
    assert family_parameters(single) == ["model", "size", "optimizer"]
    multi = parse_spec({"name": "a", "objectives": {"val_acc": "max", "latency_ms": "min"}, "parameters": params})
    assert family_parameters(multi) == ["optimizer"]
    assert build_tune_scheduler(multi)._family == ("optimizer",)
