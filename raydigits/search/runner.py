"""Start or attach to Ray, check that trials can ever be scheduled, assemble the Tuner (or restore
one), run it. The dataset is loaded once here and put once into the object store."""
from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

import yaml

from ..atomic import write_text
from ..data import ensure_prepared, load_dataset
from ..errors import UserError
from .spec import SearchSpec, build_scheduler, build_search_alg, param_space, parse_spec

SPEC_FILE = "raydigits_search.yaml"
RUN_FILE = "raydigits_run.json"
# Where `ray start` records the cluster it launched (what `--address auto` finds); a killed one stays.
RAY_CURRENT_CLUSTER = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
METRIC_COLUMNS = {"epoch": "epoch", "val_acc": "val_acc", "val_loss": "val_loss", "lr": "lr_now",
                  "images_per_s": "img/s"}

# The terminal shows Tune's classic progress table (CLIReporter) and each trial's own epoch lines.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# A checkpoint every epoch is what we want: Tune's "excessive experiment checkpoint sync" warning is noise.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Each trial's epoch line is unique; Ray's dedup would merge trials' lines into "[repeated 2x]".
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


class _DropMessages(logging.Filter):
    """Drop the log records whose message starts with one of `prefixes`; let all others through."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_ray_noise() -> None:
    """Ray/Tune lines our own lines replace; every other warning still shows."""
    # "Token authentication is enabled ...": print_dashboard says how to log in instead
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        _DropMessages("Token authentication is enabled"))
    # On Ctrl-C Tune suggests `Tuner.restore(...)`; the CLI prints `launch.py --resume DIR` instead
    logging.getLogger("ray.tune.tune").addFilter(_DropMessages("Experiment has been interrupted"))
    # After an interrupted fit, Tune's result grid complains that pending trials have no metrics yet
    logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(
        _DropMessages("Failed to fetch metrics"))


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds when nothing listens at HOST:PORT (ray.init would retry for minutes)."""
    if address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    if address == "auto":  # the cluster a `ray start` on this machine recorded (maybe long dead)
        if not RAY_CURRENT_CLUSTER.exists():
            raise UserError("--address auto: no Ray cluster was started on this machine "
                            "(run `ray start --head`, or give HOST:PORT)")
        hostport = RAY_CURRENT_CLUSTER.read_text().strip()
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"--address {address}: nothing answers at {host}:{port} ({exc.strerror or exc}); "
                        "is `ray start --head` running there?") from None


def start_ray(address: str | None, dashboard_port: int | None = None, job_name: str | None = None) -> dict:
    """Attach to `address` (auto, HOST:PORT, ray://...) or start a local Ray with the dashboard on
    127.0.0.1. The job carries `job_name` in its metadata (the dashboard's Jobs page shows it).
    Returns {dashboard_url, address, attached, token_auth}."""
    import ray
    from ray.job_config import JobConfig
    address = address or os.environ.get("RAY_ADDRESS")
    quiet_ray_noise()
    job = JobConfig(metadata={"job_name": f"raydigits {job_name}"} if job_name else {})  # the Jobs page's Name
    try:
        if address:
            _probe(address)
            ctx = ray.init(address=address, logging_level="WARNING", log_to_driver=True, job_config=job)
        else:
            # "local": always a new Ray of our own, never a cluster some earlier `ray start` left behind
            ctx = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", job_config=job,
                           dashboard_port=dashboard_port, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--address {address}: cannot connect to a Ray cluster ({first[:200]})") from None
    url = ctx.dashboard_url
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return {"dashboard_url": url, "address": ctx.address_info.get("address"), "attached": bool(address),
            "token_auth": token_auth_enabled()}


def token_auth_enabled() -> bool:
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:  # a Ray without token authentication
        return False
    return is_token_auth_enabled()


def check_resources(spec: SearchSpec) -> None:
    """Refuse, before any trial starts, per-trial resources that no alive node could ever give."""
    import ray
    gpu = 1.0 if spec.resources.gpu == "auto" else spec.resources.gpu  # auto: at least a GPU somewhere
    need = {"CPU": spec.resources.cpu, "GPU": gpu}
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    for node in nodes:
        have = node.get("Resources", {})
        if all(have.get(k, 0.0) >= v for k, v in need.items() if v > 0):
            return
    summary = ", ".join(f"{n.get('NodeManagerAddress')}: {n['Resources'].get('CPU', 0):g} CPU "
                        f"{n['Resources'].get('GPU', 0):g} GPU" for n in nodes) or "no alive nodes"
    raise UserError(f"resources: each trial asks for cpu={spec.resources.cpu:g} gpu={spec.resources.gpu}, "
                    f"but no node of this cluster has that ({summary}); lower resources.cpu/gpu "
                    "(or --cpus-per-trial / --gpus-per-trial)")


def _trainable(spec: SearchSpec, data):
    """The trial function with the dataset put once into the object store (`with_parameters`),
    as a Tune trainable class that asks for the spec's resources and is named after its trial."""
    from ray import tune
    from ray.tune.trainable import wrap_function
    from .trainable import train_trial
    threads = max(1, int(spec.resources.cpu))
    bundle = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}

    class RaydigitsTrial(wrap_function(tune.with_parameters(train_trial, spec=spec, data=data, threads=threads))):
        @classmethod
        def default_resource_request(cls, config):
            return tune.PlacementGroupFactory([bundle])

        def __repr__(self) -> str:
            # Ray shows an actor's repr in the dashboard's actor list and in the `(name pid=...)`
            # prefix of every line the trial prints: the trial name says which trial it is.
            return self.trial_name or super().__repr__()

    RaydigitsTrial.__qualname__ = "RaydigitsTrial"  # the dashboard's Class column
    return RaydigitsTrial


def _run_config(spec: SearchSpec, storage: str, name: str, verbose: int):
    from ray import tune
    reporter = tune.CLIReporter(metric_columns=METRIC_COLUMNS,
                                parameter_columns=list(spec.parameters)[:8],
                                max_report_frequency=15, sort_by_metric=False,
                                metric=spec.metric, mode=spec.mode)
    return tune.RunConfig(
        name=name, storage_path=storage, verbose=verbose, progress_reporter=reporter,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.checkpoints_to_keep,
                                                checkpoint_score_attribute=spec.metric,
                                                checkpoint_score_order=spec.mode))


def load_data(spec: SearchSpec):
    data_dir = ensure_prepared(Path(spec.fixed.get("data_dir", "data/mnist")))
    spec.fixed["data_dir"] = str(data_dir)  # absolute: trials run in other working dirs
    return load_dataset(data_dir, splits=("train", "val"))


def run_search(spec: SearchSpec, storage: str, name: str, data, verbose: int = 1):
    """A fresh search over `data` (from `load_data`). Returns the experiment dir (final.py reads
    the results from there)."""
    from ray import tune
    exp_dir = Path(storage) / name
    if (exp_dir / SPEC_FILE).exists():
        raise UserError(f"{exp_dir} already holds a search; pick another --name or use --resume {exp_dir}")
    exp_dir.mkdir(parents=True, exist_ok=True)
    write_text(exp_dir / SPEC_FILE, yaml.safe_dump(spec.to_dict(), sort_keys=False))
    write_text(exp_dir / RUN_FILE, json.dumps({"started": time.time(), "name": name}))
    tuner = tune.Tuner(
        _trainable(spec, data),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(search_alg=build_search_alg(spec), scheduler=build_scheduler(spec),
                                    num_samples=spec.num_samples,  # concurrency: build_search_alg
                                    time_budget_s=spec.time_budget_s,
                                    trial_name_creator=lambda t: f"{spec.name}_{t.trial_id}",
                                    trial_dirname_creator=lambda t: f"{spec.name}_{t.trial_id}"),
        run_config=_run_config(spec, storage, name, verbose))
    tuner.fit()
    _mark_finished(exp_dir)
    return exp_dir


def _mark_finished(exp_dir: Path) -> None:
    path = Path(exp_dir) / RUN_FILE
    run = json.loads(path.read_text()) if path.exists() else {}
    write_text(path, json.dumps({**run, "finished": time.time()}))


def read_spec(exp_dir: Path) -> SearchSpec:
    path = Path(exp_dir) / SPEC_FILE
    if not path.exists():
        raise UserError(f"{exp_dir}: not a raydigits experiment (no {SPEC_FILE})")
    return parse_spec(yaml.safe_load(path.read_text()), str(path))


def resume_search(exp_dir: Path, spec: SearchSpec, data) -> Path:
    """Continue an experiment whose spec the caller read with `read_spec`."""
    from ray import tune
    exp_dir = Path(exp_dir).resolve()
    if not tune.Tuner.can_restore(str(exp_dir)):
        raise UserError(f"{exp_dir}: no Tune experiment state to resume from")
    # param_space again: Tune saved its sample_from functions as placeholders, and trials the
    # searcher has yet to generate need the real functions back
    tuner = tune.Tuner.restore(str(exp_dir), trainable=_trainable(spec, data),
                               param_space=param_space(spec),
                               resume_unfinished=True, resume_errored=True)
    tuner.fit()
    _mark_finished(exp_dir)
    return exp_dir
