"""Search quality and overheads, measured side by side in one run (not a test). Parts:
 fidelity  does an early rung rank trials as their end does? Spearman between each trial's validation
           at ASHA's rungs (and at every epoch) and at its last epoch, FIFO so every trial runs to the end
           (goal >= 0.8 at rungs 1 and 2), each rung's with a two-sided permutation p-value and a bootstrap
           95 % interval (bench/stats.py). No "noise ceiling": the trials are scored on the same images,
           so their errors are not independent, and the kept results hold no per-image predictions to
           estimate the share of the finals' spread that is noise from.
 asha      early stopping (--policy asha: Ray's ASHA; stratified: family_asha.default_scheduler) vs
           FIFO on the *same* sampled configs, per seed: trial-epochs of each side, each side's best
           validation, the regret (FIFO best - the side's best, pp), wall times, and trial-epochs and
           wall time until the side's own best-so-far validation (in time order) comes within 0.3 pp
           of FIFO's final best ("not reached" when it never does: never a ratio; the summary's ratios
           are over the seeds that reached it, with the count of those that did not). The FIFO runs
           also give a fidelity figure per seed. For many arrival orders of the same curves, see bench/replay.py.
 overhead  epoch time of a trial under Tune (report + checkpoint) / the same epoch in the standalone
           trainer, interleaved rounds, medians (goal <= 1.10)
 mem       per-trial unique memory of concurrent trials on the full dataset (zero-copy check)
Every search here uses the shipped defaults (precise BN included) and the headline's parameters
(--space first: sgd or adamw and a wide lr, every other knob at its default, as issue 10 tried it;
--space NAME|FILE.yaml: a shipped space by name, e.g. schedule_shapes, or any space file's fixed
values and parameters). Two settings: by default a 1,500-image training subset (validation on the
full 10,000-image split; --val-items N for fewer, 2,000 before issue 19), 8 epochs, ASHA
grace 1 / factor 2 (--epochs, --grace, --rf change them); --full is the headline search as shipped
(search_spaces/sgd_vs_adamw.yaml: full MNIST, full validation, its ASHA's max_t / grace / factor and
so its rungs), without its time budget so that every FIFO trial ends.
Usage: python bench/search_bench.py [--part fidelity,asha,overhead,mem] [--seeds 0,1,2] [--full] [--gpu]
                                   [--space first|NAME|FILE.yaml] [--policy asha|stratified] [--samples 36]
       python bench/search_bench.py --analyse DIR [DIR ...]   (fidelity of kept FIFO runs, --storage's)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from stats import first_reach, rank_correlation, ratio_summary

REPO = Path(__file__).resolve().parents[1]
HEADLINE = yaml.safe_load((REPO / "search_spaces" / "sgd_vs_adamw.yaml").read_text())


def _setting(args) -> tuple[dict, dict]:
    """(fixed overrides, ASHA scheduler) of the chosen setting; the FIFO side uses the same max_t."""
    if args.full or args.gpu:
        sched = dict(HEADLINE["scheduler"])
        if args.epochs:
            sched["max_t"] = args.epochs
        return {}, {k: sched[k] for k in ("type", "max_t", "grace_period", "reduction_factor")}
    return (
        {"train_items": 1500, "val_items": args.val_items},
        {"type": "asha", "max_t": args.epochs or 8, "grace_period": args.grace, "reduction_factor": args.rf},
    )


# the parameters searched: the headline's (a space already narrowed to good values), or a user's first
# search as issue 10 tried it (tests/test_small_data.py): sgd or adamw and a wide lr, every other knob default
SPACES = {
    "headline": (HEADLINE["fixed"], HEADLINE["parameters"]),
    "first": (
        {},
        {
            "optimizer": {"values": ["sgd", "adamw"]},
            "lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-1},
        },
    ),
}
SPACE = "headline"


def load_space(name: str):
    """A space: a key of SPACES, a shipped space by name (search_spaces/<name>.yaml) or any space file;
    returns (fixed, parameters) of a file, else the key."""
    if name in SPACES:
        return name
    path = Path(name)
    if not path.exists():
        path = REPO / "search_spaces" / f"{name}.yaml"
    if not path.exists():
        raise SystemExit(
            f"--space {name}: not one of {', '.join(sorted(SPACES))}, no file {name} and no search_spaces/{name}.yaml"
        )
    spec = yaml.safe_load(path.read_text())
    return (spec.get("fixed") or {}, spec["parameters"])


def _space(name: str, seed: int, scheduler: dict, fixed: dict, samples: int, resources: dict, concurrent: int) -> dict:
    base, parameters = SPACES[SPACE] if isinstance(SPACE, str) else SPACE
    return {
        "name": name,
        "seed": seed,
        "num_samples": samples,
        "method": "random",
        "metric": "val_acc",
        "scheduler": scheduler,
        "resources": resources,
        "max_concurrent": concurrent,
        "fixed": {**base, **fixed},
        "parameters": parameters,
    }


def _rungs(asha: dict) -> list[int]:
    from raydigits.spec import asha_rungs, parse_spec

    return sorted(asha_rungs(parse_spec({"name": "r", "scheduler": asha})))


def _trials(exp_dir: Path) -> dict:
    """{trial_id: {"config": ..., "results": [...]}} from a run's result.json files."""
    trials = {}
    for d in sorted(exp_dir.iterdir()):
        f = d / "result.json"
        if f.exists():
            rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
            if rows:
                trials[rows[0]["trial_id"]] = {"config": rows[0]["config"], "results": rows}
    return trials


def _run(spec: dict, storage: str, policy: str = "") -> dict:
    """Run a search; its trials (`_trials`), the search's start time and its wall time. `policy`
    "stratified": the early-stopping side runs `family_asha.default_scheduler` (stratified by the
    space's searched categorical parameters) in place of Ray's ASHA, until the spec names it."""
    from raydigits.search import runner
    from raydigits.spec import parse_spec

    s = parse_spec(spec, spec["name"])
    runner.check_resources(s)
    started = time.time()
    from raydigits.storage import Location

    build = runner.build_tune_scheduler
    if policy == "stratified" and s.scheduler.type == "asha":
        from raydigits.search.family_asha import default_scheduler

        runner.build_tune_scheduler = lambda sp: default_scheduler(
            metric=sp.metric,
            mode=sp.mode,
            max_t=sp.epochs,
            grace_period=sp.scheduler.grace_period,
            reduction_factor=sp.scheduler.reduction_factor,
            family=[k for k, p in sp.parameters.items() if p.values is not None],
            seed=sp.seed,
        )
    try:
        exp = runner.run_search(s, Location.parse(storage) / spec["name"], runner.load_data(s), verbose=0)
    finally:
        runner.build_tune_scheduler = build
    return {"trials": _trials(exp.local), "started": started, "wall": time.time() - started}


def fidelity(run: dict, epochs: int, rungs=(1, 2)) -> dict:
    """Spearman of validation at each rung, and at every epoch, against the last epoch, over the
    trials that finished: `stats.Correlation`s (rho, permutation p, bootstrap 95 % interval)."""
    done = [t["results"] for t in run["trials"].values() if len(t["results"]) == epochs]
    final = [r[-1]["val_acc"] for r in done]
    out: dict = {"n": len(done), "final_range": (min(final), max(final)) if final else (0, 0), "rungs": {}}
    out["by_epoch"] = [rank_correlation([r[e - 1]["val_acc"] for r in done], final, seed=e) for e in range(1, epochs)]
    for e in rungs:
        if e < epochs:
            out["rungs"][e] = out["by_epoch"][e - 1]
    return out


def _say_fidelity(f: dict, what: str, epochs: int) -> str:
    """Each rung's Spearman with its p and interval, every epoch's rho, and the finals' range. No noise
    ceiling: the trials are scored on the same images, so their errors are not independent, and
    without per-image predictions the share of the finals' spread that is noise cannot be estimated."""
    rungs = "; ".join(f"rung {i} (epoch {e}) {c}" for i, (e, c) in enumerate(f["rungs"].items(), 1))
    rhos = [c.rho for c in f["by_epoch"]]
    return (
        f"fidelity, {what}: {f['n']} trials x {epochs} epochs; Spearman with the last epoch (two-sided permutation "
        f"p, bootstrap 95% CI) at {rungs or 'no rung'}   (goal >= 0.8); rho at epochs 1..{epochs - 1}: "
        f"{' '.join(f'{x:.2f}' for x in rhos)} ({sum(x > 0 for x in rhos)} of {len(rhos)} positive); "
        f"final val {f['final_range'][0]:.4f}-{f['final_range'][1]:.4f}"
    )


def _to_target(run: dict, target: float) -> tuple[int | None, float | None]:
    """(trial-epochs, seconds since the search started) when the best-so-far validation, in time order,
    first reaches `target`; (None, None) when it never does: not reached is not a time."""
    rows = sorted((r for t in run["trials"].values() for r in t["results"]), key=lambda r: r["timestamp"])
    i = first_reach([r["val_acc"] for r in rows], target)
    return (None, None) if i is None else (i, rows[i - 1]["timestamp"] - run["started"])


def _configs(run: dict) -> list:
    return sorted(json.dumps(t["config"], sort_keys=True) for t in run["trials"].values())


def _what(args) -> str:
    return "full MNIST, the headline as shipped" if args.full or args.gpu else "1,500 training images"


def _resources(args) -> tuple[dict, int]:
    return ({"cpu": 3, "gpu": 0.25}, 4) if args.gpu else ({"cpu": 1, "gpu": 0}, 2)


def part_fidelity(storage, args):
    fixed, asha = _setting(args)
    res, concurrent = _resources(args)
    for seed in [int(s) for s in args.seeds.split(",")]:
        run = _run(
            _space(f"fid_{seed}", seed, {"type": "fifo", "max_t": asha["max_t"]}, fixed, args.samples, res, concurrent),
            storage,
        )
        print(
            _say_fidelity(fidelity(run, asha["max_t"], _rungs(asha)), f"{_what(args)}, seed {seed}", asha["max_t"]),
            flush=True,
        )


def _compare(fifo: dict, ash: dict, policy: str) -> tuple[str, tuple, tuple]:
    """One seed's FIFO and early-stopping runs: the line about them, and (policy, FIFO) trial-epochs
    and seconds to FIFO's best - 0.3 pp (the policy's None when it never got there)."""
    same = _configs(fifo) == _configs(ash)
    fbest = max(r["val_acc"] for t in fifo["trials"].values() for r in t["results"])
    abest = max(r["val_acc"] for t in ash["trials"].values() for r in t["results"])
    fe, fs = _to_target(fifo, fbest - 0.003)
    ae, as_ = _to_target(ash, fbest - 0.003)
    f_all = sum(len(t["results"]) for t in fifo["trials"].values())
    a_all = sum(len(t["results"]) for t in ash["trials"].values())
    to_target = (
        f"NOT REACHED (its best ended {100 * (fbest - abest):.2f} pp below FIFO's: no time to target)"
        if ae is None or as_ is None
        else f"{ae} trial-epochs / {as_:.0f}s"
    )
    line = (
        f"same {len(fifo['trials'])} configs on both sides: {same}; trial-epochs FIFO {f_all}, {policy} {a_all} "
        f"({a_all / f_all:.2f}); best val FIFO {fbest:.4f}, {policy} {abest:.4f}: regret {100 * (fbest - abest):.2f} pp; "
        f"wall FIFO {fifo['wall']:.0f}s, {policy} {ash['wall']:.0f}s; to within 0.3 pp of FIFO's best: FIFO {fe} "
        f"trial-epochs / {fs:.0f}s, {policy} {to_target}"
    )
    return line, (ae, fe), (as_, fs)


def part_asha(storage, args):
    fixed, asha = _setting(args)
    res, concurrent = _resources(args)
    epochs, by_epochs, by_time = asha["max_t"], [], []
    for seed in [int(s) for s in args.seeds.split(",")]:
        fifo = _run(
            _space(f"fifo_{seed}", seed, {"type": "fifo", "max_t": epochs}, fixed, args.samples, res, concurrent),
            storage,
        )
        ash = _run(
            _space(f"{args.policy}_{seed}", seed, asha, fixed, args.samples, res, concurrent), storage, args.policy
        )
        line, e, t = _compare(fifo, ash, args.policy)
        by_epochs.append(e)
        by_time.append(t)
        print(
            f"seed {seed} ({_what(args)}, {args.policy} grace {asha['grace_period']} / factor "
            f"{asha['reduction_factor']:g} / max_t {epochs}): {line}",
            flush=True,
        )
        print(
            "    " + _say_fidelity(fidelity(fifo, epochs, _rungs(asha)), f"seed {seed}'s FIFO run", epochs), flush=True
        )
    for pairs, what in ((by_epochs, "trial-epochs"), (by_time, "wall time")):
        print(ratio_summary(pairs, f"{args.policy} / FIFO, {what} to FIFO's best - 0.3 pp, over seeds"), flush=True)


def analyse(dirs, args):
    """Fidelity of kept FIFO runs (a --storage folder's fid_*/fifo_* experiments), at the chosen
    setting's rungs, without running anything."""
    _, asha = _setting(args)
    for d in dirs:
        run = {"trials": _trials(Path(d))}
        for t in run["trials"].values():  # runs from before the trainer reported val_n
            t["results"] = [{"val_n": args.val_n, **r} if args.val_n else r for r in t["results"]]
        epochs = max(len(t["results"]) for t in run["trials"].values())
        asha = {**asha, "max_t": epochs}
        print(_say_fidelity(fidelity(run, epochs, _rungs(asha)), str(d), epochs))


def part_overhead(storage, args):
    from raydigits.config import make_config
    from raydigits.data import load_dataset
    from raydigits.trainer import Trainer

    fixed = dict(train_items=4000, val_items=2000, img_size=32, batch_size=128, threads=2, scheduler="cosine")
    data = load_dataset(REPO / "data" / "mnist", splits=("train", "val"))
    tune_s, alone_s = [], []
    for r in range(args.rounds):  # interleaved: Tune, standalone, Tune, standalone, ...
        spec = {
            "name": f"overhead_{r}",
            "num_samples": 1,
            "scheduler": {"type": "fifo", "max_t": 3},
            "resources": {"cpu": 2},
            "fixed": fixed,
        }
        run = _run(spec, storage)
        tune_s += [x["time_this_iter_s"] for t in run["trials"].values() for x in t["results"][1:]]
        Trainer(make_config({**fixed, "epochs": 3}), data).fit(
            lambda m, t: alone_s.append(m["epoch_time_s"]) if m["epoch"] > 1 else None
        )
    a, b = statistics.median(tune_s), statistics.median(alone_s)
    print(
        f"(overhead) epoch under Tune {a:.2f}s (incl. report + checkpoint) ÷ standalone {b:.2f}s = {a / b:.3f} "
        f"(medians of {len(tune_s)} and {len(alone_s)} epochs, {args.rounds} interleaved rounds; Tune range "
        f"{min(tune_s):.2f}–{max(tune_s):.2f}s, standalone {min(alone_s):.2f}–{max(alone_s):.2f}s)   (goal ≤ 1.10)"
    )


def part_mem(storage, args):
    base = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    base.update(name="bench_mem", num_samples=2, max_concurrent=2)
    base["scheduler"] = {"type": "fifo", "max_t": 2}
    base["fixed"].update(train_items=0, val_items=0)  # the whole dataset in every trial
    run = _run(base, storage)
    rows = [r for t in run["trials"].values() for r in t["results"]]
    uss = [r["uss_mb"] for r in rows]
    print(
        f"(mem) dataset 47 MB (train+val uint8); per-trial USS {min(uss):.0f}–{max(uss):.0f} MB, "
        f"read-only zero-copy arrays in every trial: {all(r['data_zero_copy'] for r in rows)}"
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--part", default="asha,overhead,mem")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--samples", type=int, default=12)
    p.add_argument("--epochs", type=int, default=0, help="max_t (default: 8 on the subset, the headline's with --full)")
    p.add_argument("--grace", type=int, default=1, help="ASHA grace period on the subset")
    p.add_argument("--rf", type=float, default=2.0, help="ASHA reduction factor on the subset")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--gpu", action="store_true", help="--full with four trials per GPU")
    p.add_argument("--full", action="store_true", help="the headline search as shipped, on this machine's CPUs")
    p.add_argument("--storage", default=None, help="keep the runs here (for --analyse)")
    p.add_argument("--analyse", nargs="+", default=None, metavar="DIR", help="fidelity of kept FIFO runs")
    p.add_argument("--val-n", type=int, default=0, help="--analyse: validation size of runs that did not report it")
    p.add_argument(
        "--space",
        default="headline",
        help="the parameters searched: headline, first, a shipped space's name or any space file",
    )
    p.add_argument(
        "--val-items",
        type=int,
        default=0,
        help="validation images on the subset (0: the full 10,000-image split, issue 19's benchmark)",
    )
    p.add_argument(
        "--policy",
        choices=("asha", "stratified"),
        default="asha",
        help="--part asha: the early stopping compared with FIFO (stratified: family_asha.default_scheduler)",
    )
    args = p.parse_args()
    global SPACE
    SPACE = load_space(args.space)
    if args.analyse:
        return analyse(args.analyse, args)
    from raydigits.search.runner import start_ray

    start_ray(None)
    with tempfile.TemporaryDirectory() as tmp:
        storage = args.storage or tmp
        for part in args.part.split(","):
            t = time.time()
            {"fidelity": part_fidelity, "asha": part_asha, "overhead": part_overhead, "mem": part_mem}[part](
                storage, args
            )
            print(f"    ({part} took {time.time() - t:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
