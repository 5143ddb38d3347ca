"""Search-space YAML: each mistake gives one message naming the key path and exit 2, before Ray
starts; W&B-style parameters become the right Tune / Optuna objects; conditionals apply only when
their condition holds."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from raydigits.errors import UserError
from raydigits.search.spec import load_spec, parse_spec, trial_values
from raydigits.search.tune_space import OptunaSpace, param_space

from helpers import REPO

GOOD = {
    "name": "t", "num_samples": 2,
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
    ("unknown parameter name", lambda d: d["parameters"].update(learning_rate={"values": [1]}),
     "parameters.learning_rate: unknown parameter"),
    ("unknown parameter key", lambda d: d["parameters"]["lr"].update(mean=1), "parameters.lr.mean: unknown key"),
    ("min > max", lambda d: d["parameters"]["lr"].update(min=0.1, max=0.01), "parameters.lr: min (0.1) > max (0.01)"),
    ("log over non-positive", lambda d: d["parameters"]["lr"].update(min=0.0), "parameters.lr: log_uniform_values needs min > 0"),
    ("in fixed and parameters", lambda d: d["fixed"].update(lr=0.1), "lr is in both fixed and parameters"),
    ("TrainConfig rejects a value", lambda d: d["parameters"]["optimizer"].update(values=["sgd", "adamx"]),
     "parameters.optimizer.values[1]: 'adamx' rejected: unknown optimizer"),
    ("TrainConfig rejects a range end", lambda d: d["parameters"]["momentum"].update(max=1.5),
     "parameters.momentum.max: 1.5 rejected"),
    ("wrong type", lambda d: d.update(num_samples="many"), "num_samples: Input should be a valid integer"),
    ("bad fixed value", lambda d: d["fixed"].update(batch_size=0), "fixed.batch_size: Input should be greater than or equal to 1"),
    ("unknown fixed key", lambda d: d["fixed"].update(lr_decay=0.1), "fixed.lr_decay: unknown key"),
    ("unknown method", lambda d: d.update(method="bayes"), "method: Input should be 'random', 'grid' or 'tpe'"),
    ("grid over a distribution", lambda d: (d.update(method="grid"), d["parameters"].pop("momentum"),
                                           d["parameters"].pop("betas")), "parameters.lr: method grid needs `values`"),
    ("two kinds", lambda d: d["parameters"]["lr"].update(values=[1]), "parameters.lr: give exactly one of"),
    ("unknown model", lambda d: d["fixed"].update(model="mobilenetv3"), "fixed.model: unknown model 'mobilenetv3'"),
    ("impossible scheduler", lambda d: d.update(scheduler={"type": "pbt2"}), "scheduler.type: Input should be 'asha', 'fifo', 'pbt' or 'pb2'"),
]


@pytest.mark.parametrize("label,mutate,message", CASES, ids=[c[0] for c in CASES])
def test_each_mistake_names_its_key(label, mutate, message):
    with pytest.raises(UserError) as err:
        parse_spec(_bad(mutate), "space.yaml")
    assert message in str(err.value), str(err.value)


def test_cli_reports_yaml_mistakes_in_one_line_exit_2(tmp_path):
    cases = {"malformed.yaml": "name: x\nparameters: {lr: [1, 2\n",
             "minmax.yaml": yaml.safe_dump(_bad(lambda d: d["parameters"]["lr"].update(min=0.1, max=0.01)))}
    for fname, text in cases.items():
        (tmp_path / fname).write_text(text)
        proc = subprocess.run([sys.executable, "launch.py", "--search-space", str(tmp_path / fname)],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
        assert fname in lines[0]
    assert "malformed YAML (line 3" in subprocess.run(
        [sys.executable, "launch.py", "--search-space", str(tmp_path / "malformed.yaml")],
        capture_output=True, text=True, cwd=REPO).stderr
    proc = subprocess.run([sys.executable, "launch.py", "--search-space", "nope"], capture_output=True, text=True, cwd=REPO)
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


def test_grid_expands_values():
    spec = parse_spec({"name": "g", "method": "grid", "parameters": {"optimizer": {"values": ["sgd", "adam"]},
                                                                    "lr": {"values": [0.1, 0.01]}}})
    space = param_space(spec)
    assert space["optimizer"] == {"grid_search": ["sgd", "adam"]}


def test_readme_example_is_a_valid_space():
    text = (REPO / "README.md").read_text()
    block = text.split("```yaml\n")[1].split("```")[0]
    spec = parse_spec(yaml.safe_load(block), "README")
    assert spec.target("lr_sgd") == "lr" and spec.parameters["momentum"].when == {"optimizer": "sgd"}


def test_a_first_rung_of_a_few_steps_is_warned_about():
    from raydigits.search.spec import early_rung_warning
    smoke = load_spec("smoke")  # 1,500 images, batch 32: 46 steps before ASHA's first decision
    w = early_rung_warning(smoke, 50_000)
    assert w and "46 optimiser steps on 1,500 training images" in w
    assert early_rung_warning(load_spec("sgd_vs_adamw"), 50_000) is None  # 2 × 390 steps
    grid = parse_spec({"name": "g", "method": "grid", "fixed": {"train_items": 3000},
                       "parameters": {"batch_size": {"values": [16, 64]}}})
    assert "46 optimiser steps" in early_rung_warning(grid, 50_000)  # the largest batch counts
    assert early_rung_warning(parse_spec({"name": "f", "scheduler": {"type": "fifo"},
                                          "fixed": {"train_items": 100}}), 50_000) is None


# ------------------------------------------------------------------ PBT / PB2
PBT = {"name": "p", "num_samples": 2, "scheduler": {"type": "pbt", "max_t": 4, "perturbation_interval": 2},
       "parameters": {"optimizer": {"values": ["sgd", "adamw"]},
                      "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                      "momentum": {"distribution": "uniform", "min": 0.8, "max": 0.95, "when": {"optimizer": "sgd"}},
                      "label_smoothing": {"values": [0.0, 0.05, 0.1]},
                      "img_size": {"values": [32, 48]},
                      "nesterov": {"value": True}}}


def _pbt(**scheduler):
    import copy
    d = copy.deepcopy(PBT)
    d["scheduler"].update(scheduler)
    return d


PBT_CASES = [
    ("structural knob", {"mutate": ["lr", "img_size"]},
     "scheduler.mutate[1]: 'img_size' cannot change mid-training"),
    ("optimizer type", {"mutate": ["optimizer"]}, "scheduler.mutate[0]: 'optimizer' cannot change mid-training"),
    ("not searched", {"mutate": ["weight_decay"]}, "scheduler.mutate[0]: 'weight_decay' is not a searched parameter"),
    ("conditional", {"mutate": ["momentum"]}, "scheduler.mutate[0]: 'momentum' is conditional"),
    ("constant", {"mutate": ["nesterov"]}, "scheduler.mutate[0]: 'nesterov' is a constant"),
    ("pb2 over values", {"type": "pb2", "mutate": ["label_smoothing"]},
     "scheduler.mutate[0]: pb2 perturbs continuous parameters (min, max) only"),
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
    from raydigits.search.spec import mutated
    from raydigits.search.tune_space import ClipToRange, build_tune_scheduler
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


def test_shipped_pbt_space_is_valid():
    from raydigits.search.spec import mutated
    spec = load_spec("pbt")
    assert spec.scheduler.type == "pbt" and mutated(spec) == ["lr", "weight_decay", "label_smoothing"]


# ---------------------------------------------------------------- semantic checks: valid keys that could not work
SEMANTIC = [
    ("when: a value its parameter never takes", lambda d: d["parameters"]["momentum"].update(when={"optimizer": "sgdd"}),
     "parameters.momentum.when.optimizer: 'sgdd' can never hold: parameters.optimizer takes only ['sgd', 'adamw']"),
    ("when: an empty list", lambda d: d["parameters"]["momentum"].update(when={"optimizer": []}),
     "parameters.momentum.when.optimizer: an empty list of values never holds"),
    ("when: a key that is not searched", lambda d: d["parameters"]["momentum"].update(when={"scheduler": "step"}),
     "parameters.momentum.when.scheduler: scheduler is not a searched parameter (every trial has scheduler = 'cosine')"),
    ("when: an exact value of a continuous draw", lambda d: d["parameters"]["momentum"].update(when={"lr": 0.001}),
     "parameters.momentum.when.lr: 0.001 can never hold: parameters.lr is drawn from log_uniform_values [0.0001, 0.01]"),
    ("when: an int_uniform value out of range",
     lambda d: (d["parameters"].update(plateau_patience={"distribution": "int_uniform", "min": 1, "max": 3}),
                d["parameters"]["momentum"].update(when={"plateau_patience": 7})),
     "parameters.momentum.when.plateau_patience: 7 can never hold"),
    ("normal over a bound", lambda d: d["parameters"].update(lr={"distribution": "normal", "mu": 0.01, "sigma": 0.005}),
     "parameters.lr.normal: samples can be <= 0 (lr must be > 0)"),
    ("normal over a lower bound of 0", lambda d: d["parameters"].update(
        weight_decay={"distribution": "normal", "mu": 1e-4, "sigma": 1e-4}),
     "parameters.weight_decay.normal: samples can be < 0 (weight_decay must be >= 0)"),
    ("uniform reaching an exclusive bound", lambda d: d["parameters"].update(
        dropout={"distribution": "uniform", "min": 0.1, "max": 1.0}),
     "parameters.dropout.max: 1.0 rejected: Input should be less than 1"),
    ("uniform crossing a bound", lambda d: d["parameters"]["lr"].update(distribution="uniform", min=-0.01),
     "parameters.lr.min: -0.01 rejected: Input should be greater than 0"),
    ("fractional samples of an integer key", lambda d: d["parameters"].update(
        batch_size={"distribution": "uniform", "min": 16, "max": 64}),
     "parameters.batch_size.uniform: samples are fractional (batch_size takes integers); use int_uniform"),
    ("fractional q for an integer key", lambda d: d["parameters"].update(
        batch_size={"distribution": "q_uniform", "min": 16, "max": 64, "q": 0.5}),
     "parameters.batch_size.q_uniform: q=0.5 gives fractional samples"),
    ("q_uniform with no grid point", lambda d: d["parameters"].update(
        dropout={"distribution": "q_uniform", "min": 0.11, "max": 0.19, "q": 0.1}),
     "parameters.dropout.q_uniform: no multiple of q=0.1 lies between min 0.11 and max 0.19"),
    ("inf in a range", lambda d: d["parameters"]["lr"].update(max=float("inf")), "parameters.lr.max: Input should be a finite number"),
    ("epochs searched", lambda d: d["parameters"].update(epochs={"values": [2, 4]}),
     "parameters.epochs: epochs cannot be searched"),
    ("data_dir searched through key", lambda d: d["parameters"].update(dd={"key": "data_dir", "values": ["a", "b"]}),
     "parameters.dd: data_dir cannot be searched"),
    ("grace_period beyond max_t", lambda d: d.update(scheduler={"max_t": 3, "grace_period": 5}),
     "scheduler.grace_period: 5 epochs exceeds the 3 a trial runs (scheduler.max_t)"),
    ("grace_period beyond default epochs", lambda d: d.update(scheduler={"grace_period": 9}),
     "exceeds the 5 a trial runs (TrainConfig's default epochs)"),
    ("fifo with ASHA settings", lambda d: d.update(scheduler={"type": "fifo", "reduction_factor": 3}),
     "scheduler.reduction_factor: only used by scheduler type asha (this one is fifo)"),
    ("reduction_factor 1", lambda d: d.update(scheduler={"reduction_factor": 1}),
     "scheduler.reduction_factor: Input should be greater than 1"),
    ("time budget 0", lambda d: d.update(time_budget_s=0), "time_budget_s: Input should be greater than 0"),
    ("time budget inf", lambda d: d.update(time_budget_s=float("inf")), "time_budget_s: Input should be a finite number"),
    ("num_samples 0", lambda d: d.update(num_samples=0), "num_samples: Input should be greater than or equal to 1"),
    ("negative seed", lambda d: d.update(seed=-1), "seed: Input should be greater than or equal to 0"),
    ("mode against metric", lambda d: d.update(metric="val_loss", mode="max"),
     "mode: max with metric val_loss would pick the worst trial"),
    ("train_items below the classes", lambda d: d["fixed"].update(train_items=5),
     "fixed.train_items: 5 is fewer than the 10 classes in the train split"),
    ("searched val_items below the classes", lambda d: d["parameters"].update(val_items={"values": [200, 4]}),
     "parameters.val_items.values[1]: 4 is fewer than the 10 classes in the val split"),
    ("class weights for other classes", lambda d: d["fixed"].update(class_weights=[1.0, 2.0]),
     "fixed.class_weights: 2 weights for the 10 classes"),
]


@pytest.mark.parametrize("label,mutate,message", SEMANTIC, ids=[c[0] for c in SEMANTIC])
def test_semantic_mistakes_are_named(label, mutate, message, mnist_dir):
    with pytest.raises(UserError) as err:
        parse_spec(_bad(mutate), "space.yaml")
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def _weights_files(tmp_path):
    import torch
    import torchvision
    files = {"missing": tmp_path / "none.pt", "folder": tmp_path / "a folder", "text": tmp_path / "notes.txt",
             "resnet": tmp_path / "resnet18.pt", "store_file": tmp_path / "store.txt", "not_store": tmp_path / "imgs"}
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
    from raydigits.trainer import Trainer
    from helpers import tiny_cfg
    ckpt = Trainer(tiny_cfg(epochs=1), small_mnist).save(tmp_path / "last.pt")
    assert parse_spec(_bad(lambda d: d["fixed"].update(pretrained=str(ckpt)))).fixed["pretrained"] == str(ckpt)


def test_a_saved_spec_is_read_without_the_semantic_checks(tmp_path):
    """An experiment stays readable (resume, export) when its weights file has gone or a check was added."""
    from raydigits.search.runner import SPEC_FILE, read_spec
    saved = _bad(lambda d: (d["fixed"].update(pretrained=str(tmp_path / "gone.pt")),
                            d.update(scheduler={"max_t": 2, "grace_period": 4})))
    (tmp_path / SPEC_FILE).write_text(yaml.safe_dump(saved))
    assert read_spec(tmp_path).scheduler.grace_period == 4
    with pytest.raises(UserError, match="scheduler.grace_period: 4 epochs exceeds"):
        parse_spec(saved)  # a new search with it is refused


def test_semantic_mistakes_stop_launch_before_ray(tmp_path):
    """Through the real CLI: one line naming the key path, exit 2, in seconds, no experiment folder."""
    import time
    cases = {"normal.yaml": (_bad(lambda d: d["parameters"].update(lr={"distribution": "normal", "mu": 0.01, "sigma": 0.005})),
                             "parameters.lr.normal: samples can be <= 0 (lr must be > 0)"),
             "when.yaml": (_bad(lambda d: d["parameters"]["momentum"].update(when={"optimizer": "sgdd"})),
                           "parameters.momentum.when.optimizer: 'sgdd' can never hold"),
             "weights.yaml": (_bad(lambda d: d["fixed"].update(pretrained=str(tmp_path / "none.pt"))),
                              f"fixed.pretrained: {tmp_path / 'none.pt'}: no such file")}
    storage = tmp_path / "results"
    for fname, (content, message) in cases.items():
        (tmp_path / fname).write_text(yaml.safe_dump(content))
        start = time.time()
        proc = subprocess.run([sys.executable, "launch.py", "--search-space", str(tmp_path / fname),
                               "--storage-path", str(storage), "--name", "n"], capture_output=True, text=True, cwd=REPO)
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
    from raydigits.search.spec import load_spec
    spec = load_spec(name)
    again = parse_spec(spec.to_dict(), name)
    assert again == spec
