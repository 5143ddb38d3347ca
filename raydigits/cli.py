"""The command line behind launch.py:

    python launch.py --search-space NAME_OR_PATH [--address auto|HOST:PORT] [overrides...]
    python launch.py --resume EXPERIMENT_DIR_OR_URI
    python launch.py export EXPERIMENT_DIR_OR_URI [--images DIR] [--out FILE] [--force]
    python launch.py report EXPERIMENT_DIR_OR_URI
    python launch.py extend EXPERIMENT_DIR_OR_URI --num-samples N [--max-t M]
    python launch.py reproduce EXPERIMENT_DIR_OR_URI [--trial ID] [--out DIR] [--set KEY=VALUE]

Experiments live in a local folder or any storage URI pyarrow understands (s3://, gs://, file://).

User mistakes print one `error:` line and exit 2 (tracebacks only with --debug)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import UserError

DEFAULT_STORAGE = "ray_results"
# options that shape a new search: --resume continues the saved one as it was and refuses them
NEW_SEARCH_ONLY = {"num_samples": "--num-samples", "max_concurrent": "--max-concurrent",
                   "cpus_per_trial": "--cpus-per-trial", "gpus_per_trial": "--gpus-per-trial",
                   "seed": "--seed", "name": "--name", "storage_path": "--storage-path", "overrides": "--set"}


def _search_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py", description="Ray Tune hyperparameter search.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--search-space", help="a YAML path, or a name in search_spaces/ (e.g. smoke)")
    src.add_argument("--resume", metavar="EXPERIMENT", help="continue an interrupted search (a folder or URI)")
    p.add_argument("--address", default=None, help="attach to a running cluster: auto or HOST:PORT")
    p.add_argument("--num-samples", type=int)
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=_gpu_arg, help="a fraction of a GPU per trial, or auto (pack by memory)")
    p.add_argument("--seed", type=int)
    p.add_argument("--name", help="experiment name (default: <space name>_<timestamp>)")
    p.add_argument("--storage-path", default=None,
                   help=f"where experiments go: a folder or a URI such as s3://bucket/prefix (default "
                        f"./{DEFAULT_STORAGE}; multi-node: a shared folder or an object store)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fixed trainer value for every trial (repeatable)")
    p.add_argument("--no-final", action="store_true", help="skip the final stage")
    p.add_argument("--dashboard-port", type=_port, default=None)
    p.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2, 3], help="Tune verbosity")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p


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


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py export", description="Re-run the final stage of an experiment.")
    p.add_argument("experiment", help="the experiment's folder or URI")
    p.add_argument("--images", type=Path, default=None, help="predict every image under DIR instead")
    p.add_argument("--out", type=Path, default=None, help="pre.csv path (with --images; default DIR/pre.csv)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images (reported)")
    p.add_argument("--address", default=None)
    p.add_argument("--debug", action="store_true")
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py report",
                                description="Rebuild final/report.html from a finished experiment (no training).")
    p.add_argument("experiment", help="the experiment folder or storage URI")
    p.add_argument("--debug", action="store_true")
    return p


def cmd_report(args) -> int:
    from .report_html import build_report
    from .search.runner import read_spec
    from .storage import Location
    exp = Location.parse(args.experiment, "experiment")
    print(f"wrote {build_report(exp, read_spec(exp))}")
    return 0


def _apply_overrides(raw: dict, args) -> dict:
    from .config import parse_overrides
    raw = dict(raw)
    for key, value in (("num_samples", args.num_samples), ("max_concurrent", args.max_concurrent),
                       ("seed", args.seed)):
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
        raise UserError(f"--resume: {', '.join(given)} cannot change a saved search (it continues as it "
                        "was started); drop them, or start a new search with --search-space")


def cmd_search(args) -> int:
    from .config import load_yaml_file
    from .search import runner
    from .spec import early_rung_warning, parse_spec, resolve_path
    from .storage import Location, check_name
    if args.resume is None:
        path = resolve_path(args.search_space)
        spec = parse_spec(_apply_overrides(load_yaml_file(path), args), str(path))
        storage = Location.parse(args.storage_path or DEFAULT_STORAGE, "--storage-path")
        name = check_name(args.name) if args.name is not None else f"{spec.name}_{time.strftime('%Y%m%d-%H%M%S')}"
        exp = storage / name
        storage.check_writable("--storage-path")
        runner.check_new_experiment(exp)  # before Ray starts: never over an earlier search
    else:
        _refuse_with_resume(args)
        exp = Location.parse(args.resume, "--resume")
        spec = runner.read_spec(exp)
    data_dir = runner.data_dir_of(spec)  # before Ray starts: a data problem fails in seconds
    data = runner.load_data(spec, data_dir)
    info = runner.start_ray(args.address, args.dashboard_port, job_name=exp.name)
    print_dashboard(info)
    runner.check_resources(spec)
    if args.resume is None:
        from .search.packing import resolve_auto_gpu
        packing = resolve_auto_gpu(spec, data)  # gpu: auto → a measured share, saved with the spec
        if packing is not None:
            print(packing.line(), flush=True)
    warning = early_rung_warning(spec, len(data.labels["train"]))  # said once the search really starts
    if warning:
        print(warning, file=sys.stderr, flush=True)
    started = time.time()
    try:
        if args.resume is None:
            runner.run_search(spec, exp, data, args.verbose, data_dir=data_dir)
        else:
            runner.resume_search(exp, spec, data, data_dir)
    except KeyboardInterrupt:
        return _interrupted(exp)
    if _was_interrupted(exp, spec, started):  # Tune handled a Ctrl-C and returned early
        return _interrupted(exp)
    print(f"search finished in {time.time() - started:.0f}s: {exp}")
    if args.no_final:
        return 0
    from .final import run_final
    run_final(exp, spec)
    return 0


def _was_interrupted(exp_dir, spec, started: float) -> bool:
    """Whether the fit ended early on a Ctrl-C: unfinished trials in Tune's state that the time
    budget did not cut. Whether the budget fired is recorded when it fires (recorder.BudgetStopper);
    experiments written before that was recorded: from the wall clock."""
    from .experiment import unfinished_trials
    from .search.outcomes import read_record
    record = read_record(exp_dir) or {}
    if "budget_fired" in record:
        budget_hit = bool(record["budget_fired"])
    else:
        budget_hit = spec.time_budget_s is not None and time.time() - started >= spec.time_budget_s
    return bool(unfinished_trials(exp_dir)) and not budget_hit


def _interrupted(exp_dir, extension=None) -> int:
    if extension is not None:
        print(f"\ninterrupted; the extension's state is saved. Resume it with: python launch.py --resume "
              f"{extension} --no-final, then run the final stage over every trial: python launch.py export {exp_dir}",
              file=sys.stderr)
        return 130
    print(f"\ninterrupted; the search state is saved. Resume with: python launch.py --resume {exp_dir}",
          file=sys.stderr)
    return 130


def token_source() -> str:
    """Where the dashboard's login token comes from, never the token itself."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the RAY_AUTH_TOKEN environment variable"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"
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
    if info.get("attached"):
        lines.append(f"  remote cluster: ssh -L {port}:localhost:{port} <user>@<head node>, then open "
                     f"http://localhost:{port}")
    lines.append(f"  as a Ray job: RAY_ADDRESS={url} ray job submit --working-dir . -- python launch.py ..."
                 + (" (the job CLI reads the same token)" if info.get("token_auth") else ""))
    print("\n".join(lines), flush=True)


def cmd_export(args) -> int:
    from .final import export_images, run_final
    from .search.runner import read_spec, start_ray
    from .storage import Location
    exp = Location.parse(args.experiment, "experiment")
    spec = read_spec(exp)
    if args.images is not None:
        export_images(exp, args.images, args.out, args.skip_corrupt, args.force)
        return 0
    if args.out is not None or args.force:
        raise UserError("--out/--force: only with --images (the final stage writes into the experiment's final/)")
    start_ray(args.address)
    run_final(exp, spec)
    return 0


def _reproduce_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py reproduce",
                                description="Retrain a trial without Ray and compare its per-epoch validation.")
    p.add_argument("experiment", help="the experiment folder or storage URI")
    p.add_argument("--trial", default=None, help="trial id or name (default: the best trial)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default EXPERIMENT/reproduce/<trial id>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a trainer value (a what-if: then it should not reproduce)")
    p.add_argument("--debug", action="store_true")
    return p


def cmd_reproduce(args) -> int:
    from .reproduce import reproduce, summary
    from .storage import Location
    if args.out is not None:
        Location.parse(args.out, "--out").check_writable("--out")
    result = reproduce(args.experiment, args.trial, args.out, args.overrides)
    print(summary(result), flush=True)
    return 0 if result.reproduced else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser, command = SUBCOMMANDS.get(sub, (_search_parser, cmd_search))
    args = parser().parse_args(argv[1:] if sub else argv)
    try:
        return command(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _extend_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py extend",
                                description="Continue a finished search with more trials (search/extend.py).")
    p.add_argument("experiment", help="the experiment folder or storage URI")
    p.add_argument("--num-samples", type=int, required=True, help="how many more trials")
    p.add_argument("--max-t", type=int, default=None,
                   help="let trials train longer: up to this many epochs (re-runs the best finished configs first)")
    p.add_argument("--promote", type=int, default=2,
                   help="with --max-t: how many of the best finished configs are re-run first (default 2)")
    p.add_argument("--address", default=None)
    p.add_argument("--dashboard-port", type=_port, default=None)
    p.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2, 3])
    p.add_argument("--no-final", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def cmd_extend(args) -> int:
    from .search import runner
    from .search.extend import PREFIX, check_request, extend_search, extension_runs
    from .storage import Location
    exp = Location.parse(args.experiment, "experiment")
    spec = runner.read_spec(exp)
    check_request(spec, args.num_samples, args.max_t, args.promote)  # before Ray starts
    data_dir = runner.data_dir_of(spec)
    data = runner.load_data(spec, data_dir)
    print_dashboard(runner.start_ray(args.address, args.dashboard_port, job_name=f"{exp.name} (extend)"))
    runner.check_resources(spec)
    started = time.time()
    nxt = exp / f"{PREFIX}{len(extension_runs(exp)) + 1}"
    try:
        run = extend_search(exp, spec, data, args.num_samples, args.max_t, args.promote, args.verbose, data_dir)
    except KeyboardInterrupt:
        return _interrupted(exp, extension=nxt)
    if _was_interrupted(run, runner.read_spec(run), started):  # Tune handled a Ctrl-C and returned early
        return _interrupted(exp, extension=run)
    print(f"extension finished in {time.time() - started:.0f}s: {run}")
    if not args.no_final:
        from .final import run_final
        run_final(exp, spec)  # over every trial: the search's and each extension's
    return 0


SUBCOMMANDS = {"export": (_export_parser, cmd_export), "report": (_report_parser, cmd_report),
               "extend": (_extend_parser, cmd_extend), "reproduce": (_reproduce_parser, cmd_reproduce)}


if __name__ == "__main__":
    raise SystemExit(main())
