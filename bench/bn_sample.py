"""How many training images precise BN needs (not a test): the BatchNorm running statistics computed
from a sample of the trial's training images, against the full pass over all of them, as the sample
shrinks. A model is trained with the trainer's defaults (seeded, CPU) on a class-stratified subset;
after each epoch named by --at, the statistics are recomputed from the whole subset (the reference)
and from samples of each --sizes size (--draws seeded draws each, drawn as the trainer draws its own:
`trainer.bn_sample`), and each is scored on the validation split (never the test split).
Per size it prints, as the median over the draws (the worst draw in brackets):
  mean shift  |mean - full mean| / full std, averaged over a layer's channels, then the worst layer
  var error   |var / full var - 1|, averaged over a layer's channels, then the worst layer
  Δ val_acc   validation accuracy - the full pass's, in pp; flips: validation images whose prediction
              differs from the full pass's
  time        seconds the recalibration took (a timing: only meaningful on a quiet machine)
Usage: python bench/bn_sample.py [--train-items 10000] [--val-items 2000] [--epochs 3] [--at 1,3]
                                 [--sizes 256,512,1024,2048,4096] [--draws 3] [--img-size 32] [--threads 1]"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from raydigits.config import make_config
from raydigits.data import ensure_prepared, load_dataset
from raydigits.models import norms_to_recalibrate
from raydigits.trainer import Trainer, bn_sample

REPO = Path(__file__).resolve().parents[1]


def statistics_of(trainer: Trainer) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(running mean, running var) of every recalibrated BatchNorm layer, copied."""
    return [(m.running_mean.clone(), m.running_var.clone()) for m in norms_to_recalibrate(trainer.model, False)]


def errors(stats: list, full: list) -> tuple[float, float]:
    """(worst layer's mean shift in full-pass stds, worst layer's relative variance error)."""
    shift = max(((m - fm).abs() / fv.clamp_min(1e-12).sqrt()).mean().item() for (m, _), (fm, fv) in zip(stats, full))
    var = max(((v / fv.clamp_min(1e-12)) - 1).abs().mean().item() for (_, v), (_, fv) in zip(stats, full))
    return shift, var


def predictions(trainer: Trainer) -> tuple[torch.Tensor, dict]:
    preds = torch.cat([out.argmax(1) for out, _, _ in trainer.predict_batches(trainer.val_set)])
    return preds, trainer.evaluate()


def measure(trainer: Trainer, sizes: list[int], draws: int, epoch: int) -> list[str]:
    """The table's rows after `epoch` (the trainer's weights as they are now; its BN statistics are
    left as its own sample made them)."""
    own = trainer.bn_index
    n = len(trainer.train_set)
    trainer.bn_index = bn_sample(trainer.train_set, n, trainer.cfg.seed, trainer.device)  # all, mixed order
    full_time = trainer.recalibrate_bn()
    full = statistics_of(trainer)
    full_pred, full_ev = predictions(trainer)
    rows = [f"| {epoch} | full ({n}) | 0 | 0 | val_acc {100 * full_ev['val_acc']:.2f} % | — | {full_time:.2f} |"]
    for size in sizes:
        if size >= n:
            continue
        got = []
        for draw in range(draws):
            trainer.bn_index = bn_sample(trainer.train_set, size, trainer.cfg.seed + 1000 * (draw + 1), trainer.device)
            seconds = trainer.recalibrate_bn()
            shift, var = errors(statistics_of(trainer), full)
            pred, ev = predictions(trainer)
            flips = int((pred != full_pred).sum())
            got.append((shift, var, 100 * (ev["val_acc"] - full_ev["val_acc"]), flips, seconds))
        med = [statistics.median(col) for col in zip(*got)]
        worst = [max(g[0] for g in got), max(g[1] for g in got), min(g[2] for g in got), max(g[3] for g in got)]
        rows.append(
            f"| {epoch} | {size} | {med[0]:.4f} ({worst[0]:.4f}) | {med[1]:.4f} ({worst[1]:.4f}) | "
            f"{med[2]:+.2f} pp ({worst[2]:+.2f}) | {med[3]:.0f} ({worst[3]}) of {len(full_pred)} | {med[4]:.2f} |"
        )
    trainer.bn_index = own
    trainer.recalibrate_bn()  # the trainer's own statistics back
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train-items", type=int, default=10000, help="the trial's training subset (issue 25's race)")
    p.add_argument("--val-items", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--at", default="1,3", help="epochs after which to measure")
    p.add_argument("--sizes", default="256,512,1024,2048,4096")
    p.add_argument("--draws", type=int, default=3, help="seeded samples per size")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="a race trial's share: 1 CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="mobilenet_v3_small")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    at = {int(e) for e in args.at.split(",") if e}
    data = load_dataset(ensure_prepared(REPO / "data" / "mnist"), splits=("train", "val"))
    cfg = make_config(
        dict(
            train_items=args.train_items,
            val_items=args.val_items,
            epochs=args.epochs,
            img_size=args.img_size,
            threads=args.threads,
            seed=args.seed,
            model=args.model,
            device="cpu",
        )
    )
    trainer = Trainer(cfg, data)
    print(
        f"{args.model}, {len(trainer.train_set)} training images, {len(trainer.val_set)} validation, "
        f"{args.img_size} px, {args.epochs} epochs, seed {args.seed}, {args.threads} threads, the trainer's "
        f"defaults otherwise (bn_recalibrate {cfg.bn_recalibrate}); {args.draws} draws per size"
    )
    rows: list[str] = []
    trainer.fit(lambda m, t: rows.extend(measure(t, sizes, args.draws, m["epoch"])) if m["epoch"] in at else None)
    print(
        "| after epoch | BN sample | mean shift (std) | var error | Δ val_acc vs full | flips | seconds |\n"
        "|---|---|---|---|---|---|---|"
    )
    print("\n".join(rows))
    print("(medians over the draws, the worst draw in brackets; seconds are a timing: quiet machine only)")


if __name__ == "__main__":
    main()
