"""Start or attach to Ray, check that trials can ever be scheduled, assemble the Tuner (or restore
one), run it. The dataset is loaded once here and put once into the object store."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from .. import env, ray_compat
from ..config import data_dir_path
from ..data import ensure_prepared, load_dataset
from ..data.store import Dataset
from ..errors import UserError
from ..experiment import layout, records
from ..spec import POPULATION, SearchSpec, distinct_configs, trial_threads
from ..storage import Location
from . import reaper
from .tune_space import build_search_alg, build_tune_scheduler, param_space

# Where `ray start` records the cluster it launched (what `--address auto` finds); a killed one stays.
RAY_CURRENT_CLUSTER = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
PROBE_TIMEOUT_S = 5.0  # a HOST:PORT that does not answer in this long is refused
FOUND_PROBE_S = 0.5  # a recorded local cluster that does not answer this fast is taken as gone
ERROR_CHARS = 200  # the part of a connection error shown in our one-line message
METRIC_COLUMNS = {
    "epoch": "epoch",
    "val_acc": "val_acc",
    "val_loss": "val_loss",
    "lr": "lr_now",
    "images_per_s": "img/s",
}
PARAMETER_COLUMNS = 8  # the progress table shows at most this many searched parameters
REPORT_EVERY_S = 15  # the progress table is printed at most this often
SYNC_PERIOD_S = 30  # remote storage: Tune uploads the experiment's state at least this often


def _connect(host: str, port: str, timeout_s: float) -> None:
    """One TCP connection to HOST:PORT, closed at once (an IPv6 host comes in brackets, as Ray
    records it: [::1]:6379); OSError when nothing answers within `timeout_s`."""
    socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()


def _probe(address: str, timeout_s: float = PROBE_TIMEOUT_S, what: str = "--address") -> None:
    """Fail in seconds when nothing listens at HOST:PORT (ray.init would retry for minutes). `what`:
    where the address came from (--address, or RAY_ADDRESS), named in the error."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    if address == "auto":  # the cluster a `ray start` on this machine recorded (maybe long dead)
        if not RAY_CURRENT_CLUSTER.exists():
            raise UserError(
                f"{what} auto: no Ray cluster was started on this machine (run `ray start --head`, or give HOST:PORT)"
            )
        hostport = RAY_CURRENT_CLUSTER.read_text().strip()
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"{what} {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        _connect(host, port, timeout_s)
    except OSError as exc:
        raise UserError(
            f"{what} {address}: nothing answers at {host}:{port} ({exc.strerror or exc}); "
            "is `ray start --head` running there?"
        ) from None


def running_local_cluster() -> str | None:
    """The cluster a `ray start` on this machine recorded, if it still runs here: the recorded
    GCS address is named by live Ray processes of this machine and answers. None otherwise (no
    record, or the record of a cluster that was killed: `ray start` leaves it behind)."""
    try:
        recorded = RAY_CURRENT_CLUSTER.read_text().strip()
    except OSError:
        return None
    host, _, port = recorded.rpartition(":")
    if not host or not port.isdigit() or recorded not in ray_compat.local_gcs_addresses():
        return None
    try:
        _connect(host, port, FOUND_PROBE_S)
    except OSError:
        return None
    return recorded


def start_ray(address: str | None, dashboard_port: int | None = None, job_name: str | None = None) -> dict:
    """Attach to a cluster or start a Ray of our own, with the dashboard on 127.0.0.1.
    `address` (else $RAY_ADDRESS): auto, HOST:PORT or ray://... attach there; `local` always starts
    a Ray of our own; none given attaches to the cluster a `ray start` runs on this machine when
    there is one (as `ray.init()` does: its start is already paid), else starts our own.
    The job carries `job_name` in its metadata (the dashboard's Jobs page shows it).
    Returns {dashboard_url, address, attached, found_local, token_auth}."""
    ray_compat.set_env_defaults()  # before the first `import ray`: Ray reads some of them then
    import ray
    from ray.job_config import JobConfig

    what = "--address" if address else env.ADDRESS_ENV
    address = address or env.address()
    found = running_local_cluster() if address is None else None
    if found:
        what, address = "the Ray cluster `ray start` runs on this machine, at", found
    ray_compat.quiet_ray_noise()
    job = JobConfig(metadata={"job_name": f"raydigits {job_name}"} if job_name else {})  # the Jobs page's Name
    own = address is None or address == "local"
    try:
        if not own:
            if not found:
                _probe(address, what=what)
            # a found cluster as `auto`: Ray then reads the same record and, as for any cluster it
            # finds by itself (never for an address given), sends the token `ray start` made
            ctx = ray.init(
                address="auto" if found else address, logging_level="WARNING", log_to_driver=True, job_config=job
            )
            if found and ctx.address_info.get("gcs_address") != found:  # the record changed meanwhile
                ray.shutdown()
                raise ConnectionError(f"Ray attached to {ctx.address_info.get('gcs_address')} instead")
        else:
            # a new Ray of our own, never a cluster some earlier `ray start` left behind half-dead;
            # its processes end with this one, even when it is killed (reaper.py)
            reaper.watch()
            ctx = ray.init(
                address="local",
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                job_config=job,
                dashboard_port=dashboard_port,
                logging_level="WARNING",
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fix = " (--address local starts a Ray of our own)" if found else ""
        raise UserError(f"{what} {address}: cannot connect to a Ray cluster ({first[:ERROR_CHARS]}){fix}") from None
    url = ctx.dashboard_url
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return {
        "dashboard_url": url,
        "address": ctx.address_info.get("address"),
        "attached": not own,
        "found_local": bool(found),
        "token_auth": ray_compat.token_auth_enabled(),
    }


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
    summary = (
        ", ".join(
            f"{n.get('NodeManagerAddress')}: {n['Resources'].get('CPU', 0):g} CPU {n['Resources'].get('GPU', 0):g} GPU"
            for n in nodes
        )
        or "no alive nodes"
    )
    raise UserError(
        f"resources: each trial asks for cpu={spec.resources.cpu:g} gpu={spec.resources.gpu}, "
        f"but no node of this cluster has that ({summary}); lower resources.cpu/gpu "
        "(or --cpus-per-trial / --gpus-per-trial)"
    )


def _trainable(spec: SearchSpec, data: Dataset, data_dir: Path, starts: dict[str, str] | None = None):
    """The trial function with the dataset put once into the object store (`with_parameters`),
    as a Tune trainable class that asks for the spec's resources and is named after its trial.
    `starts`: an audit's checkpoint (URI) for each stopped trial it continues (search/audit.py)."""
    from ray import tune

    from .trainable import train_trial

    threads = trial_threads(spec)
    fn = tune.with_parameters(
        train_trial, spec=spec, data=data, threads=threads, data_dir=str(data_dir), starts=starts or {}
    )
    return ray_compat.named_trainable(fn, {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu})


def _run_config(spec: SearchSpec, exp: Location, verbose: int):
    """Checkpoints, retries and the progress table (with an ETA line, progress.py); the outcome
    recorder, and the time budget as a stopper that says when it ended the run (recorder.py). Remote storage: Tune uploads the
    driver's experiment state at least every SYNC_PERIOD_S (and whenever trials checkpoint)."""
    from ray import tune

    from .progress import eta_reporter
    from .recorder import OutcomeRecorder, result_loggers

    reporter = tune.CLIReporter(
        metric_columns=METRIC_COLUMNS,
        parameter_columns=list(spec.parameters)[:PARAMETER_COLUMNS],
        max_report_frequency=REPORT_EVERY_S,
        sort_by_metric=False,
        metric=spec.metric,
        mode=spec.mode,
    )
    return tune.RunConfig(
        name=exp.name,
        storage_path=exp.parent.tune_path,
        verbose=verbose,
        progress_reporter=reporter,
        callbacks=[OutcomeRecorder(exp, spec.epochs, _broken(spec)), eta_reporter(spec, exp), *result_loggers()],
        stop=_stopper(spec, exp),
        sync_config=tune.SyncConfig(sync_period=SYNC_PERIOD_S),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=_checkpoint_config(spec),
    )


def _broken(spec: SearchSpec):
    """result -> the constraints it breaks; None when the spec has none."""
    return spec.broken_constraints if spec.constraints else None


def _stopper(spec: SearchSpec, exp_dir: Location):
    """The time budget; under PBT / PB2 also the last epoch, so that a trial's last result ends it
    before the scheduler sees it (PBT would perturb a finished trial and restart it for nothing);
    with constraints, an infeasible trial at its first result (every scheduler type)."""
    from ray.tune.stopper import CombinedStopper, MaximumIterationStopper

    from .recorder import BudgetStopper, ConstraintStopper

    stoppers = [BudgetStopper(spec.time_budget_s, exp_dir)] if spec.time_budget_s else []
    if spec.constraints:
        stoppers.append(ConstraintStopper(spec.broken_constraints))
    if spec.scheduler.type in POPULATION:
        stoppers.append(MaximumIterationStopper(spec.epochs))  # a trial's iterations are its epochs
    return stoppers[0] if len(stoppers) == 1 else (CombinedStopper(*stoppers) if stoppers else None)


def _checkpoint_config(spec: SearchSpec):
    """The best `checkpoints_to_keep` per trial by the search metric; under PBT / PB2 every one: a
    trial may be handed any other trial's latest checkpoint, which a best-by-metric rule may have
    deleted by the time it starts from it (Tune then fails the trial)."""
    from ray import tune

    if spec.scheduler.type in POPULATION:
        return tune.CheckpointConfig()
    return tune.CheckpointConfig(
        num_to_keep=spec.checkpoints_to_keep, checkpoint_score_attribute=spec.metric, checkpoint_score_order=spec.mode
    )


def data_dir_of(spec: SearchSpec) -> Path:
    """The spec's dataset folder, prepared if need be, as an absolute path (trials run in other
    working dirs)."""
    return ensure_prepared(data_dir_path(spec.fixed.get("data_dir"), "fixed.data_dir")).resolve()


def load_data(spec: SearchSpec, data_dir: Path | None = None) -> Dataset:
    """The train and val splits of the spec's dataset (of `data_dir` when given)."""
    return load_dataset(data_dir or data_dir_of(spec), splits=("train", "val"))


def check_new_experiment(exp: Location) -> None:
    """Refuse a place that already holds something: a search (ours or another Tune run's) is
    never written over; an earlier search is continued with --resume."""
    if layout.holds_search(exp):
        raise UserError(
            f"--name {exp.name}: {exp} already holds a search; pick another --name or continue it with --resume {exp}"
        )
    if exp.exists() and (not exp.is_dir() or exp.iterdir()):
        raise UserError(f"--name {exp.name}: {exp} already exists and is not an empty folder; pick another --name")


def run_search(
    spec: SearchSpec,
    exp: Location,
    data: Dataset,
    verbose: int = 1,
    data_dir: Path | None = None,
    search_alg=None,
    pinned: tuple[dict, ...] = (),
    space: dict | None = None,
    starts: dict[str, str] | None = None,
) -> Location:
    """A fresh search over `data` (from `load_data`; `data_dir` is where it came from, by default
    the spec's) into the experiment folder `exp`. Returns `exp` (experiment/ reads the results
    from there). A search that fails before Tune wrote any state leaves nothing behind. `space`
    replaces the spec's param_space and `starts` gives trials a checkpoint to start from (an audit)."""
    data_dir = data_dir or data_dir_of(spec)
    check_new_experiment(exp)
    exp.mkdir()
    layout.write_spec(exp, spec, data_dir)
    records.start_run(exp)
    try:
        _fit_new(
            spec,
            exp,
            data,
            data_dir,
            verbose,
            search_alg or build_search_alg(spec),
            space if space is not None else param_space(spec, pinned),
            starts,
        )
    except BaseException:
        if not exp.glob(ray_compat.STATE_GLOB):  # nothing to resume: do not block the same --name
            exp.delete()
        raise
    records.finish_run(exp)
    return exp


def _fit_new(
    spec: SearchSpec,
    exp: Location,
    data: Dataset,
    data_dir: Path,
    verbose: int,
    search_alg,
    space: dict,
    starts: dict[str, str] | None,
) -> None:
    from ray import tune

    tuner = tune.Tuner(
        _trainable(spec, data, data_dir, starts),
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=build_tune_scheduler(spec),
            num_samples=spec.num_samples,  # concurrency: build_search_alg
            # time budget: a stopper in _run_config
            trial_name_creator=lambda t: f"{spec.name}_{t.trial_id}",
            trial_dirname_creator=lambda t: f"{spec.name}_{t.trial_id}",
            # every scheduler: a trial that ends hands its process (torch loaded, the dataset
            # mapped) to the next one instead of a new process per trial, and PBT / PB2 keep theirs
            # across perturbations; each trial sets its process state anew (trainable.train_trial)
            reuse_actors=True,
        ),
        run_config=_run_config(spec, exp, verbose),
    )
    tuner.fit()


def resume_search(
    exp: Location,
    spec: SearchSpec,
    data: Dataset,
    data_dir: Path | None = None,
    space: dict | None = None,
    starts: dict[str, str] | None = None,
) -> Location:
    """Continue an experiment whose spec the caller read (`Experiment.open`); `space` and `starts`
    as `run_search` got them (an audit run)."""
    from ray import tune

    if not tune.Tuner.can_restore(exp.tune_path):
        raise UserError(f"{exp}: no Tune experiment state to resume from")
    if distinct_configs(spec) is not None:  # a finite random space: search/distinct.py saved its state
        from .distinct import check_saved_state

        check_saved_state(exp)  # a damaged state is one line here, not a Tune restore that hangs
    # param_space again: Tune saved its sample_from functions as placeholders, and trials the
    # searcher has yet to generate need the real functions back
    tuner = tune.Tuner.restore(
        exp.tune_path,
        trainable=_trainable(spec, data, data_dir or data_dir_of(spec), starts),
        param_space=space if space is not None else param_space(spec),
        resume_unfinished=True,
        resume_errored=True,
    )
    tuner.fit()
    records.finish_run(exp)
    return exp
