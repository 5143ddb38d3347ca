"""The command line behind launch.py: one parser with subcommands (shared flags from parent
parsers), one error boundary, and one path that runs a search, used by a new search, --resume and
`extend`.

    python launch.py [search] --search-space NAME_OR_PATH [--address auto|local|HOST:PORT] [overrides...]
    python launch.py [search] --resume EXPERIMENT_DIR_OR_URI
    python launch.py export EXPERIMENT_DIR_OR_URI [--images DIR] [--out FILE] [--force]
    python launch.py export EXPERIMENT_DIR_OR_URI --pick "latency_ms<=2" | --trial ID [--images DIR ...]
    python launch.py report EXPERIMENT_DIR_OR_URI
    python launch.py extend EXPERIMENT_DIR_OR_URI --num-samples N [--max-t M]
    python launch.py reproduce EXPERIMENT_DIR_OR_URI [--trial ID] [--out DIR] [--set KEY=VALUE]

Experiments live in a local folder or any storage URI pyarrow understands (s3://, gs://, file://).

User mistakes print one `error:` line and exit 2 (tracebacks only with --debug); Ctrl-C exits 130."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import INTERRUPTED_EXIT, Interrupted, OneLineParser, UserError, run_command
from .spec.model import EARLY_STOPPING
from .storage import path_arg

if TYPE_CHECKING:
    from .spec import SearchSpec
    from .storage import Location

DEFAULT_STORAGE = "ray_results"
# options that shape a new search: --resume continues the saved one as it was and refuses them
NEW_SEARCH_ONLY = {
    "num_samples": "--num-samples",
    "max_concurrent": "--max-concurrent",
    "cpus_per_trial": "--cpus-per-trial",
    "gpus_per_trial": "--gpus-per-trial",
    "seed": "--seed",
    "name": "--name",
    "storage_path": "--storage-path",
    "overrides": "--set",
}


# ------------------------------------------------------------------ the parser
def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1-65535, got {text!r}")
    return port


def _gpu_arg(text: str):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def _parents() -> dict[str, argparse.ArgumentParser]:
    """The flag groups several subcommands share."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    experiment = argparse.ArgumentParser(add_help=False)
    experiment.add_argument("experiment", help="the experiment's folder or storage URI")
    ray = argparse.ArgumentParser(add_help=False)
    ray.add_argument(
        "--address",
        default=None,
        help="auto or HOST:PORT: attach to that cluster; local: always a Ray of our own "
        "(default: the cluster a `ray start` runs on this machine, if any, else a Ray of our own)",
    )
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--dashboard-port", type=_port, default=None)
    run.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2, 3], help="Tune verbosity")
    run.add_argument("--no-final", action="store_true", help="skip the final stage")
    return {"common": common, "experiment": experiment, "ray": ray, "run": run}


def _search_command(subs, p: dict[str, argparse.ArgumentParser]) -> None:
    """`search` (the default): a new search from a space, or --resume."""
    s = subs.add_parser("search", parents=[p["common"], p["ray"], p["run"]], help="run or resume a search (default)")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--search-space", help="a YAML path, or a name in search_spaces/ (e.g. smoke)")
    src.add_argument("--resume", metavar="EXPERIMENT", help="continue an interrupted search (a folder or URI)")
    s.add_argument("--num-samples", type=int)
    s.add_argument("--max-concurrent", type=int)
    s.add_argument("--cpus-per-trial", type=float)
    s.add_argument("--gpus-per-trial", type=_gpu_arg, help="a fraction of a GPU per trial, or auto (pack by memory)")
    s.add_argument("--seed", type=int)
    s.add_argument("--name", help="experiment name (default: <space name>_<timestamp>)")
    s.add_argument(
        "--storage-path",
        default=None,
        help=f"where experiments go: a folder or a URI such as s3://bucket/prefix (default "
        f"./{DEFAULT_STORAGE}; multi-node: a shared folder or an object store)",
    )
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fixed trainer value for every trial (repeatable)",
    )
    s.set_defaults(func=cmd_search)


def _export_command(subs, p: dict[str, argparse.ArgumentParser]) -> None:
    """`export`: the final stage again, or a folder of images predicted."""
    e = subs.add_parser(
        "export",
        parents=[p["common"], p["experiment"], p["ray"]],
        help="re-run the final stage, or predict a folder of images",
    )
    e.add_argument(
        "--images", type=path_arg("images are read on this machine"), help="predict every image under DIR instead"
    )
    e.add_argument(
        "--out",
        type=path_arg("pre.csv is written on this machine"),
        help="pre.csv path (with --images; default DIR/pre.csv)",
    )
    e.add_argument("--force", action="store_true", help="replace an existing --out file")
    e.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images (reported)")
    e.add_argument(
        "--pick",
        metavar="BOUNDS",
        help="multi-objective search: the most accurate Pareto front member (on validation) within bounds "
        "such as 'latency_ms<=2,val_acc>=0.98' (metrics: val_acc, params, size_mb, mflops, latency_ms); "
        "with --images it predicts them, else it is named with its model files",
    )
    e.add_argument("--trial", metavar="ID", help="multi-objective search: this front member instead of --pick")
    e.set_defaults(func=cmd_export)


def _report_command(subs, p: dict[str, argparse.ArgumentParser]) -> None:
    """`report`: report.html rebuilt."""
    r = subs.add_parser(
        "report",
        parents=[p["common"], p["experiment"]],
        help="rebuild final/report.html from a finished experiment (no training)",
    )
    r.set_defaults(func=cmd_report)


def _extend_command(subs, p: dict[str, argparse.ArgumentParser]) -> None:
    """`extend`: more trials for a finished search."""
    x = subs.add_parser(
        "extend",
        parents=[p["common"], p["experiment"], p["ray"], p["run"]],
        help="continue a finished search with more trials (search/extend.py)",
    )
    x.add_argument("--num-samples", type=int, required=True, help="how many more trials")
    x.add_argument(
        "--max-t",
        type=int,
        default=None,
        help="let trials train longer: up to this many epochs (re-runs the best finished configs first)",
    )
    x.add_argument(
        "--promote",
        type=int,
        default=2,
        help="with --max-t: how many of the best finished configs are re-run first (default 2)",
    )
    x.set_defaults(func=cmd_extend)


def _audit_command(subs, p: dict[str, argparse.ArgumentParser]) -> None:
    """`audit`: stopped trials trained on to max_t."""
    a = subs.add_parser(
        "audit",
        parents=[p["common"], p["experiment"], p["ray"], p["run"]],
        help="train on the best trials early stopping ended, to measure what it cost",
    )
    a.add_argument("--top-k", type=int, default=None, help="how many stopped trials (default: the space's audit.top_k)")
    a.set_defaults(func=cmd_audit)


def _reproduce_command(subs, p: dict[str, argparse.ArgumentParser]) -> None:
    """`reproduce`: a trial retrained without Ray."""
    q = subs.add_parser(
        "reproduce",
        parents=[p["common"], p["experiment"]],
        help="retrain a trial without Ray and compare its per-epoch validation",
    )
    q.add_argument("--trial", default=None, help="trial id or name (default: the best trial)")
    q.add_argument(
        "--out",
        type=path_arg("the retraining is a local training run"),
        help="output folder (default EXPERIMENT/reproduce/<trial id>)",
    )
    q.add_argument("--force", action="store_true", help="replace an earlier retraining in the output folder")
    q.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a trainer value (a what-if: then it should not reproduce)",
    )
    q.set_defaults(func=cmd_reproduce)


def build_parser() -> argparse.ArgumentParser:
    p = _parents()
    top = OneLineParser(prog="launch.py", description="Ray Tune hyperparameter search.")
    subs = top.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for add in (_search_command, _export_command, _report_command, _extend_command, _audit_command, _reproduce_command):
        add(subs, p)
    return top


SUBCOMMANDS = ("search", "export", "report", "extend", "audit", "reproduce")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        argv = ["search", *argv]  # `launch.py --search-space ...`: the search is the default command
    return run_command(lambda: build_parser().parse_args(argv), _command)


def _command(args) -> int:
    from .config import check_environment

    check_environment()  # a bad environment variable: one line naming it, before anything starts
    return args.func(args)


# ------------------------------------------------------------------ one way to run a search
@dataclass
class SearchRun:
    """What differs between a new search, --resume and `extend`; `run_search_command` does the rest."""

    spec: SearchSpec  # the SearchSpec whose data, resources and warning apply
    experiment: Location  # the experiment Location (what --resume and the final stage get)
    job_name: str
    fit: Callable  # (data, data_dir) → the run's folder
    folder: Location  # the run's folder as known before it starts (for the Ctrl-C line)
    extension: bool = False
    audit: bool = False  # after the fit, train on the best trials early stopping ended
    before_fit: Callable | None = None  # (data) → spec, after Ray started (gpu: auto)


def run_search_command(args, run: SearchRun) -> int:
    from .experiment import Experiment
    from .search import runner
    from .spec import distinct_warning, early_rung_warning

    spec = run.spec
    data_dir = runner.data_dir_of(spec)  # before Ray starts: a data problem fails in seconds
    data = runner.load_data(spec, data_dir)
    if spec.constraints:  # before Ray starts: a constraint no model of the space can meet
        from .search.feasible import check_constraints

        check_constraints(spec, len(data.class_names))
    print_dashboard(runner.start_ray(args.address, args.dashboard_port, job_name=run.job_name))
    runner.check_resources(spec)
    if run.before_fit is not None:
        spec = run.before_fit(data)
    for warning in (early_rung_warning(spec, len(data.labels["train"])), distinct_warning(spec)):
        if warning:  # said once the search really starts
            print(warning, file=sys.stderr, flush=True)
    started = time.time()
    try:
        folder = run.fit(spec, data, data_dir)
    except KeyboardInterrupt:
        return _interrupted(run.experiment, run.folder if run.extension else None)
    if _was_interrupted(Experiment.open(folder), started):  # Tune handled a Ctrl-C and returned early
        return _interrupted(run.experiment, folder if run.extension else None)
    print(f"{'extension' if run.extension else 'search'} finished in {time.time() - started:.0f}s: {folder}")
    if run.audit and not args.no_final:  # --no-final: the search alone (`launch.py audit EXP` later)
        _audit(Experiment.open(run.experiment), data, spec.audit.top_k, args.verbose, data_dir)
    if not args.no_final:
        from .final import run_final

        run_final(Experiment.open(run.experiment))  # over every trial: the search's and each extension's
    return 0


def _audit(exp, data, top_k: int, verbose: int, data_dir) -> None:
    """The audit run (search/audit.py): what early stopping cost, measured. A Ctrl-C that interrupted
    it is an `Interrupted` (exit 130) saying how to continue it."""
    from .experiment import Experiment
    from .experiment.records import finish_run
    from .search.audit import run_audit

    if top_k <= 0 or exp.spec.scheduler.type not in EARLY_STOPPING:
        return
    started = time.time()
    try:
        run = run_audit(exp, data, top_k, verbose, data_dir)
        interrupted = run is not None and bool(Experiment.open(run).unfinished())  # Tune returned on a Ctrl-C
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:
        raise Interrupted(
            f"the audit was interrupted; the search itself is complete: `python launch.py audit "
            f"{exp.location}` continues it, `python launch.py export {exp.location}` skips it"
        )
    if run is not None:
        finish_run(exp.location)  # the search's wall time (and the ETA's actual) include its audit
        print(f"audit finished in {time.time() - started:.0f}s: {run}", flush=True)


def _was_interrupted(exp, started: float) -> bool:
    """Whether the fit ended early on a Ctrl-C: unfinished trials in Tune's state that the time
    budget did not cut. Whether the budget fired is recorded when it fires (recorder.BudgetStopper);
    experiments written before that was recorded: from the wall clock."""
    record = exp.outcomes
    if record is not None and record.budget_fired is not None:
        budget_hit = record.budget_fired
    else:
        budget_hit = exp.spec.time_budget_s is not None and time.time() - started >= exp.spec.time_budget_s
    return bool(exp.unfinished()) and not budget_hit


def _interrupted(exp_dir, extension=None) -> int:
    if extension is not None:
        print(
            f"\ninterrupted; the extension's state is saved. Resume it with: python launch.py --resume "
            f"{extension} --no-final, then run the final stage over every trial: python launch.py export {exp_dir}",
            file=sys.stderr,
        )
        return INTERRUPTED_EXIT
    print(
        f"\ninterrupted; the search state is saved. Resume with: python launch.py --resume {exp_dir}", file=sys.stderr
    )
    return INTERRUPTED_EXIT


# ------------------------------------------------------------------ search (new or --resume)
def _apply_overrides(raw: dict, args) -> dict:
    from .config import parse_overrides

    raw = dict(raw)
    for key, value in (("num_samples", args.num_samples), ("max_concurrent", args.max_concurrent), ("seed", args.seed)):
        if value is not None:
            raw[key] = value
    res = dict(raw.get("resources") or {})
    if args.cpus_per_trial is not None:
        res["cpu"] = args.cpus_per_trial
    if args.gpus_per_trial is not None:
        res["gpu"] = args.gpus_per_trial
    if res:
        raw["resources"] = res
    if args.overrides:
        raw["fixed"] = {**(raw.get("fixed") or {}), **parse_overrides(args.overrides)}
    return raw


def _refuse_with_resume(args) -> None:
    """--resume continues the saved search exactly; options that would change it are refused
    (Tune restores an experiment as it was: they would be silently ignored)."""
    given = [flag for key, flag in NEW_SEARCH_ONLY.items() if getattr(args, key) not in (None, [])]
    if given:
        raise UserError(
            f"--resume: {', '.join(given)} cannot change a saved search (it continues as it "
            "was started); drop them, or start a new search with --search-space"
        )


def _new_search(args) -> SearchRun:
    from .config import load_yaml_file
    from .search import runner
    from .spec import parse_spec, resolve_path
    from .storage import Location, check_name

    path = resolve_path(args.search_space)
    spec = parse_spec(_apply_overrides(load_yaml_file(path), args), str(path))
    storage = Location.parse(args.storage_path or DEFAULT_STORAGE, "--storage-path")
    name = check_name(args.name) if args.name is not None else f"{spec.name}_{time.strftime('%Y%m%d-%H%M%S')}"
    exp = storage / name
    storage.check_writable("--storage-path")
    runner.check_new_experiment(exp)  # before Ray starts: never over an earlier search

    def auto_gpu(data):
        from .search.packing import resolve_auto_gpu

        packed, packing = resolve_auto_gpu(spec, data)  # gpu: auto → a measured share, saved with the spec
        if packing is not None:
            print(packing.line(), flush=True)
        return packed

    def fit(spec, data, data_dir):
        return runner.run_search(spec, exp, data, args.verbose, data_dir=data_dir)

    return SearchRun(spec, exp, exp.name, fit, exp, before_fit=auto_gpu, audit=True)


def _resumed_search(args) -> SearchRun:
    from .experiment import Experiment
    from .experiment.layout import AUDIT_PREFIX, SPEC_FILE
    from .search import runner
    from .storage import Location

    _refuse_with_resume(args)
    where = Location.parse(args.resume, "--resume")
    if where.name.startswith(AUDIT_PREFIX) and (where.parent / SPEC_FILE).exists():
        raise UserError(
            f"--resume {args.resume}: an audit run inside {where.parent}; continue it with "
            f"`python launch.py audit {where.parent}`"
        )
    exp = Experiment.open(where)

    def fit(spec, data, data_dir):
        return runner.resume_search(exp.location, spec, data, data_dir)

    return SearchRun(exp.spec, exp.location, exp.name, fit, exp.location, audit=True)


def cmd_search(args) -> int:
    return run_search_command(args, _new_search(args) if args.resume is None else _resumed_search(args))


def _whole_experiment(text: str, command: str):
    """The experiment `text` names, refused when it is a folder inside one (an extend_<k> run, a
    trial's folder): its trials would never reach that experiment's final stage."""
    from .experiment import Experiment
    from .experiment.layout import outer_experiment
    from .storage import Location

    place = Location.parse(text, "experiment")
    outer = outer_experiment(place)
    if outer is not None:
        raise UserError(
            f"{command} {text}: a folder inside the experiment {outer}, whose final stage would never "
            f"see its trials; {command} the experiment itself: python launch.py {command} {outer} ..."
        )
    return Experiment.open(place)


def cmd_extend(args) -> int:
    from .experiment.layout import next_extension
    from .search.extend import check_request, extend_search

    exp = _whole_experiment(args.experiment, "extend")
    check_request(exp.spec, args.num_samples, args.max_t, args.promote)  # before Ray starts

    def fit(spec, data, data_dir):
        return extend_search(exp, data, args.num_samples, args.max_t, args.promote, args.verbose, data_dir)

    return run_search_command(
        args,
        SearchRun(exp.spec, exp.location, f"{exp.name} (extend)", fit, next_extension(exp.location), extension=True),
    )


def cmd_audit(args) -> int:
    from .experiment import Experiment
    from .search import runner

    exp = _whole_experiment(args.experiment, "audit")
    top_k = exp.spec.audit.top_k if args.top_k is None else args.top_k
    if top_k < 1:
        raise UserError(f"--top-k {top_k}: must be at least 1")
    if exp.spec.scheduler.type not in EARLY_STOPPING:
        raise UserError(f"{exp.location}: a {exp.spec.scheduler.type} search stops no trial early; nothing to audit")
    data_dir = runner.data_dir_of(exp.spec)
    data = runner.load_data(exp.spec, data_dir)
    print_dashboard(runner.start_ray(args.address, args.dashboard_port, job_name=f"{exp.name} (audit)"))
    _audit(exp, data, top_k, args.verbose, data_dir)
    if not args.no_final:
        from .final import run_final

        run_final(Experiment.open(exp.location))
    return 0


# ------------------------------------------------------------------ what users do with a finished search
def cmd_report(args) -> int:
    from .experiment import Experiment
    from .report_html import build_report
    from .storage import Location

    print(f"wrote {build_report(Experiment.open(Location.parse(args.experiment, 'experiment')))}")
    return 0


def cmd_export(args) -> int:
    from .experiment import Experiment
    from .final import export_images, run_final
    from .search.runner import start_ray
    from .storage import Location

    if args.pick is not None:
        from .experiment.front import parse_pick

        parse_pick(args.pick)  # bad syntax: one line before anything is read
    exp = Experiment.open(Location.parse(args.experiment, "experiment"))
    if args.images is None and (args.out is not None or args.force):
        raise UserError("--out/--force: only with --images (the final stage writes into the experiment's final/)")
    if args.images is not None or args.pick is not None or args.trial is not None:
        export_images(exp, args.images, args.out, args.skip_corrupt, args.force, args.pick, args.trial)
        return 0
    print_dashboard(start_ray(args.address))  # the final stage runs as Ray tasks: where, and where to watch
    run_final(exp)
    return 0


def cmd_reproduce(args) -> int:
    from .experiment import Experiment
    from .reproduce import reproduce, summary
    from .storage import Location

    if args.out is not None:  # before the experiment is read: never over an earlier run without --force
        from .reproduce import OUT_HINT
        from .train import check_out

        Location.parse(args.out, "--out").check_writable("--out")
        check_out(args.out, args.force, hint=OUT_HINT)
    exp = Experiment.open(Location.parse(args.experiment, "experiment"))
    result = reproduce(exp, args.trial, args.out, args.overrides, force=args.force)
    print(summary(result), flush=True)
    return 0 if result.reproduced else 1


# ------------------------------------------------------------------ the dashboard line
def token_source() -> str:
    """Where the dashboard's login token comes from, never the token itself."""
    from . import env

    if env.token_set():
        return f"the {env.TOKEN_ENV} environment variable"
    path = env.token_path() or "~/.ray/auth_token"
    return f"{path} on the head node (or run `ray get-auth-token` there)"


def print_dashboard(info: dict) -> None:
    """The dashboard URL and how to log in: with token auth the page asks for the token first."""
    url = info.get("dashboard_url")
    if not url:
        print("Ray dashboard: not running (install ray[default])", flush=True)
        return
    lines = [f"Ray dashboard: {url}"]
    if info.get("token_auth"):
        lines.append(f"  login: the page asks for a token; paste it from {token_source()}")
    port = url.rsplit(":", 1)[-1].strip("/")
    if info.get("found_local"):
        lines.insert(
            0,
            f"attached to the Ray cluster `ray start` runs on this machine ({info.get('address')}); "
            "--address local starts a Ray of our own",
        )
    elif info.get("attached"):
        lines.append(
            f"  remote cluster: ssh -L {port}:localhost:{port} <user>@<head node>, then open http://localhost:{port}"
        )
    lines.append(
        f"  as a Ray job: RAY_ADDRESS={url} ray job submit --working-dir . -- python launch.py ..."
        + (" (the job CLI reads the same token)" if info.get("token_auth") else "")
    )
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
