"""Which epoch of a trial to ship: the best on validation, or the latest kept one within one standard
error of it (the final stage's `select_epoch: within_se`)? For every trial of finished experiments,
both epochs' checkpoints are evaluated on the test split (the checkpoints as saved, precise-BN
statistics included). Not a test: a measurement for BENCHMARKS.md.
Usage: python bench/epoch_select.py EXP:VAL_N [EXP:VAL_N ...]   (VAL_N: the validation's size)"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from raydigits.config import TrainConfig, default_data_dir
from raydigits.data import load_dataset
from raydigits.pipeline import SplitBatches
from raydigits.trainer import Trainer, load_checkpoint


def main(args: list[str]) -> None:
    data = load_dataset(Path(default_data_dir()))
    test = SplitBatches(data.images["test"], data.labels["test"], torch.device("cpu"))
    trainer = None
    for arg in args:
        exp, n = arg.rsplit(":", 1)
        changed = []
        for d in sorted(p for p in Path(exp).iterdir() if (p / "result.json").exists()):
            rows = [json.loads(line) for line in (d / "result.json").read_text().splitlines()]
            last_writer = {r["checkpoint_dir_name"]: r["epoch"] for r in rows}
            kept = {r["epoch"]: d / r["checkpoint_dir_name"] / "checkpoint.pt" for r in rows
                    if (d / r["checkpoint_dir_name"]).exists() and last_writer[r["checkpoint_dir_name"]] == r["epoch"]}
            cand = [r for r in rows if r["epoch"] in kept]
            best = max(cand, key=lambda r: (r["val_acc"], -r["epoch"]))
            se = math.sqrt(best["val_acc"] * (1 - best["val_acc"]) / int(n))
            pick = max((r for r in cand if r["val_acc"] >= best["val_acc"] - se), key=lambda r: r["epoch"])
            acc = {}
            for e in sorted({best["epoch"], pick["epoch"]}):
                state = load_checkpoint(kept[e])
                if trainer is None:
                    trainer = Trainer(TrainConfig(**{**state["config"], "data_dir": default_data_dir(),
                                                     "device": "cpu"}), data)
                trainer.model.load_state_dict(state["model"])
                acc[e] = 100 * trainer.evaluate(test)["val_acc"]
            line = (f"{d.name[-5:]}: best val epoch {best['epoch']} ({100 * best['val_acc']:.2f}) test "
                    f"{acc[best['epoch']]:.2f}; within-SE epoch {pick['epoch']} ({100 * pick['val_acc']:.2f}) "
                    f"test {acc[pick['epoch']]:.2f}")
            print(line, flush=True)
            if pick["epoch"] != best["epoch"]:
                changed.append(acc[pick["epoch"]] - acc[best["epoch"]])
        print(f"{exp}: SE rule changed {len(changed)} trials' epoch; test accuracy change "
              f"{', '.join(f'{c:+.2f}' for c in changed) or '-'} pp")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(sys.argv[1:] or sys.exit(__doc__))
