"""Every place raydigits relies on Ray beyond its public API, and nowhere else. Each touch has a
test in tests/test_ray_compat.py that fails loudly when a Ray upgrade breaks it:

- environment defaults Ray reads (`set_env_defaults`, called by `runner.start_ray` before Ray is
  imported: RAY_DEDUP_LOGS is read when `ray` is first imported);
- log filters on Ray's own logger names and message texts (`quiet_ray_noise`, `quiet_checkpoint_lines`);
- a private module for "is token authentication on" (`token_auth_enabled`);
- Ray's own search of this machine's processes for running clusters (`local_gcs_addresses`): which
  GCS addresses the processes of a live Ray on this machine name, as `ray.init()` itself checks;
- the trial actor's class (`named_trainable`): resources go through the public `tune.with_resources`,
  but the dashboard's Class column and the actor's repr (the trial name) need a subclass of
  `wrap_function`'s class with its `__qualname__` set: no public API names a trial actor;
- Tune's resolver guard for `sample_from` (`read_config_key`);
- the schema of Tune's `experiment_state-*.json` (`trial_states`), read without unpickling;
- where a trial's experiment folder is (`experiment_dir_of`; `experiment_dir_now` for a callback after a resume);
- Tune's JSON and CSV result loggers' restore step (`KeepDriverResults`).

Nothing here imports Ray at module level, so importing it sets no Ray state. The Ray version the
tests ran on is checked at import (a warning, not an error, for any other)."""

from __future__ import annotations

import json
import logging
import os
import warnings
from importlib import metadata
from pathlib import Path

from .errors import UserError
from .storage import Location, as_location

TESTED_RAY = ((2, 60),)  # (major, minor) releases the suite ran on; pyproject pins the same range

# Defaults only: a user's own setting wins.
ENV_DEFAULTS = {
    # the terminal shows Tune's classic progress table (CLIReporter) and each trial's own epoch lines
    "RAY_AIR_NEW_OUTPUT": "0",
    # a checkpoint every epoch is what we want: Tune's "excessive experiment checkpoint sync" warning is noise
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # each trial's epoch line is unique; Ray's dedup would merge trials' lines into "[repeated 2x]"
    "RAY_DEDUP_LOGS": "0",
}

# (logger name, message prefix) pairs of Ray/Tune lines our own lines replace
NOISE = (
    # "Token authentication is enabled ...": print_dashboard says how to log in instead
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled"),
    # on Ctrl-C Tune suggests `Tuner.restore(...)`; the CLI prints `launch.py --resume DIR` instead
    ("ray.tune.tune", "Experiment has been interrupted"),
    # after an interrupted fit, Tune's result grid complains that pending trials have no metrics yet
    ("ray.tune.analysis.experiment_analysis", "Failed to fetch metrics"),
    # attaching to the cluster `ray start` recorded while another Ray runs here (a search with its
    # own Ray): start_ray says which cluster it attached to
    ("ray._private.services", "Found multiple active Ray instances"),
)
# its INFO line per checkpoint repeats what our epoch line already says
CHECKPOINT_LOGGER = "ray.train._internal.storage"
TOKEN_AUTH_MODULE = "ray._private.authentication.authentication_utils"
TRIAL_CLASS_NAME = "RaydigitsTrial"  # the dashboard's Class column
STATE_GLOB = "experiment_state-*.json"


def ray_version() -> str:
    return metadata.version("ray")


def check_version(version: str | None = None) -> bool:
    """True for a tested Ray; otherwise a warning naming the tested releases."""
    version = version or ray_version()
    try:
        major_minor = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        major_minor = ()
    if major_minor in TESTED_RAY:
        return True
    tested = ", ".join(f"{a}.{b}.x" for a, b in TESTED_RAY)
    warnings.warn(
        f"raydigits was tested with Ray {tested}, not {version}: run tests/test_ray_compat.py before trusting a search",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


check_version()


# ------------------------------------------------------------------ environment
def set_env_defaults() -> None:
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


# ------------------------------------------------------------------ log noise
class _DropMessages(logging.Filter):
    """Drop the log records whose message starts with one of `prefixes`; let all others through."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_ray_noise() -> None:
    """Ray/Tune lines our own lines replace; every other warning still shows. Idempotent."""
    for name, prefix in NOISE:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.prefixes == (prefix,) for f in log.filters):
            log.addFilter(_DropMessages(prefix))


def quiet_checkpoint_lines() -> None:
    logging.getLogger(CHECKPOINT_LOGGER).setLevel(logging.WARNING)


# ------------------------------------------------------------------ token authentication
def token_auth_enabled() -> bool:
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:  # a Ray without token authentication
        return False
    return is_token_auth_enabled()


# ------------------------------------------------------------------ clusters running on this machine
GCS_SEARCH_MODULE = "ray._private.services"


def local_gcs_addresses() -> frozenset[str]:
    """The GCS addresses (HOST:PORT) that the processes of live Rays on this machine name (their
    `--gcs-address` flags): what `ray.init()` with no address checks before it attaches to the
    cluster `ray start` recorded. Looked up afresh each call (Ray caches a non-empty answer)."""
    from ray._private import services

    services.find_gcs_addresses.cache_clear()
    return frozenset(services.find_gcs_addresses())


# ------------------------------------------------------------------ the trial actor
def named_trainable(fn, resources: dict):
    """`fn` (a function trainable) as a Tune trainable class asking for `resources` (one bundle,
    through the public `tune.with_resources`), shown in the dashboard as `RaydigitsTrial` and
    with the trial's name as the actor's repr."""
    from ray import tune
    from ray.tune.trainable import wrap_function

    class RaydigitsTrial(wrap_function(tune.with_resources(fn, tune.PlacementGroupFactory([resources])))):
        def __repr__(self) -> str:
            # Ray shows an actor's repr in the dashboard's actor list and in the `(name pid=...)`
            # prefix of every line the trial prints: the trial name says which trial it is.
            return self.trial_name or super().__repr__()

    RaydigitsTrial.__qualname__ = TRIAL_CLASS_NAME  # Ray names the actor class by its qualname
    return RaydigitsTrial


# ------------------------------------------------------------------ sample_from
def read_config_key(cfg, key: str):
    """`cfg[key]` inside a `tune.sample_from` function, read by attribute first: Tune's resolver
    guard raises RecursiveDependencyError for a key not sampled yet, and Tune retries later."""
    try:
        return getattr(cfg, key)
    except AttributeError:
        return cfg[key]


# ------------------------------------------------------------------ Tune's experiment state
def trial_states(exp_dir: Location | str) -> list[dict]:
    """[{trial_id, status, config, path, num_failures}] from the newest experiment_state-*.json, as
    plain JSON: Tune's own reader (ExperimentAnalysis) unpickles parts of the state, which the final
    stage and `export` never need."""
    exp_dir = as_location(exp_dir)
    files = exp_dir.glob(STATE_GLOB)
    if not files:
        raise UserError(f"{exp_dir}: no Tune experiment state ({STATE_GLOB})")
    try:
        data = json.loads(files[-1].read_text())
        trials = []
        for state_json, runtime_json in data["trial_data"]:
            state, runtime = json.loads(state_json), json.loads(runtime_json)
            config = state.get("config") or {}
            trials.append(
                {
                    "trial_id": state["trial_id"],
                    "status": state["status"],
                    "config": config if isinstance(config, dict) else {},
                    "path": exp_dir / state.get("relative_logdir", state["trial_id"]),
                    "num_failures": int(runtime.get("num_failures", 0)),
                }
            )
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{files[-1]}: unreadable Tune experiment state ({type(exc).__name__}: {exc})") from None
    return trials


def experiment_dir_now(trials, current: Location) -> Location:
    """Where the experiment is now (it may have moved since a resume): the first of `trials` whose
    folder is on this machine's disk tells; else `current` (remote storage, or no trial yet)."""
    for t in trials or ():
        found = experiment_dir_of(t)
        if found is not None:
            return found
    return current


def experiment_dir_of(trial) -> Location | None:
    """The experiment folder of a Tune `Trial` on this machine's disk; None on remote storage (Tune
    keeps that path without its URI scheme, so the caller's own Location stays the truth)."""
    path = str(getattr(trial, "remote_experiment_path", "") or "")
    return Location(path) if Path(path).is_absolute() and Path(path).is_dir() else None


# ------------------------------------------------------------------ result loggers
class KeepDriverResults:
    """Mixin for Tune's JSON and CSV result loggers (result.json, progress.csv; the classes are
    recorder.py's): a trial restarted within the same run keeps the driver's own file. Tune's
    loggers copy the file back from storage (the private `LoggerCallback._restore_from_remote`)
    whenever a trial with a checkpoint starts. That is right after a driver restart (--resume: the
    driver's staging folder is new and empty) but wrong when PBT pauses and restarts a trial or a
    failed trial is retried: storage is synced only every SYNC_PERIOD_S, so its copy can be stale
    and the epochs reported since the last sync vanish from the trial's results (seen under load
    in the PBT test: a trial left with epochs [3, 4], another with [1, 2, 3])."""

    def _restore_from_remote(self, file_name: str, trial) -> None:
        local = Path(trial.local_path, file_name)
        if local.is_file() and local.stat().st_size > 0:
            return  # this driver wrote it and has every line; storage may lag behind
        super()._restore_from_remote(file_name, trial)
