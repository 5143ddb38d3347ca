"""Search overheads, measured side by side in one run (not a test). Prints:
 (a) epoch time of a trial under Tune (report + checkpoint) ÷ the same epoch in the standalone trainer (goal ≤ 1.10)
 (b) ASHA vs FIFO on the same space and seeds: trial-epochs ASHA needs to reach FIFO's best val accuracy
     minus 0.3 points ÷ FIFO's trial-epochs (goal ≤ 0.35)
 (c) memory: per-trial unique memory (USS) of concurrent trials vs the dataset size (zero-copy check)
Usage: python bench/search_bench.py [--part a,b,c]"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _run(spec: dict, storage: str, name: str):
    from raydigits.search import runner
    from raydigits.search.spec import parse_spec
    s = parse_spec(spec, name)
    runner.check_resources(s)
    runner.run_search(s, storage, name, runner.load_data(s), verbose=0)
    rows = []
    for d in sorted((Path(storage) / name).iterdir()):
        f = d / "result.json"
        if f.exists():
            rows += [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    return rows


def part_a(storage):
    from raydigits.config import make_config
    from raydigits.data import load_dataset
    from raydigits.trainer import Trainer
    fixed = dict(train_items=8000, val_items=2000, img_size=32, batch_size=128, threads=2, scheduler="cosine")
    spec = {"name": "bench_a", "num_samples": 1, "scheduler": {"type": "fifo", "max_t": 3},
            "resources": {"cpu": 2}, "fixed": fixed}
    rows = _run(spec, storage, "bench_a")
    tune_epoch = statistics.median(r["time_this_iter_s"] for r in rows[1:])
    data = load_dataset(REPO / "data" / "mnist", splits=("train", "val"))
    times = []
    Trainer(make_config({**fixed, "epochs": 3}), data).fit(lambda m, t: times.append(m["epoch_time_s"]))
    alone = statistics.median(times[1:])
    print(f"(a) epoch under Tune {tune_epoch:.2f}s (incl. report + checkpoint) ÷ standalone {alone:.2f}s = "
          f"{tune_epoch / alone:.3f}   (goal ≤ 1.10)")


def part_b(storage):
    base = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    base.update(num_samples=8, seed=3, max_concurrent=2)
    base["scheduler"] = {"type": "asha", "max_t": 4, "grace_period": 1, "reduction_factor": 3}
    base["fixed"].update(train_items=3000, val_items=1000)
    fifo = _run({**base, "name": "bench_fifo", "scheduler": {"type": "fifo", "max_t": 4}}, storage, "bench_fifo")
    asha = _run({**base, "name": "bench_asha"}, storage, "bench_asha")
    target = max(r["val_acc"] for r in fifo) - 0.003
    asha.sort(key=lambda r: (r["timestamp"], r["time_total_s"]))
    needed = next((i + 1 for i, r in enumerate(asha) if r["val_acc"] >= target), None)
    print(f"(b) FIFO best val_acc {target + 0.003:.4f} in {len(fifo)} trial-epochs; ASHA reached "
          f"{target:.4f} after {needed} of its {len(asha)} trial-epochs -> ratio "
          f"{(needed or len(asha)) / len(fifo):.3f}{'' if needed else ' (never reached)'}   (goal ≤ 0.35)")


def part_c(storage):
    base = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    base.update(name="bench_mem", num_samples=2, max_concurrent=2)
    base["scheduler"] = {"type": "fifo", "max_t": 2}
    base["fixed"].update(train_items=0, val_items=0)  # the whole dataset in every trial
    rows = _run(base, storage, "bench_mem")
    uss = [r["uss_mb"] for r in rows]
    print(f"(c) dataset 47 MB (train+val uint8); per-trial USS {min(uss):.0f}–{max(uss):.0f} MB, "
          f"read-only zero-copy arrays in every trial: {all(r['data_zero_copy'] for r in rows)}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--part", default="a,b,c")
    args = p.parse_args()
    from raydigits.search.runner import start_ray
    start_ray(None)
    with tempfile.TemporaryDirectory() as storage:
        for part in args.part.split(","):
            t = time.time()
            {"a": part_a, "b": part_b, "c": part_c}[part](storage)
            print(f"    ({part} took {time.time() - t:.0f}s)")


if __name__ == "__main__":
    main()
