"""Start or attach to Ray, check that trials can ever be scheduled, assemble the Tuner (or restore
one), run it. The dataset is loaded once here and put once into the object store."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml

from ..atomic import write_text
from ..data import ensure_prepared, load_dataset
from ..errors import UserError
from .spec import SearchSpec, build_scheduler, build_search_alg, param_space, parse_spec

SPEC_FILE = "raydigits_search.yaml"
RUN_FILE = "raydigits_run.json"
METRIC_COLUMNS = {"epoch": "epoch", "val_acc": "val_acc", "val_loss": "val_loss", "lr": "lr_now",
                  "images_per_s": "img/s"}

# Quiet Tune's per-checkpoint sync chatter; keep the classic progress table (CLIReporter).
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def start_ray(address: str | None, dashboard_port: int | None = None) -> dict:
    """Attach to `address` (auto, HOST:PORT, ray://...) or start a local Ray with the dashboard on
    127.0.0.1. Returns {dashboard_url, address, attached}."""
    import ray
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ctx = ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        else:
            ctx = ray.init(include_dashboard=True, dashboard_host="127.0.0.1",
                           dashboard_port=dashboard_port, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--address {address}: cannot connect to a Ray cluster ({first[:200]})") from None
    url = ctx.dashboard_url
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return {"dashboard_url": url, "address": ctx.address_info.get("address"), "attached": bool(address)}


def check_resources(spec: SearchSpec) -> None:
    """Refuse, before any trial starts, per-trial resources that no alive node could ever give."""
    import ray
    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    for node in nodes:
        have = node.get("Resources", {})
        if all(have.get(k, 0.0) >= v for k, v in need.items() if v > 0):
            return
    summary = ", ".join(f"{n.get('NodeManagerAddress')}: {n['Resources'].get('CPU', 0):g} CPU "
                        f"{n['Resources'].get('GPU', 0):g} GPU" for n in nodes) or "no alive nodes"
    raise UserError(f"resources: each trial asks for cpu={spec.resources.cpu:g} gpu={spec.resources.gpu:g}, "
                    f"but no node of this cluster has that ({summary}); lower resources.cpu/gpu "
                    "(or --cpus-per-trial / --gpus-per-trial)")


def _trainable(spec: SearchSpec, data):
    """The trial function with the dataset put once into the object store (`with_parameters`)."""
    from ray import tune
    from .trainable import train_trial
    threads = max(1, int(spec.resources.cpu))
    fn = tune.with_parameters(train_trial, spec=spec, data=data, threads=threads)
    return tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


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


def run_search(spec: SearchSpec, storage: str, name: str, verbose: int = 1):
    """A fresh search. Returns the experiment dir (final.py reads the results from there)."""
    from ray import tune
    exp_dir = Path(storage) / name
    if (exp_dir / SPEC_FILE).exists():
        raise UserError(f"{exp_dir} already holds a search; pick another --name or use --resume {exp_dir}")
    data = load_data(spec)
    exp_dir.mkdir(parents=True, exist_ok=True)
    write_text(exp_dir / SPEC_FILE, yaml.safe_dump(spec.to_dict(), sort_keys=False))
    write_text(exp_dir / RUN_FILE, json.dumps({"started": time.time(), "name": name}))
    tuner = tune.Tuner(
        _trainable(spec, data),
        param_space=param_space(spec) if spec.method != "tpe" else {},
        tune_config=tune.TuneConfig(search_alg=build_search_alg(spec), scheduler=build_scheduler(spec),
                                    num_samples=spec.num_samples, max_concurrent_trials=spec.max_concurrent,
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


def resume_search(exp_dir: Path, spec: SearchSpec) -> Path:
    """Continue an experiment whose spec the caller read with `read_spec`."""
    from ray import tune
    exp_dir = Path(exp_dir).resolve()
    if not tune.Tuner.can_restore(str(exp_dir)):
        raise UserError(f"{exp_dir}: no Tune experiment state to resume from")
    data = load_data(spec)
    tuner = tune.Tuner.restore(str(exp_dir), trainable=_trainable(spec, data),
                               resume_unfinished=True, resume_errored=True)
    tuner.fit()
    _mark_finished(exp_dir)
    return exp_dir


def unfinished_trials(exp_dir: Path) -> list[str]:
    """Trials neither TERMINATED nor ERROR (a search stopped by Ctrl-C leaves some)."""
    from ray.tune import ExperimentAnalysis
    analysis = ExperimentAnalysis(str(exp_dir))
    return [t.trial_id for t in analysis.trials if t.status not in ("TERMINATED", "ERROR")]
