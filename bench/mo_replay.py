"""Multi-objective early stopping against running every trial to the end, replayed on recorded FIFO
runs (issue 21's benchmark; not a test).

As in bench/replay.py: a trial's training is seeded by its config alone and is deterministic on CPU,
so a policy that only decides which trial stops sees exactly the prefix of the curve the FIFO run
recorded, and its costs (measured once before the first epoch, the same for every trial of an
architecture) are the ones the FIFO run reported. Every decision comes from
`raydigits.search.mo_stopping.MOStoppingCore` — the core that decides inside the shipped scheduler —
with the shipped default's settings (`family_asha.default_keep`; no families unless --family says
otherwise: with several objectives the shipped scheduler leaves out the keys that choose the
architecture, which are all of accuracy_vs_latency's parameters); the search's slots are simulated, each epoch
lasting as long as the FIFO run recorded it.

Per run (one search seed) and over --orders random arrival orders: the trial-epochs each side ran, and
the hypervolume of the front each side found — every trial a side ran contributes the point (its best
validation over the epochs it ran, its cost objectives), the point a final stage choosing the best
epoch would give it — against a stated reference point: (--ref-acc, default 0.1 = chance on ten
classes; the largest cost any trial of the run reported × 1.1). A trial that breaks a constraint adds
nothing on either side. Goal (issue 21): >= 0.98 of FIFO's hypervolume at <= 40 % of its trial-epochs,
median of 3 seeds.

Usage: python bench/mo_replay.py RUN_DIR [RUN_DIR ...] [--orders 300] [--family model,img_size]
       [--objectives val_acc:max,latency_ms:min] [--max-t 6] [--grace 1] [--rf 2] [--first-keep 0.75]
RUN_DIR: a FIFO experiment folder of a multi-objective space (trial folders with result.json), e.g.
from `python bench/es_collect.py --space accuracy_vs_latency --seeds 0,1,2 --samples 24 --storage DIR`.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from raydigits import pareto  # noqa: E402
from raydigits.search.family_asha import DEFAULT_FIRST_KEEP, default_keep  # noqa: E402
from raydigits.search.mo_stopping import MOStoppingCore  # noqa: E402
from raydigits.search.stopping import STOP, family_of  # noqa: E402


@dataclass
class Trial:
    tid: str
    family: tuple
    values: list  # the quality metric after epoch 1..max_t
    costs: tuple  # the cost objectives (constant over a trial)
    seconds: list  # each epoch's duration in the FIFO run


def load_run(d: Path, family_keys: list[str], objectives: list[tuple[str, str]]) -> list[Trial]:
    (quality, _), costs = objectives[0], [k for k, _ in objectives[1:]]
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
                [r[quality] for r in rows],
                tuple(float(rows[0][k]) for k in costs),
                [r["time_this_iter_s"] for r in rows],
            )
        )
    return sorted(out, key=lambda t: t.tid)


def simulate(
    trials: list[Trial], modes: list[str], max_t: int, keep, stratify: bool, slots: int, grace: int = 1, rf: float = 2
) -> dict:
    """One search in the given order; returns {tid: epochs ran} and each trial's best value so far."""
    core = MOStoppingCore(max_t=max_t, grace_period=grace, reduction_factor=rf, stratify=stratify, keep=keep)
    pending, heap, ran, best, seq = iter(trials), [], {}, {}, 0

    def start(now: float, slot: int) -> None:
        nonlocal seq
        t = next(pending, None)
        if t is None:
            return
        core.add(t.tid, t.family)
        ran[t.tid], seq = 0, seq + 1
        heapq.heappush(heap, (now + t.seconds[0], seq, slot, t, 1))

    for s in range(slots):
        start(0.0, s)
    while heap:
        now, _, slot, t, e = heapq.heappop(heap)
        v = t.values[e - 1]
        ran[t.tid], best[t.tid] = e, max(best.get(t.tid, float("-inf")), v)
        point = pareto.oriented([(v, *t.costs)], modes)[0]
        action = STOP if e >= max_t else core.result(t.tid, e, point)
        if action == STOP:
            core.complete(t.tid, e, point)
            start(now, slot)
        else:
            seq += 1
            heapq.heappush(heap, (now + t.seconds[e], seq, slot, t, e + 1))
    return {"ran": ran, "best": best}


def volume(trials: list[Trial], best: dict, modes: list[str], ref: np.ndarray) -> float:
    pts = [(best[t.tid], *t.costs) for t in trials if t.tid in best]
    return pareto.hypervolume(pareto.oriented(pts, modes), ref) if pts else 0.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--orders", type=int, default=300)
    p.add_argument("--objectives", default="val_acc:max,latency_ms:min")
    p.add_argument("--family", default="", help="stratify by these config keys (default: none, plain MO-ASHA)")
    p.add_argument("--max-t", type=int, default=0, help="0: the runs' own max epochs")
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--ref-acc", type=float, default=0.1)
    p.add_argument("--grace", type=int, default=1, help="the rungs: grace period (the shipped space's: 1)")
    p.add_argument("--rf", type=float, default=2.0, help="the rungs: reduction factor (the shipped space's: 2)")
    p.add_argument(
        "--first-keep", type=float, default=DEFAULT_FIRST_KEEP, help="the first rung's share kept (0: 1/rf, Ray's)"
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    objectives = [tuple(o.split(":")) for o in args.objectives.split(",")]
    modes = [m for _, m in objectives]
    fam = [k for k in args.family.split(",") if k]
    dump, ratios, shares = {}, [], []
    for d in args.runs:
        trials = load_run(d, fam, objectives)
        max_t = args.max_t or max(len(t.values) for t in trials)
        trials = [t for t in trials if len(t.values) >= max_t]
        keep = default_keep(max_t, args.grace, args.rf, args.first_keep or None)
        worst = np.array([max(t.costs[i] for t in trials) * 1.1 for i in range(len(objectives) - 1)])
        ref = np.concatenate([pareto.oriented([(args.ref_acc,)], modes[:1])[0], worst])
        fifo_best = {t.tid: max(t.values[:max_t]) for t in trials}
        fifo_hv, fifo_epochs = volume(trials, fifo_best, modes, ref), len(trials) * max_t
        rows = []
        for o in range(args.orders):
            order = trials[:]
            random.Random(f"{d.name}:{o}").shuffle(order)
            r = simulate(order, modes, max_t, keep, bool(fam), args.slots, args.grace, args.rf)
            rows.append((sum(r["ran"].values()) / fifo_epochs, volume(trials, r["best"], modes, ref) / fifo_hv))
        e = statistics.median(x for x, _ in rows)
        h = statistics.median(y for _, y in rows)
        lo_h = sorted(y for _, y in rows)[int(0.05 * (len(rows) - 1))]
        reached = statistics.mean(y >= 0.98 for _, y in rows)
        ratios.append(e)
        shares.append(h)
        front = pareto.front(pareto.oriented([(fifo_best[t.tid], *t.costs) for t in trials], modes))
        print(
            f"{d.name}: {len(trials)} trials x {max_t} epochs; reference point {ref.tolist()} (oriented); "
            f"FIFO hypervolume {fifo_hv:.4g}, front of {len(front)}; MO-ASHA over {args.orders} orders: "
            f"trial-epochs / FIFO's median {e:.2f}, hypervolume / FIFO's median {h:.3f} (5th percentile "
            f"{lo_h:.3f}), share of orders >= 0.98: {reached:.2f}"
        )
        dump[d.name] = {"ratio": e, "hv_share": h, "hv_share_p05": lo_h, "reached": reached, "ref": ref.tolist()}
    print(
        f"median over {len(args.runs)} runs: trial-epochs {statistics.median(ratios):.2f} of FIFO's (goal <= 0.40), "
        f"hypervolume {statistics.median(shares):.3f} of FIFO's (goal >= 0.98)"
    )
    if args.json:
        args.json.write_text(json.dumps(dump, indent=1))


if __name__ == "__main__":
    main()
