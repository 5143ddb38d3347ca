"""How repeatable are the costs a trial reports (raydigits/costs.py)? Each round builds every
(architecture, image size, threads) model afresh, as a new trial would, and measures it with the
product's own `costs.measure`; rounds are interleaved so the machine's drift spreads over all cells.
Prints, per cell: parameters, MFLOPs and size (must be identical across rounds), the median latency
over rounds, its spread (min–max and the max/min ratio), and the within-measure IQR. Not a test.

Usage: python bench/costs_spread.py [--rounds 5] [--models a,b] [--sizes 32,64] [--threads 1,2]"""

from __future__ import annotations

import argparse
import statistics

import torch

from raydigits import costs
from raydigits.config import TrainConfig
from raydigits.models import build_model

MODELS = "mobilenet_v3_small,mobilenet_v3_large,mobilenet_v2,shufflenet_v2_x1_0,efficientnet_b0,resnet18"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--sizes", default="32,64")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    cells = [
        (m, int(s), int(t))
        for m in args.models.split(",")
        for s in args.sizes.split(",")
        for t in args.threads.split(",")
    ]
    runs: dict[tuple, list[costs.Costs]] = {c: [] for c in cells}
    cpu = torch.device("cpu")
    for r in range(args.rounds):
        for model_name, size, threads in cells:
            torch.set_num_threads(threads)
            model = build_model(TrainConfig(model=model_name, img_size=size), 10).to(memory_format=torch.channels_last)
            runs[(model_name, size, threads)].append(costs.measure(model, size, cpu))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(
        f"\n{'model':<20} {'px':>3} {'thr':>3} {'params':>9} {'MFLOPs':>8} {'MiB':>6} "
        f"{'lat ms':>7} {'min–max':>13} {'max/min':>7} {'IQR ms':>7}"
    )
    for (model_name, size, threads), cs in runs.items():
        same = {(c.params, c.mflops, c.size_mb) for c in cs}
        lat = [c.latency_ms for c in cs]
        flag = "" if len(same) == 1 else "  NOT IDENTICAL ACROSS ROUNDS"
        print(
            f"{model_name:<20} {size:>3} {threads:>3} {cs[0].params:>9,} {cs[0].mflops:>8.2f} {cs[0].size_mb:>6.2f} "
            f"{statistics.median(lat):>7.2f} {min(lat):>6.2f}–{max(lat):<6.2f} {max(lat) / min(lat):>7.2f} "
            f"{statistics.median(c.latency_iqr_ms for c in cs):>7.2f}{flag}"
        )
    print(
        f"\ntorch {torch.__version__}, {args.rounds} interleaved rounds, {costs.CALLS} calls after {costs.WARMUP} warm-up"
    )


if __name__ == "__main__":
    main()
