"""Collect FIFO learning curves for the early-stopping replay (bench/replay.py): every trial of a
search runs to max_t and its per-epoch validation is kept (result.json under --storage). Not a test.
The setting is issue 19's benchmark: 1,500 training images, the full 10,000-image validation split,
8 epochs, 2 trials at a time with one CPU each.
Usage: python bench/es_collect.py --space first|FILE.yaml --seeds 0,1,2 --samples 90 --storage DIR
       [--set KEY=VALUE ...]   (a fixed knob for every trial, e.g. the budget-aware schedule:
       --set scheduler=rung_cosine --set "milestones=[1]", the first rung a search would fill in:
       FIFO has no rungs to fill it from)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_bench as sb  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--space", default="first")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--samples", type=int, default=90)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-items", type=int, default=1500)
    p.add_argument("--val-items", type=int, default=0, help="0 = the full 10,000-image validation split")
    p.add_argument("--prefix", default="fifo")
    p.add_argument("--storage", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a fixed knob (YAML value)")
    args = p.parse_args()
    sb.SPACE = sb.load_space(args.space)
    from raydigits.search.runner import start_ray

    start_ray(None)
    fixed = {"train_items": args.train_items, "val_items": args.val_items}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"es_collect: --set {item!r}: expected KEY=VALUE")
        fixed[key.strip()] = yaml.safe_load(value)
    for seed in [int(s) for s in args.seeds.split(",")]:
        t = time.time()
        name = f"{args.prefix}_{Path(args.space).stem}_{seed}_{args.samples}"
        run = sb._run(
            sb._space(name, seed, {"type": "fifo", "max_t": args.epochs}, fixed, args.samples, {"cpu": 1, "gpu": 0}, 2),
            args.storage,
        )
        te = sum(len(x["results"]) for x in run["trials"].values())
        best = max(r["val_acc"] for x in run["trials"].values() for r in x["results"])
        print(
            f"{name}: {len(run['trials'])} trials, {te} trial-epochs, best val {best:.4f}, {time.time() - t:.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
