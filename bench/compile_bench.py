"""Does torch.compile help the CPU training step? Measured side by side in one run (not a test):
the trainer's model, loss and optimiser stepping over the same preprocessed batches, eager vs
`torch.compile(model)` (default mode), interleaved rounds, medians; plus the one-off compile time,
and what that means for a trial of a few epochs.
Usage: python bench/compile_bench.py [--threads 2] [--batch-size 128] [--img-size 32] [--rounds 5]"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raydigits.config import make_config  # noqa: E402
from raydigits.data import ensure_prepared, load_dataset  # noqa: E402
from raydigits.trainer import Trainer  # noqa: E402


def steps(t: Trainer, model, batches) -> float:
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        loss = t.criterion(model(x).float(), y)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()
    return len(batches) * t.cfg.batch_size / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--items", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(ensure_prepared(REPO / "data" / "mnist"), splits=("train", "val"))
    t = Trainer(
        make_config(
            dict(
                train_items=args.items,
                val_items=512,
                batch_size=args.batch_size,
                img_size=args.img_size,
                threads=args.threads,
                device="cpu",
            )
        ),
        data,
    )
    batches = [(t.pre.eval(xb), yb) for xb, yb, _ in t.train_set.batches(args.batch_size, True, None, True)]
    compiled = torch.compile(t.model)
    start = time.perf_counter()
    steps(t, compiled, batches[:2])  # compiles forward and backward
    compile_s = time.perf_counter() - start
    steps(t, t.model, batches[:2])
    rounds = [(steps(t, t.model, batches), steps(t, compiled, batches)) for _ in range(args.rounds)]
    eager, comp = (statistics.median(r[i] for r in rounds) for i in (0, 1))
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, {args.img_size} px: "
        f"eager {eager:.0f} img/s, compiled {comp:.0f} img/s (medians of {args.rounds} interleaved rounds; "
        f"eager {min(r[0] for r in rounds):.0f}–{max(r[0] for r in rounds):.0f}, compiled "
        f"{min(r[1] for r in rounds):.0f}–{max(r[1] for r in rounds):.0f}) → ×{comp / eager:.2f}; "
        f"compile {compile_s:.0f}s"
    )
    epoch = 50_000
    for epochs in (1, 5, 15):
        e, c = epochs * epoch / eager, compile_s + epochs * epoch / comp
        print(f"  a trial of {epochs:>2} full-MNIST epochs: eager {e:.0f}s, compiled {c:.0f}s")


if __name__ == "__main__":
    main()
