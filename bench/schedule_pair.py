"""Two schedules on the same configurations, config by config (not a test): what a learning-rate
schedule that anneals at its milestones (`scheduler: rung_cosine`, a search's first rung) does to
the trials that run to the end, and to how well an early rung ranks them (issue 19, "budget-aware
rungs").

A and B are FIFO collections of the same search seed (`bench/es_collect.py`, B with `--set
scheduler=rung_cosine ...`): random search draws the same configurations for both, and a trial's
training is seeded by its config, so trial i of A and the trial of B with the same searched values
differ by the schedule alone. Per seed pair, and pooled:
 - the final validation (epoch max_t) B - A per config, pp: mean with a bootstrap 95 % interval,
   the Wilcoxon signed-rank p (paired, two-sided), and how many configs B ends above / below A;
 - the same for the best quarter of configs, chosen by the mean of A's and B's finals (chosen by
   one side's, the difference would be biased against that side: regression to the mean);
 - each side's best final, and the best final of each side's best configuration;
 - how well epoch e ranks the finals (Spearman, all trials and within each family, with a
   permutation p and a bootstrap interval): the quantity an early rung relies on.
Usage: python bench/schedule_pair.py --a DIR [DIR ...] --b DIR [DIR ...] [--epochs 1,2,4] [--family optimizer]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_bench as sb  # noqa: E402
import stats  # noqa: E402


def load(d: Path) -> dict[str, dict]:
    """{config as canonical JSON: {"config", "values"}} for the trials of a collection that ran
    to the end of their curve."""
    out = {}
    for t in sb._trials(Path(d)).values():
        rows = sorted(t["results"], key=lambda r: r["training_iteration"])
        out[json.dumps(t["config"], sort_keys=True)] = {"config": t["config"], "values": [r["val_acc"] for r in rows]}
    return out


def pair(a: dict, b: dict, max_t: int) -> list[tuple[dict, list, list]]:
    keys = sorted(k for k in a.keys() & b.keys() if len(a[k]["values"]) >= max_t and len(b[k]["values"]) >= max_t)
    return [(a[k]["config"], a[k]["values"][:max_t], b[k]["values"][:max_t]) for k in keys]


def diff_line(label: str, d_pp: np.ndarray) -> str:
    if len(d_pp) == 0:
        return f"  {label}: no pairs"
    mean, low, high = stats.bootstrap_mean(d_pp)
    p = sps.wilcoxon(d_pp).pvalue if len(d_pp) >= 6 and np.any(d_pp != 0) else float("nan")
    return (
        f"  {label}: B - A = {mean:+.2f} pp (95% CI {low:+.2f}..{high:+.2f}), median {np.median(d_pp):+.2f}, "
        f"Wilcoxon p={p:.2g}, B higher in {int((d_pp > 0).sum())} of {len(d_pp)}, lower in {int((d_pp < 0).sum())}"
    )


def report(name: str, pairs: list, epochs: list[int], family: str) -> None:
    a_final = np.array([p[1][-1] for p in pairs])
    b_final = np.array([p[2][-1] for p in pairs])
    d = (b_final - a_final) * 100
    print(f"{name}: {len(pairs)} configurations run to the end on both sides")
    print(diff_line("final, every config", d))
    mean = (a_final + b_final) / 2
    top = mean >= np.quantile(mean, 0.75)
    print(diff_line("final, the best quarter by (A+B)/2", d[top]))
    ia, ib = int(a_final.argmax()), int(b_final.argmax())
    print(
        f"  best final: A {a_final[ia]:.4f} ({json.dumps(pairs[ia][0])}), B {b_final[ib]:.4f} "
        f"({json.dumps(pairs[ib][0])}); B - A {100 * (b_final[ib] - a_final[ia]):+.2f} pp; "
        f"A's best config under B {b_final[ia]:.4f}"
    )
    fams = sorted({str(p[0].get(family)) for p in pairs})
    for e in epochs:
        parts = []
        for side, idx in (("A", 1), ("B", 2)):
            at = [p[idx][e - 1] for p in pairs]
            fin = [p[idx][-1] for p in pairs]
            seg = [f"all {stats.rank_correlation(at, fin)}"]
            for f in fams:
                sel = [i for i, p in enumerate(pairs) if str(p[0].get(family)) == f]
                seg.append(f"{f} {stats.rank_correlation([at[i] for i in sel], [fin[i] for i in sel])}")
            parts.append(f"{side}: " + "; ".join(seg))
        print(f"  Spearman(epoch {e}, final)  " + "  |  ".join(parts))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--a", nargs="+", required=True, help="collections of schedule A, one per seed")
    p.add_argument("--b", nargs="+", required=True, help="collections of schedule B, the same seeds in order")
    p.add_argument("--epochs", default="1,2,4")
    p.add_argument("--max-t", type=int, default=8)
    p.add_argument("--family", default="optimizer")
    args = p.parse_args()
    if len(args.a) != len(args.b):
        raise SystemExit("schedule_pair: --a and --b need one collection per seed each, in the same order")
    epochs = [int(x) for x in args.epochs.split(",")]
    pooled = []
    for da, db in zip(args.a, args.b):
        a, b = load(Path(da)), load(Path(db))
        pairs = pair(a, b, args.max_t)
        unmatched = len(a) + len(b) - 2 * len(pairs)
        name = f"{Path(da).name} vs {Path(db).name}" + (f" ({unmatched} trials unpaired)" if unmatched else "")
        if not pairs:
            print(f"{name}: no configuration in common")
            continue
        report(name, pairs, epochs, args.family)
        pooled += pairs
    if len(args.a) > 1 and pooled:
        report("pooled", pooled, epochs, args.family)


if __name__ == "__main__":
    main()
