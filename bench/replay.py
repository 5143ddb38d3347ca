"""Replay early-stopping policies on recorded FIFO learning curves (not a test).

A policy that only decides which trial stops (not how a trial trains) sees, on CPU, exactly the
prefix of the curve the FIFO run recorded for that configuration (a trial's training is seeded by
its config alone). So every policy can be evaluated offline, over many arrival orders, on the same
curves: the search's 2 concurrent slots are simulated, each epoch taking the duration the FIFO run
recorded for it (or 1 unit with --unit), and every decision comes from `raydigits.search.stopping`
— the same core that decides in the shipped Tune scheduler.

Per policy and seed, over --orders random arrival orders (and bracket draws): trial-epochs run (and
their ratio to FIFO's), the policy's best validation (max over every epoch it ran, any trial), the
regret FIFO best - policy best in pp, and the share of orders that kept the eventual best
configuration (FIFO's best epoch-max_t trial reached max_t); medians and 5-95 % intervals.

Equal compute (--equal-compute N): the policy gets N configurations — the seed's own ones plus
N - n drawn without replacement from the *other* seeds' runs (i.i.d. draws of the same space: a
trial's curve depends on its config alone) — and is compared with FIFO on the seed's own n.

Usage: python bench/replay.py RUN_DIR [RUN_DIR ...] [--orders 300] [--equal-compute 90] [--pool DIR ...]
       [--policies asha,strat,...] [--family optimizer]
RUN_DIR: a FIFO experiment folder (trial folders with result.json), one per seed.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from raydigits.search.stopping import STOP, StoppingCore, family_of  # noqa: E402

# name -> StoppingCore keyword arguments (max_t comes from the curves); "fifo" never stops
POLICIES = {
    "fifo": None,
    "asha": dict(grace_period=1, reduction_factor=2),
    "asha_g2": dict(grace_period=2, reduction_factor=2),
    "asha_b2": dict(grace_period=1, reduction_factor=2, brackets=2),
    "asha_b4": dict(grace_period=1, reduction_factor=2, brackets=4),
    "asha_b4eq": dict(grace_period=1, reduction_factor=2, brackets=4, bracket_weights="equal"),
    "strat": dict(grace_period=1, reduction_factor=2, stratify=True),
    "strat_p2": dict(grace_period=1, reduction_factor=2, stratify=True, min_peers=2),
    "strat_p3": dict(grace_period=1, reduction_factor=2, stratify=True, min_peers=3),
    "strat_p4": dict(grace_period=1, reduction_factor=2, stratify=True, min_peers=4),
    "strat_g2": dict(grace_period=2, reduction_factor=2, stratify=True),
    "strat_b2": dict(grace_period=1, reduction_factor=2, brackets=2, stratify=True),
    "strat_b4": dict(grace_period=1, reduction_factor=2, brackets=4, stratify=True),
    "strat_p2_b4": dict(grace_period=1, reduction_factor=2, brackets=4, stratify=True, min_peers=2),
    "asha_k67": dict(grace_period=1, reduction_factor=2, keep=2 / 3),
    "strat_k67": dict(grace_period=1, reduction_factor=2, stratify=True, keep=2 / 3),
    "strat_p2_k67": dict(grace_period=1, reduction_factor=2, stratify=True, keep=2 / 3, min_peers=2),
    "strat_last3": dict(grace_period=1, reduction_factor=2, stratify=True, keep=[1 / 2, 1 / 2, 1 / 3]),
    "strat_last4": dict(grace_period=1, reduction_factor=2, stratify=True, keep=[1 / 2, 1 / 2, 1 / 4]),
    "strat_p2_last3": dict(grace_period=1, reduction_factor=2, stratify=True, min_peers=2, keep=[1 / 2, 1 / 2, 1 / 3]),
    "strat_first34": dict(grace_period=1, reduction_factor=2, stratify=True, keep=[3 / 4, 1 / 2, 1 / 2]),
    "strat_first34_last4": dict(grace_period=1, reduction_factor=2, stratify=True, keep=[3 / 4, 1 / 2, 1 / 4]),
    "strat_first23": dict(grace_period=1, reduction_factor=2, stratify=True, keep=[2 / 3, 1 / 2, 1 / 2]),
    "strat_first34_last3": dict(grace_period=1, reduction_factor=2, stratify=True, keep=[3 / 4, 1 / 2, 1 / 3]),
    "strat_first34_mid3": dict(grace_period=1, reduction_factor=2, stratify=True, keep=[3 / 4, 1 / 3, 1 / 2]),
    "strat_first34_mid3_last3": dict(grace_period=1, reduction_factor=2, stratify=True, keep=[3 / 4, 1 / 3, 1 / 3]),
    "strat_first23_mid3": dict(grace_period=1, reduction_factor=2, stratify=True, keep=[2 / 3, 1 / 3, 1 / 2]),
    # a harder first rung, for curves whose first rung ranks well (budget-aware rungs: rung_cosine)
    "strat_first13": dict(grace_period=1, reduction_factor=2, stratify=True, keep=[1 / 3, 1 / 2, 1 / 2]),
    "strat_first25": dict(grace_period=1, reduction_factor=2, stratify=True, keep=[2 / 5, 1 / 2, 1 / 2]),
    "asha_rf3": dict(grace_period=1, reduction_factor=3),
    "strat_rf3": dict(grace_period=1, reduction_factor=3, stratify=True),
    "strat_p2_rf3": dict(grace_period=1, reduction_factor=3, stratify=True, min_peers=2),
    "strat_hedge": dict(
        grace_period=1, reduction_factor=2, brackets=4, stratify=True, bracket_weights=[0.75, 0, 0, 0.25]
    ),
    "asha_hedge": dict(grace_period=1, reduction_factor=2, brackets=4, bracket_weights=[0.75, 0, 0, 0.25]),
}


@dataclass
class Trial:
    tid: str
    family: tuple
    values: list  # validation after epoch 1..max_t
    seconds: list  # each epoch's duration in the FIFO run
    val_n: int = 10000  # validation images (the binomial standard error of a value)


def load_run(d: Path, family_keys: list[str], metric: str = "val_acc") -> list[Trial]:
    """A FIFO run's trials in the order Tune created them (trial id suffix)."""
    out = []
    for f in sorted(d.glob("*/result.json")):
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if not rows:
            continue
        rows.sort(key=lambda r: r["training_iteration"])
        out.append(
            Trial(
                rows[0]["trial_id"],
                family_of(rows[0]["config"], family_keys),
                [r[metric] for r in rows],
                [r["time_this_iter_s"] for r in rows],
                int(rows[-1].get("val_n") or 10000),
            )
        )
    out.sort(key=lambda t: t.tid)
    return out


def complete(trials: list[Trial], max_t: int) -> list[Trial]:
    """The trials that ran to max_t (a run still in progress has some that did not yet)."""
    return [t for t in trials if len(t.values) >= max_t]


def simulate(
    trials: list[Trial],
    policy: dict | None,
    max_t: int,
    rng: random.Random,
    slots: int = 2,
    unit: bool = False,
    budget: int = 0,
) -> dict:
    """One search over `trials` in the given order, `slots` at a time; with `budget`, the search
    ends once it has run that many trial-epochs (a hard compute budget: no epoch past it counts).
    Returns the epochs each trial ran ({tid: n}), the best value seen and the trial-epochs in all."""
    core = None if policy is None else StoppingCore(max_t=max_t, rng=rng, **policy)
    pending = iter(trials)
    heap, ran, seq = [], {}, 0

    def start(now, slot):
        nonlocal seq
        t = next(pending, None)
        if t is None:
            return
        if core:
            core.add(t.tid, t.family)
        ran[t.tid] = 0
        seq += 1
        heapq.heappush(heap, (now + (1.0 if unit else t.seconds[0]), seq, slot, t, 1))

    for s in range(slots):
        start(0.0, s)
    best = float("-inf")
    while heap and not (budget and sum(ran.values()) >= budget):
        now, _, slot, t, e = heapq.heappop(heap)
        v = t.values[e - 1]
        ran[t.tid] = e
        best = max(best, v)
        action = core.result(t.tid, e, v) if core else "CONTINUE"  # at max_t: STOP, as Ray
        if e >= min(max_t, len(t.values)):
            action = STOP
        if action == STOP:
            if core:
                core.complete(t.tid, e, v)
            start(now, slot)
        else:
            seq += 1
            heapq.heappush(heap, (now + (1.0 if unit else t.seconds[e]), seq, slot, t, e + 1))
    return {"ran": ran, "best": best, "epochs": sum(ran.values()), "trials": sum(1 for n in ran.values() if n > 0)}


def q(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo = int(k)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (k - lo)


def summary(xs, fmt="{:.2f}"):
    return f"{fmt.format(statistics.median(xs))} [{fmt.format(q(xs, 0.05))}, {fmt.format(q(xs, 0.95))}]"


def evaluate(
    own: list[Trial],
    others: list[Trial],
    names: list[str],
    max_t: int,
    orders: int,
    n_policy: int,
    unit: bool,
    seed: int,
    budget: int = 0,
) -> dict:
    """Per policy: lists over orders of trial-epochs, best, regret (pp), kept-the-best."""
    fifo_epochs = sum(min(len(t.values), max_t) for t in own)
    fifo_best = max(v for t in own for v in t.values[:max_t])
    final = max(own, key=lambda t: t.values[max_t - 1])  # the eventual best configuration
    se = 100 * (fifo_best * (1 - fifo_best) / final.val_n) ** 0.5  # one binomial standard error, pp
    out = {"fifo_epochs": fifo_epochs, "fifo_best": fifo_best, "final": final, "policies": {}, "se": se}
    for name in names:
        rows = {
            "epochs": [],
            "best": [],
            "regret": [],
            "kept": [],
            "beats": [],
            "within_se": [],
            "within_03": [],
            "trials": [],
        }
        for o in range(orders):
            rng = random.Random(f"{seed}:{o}")
            order = own[:]  # Tune samples the seed's own configs first (num_samples 90 begins with 36's)
            rng.shuffle(order)
            order += rng.sample(others, n_policy - len(own)) if n_policy > len(own) else []
            r = simulate(order, POLICIES[name], max_t, rng, unit=unit, budget=budget)
            rows["trials"].append(r["trials"])
            rows["epochs"].append(r["epochs"])
            rows["best"].append(r["best"])
            rows["regret"].append((fifo_best - r["best"]) * 100)
            rows["kept"].append(r["ran"].get(final.tid, 0) >= max_t)
            rows["beats"].append(r["best"] >= fifo_best)
            rows["within_se"].append((fifo_best - r["best"]) * 100 <= se + 1e-9)
            rows["within_03"].append((fifo_best - r["best"]) * 100 <= 0.3 + 1e-9)
        if n_policy <= len(own):  # the order the search sampled them in (what a real run of this seed sees)
            r = simulate(own, POLICIES[name], max_t, random.Random(seed), unit=unit)
            rows["as_sampled"] = (r["epochs"], (fifo_best - r["best"]) * 100, r["ran"].get(final.tid, 0) >= max_t)
        out["policies"][name] = rows
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--orders", type=int, default=300)
    p.add_argument(
        "--policies",
        default="fifo,asha,asha_g2,asha_b2,asha_b4,asha_hedge,strat,strat_p2,strat_p3,"
        "strat_g2,strat_b4,strat_hedge,strat_p2_b4",
    )
    p.add_argument("--family", default="optimizer", help="comma-separated family parameters (stratified policies)")
    p.add_argument("--max-t", type=int, default=8)
    p.add_argument("--samples", type=int, default=0, help="use each run's first N trials (0: all)")
    p.add_argument(
        "--equal-compute",
        type=int,
        default=0,
        metavar="N",
        help="also: each policy with N configs (own + drawn from the other runs) vs FIFO with the own",
    )
    p.add_argument(
        "--pool",
        nargs="*",
        type=Path,
        default=[],
        help="more FIFO runs whose finished trials only serve as --equal-compute draws (not seeds)",
    )
    p.add_argument("--unit", action="store_true", help="every epoch takes 1 unit (default: recorded durations)")
    p.add_argument("--json", type=Path, default=None, help="write the per-seed figures here")
    args = p.parse_args()
    fam = [x for x in args.family.split(",") if x]
    names = args.policies.split(",")
    runs = [complete(load_run(d, fam), args.max_t) for d in args.runs]
    if args.samples:
        runs = [r[: args.samples] for r in runs]
    pool = [t for d in args.pool for t in complete(load_run(d, fam), args.max_t)]
    dump = {}
    goals = [("equal configurations", 0)] + ([("equal compute", args.equal_compute)] if args.equal_compute else [])
    for goal, n in goals:
        print(
            f"\n=== {goal}"
            + (
                f": each policy with up to {n} configs (the seed's own first, in random order, "
                f"then drawn from the other runs) and FIFO's trial-epochs as a hard budget, vs "
                f"FIFO with the seed's own"
                if n
                else ""
            )
        )
        for i, (d, own) in enumerate(zip(args.runs, runs)):
            others = [t for j, r in enumerate(runs) if j != i for t in r] + pool
            if n and n - len(own) > len(others):
                print(f"\n{d.name}: only {len(others)} other configs to draw {n - len(own)} from: skipped")
                continue
            budget = sum(min(len(t.values), args.max_t) for t in own) if n else 0
            res = evaluate(own, others, names, args.max_t, args.orders, n or len(own), args.unit, i, budget)
            f = res["final"]
            print(
                f"\n{d.name}: {len(own)} trials, FIFO {res['fifo_epochs']} trial-epochs, best val "
                f"{res['fifo_best']:.4f} (1 SE {res['se']:.2f} pp); eventual best {f.family} {f.tid} ends {f.values[args.max_t - 1]:.4f} "
                f"(epoch 1: {f.values[0]:.4f})"
            )
            print(
                f"  {'policy':<13} {'trial-epochs':<20} {'ratio':<6} {'best val':<26} {'regret pp':<22} "
                f"kept best  best>=FIFO  <=0.3pp  <=1SE  as sampled: trial-epochs, regret, kept"
            )
            for name, rows in res["policies"].items():
                print(
                    f"  {name:<13} {summary(rows['epochs'], '{:.0f}'):<20} "
                    f"{statistics.median(rows['epochs']) / res['fifo_epochs']:<6.2f} "
                    f"{summary(rows['best'], '{:.4f}'):<26} {summary(rows['regret']):<22} "
                    f"{statistics.mean(rows['kept']):<10.2f} {statistics.mean(rows['beats']):<11.2f} "
                    f"{statistics.mean(rows['within_03']):<8.2f} {statistics.mean(rows['within_se']):<6.2f} "
                    + (
                        "{} {:.2f} {}".format(*rows["as_sampled"])
                        if "as_sampled" in rows
                        else f"(trials started: median {statistics.median(rows['trials']):.0f})"
                    )
                )
                dump.setdefault(goal, {}).setdefault(d.name, {})[name] = {
                    "fifo_epochs": res["fifo_epochs"],
                    "fifo_best": res["fifo_best"],
                    "epochs_median": statistics.median(rows["epochs"]),
                    "ratio_median": statistics.median(rows["epochs"]) / res["fifo_epochs"],
                    "best_median": statistics.median(rows["best"]),
                    "best_p05": q(rows["best"], 0.05),
                    "regret_median": statistics.median(rows["regret"]),
                    "regret_p95": q(rows["regret"], 0.95),
                    "regret_p05": q(rows["regret"], 0.05),
                    "kept": statistics.mean(rows["kept"]),
                    "beats": statistics.mean(rows["beats"]),
                    "within_se": statistics.mean(rows["within_se"]),
                    "within_03": statistics.mean(rows["within_03"]),
                    "se": res["se"],
                    "as_sampled": rows.get("as_sampled"),
                    "trials_median": statistics.median(rows["trials"]),
                }
    if args.json:
        args.json.write_text(json.dumps(dump, indent=1, default=str))
    for goal, seeds in dump.items():  # one markdown table per goal: the figures BENCHMARKS.md quotes
        print(
            f"\n{goal}: per seed, ratio of FIFO's trial-epochs / regret in pp, median [95th percentile] "
            f"over orders / share of orders that kept the eventual best / share within 0.3 pp of FIFO's best"
        )
        print("| policy | " + " | ".join(seeds) + " | median over seeds |")
        print("|---|" + "---|" * (len(seeds) + 1))
        for name in names:
            cells = [seeds[d][name] for d in seeds]
            med = (
                statistics.median(c["ratio_median"] for c in cells),
                statistics.median(c["regret_median"] for c in cells),
            )
            print(
                f"| {name} | "
                + " | ".join(
                    f"{c['ratio_median']:.2f} / {c['regret_median']:.2f} [{c['regret_p95']:.2f}] / {c['kept']:.2f} / "
                    f"{c['within_03']:.2f}"
                    for c in cells
                )
                + f" | {med[0]:.2f} / {med[1]:.2f} |"
            )


if __name__ == "__main__":
    main()
