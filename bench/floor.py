"""The compute floor of a finished search, and where the rest of its wall time went (not a test).

floor = Σ over the search's trial-epochs of (the epoch's training images ÷ the bare loop's img/s at the
trial's settings + its validation and precise-BN images ÷ the bare eval img/s) ÷ the concurrency,
the bare speeds measured with as many bare loops running at once as the search ran trials (each
slot's speed while the others work, as the trials trained); one bare loop alone is printed too.
The bare loop is bench/trainer_bench.py's (the trainer's own model, optimiser and loss stepping over
batches already preprocessed in memory); bare eval is the model's forward pass in eval mode over the
same kind of batches, at eval_batch_size. Both are measured here, now, for each distinct setting
(model, img_size, batch sizes, threads, memory format, AMP) among the trials: run it on a quiet machine.

It prints search wall ÷ floor, and the wall split into (slot-seconds ÷ concurrency):
  floor                       the bare loop's time for the same images
  training above the bare loop    Σ train_time_s − its floor
  validation above bare eval      Σ (epoch_time_s − train_time_s − bn_recalibrate_s) − its floor
  precise BN above bare eval      Σ bn_recalibrate_s − its floor
  reporting + checkpoints     Σ (time_this_iter_s − epoch_time_s) of every epoch but each trial's first,
                              and for the first the trial's own median of those (Tune's report, the
                              checkpoint written and handed over)
  trial starts in the process     the rest of each trial's first iteration: the dataset view fetched,
                              the Trainer built (model, splits), the costs looked up
  the first trials' processes started   from the search's start to each slot's first trial's first
                              step (Tune's timestamps, whole seconds): Tune's setup, process start, imports
  between trials, idle slots  concurrency × search wall − Σ trials' time_total_s − the above: later
                              trial processes started, scheduling, slots idle while too few trials run
  before the search           with --wall (the whole command's wall, e.g. race.py's): Ray's start,
                              imports, the dataset loaded and put in the object store
The search wall is the experiment's run record (raydigits_run.json: started and finished).
Usage: python bench/floor.py EXP_DIR [--wall SECONDS] [--concurrency N] [--rounds 3] [--batches 20]"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from raydigits.config import TrainConfig
from raydigits.data import load_dataset
from raydigits.experiment import Experiment
from raydigits.experiment.layout import RUN_FILE
from raydigits.pipeline import Preprocess
from raydigits.spec import trial_train_config
from raydigits.trainer import Trainer

SETTING_KEYS = ("model", "img_size", "batch_size", "eval_batch_size", "threads", "channels_last", "amp", "device")


@dataclass
class Speeds:
    train: float  # bare loop img/s
    eval: float  # bare eval img/s


def bare_speeds(cfg: TrainConfig, data, rounds: int = 3, batches: int = 20, ready=None) -> Speeds:
    """Bare training and eval img/s of `cfg`'s setting (medians of `rounds`, after a warm-up), with
    the trainer's own model, optimiser, loss, AMP and memory format (bench/trainer_bench.py's loop).
    `ready`: called after the warm-up, before the measured rounds (bare_speeds_together's barrier)."""
    from trainer_bench import bare_loop

    items = cfg.batch_size * batches
    cfg = cfg.model_copy(update={"train_items": items, "val_items": min(cfg.eval_batch_size * 2, 2000), "epochs": 1})
    t = Trainer(cfg, data)  # sets the threads and the seed
    pre = Preprocess(cfg, t.device)
    train = [(pre.eval(xb), yb) for xb, yb, _ in t.train_set.batches(cfg.batch_size, True, None, True)]
    xs, ys = [b[0] for b in train], [b[1] for b in train]
    evals = [pre.eval(xb) for xb, _, _ in t.val_set.batches(cfg.eval_batch_size, False, None, False)]

    @torch.no_grad()
    def bare_eval() -> float:
        t.model.eval()
        start, n = time.perf_counter(), 0
        for xb in evals:
            with t.autocast():
                t.model(xb)
            n += len(xb)
        if t.device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - start)

    bare_loop(t, xs, ys, min(len(xs), 3))  # warm-up
    bare_eval()
    if ready is not None:
        ready()
    got = [(bare_loop(t, xs, ys, len(xs)), bare_eval()) for _ in range(rounds)]  # interleaved rounds
    return Speeds(statistics.median(g[0] for g in got), statistics.median(g[1] for g in got))


def _bare_worker(cfg_json: str, data_dir: str, rounds: int, batches: int, barrier, out) -> None:
    cfg = TrainConfig.model_validate_json(cfg_json)
    data = load_dataset(Path(data_dir), splits=("train", "val"))
    sp = bare_speeds(cfg, data, rounds, batches, ready=barrier.wait)
    out.put((sp.train, sp.eval))


def bare_speeds_together(cfg: TrainConfig, data_dir: str, n: int, rounds: int = 3, batches: int = 20) -> Speeds:
    """bare_speeds in `n` processes at once, their measured rounds started together (a barrier after
    each one's warm-up): what each of a search's `n` slots can do while the others work, as its
    trials did (two cores under two loops share caches, memory bandwidth and the VM's host).
    The median over the processes."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_bare_worker, args=(cfg.model_dump_json(), data_dir, rounds, batches, barrier, out))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    got = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    return Speeds(statistics.median(g[0] for g in got), statistics.median(g[1] for g in got))


def setting(cfg: TrainConfig) -> tuple:
    return tuple(getattr(cfg, k) for k in SETTING_KEYS)


def search_wall(exp_dir: Path) -> float:
    run = json.loads((exp_dir / RUN_FILE).read_text())
    if "finished" not in run:
        raise SystemExit(f"error: {exp_dir / RUN_FILE}: the search has not finished (no 'finished' time)")
    return run["finished"] - run["started"]


def floor_report(exp_dir: Path, wall: float | None = None, concurrency: int = 0, rounds: int = 3, batches: int = 20):
    """(the lines to print, a dict of the figures) for the search in `exp_dir`."""
    exp = Experiment.open(exp_dir)
    spec = exp.spec
    data_dir = str(spec.fixed["data_dir"])
    trials = [t for t in exp.trials if t.run == "search"]  # not an extension's or an audit's
    conc = concurrency or spec.max_concurrent or 1
    data = load_dataset(Path(data_dir), splits=("train", "val"))
    speeds: dict[tuple, Speeds] = {}  # the floor's: `conc` bare loops at once (bare_speeds_together)
    alone: dict[tuple, Speeds] = {}  # one bare loop on an otherwise idle machine, shown for comparison
    sums = dict(floor=0.0, train=0.0, train_floor=0.0, val=0.0, val_floor=0.0, bn=0.0, bn_floor=0.0)
    sums.update(report=0.0, start=0.0, busy=0.0)
    epochs = 0
    firsts: list[float] = []
    for trial in trials:
        cfg = trial_train_config(spec, trial.config, data_dir, where=f"trial {trial.trial_id}")
        key = setting(cfg)
        if key not in speeds:
            alone[key] = bare_speeds(cfg, data, rounds, batches)
            speeds[key] = bare_speeds_together(cfg, data_dir, conc, rounds, batches) if conc > 1 else alone[key]
        sp = speeds[key]
        rows = [r for r in trial.results if r.get("epoch_time_s")]
        excess = [r["time_this_iter_s"] - r["epoch_time_s"] for r in rows]
        report = statistics.median(excess[1:]) if len(excess) > 1 else 0.0
        for i, r in enumerate(rows):
            seen = r["images_per_s"] * r["train_time_s"]
            bn_n = min(cfg.bn_recalibrate, len_train(cfg, data)) if r.get("bn_recalibrate_s") else 0
            val_s = r["epoch_time_s"] - r["train_time_s"] - r.get("bn_recalibrate_s", 0.0)
            sums["train"] += r["train_time_s"]
            sums["train_floor"] += seen / sp.train
            sums["val"] += val_s
            sums["val_floor"] += r["val_n"] / sp.eval
            sums["bn"] += r.get("bn_recalibrate_s", 0.0)
            sums["bn_floor"] += bn_n / sp.eval
            sums["report"] += report if i == 0 else excess[i]
            if i == 0:
                sums["start"] += excess[0] - report
            epochs += 1
        sums["busy"] += rows[-1]["time_total_s"] if rows else 0.0
        if rows:  # when its first step began (Tune's timestamp is whole seconds)
            firsts.append(rows[0]["timestamp"] - rows[0]["time_this_iter_s"])
    floor = (sums["train_floor"] + sums["val_floor"] + sums["bn_floor"]) / conc
    inside = search_wall(exp_dir)
    started = json.loads((exp_dir / RUN_FILE).read_text())["started"]
    # every slot waits until the first trials' processes have started (at most the slots' count of them)
    first_wait = sum(max(0.0, f - started) for f in sorted(firsts)[:conc])
    total = wall or inside
    parts = [
        ("floor (the bare loop's time for the same images)", floor * conc),
        ("training above the bare loop", sums["train"] - sums["train_floor"]),
        ("validation above bare eval", sums["val"] - sums["val_floor"]),
        ("precise BN above bare eval", sums["bn"] - sums["bn_floor"]),
        ("reporting + checkpoints", sums["report"]),
        ("trial starts in the process (data view, Trainer build, costs)", sums["start"]),
        ("the first trials' processes started (Tune's setup, imports)", first_wait),
        (
            "between trials, idle slots (later process starts, scheduling, too few trials)",
            conc * inside - sums["busy"] - first_wait,
        ),
    ]
    if wall:
        parts.append(("before the search (Ray start, imports, data load)", conc * (wall - inside)))
    lines = [
        f"{exp_dir}: {len(trials)} trials, {epochs} trial-epochs, concurrency {conc}",
        *(
            f"  bare speeds at {dict(zip(SETTING_KEYS, k))}: {conc} loops at once (the floor's) train "
            f"{s.train:.0f} img/s, eval {s.eval:.0f} img/s each; one alone train {alone[k].train:.0f}, "
            f"eval {alone[k].eval:.0f}"
            for k, s in speeds.items()
        ),
        f"  precise BN: {sums['bn']:.1f} slot-s measured, of which floor {sums['bn_floor']:.1f}",
        f"search wall {total:.1f} s"
        + (f" (the search itself {inside:.1f} s)" if wall else "")
        + f" ÷ floor {floor:.1f} s = {total / floor:.2f}",
        "| where the wall went | s of wall | share |",
        "|---|---|---|",
        *(f"| {name} | {v / conc:.1f} | {100 * v / conc / total:.1f} % |" for name, v in parts),
        f"| (sum) | {sum(v for _, v in parts) / conc:.1f} | {100 * sum(v for _, v in parts) / conc / total:.1f} % |",
    ]
    return lines, {"wall": total, "search_wall": inside, "floor": floor, "epochs": epochs, "parts": dict(parts)}


def len_train(cfg: TrainConfig, data) -> int:
    n = len(data.labels["train"])
    return min(cfg.train_items, n) if cfg.train_items else n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("exp", type=Path, help="a finished experiment folder (local)")
    p.add_argument("--wall", type=float, default=None, help="the whole command's wall time, Ray's start included")
    p.add_argument("--concurrency", type=int, default=0, help="trials at a time (default: the spec's max_concurrent)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the bare speed measures")
    p.add_argument("--batches", type=int, default=20, help="training batches per bare-loop round")
    args = p.parse_args()
    lines, _ = floor_report(args.exp, args.wall, args.concurrency, args.rounds, args.batches)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
