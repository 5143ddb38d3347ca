"""The command line behind launch.py:

    python launch.py --search-space NAME_OR_PATH [--address auto|HOST:PORT] [overrides...]
    python launch.py --resume EXPERIMENT_DIR
    python launch.py export EXPERIMENT_DIR [--images DIR] [--out FILE]
    python launch.py reproduce EXPERIMENT_DIR [--trial ID] [--out DIR] [--set KEY=VALUE]

User mistakes print one `error:` line and exit 2 (tracebacks only with --debug)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import UserError


def _search_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py", description="Ray Tune hyperparameter search.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--search-space", help="a YAML path, or a name in search_spaces/ (e.g. smoke)")
    src.add_argument("--resume", type=Path, metavar="EXPERIMENT_DIR", help="continue an interrupted search")
    p.add_argument("--address", default=None, help="attach to a running cluster: auto or HOST:PORT")
    p.add_argument("--num-samples", type=int)
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=_gpu_arg, help="a fraction of a GPU per trial, or auto (pack by memory)")
    p.add_argument("--seed", type=int)
    p.add_argument("--name", help="experiment name (default: <space name>_<timestamp>)")
    p.add_argument("--storage-path", default="ray_results",
                   help="where experiments go (default ./ray_results; multi-node: a shared path or s3://)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fixed trainer value for every trial (repeatable)")
    p.add_argument("--no-final", action="store_true", help="skip the final stage")
    p.add_argument("--dashboard-port", type=int, default=None)
    p.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2, 3], help="Tune verbosity")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p


def _gpu_arg(text: str):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py export", description="Re-run the final stage of an experiment.")
    p.add_argument("experiment", type=Path)
    p.add_argument("--images", type=Path, default=None, help="predict every image under DIR instead")
    p.add_argument("--out", type=Path, default=None, help="pre.csv path (with --images)")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images (reported)")
    p.add_argument("--address", default=None)
    p.add_argument("--debug", action="store_true")
    return p


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


def cmd_search(args) -> int:
    from .config import load_yaml_file
    from .search import runner
    from .search.spec import parse_spec, resolve_path
    if args.resume is None:
        path = resolve_path(args.search_space)
        spec = parse_spec(_apply_overrides(load_yaml_file(path), args), str(path))
        storage = args.storage_path if "://" in args.storage_path else str(Path(args.storage_path).resolve())
        name = args.name or f"{spec.name}_{time.strftime('%Y%m%d-%H%M%S')}"
        check_writable(Path(storage) if "://" not in storage else None, "--storage-path")
    else:
        spec = runner.read_spec(args.resume)
    data_dir = runner.data_dir_of(spec)  # before Ray starts: a data problem fails in seconds
    data = runner.load_data(spec, data_dir)
    info = runner.start_ray(args.address, args.dashboard_port,
                            job_name=name if args.resume is None else Path(args.resume).name)
    print_dashboard(info)
    runner.check_resources(spec)
    if args.resume is None:
        from .search.packing import resolve_auto_gpu
        packing = resolve_auto_gpu(spec, data)  # gpu: auto → a measured share, saved with the spec
        if packing is not None:
            print(packing.line(), flush=True)
    from .search.spec import early_rung_warning
    warning = early_rung_warning(spec, len(data.labels["train"]))  # said once the search really starts
    if warning:
        print(warning, file=sys.stderr, flush=True)
    started = time.time()
    try:
        if args.resume is None:
            exp_dir = runner.run_search(spec, storage, name, data, args.verbose, data_dir=data_dir)
        else:
            exp_dir = runner.resume_search(args.resume, spec, data, data_dir)
    except KeyboardInterrupt:
        exp_dir = args.resume or Path(storage) / name
        return _interrupted(exp_dir)
    if _was_interrupted(exp_dir, spec, started):  # Tune handled a Ctrl-C and returned early
        return _interrupted(exp_dir)
    print(f"search finished in {time.time() - started:.0f}s: {exp_dir}")
    if args.no_final:
        return 0
    from .final import run_final
    run_final(exp_dir, spec)
    return 0


def _was_interrupted(exp_dir: Path, spec, started: float) -> bool:
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


def _interrupted(exp_dir) -> int:
    print(f"\ninterrupted; the search state is saved. Resume with: python launch.py --resume {exp_dir}",
          file=sys.stderr)
    return 130


def check_writable(folder: Path | None, what: str, shown: Path | None = None) -> None:
    """Refuse, before any work starts and without creating anything, an output folder that could
    not be created or written into."""
    if folder is None:
        return
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {shown or folder}: cannot write there ({existing} is not a writable folder)")


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
    spec = read_spec(args.experiment)
    if args.images is not None:
        if args.out is not None:
            check_writable(args.out.resolve().parent, "--out", args.out)
        export_images(args.experiment, args.images, args.out, args.skip_corrupt)
        return 0
    start_ray(args.address)
    run_final(Path(args.experiment).resolve(), spec)
    return 0


def _reproduce_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py reproduce",
                                description="Retrain a trial without Ray and compare its per-epoch validation.")
    p.add_argument("experiment", type=Path)
    p.add_argument("--trial", default=None, help="trial id or name (default: the best trial)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default EXPERIMENT/reproduce/<trial id>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a trainer value (a what-if: then it should not reproduce)")
    p.add_argument("--debug", action="store_true")
    return p


def cmd_reproduce(args) -> int:
    from .reproduce import reproduce, summary
    if args.out is not None:
        check_writable(args.out.resolve(), "--out", args.out)
    result = reproduce(args.experiment, args.trial, args.out, args.overrides)
    print(summary(result), flush=True)
    return 0 if result.reproduced else 1


SUBCOMMANDS = {"export": (_export_parser, cmd_export), "reproduce": (_reproduce_parser, cmd_reproduce)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    make_parser, command = SUBCOMMANDS.get(argv[0] if argv else "", (_search_parser, cmd_search))
    args = make_parser().parse_args(argv[1:] if command is not cmd_search else argv)
    try:
        return command(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
