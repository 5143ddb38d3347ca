"""One test per place raydigits relies on Ray beyond its public API (raydigits/ray_compat.py),
plus the outcome recorder on a tiny real Tune run. Each fails loudly when a Ray upgrade moves or
changes what we rely on: read these failures before changing the pinned Ray version."""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import pytest
from support.helpers import REPO

from raydigits import ray_compat


def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"Ray has no module {module} any more"
    return Path(spec.origin).read_text()


def _python(code: str, **env) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_installed_ray_is_the_tested_one_and_pyproject_pins_it():
    assert ray_compat.check_version(), ray_compat.ray_version()
    pin = re.search(r'"ray\[default,tune\]>=([\d.]+),<([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert pin, "pyproject.toml does not pin ray"
    lo, hi = (tuple(int(x) for x in v.split(".")[:2]) for v in pin.groups())
    assert all(lo <= t < hi for t in ray_compat.TESTED_RAY)
    with pytest.warns(RuntimeWarning, match="tested with Ray 2.60.x, not 2.99.0"):
        assert not ray_compat.check_version("2.99.0")


def test_env_defaults_are_read_where_we_assume():
    where = {
        "RAY_AIR_NEW_OUTPUT": "ray.tune.experimental.output",
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "ray.tune.execution.experiment_state",
        "RAY_DEDUP_LOGS": "ray._private.ray_constants",
    }
    assert set(where) == set(ray_compat.ENV_DEFAULTS)
    for var, module in where.items():
        assert f'"{var}"' in _source(module), f"{module} no longer reads {var}"
    # set before Ray's first import, they take effect (RAY_DEDUP_LOGS is read at import)
    env = {k: v for k, v in os.environ.items() if k not in where}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "from raydigits import ray_compat; ray_compat.set_env_defaults()\n"
                "from ray._private import ray_constants as c\n"
                "from ray.tune.experimental.output import get_air_verbosity\n"
                "from ray.tune.execution.experiment_state import _ExperimentCheckpointManager\n"
                "print(c.RAY_DEDUP_LOGS, get_air_verbosity(1))"
            ),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "None"]  # no dedup; the classic (non-AIR) output


def test_noise_loggers_exist_and_still_say_what_we_filter():
    for name, prefix in ray_compat.NOISE:
        text = _source(name)
        assert "getLogger(__name__)" in text, f"{name} no longer logs under its module name"
        assert re.search(r"""f?["']""" + re.escape(prefix), text), f"{name} no longer says {prefix!r}"
    assert "getLogger(__name__)" in _source(ray_compat.CHECKPOINT_LOGGER)
    assert "Checkpoint successfully created" in _source(ray_compat.CHECKPOINT_LOGGER)


def test_noise_filters_drop_only_those_lines():
    ray_compat.quiet_ray_noise()
    ray_compat.quiet_ray_noise()  # idempotent: one filter per logger
    for name, prefix in ray_compat.NOISE:
        log = logging.getLogger(name)
        assert len(log.filters) == 1
        seen = []
        handler = logging.Handler()
        handler.emit = seen.append
        log.addHandler(handler)
        level = log.level
        log.setLevel(logging.WARNING)  # what a level set by an earlier ray.init in this process would hide
        try:
            log.warning(prefix + " ... and the rest")
            log.warning("something else")
        finally:
            log.removeHandler(handler)
            log.setLevel(level)
        assert [r.getMessage() for r in seen] == ["something else"]


def test_token_auth_probe_follows_rays_auth_mode():
    assert callable(importlib.import_module(ray_compat.TOKEN_AUTH_MODULE).is_token_auth_enabled)
    code = "from raydigits.ray_compat import token_auth_enabled; print(token_auth_enabled())"
    assert _python(code, RAY_AUTH_MODE="token") == "True"
    assert _python(code, RAY_AUTH_MODE="disabled") == "False"


def test_a_live_rays_gcs_address_is_found_among_this_machines_processes():
    """`local_gcs_addresses` (what `runner.running_local_cluster` checks a `ray start` record
    against): a Ray running here is named, looked up afresh after Ray's cache held another answer."""
    services = importlib.import_module(ray_compat.GCS_SEARCH_MODULE)
    assert callable(services.find_gcs_addresses.cache_clear)
    code = (
        "import ray; from raydigits.ray_compat import local_gcs_addresses as f; before = f(); "
        "ctx = ray.init(address='local', num_cpus=1, include_dashboard=False, logging_level='ERROR'); "
        "after = f(); gcs = ctx.address_info['gcs_address']; "
        "print(gcs in after and gcs not in before and all(':' in a for a in after))"
    )
    assert _python(code) == "True"


def test_trial_class_is_named_asks_for_resources_and_shows_its_trial():
    from ray import tune
    from ray.tune.trainable import Trainable

    def fn(config):
        return None

    cls = ray_compat.named_trainable(fn, {"CPU": 1.5, "GPU": 0.25})
    assert issubclass(cls, Trainable) and cls.__qualname__ == ray_compat.TRIAL_CLASS_NAME
    # resources through tune.with_resources, read back by wrap_function's class
    pgf = cls.default_resource_request({})
    assert pgf == tune.PlacementGroupFactory([{"CPU": 1.5, "GPU": 0.25}])
    # the repr is the trial's name: Trainable.trial_name still reads the trial info
    assert "_trial_info.trial_name" in inspect.getsource(Trainable.trial_name.fget)
    obj = cls.__new__(cls)
    obj._trial_info = types.SimpleNamespace(trial_name="smoke_00003")
    assert repr(obj) == "smoke_00003"


@pytest.mark.parametrize(
    "grace, rf, max_t, brackets",
    [(1, 2, 8, 1), (2, 3, 12, 1), (1, 3, 9, 1), (1, 2.5, 10, 1), (2, 1.5, 20, 1), (1, 2, 16, 3), (3, 4, 5, 1)],
)
def test_asha_rungs_are_the_epochs_rays_brackets_compare_at(grace, rf, max_t, brackets):
    """spec.asha_rungs (the outcome of a stopped trial, the report's rung table, the ETA) computes
    ASHA's milestones itself; Ray keeps them in its private brackets. A trial is compared at the first
    epoch >= a milestone, so a fractional one counts at its ceiling."""
    import math

    from ray.tune.schedulers import AsyncHyperBandScheduler

    from raydigits.spec import asha_rungs, parse_spec

    sched = AsyncHyperBandScheduler(
        time_attr="training_iteration",
        metric="val_acc",
        mode="max",
        max_t=max_t,
        grace_period=grace,
        reduction_factor=rf,
        brackets=brackets,
    )
    rays = {math.ceil(m - 1e-9) for b in sched._brackets for m, _ in b._rungs} - set(range(max_t, 10 * max_t))
    ours = asha_rungs(
        parse_spec(
            {
                "name": "t",
                "scheduler": {
                    "type": "asha",
                    "max_t": max_t,
                    "grace_period": grace,
                    "reduction_factor": rf,
                    "brackets": brackets,
                },
            }
        )
    )
    assert ours == rays


def test_resolver_guard_retries_an_unsampled_key():
    """A sample_from reading a key that is sampled later still sees its value: Tune's guard raises
    on the unresolved key and the resolver comes back to it."""
    from ray import tune
    from ray.tune.search.variant_generator import RecursiveDependencyError, generate_variants

    assert issubclass(RecursiveDependencyError, Exception)
    space = {
        "a": tune.sample_from(lambda spec: ray_compat.read_config_key(spec.config, "z") * 10),
        "z": tune.choice([1, 2, 3]),
    }
    for _ in range(10):
        _, cfg = next(generate_variants({"config": space}))
        assert cfg["config"]["a"] == cfg["config"]["z"] * 10


def _logger_run(cls, name: str, tmp_path, local_lines: int | None, remote_lines: int) -> list[int]:
    """A trial that had reported `local_lines` results on this driver (None: a fresh driver, after
    --resume) and `remote_lines` in storage (synced earlier) starts again from a checkpoint, then
    reports one more result; the iterations its results file ends with."""
    import pyarrow.fs

    local, remote = tmp_path / "driver" / "t0", tmp_path / "storage" / "t0"
    remote.mkdir(parents=True)
    logger = cls()
    shadow = cls()  # writes the files as Tune would have, through the same logger class

    class Trial:  # what the loggers read of Tune's Trial (hashable: they key their files by it)
        def __init__(self, path):
            self.local_path, self.checkpoint, self.config = str(path), object(), {"lr": 0.1}
            self.init_local_path()  # Tune makes the trial's folder before its loggers run
            self.storage = types.SimpleNamespace(
                trial_fs_path=str(remote), storage_filesystem=pyarrow.fs.LocalFileSystem()
            )

        def init_local_path(self):
            Path(self.local_path).mkdir(parents=True, exist_ok=True)

    for path, n in ((remote, remote_lines), (local, local_lines)):
        if n is not None:
            t = Trial(path)
            t.checkpoint = None  # first start: nothing to restore
            shadow.log_trial_start(t)
            for i in range(1, n + 1):
                shadow.log_trial_result(i, t, {"training_iteration": i})
            shadow.log_trial_end(t)
    trial = Trial(local)
    logger.log_trial_start(trial)
    logger.log_trial_result(9, trial, {"training_iteration": 9})
    logger.log_trial_end(trial)
    text = (local / name).read_text()
    if name == "result.json":
        return [json.loads(line)["training_iteration"] for line in text.splitlines()]
    return [int(row.split(",")[0]) for row in text.splitlines()[1:]]


def test_result_loggers_keep_the_drivers_results_when_a_trial_restarts(tmp_path):
    """PBT pauses and restarts trials, and a failed trial is retried, within one run: the driver's
    results file has every line, storage's copy only those of its last sync. Tune's own loggers copy
    storage's over the driver's (the epochs in between are lost); ours keep the driver's, and after
    a driver restart (nothing on this driver yet) they still restore from storage."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from raydigits.search.recorder import CsvResults, JsonResults, result_loggers

    assert [type(c) for c in result_loggers()] == [JsonResults, CsvResults]
    assert "def _restore_from_remote(self, file_name" in _source("ray.tune.logger.logger")
    for ours, theirs, name in (
        (JsonResults, JsonLoggerCallback, "result.json"),
        (CsvResults, CSVLoggerCallback, "progress.csv"),
    ):
        assert issubclass(ours, theirs)  # so Tune adds no default logger of that class beside ours
        assert _logger_run(theirs, name, tmp_path / theirs.__name__, 3, 1) == [1, 9]  # Tune's: lines lost
        assert _logger_run(ours, name, tmp_path / ours.__name__, 3, 1) == [1, 2, 3, 9]
        assert _logger_run(ours, name, tmp_path / (ours.__name__ + "-resume"), None, 2) == [1, 2, 9]


@pytest.mark.slow
def test_tiny_tune_run_state_schema_and_recorded_outcomes(tmp_path):
    """A real Tune run (4 trials side by side): the experiment state has the keys we read, and the
    recorder writes each trial's outcome as it happens, including the time budget's cut."""
    import json

    import ray
    from ray import tune

    from raydigits.experiment.layout import OUTCOMES_FILE
    from raydigits.experiment.records import read_record
    from raydigits.search.recorder import BudgetStopper, OutcomeRecorder

    def trial(config):
        kind = config["kind"]
        for epoch in range(1, 1000):
            if kind == "error":
                raise RuntimeError("boom")
            reason = "early_stop" if kind == "early" else ""
            tune.report({"epoch": epoch, "val_acc": 0.5, "stop_reason": reason, "diverged": False})
            if reason or (kind == "complete" and epoch == 3):
                return
            if kind == "slow":
                time.sleep(0.5)

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        exp = tmp_path / "tiny"
        tuner = tune.Tuner(
            ray_compat.named_trainable(trial, {"CPU": 0.5}),
            param_space={"kind": tune.grid_search(["complete", "early", "error", "slow"])},
            run_config=tune.RunConfig(
                name="tiny",
                storage_path=str(tmp_path),
                verbose=0,
                callbacks=[OutcomeRecorder(exp, max_epochs=3)],
                stop=BudgetStopper(40, exp),
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tuner.fit()
    finally:
        ray.shutdown()
    # the raw schema we read
    state_file = sorted(exp.glob(ray_compat.STATE_GLOB))[-1]
    raw = json.loads(state_file.read_text())
    assert len(raw["trial_data"]) == 4
    for state_json, runtime_json in raw["trial_data"]:
        state, runtime = json.loads(state_json), json.loads(runtime_json)
        assert {"trial_id", "status", "config", "relative_logdir"} <= set(state), sorted(state)
        assert "num_failures" in runtime, sorted(runtime)
    trials = {t["config"]["kind"]: t for t in ray_compat.trial_states(exp)}
    assert {k: t["status"] for k, t in trials.items()} == {
        "complete": "TERMINATED",
        "early": "TERMINATED",
        "error": "ERROR",
        "slow": "TERMINATED",
    }
    assert all((t["path"] / "result.json").exists() for t in trials.values())
    # outcomes, recorded when they happened
    assert (exp / OUTCOMES_FILE).exists()
    record = read_record(exp)
    got = {kind: record.outcome(t["trial_id"]) for kind, t in trials.items()}
    assert got == {"complete": "completed", "early": "early_stopped", "error": "error", "slow": "time_budget"}
    assert record.ended == "time_budget" and record.budget_fired
