"""GPU trainer throughput, measured side by side in one run (not a test). For each image size:
 trainer with CUDA graphs, trainer eager, and a bare eager forward/backward/step loop over batches
 already on the GPU, in interleaved rounds (medians); then N trainer processes sharing the GPU.
Usage: python bench/gpu_bench.py [--sizes 32,64,224] [--batch-size 256] [--shared 4 --shared-size 64]
Goals (issue 11, MobileNetV3-small, bf16, one H200): ≥ 40k img/s at 32 px, ≥ 20k at 224 px per trial;
4 trials sharing one GPU ≥ 100k img/s together at 64 px."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raydigits.config import make_config  # noqa: E402
from raydigits.data import ensure_prepared, load_dataset  # noqa: E402
from raydigits.trainer import Trainer  # noqa: E402


def trainer_for(data, size: int, batch: int, items: int, graphs: bool, model: str) -> Trainer:
    cfg = make_config(
        dict(
            train_items=items,
            val_items=2048,
            batch_size=batch,
            eval_batch_size=1024,
            img_size=size,
            epochs=100,
            model=model,
            device="cuda",
            amp="bf16",
            scheduler="cosine",
            cuda_graphs=graphs,
        )
    )
    return Trainer(cfg, data)


def bare_loop(t: Trainer, steps: int) -> float:
    """The trainer's own model, optimiser and loss, eager, over batches preprocessed up front."""
    xs = [(t.pre.eval(xb), yb) for xb, yb, _ in t.train_set.batches(t.cfg.batch_size, True, None, True)]
    t.model.train()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        x, y = xs[i % len(xs)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = t.criterion(t.model(x).float(), y)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()
    torch.cuda.synchronize()
    return steps * t.cfg.batch_size / (time.perf_counter() - start)


def one_size(data, size, args) -> dict:
    graphs = trainer_for(data, size, args.batch_size, args.items, True, args.model)
    eager = trainer_for(data, size, args.batch_size, args.items, False, args.model)
    t0 = time.perf_counter()
    graphs.train_one_epoch(1)  # warm-up: includes the capture
    capture_s = time.perf_counter() - t0
    eager.train_one_epoch(1)
    rounds = []
    for r in range(args.rounds):  # interleaved: the three measured one after another, each round
        g = graphs.train_one_epoch(2 + r)["images_per_s"]
        e = eager.train_one_epoch(2 + r)["images_per_s"]
        b = bare_loop(eager, graphs.steps_per_epoch)
        rounds.append((g, e, b))
    med = [statistics.median(x[i] for x in rounds) for i in range(3)]
    spread = [(min(x[i] for x in rounds), max(x[i] for x in rounds)) for i in range(3)]
    return {
        "size": size,
        "graphs": med[0],
        "eager": med[1],
        "bare": med[2],
        "spread": spread,
        "first_epoch_s": capture_s,
        "graph_blocker": graphs.graph_blocker,
    }


def shared_worker(args) -> None:
    """One of N processes sharing the GPU: warm up, wait for the common start, train for --duration s."""
    data = load_dataset(ensure_prepared(REPO / "data" / "mnist"), splits=("train", "val"))
    t = trainer_for(data, args.shared_size, args.batch_size, args.items, True, args.model)
    t.train_one_epoch(1)
    while time.time() < args.start_at:
        time.sleep(0.01)
    seen, start, ep = 0, time.perf_counter(), 2
    while time.perf_counter() - start < args.duration:
        seen += t.steps_per_epoch * t.cfg.batch_size
        t.train_one_epoch(ep)
        ep += 1
    print(json.dumps({"images": seen, "seconds": time.perf_counter() - start}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="32,64,224")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--items", type=int, default=16384)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default="mobilenet_v3_small")
    p.add_argument("--shared", type=int, default=4)
    p.add_argument("--shared-size", type=int, default=64)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--start-delay", type=float, default=45.0, help="seconds for the shared trainers to warm up")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--start-at", type=float, default=0.0)
    args = p.parse_args()
    if args.worker:
        return shared_worker(args)
    data = load_dataset(ensure_prepared(REPO / "data" / "mnist"), splits=("train", "val"))
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {args.model}, batch {args.batch_size}, "
        f"bf16, {args.items} images/epoch, medians of {args.rounds} interleaved rounds"
    )
    goals = {32: 40_000, 224: 20_000}
    for size in [int(s) for s in args.sizes.split(",") if s]:
        r = one_size(data, size, args)
        goal = (
            f"   (goal ≥ {goals[size] / 1000:.0f}k: {'✓' if r['graphs'] >= goals[size] else '✗'})"
            if size in goals
            else ""
        )
        print(
            f"{size:>4} px: graphs {r['graphs']:>8.0f} img/s (range {r['spread'][0][0]:.0f}-{r['spread'][0][1]:.0f}) | "
            f"eager {r['eager']:>7.0f} | bare eager loop {r['bare']:>7.0f} | graphs ÷ eager "
            f"{r['graphs'] / r['eager']:.2f}, trainer(graphs) ÷ bare {r['graphs'] / r['bare']:.2f}; "
            f"first epoch incl. capture {r['first_epoch_s']:.1f}s{goal}"
            + (f"  [graphs off: {r['graph_blocker']}]" if r["graph_blocker"] else ""),
            flush=True,
        )
    if args.shared:
        del data
        torch.cuda.empty_cache()
        start_at = time.time() + args.start_delay  # every worker warmed up (load, capture) before the common start
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--start-at",
            str(start_at),
            "--shared-size",
            str(args.shared_size),
            "--batch-size",
            str(args.batch_size),
            "--items",
            str(args.items),
            "--duration",
            str(args.duration),
            "--model",
            args.model,
        ]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(args.shared)]
        outs = [json.loads(pr.communicate()[0].strip().splitlines()[-1]) for pr in procs]
        rates = [o["images"] / o["seconds"] for o in outs]
        total = sum(rates)
        each = ", ".join(f"{r:.0f}" for r in rates)
        print(
            f"{args.shared} trainers sharing the GPU at {args.shared_size} px: {total:.0f} img/s together "
            f"({each})   (goal ≥ 100k: "
            f"{'✓' if total >= 100_000 else '✗'})",
            flush=True,
        )


if __name__ == "__main__":
    main()
