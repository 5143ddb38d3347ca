"""How much of a search's winner is its training seed (not a test; issue 19's regret goals).

Every trial of a search trains with the same seed (TrainConfig.seed, 42), so "the best
configuration" of a FIFO collection (`bench/es_collect.py`) is the best *(configuration, seed 42)*.
This retrains the collection's top-k configurations (by validation at the last epoch) with other
training seeds (`raydigits.reproduce` with `seed=S`, what `launch.py reproduce EXP --trial T --set
seed=S` runs, without the CLI: no final stage, nothing read from the test split; 2 at a time, one
CPU each, as the search ran them) and prints, per configuration, its final validation for each seed, the mean and
standard deviation over the *other* seeds (seed 42 chose these configurations, so its values are
biased upwards: regression to the mean), and how the top-k rank by that mean against by seed 42. The question it
answers: is the winner's margin over its neighbours larger than what a different seed moves it?
If not, an early-stopping policy's "regret" of a fraction of a point against FIFO's winner in one
seed is mostly that seed's luck, and a goal of one validation standard error is finer than the
training noise.

Usage: python bench/seed_noise.py EXP [--top 6] [--seeds 1,2,3] [--out DIR] [--jobs 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_bench as sb  # noqa: E402


def finals(exp: Path) -> list[tuple[float, str, dict, int]]:
    """(final validation, trial id, config) of every trial, best first (as the collection ran it: the
    trials of a FIFO collection all reach max_t)."""
    out = []
    for tid, t in sb._trials(exp).items():
        last = max(t["results"], key=lambda r: r["training_iteration"])
        out.append((last["val_acc"], tid, t["config"], len(t["results"])))
    return sorted(out, key=lambda x: -x[0])


def retrain(exp: Path, trial: str, seed: int, out: Path, epochs: int) -> float:
    """The final validation of `trial` retrained with `seed` (kept in `out`: a rerun reads it back)."""
    from raydigits.experiment import Experiment
    from raydigits.reproduce import reproduce

    metrics = out / "metrics.csv"
    done = metrics.exists() and len(list(csv.DictReader(metrics.open()))) == epochs
    if not done:  # another seed is a what-if: the verdict says "NOT reproduced", the run is what counts
        reproduce(Experiment.open(str(exp)), trial, out, [f"seed={seed}"], quiet=True, force=True)
    rows = list(csv.DictReader(metrics.open()))
    if len(rows) != epochs:
        raise SystemExit(f"seed_noise: {metrics}: {len(rows)} epochs, the collection's trials ran {epochs}")
    return float(rows[-1]["val_acc"])


def _job(job: tuple) -> float:
    return retrain(*job)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("exp", type=Path)
    p.add_argument("--top", type=int, default=6)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--out", type=Path, default=None, help="default EXP/seed_noise")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    top = finals(args.exp)[: args.top]
    root = args.out or args.exp / "seed_noise"
    t0 = time.time()
    jobs = [(tid, s) for _, tid, _, _ in top for s in seeds]
    work = [(args.exp, tid, s, root / tid / f"seed{s}", top[0][3]) for tid, s in jobs]
    with ProcessPoolExecutor(args.jobs) as pool:
        got = dict(zip(jobs, pool.map(_job, work)))
    print(
        f"{args.exp.name}: top {len(top)} configurations by final validation (seed 42), retrained with seeds "
        f"{seeds} ({time.time() - t0:.0f}s)"
    )
    rows = []
    for v42, tid, cfg, _ in top:
        vals = [v42] + [got[(tid, s)] for s in seeds]
        fresh = vals[1:]  # the seeds that did not choose the configuration
        mean, sd = statistics.mean(fresh), statistics.stdev(fresh)
        rows.append((tid, cfg, vals, mean, sd))
        print(
            f"  {tid} {json.dumps(cfg)}: seed 42 {v42:.4f}, seeds {seeds} {' '.join(f'{v:.4f}' for v in fresh)}; "
            f"over seeds {seeds}: mean {mean:.4f}, sd {100 * sd:.2f} pp, range {100 * (max(fresh) - min(fresh)):.2f} pp; "
            f"seed 42 {100 * (v42 - mean):+.2f} pp from that mean"
        )
    sds = [r[4] for r in rows]
    by_mean = sorted(rows, key=lambda r: -r[3])
    print(
        f"  seed-to-seed sd of a configuration's final (seeds {seeds}): median {100 * statistics.median(sds):.2f} pp "
        f"(min {100 * min(sds):.2f}, max {100 * max(sds):.2f}); one binomial SE of 10,000 validation images "
        f"at {top[0][0]:.2f}: {100 * (top[0][0] * (1 - top[0][0]) / 10000) ** 0.5:.2f} pp; seed 42 above the "
        f"other seeds' mean by {100 * statistics.mean(r[2][0] - r[3] for r in rows):+.2f} pp on average (it chose them)"
    )
    print(
        f"  seed 42's winner {top[0][1]} ranks {[r[0] for r in by_mean].index(top[0][1]) + 1} of {len(rows)} by the "
        f"mean over seeds {seeds}; the best by that mean is {by_mean[0][0]} ({by_mean[0][3]:.4f})"
    )
    for s_i, s in enumerate(seeds, 1):
        best = max(rows, key=lambda r: r[2][s_i])
        print(
            f"  with seed {s} the best of these is {best[0]} ({best[2][s_i]:.4f}); seed 42's winner "
            f"{rows[0][2][s_i]:.4f} ({100 * (best[2][s_i] - rows[0][2][s_i]):.2f} pp below it)"
        )


if __name__ == "__main__":
    main()
