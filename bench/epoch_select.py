"""Which epoch of a trial to ship: the best on validation, or the latest kept one within one standard
error of it (the final stage's `select_epoch: within_se`)? Both of `experiment.selection.choose_best`'s rules
are applied to every usable trial of finished experiments, and each chosen checkpoint (as saved,
precise-BN statistics included) is evaluated on the test split. Not a test: a measurement for
BENCHMARKS.md. VAL_N, the validation's size, is given for results older than the trainer's `val_n`.
Usage: python bench/epoch_select.py EXP:VAL_N [EXP:VAL_N ...]"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

from raydigits.config import TrainConfig, default_data_dir
from raydigits.data import load_dataset
from raydigits.errors import UserError
from raydigits.experiment import Experiment, choose_best
from raydigits.pipeline import SplitBatches
from raydigits.trainer import Trainer, load_checkpoint


def main(args: list[str]) -> None:
    data = load_dataset(Path(default_data_dir()))
    test = SplitBatches(data.images["test"], data.labels["test"], torch.device("cpu"))
    trainer = None

    def test_acc(choice) -> float:
        nonlocal trainer
        state = load_checkpoint(choice.checkpoint.local)
        if trainer is None:
            trainer = Trainer(TrainConfig(**{**state["config"], "data_dir": default_data_dir(), "device": "cpu"}), data)
        trainer.model.load_state_dict(state["model"])
        return 100 * trainer.evaluate(test)["val_acc"]

    for arg in args:
        exp, n = arg.rsplit(":", 1)
        experiment = Experiment.open(exp)
        spec = experiment.spec
        rules = {rule: spec.model_copy(update={"select_epoch": rule}) for rule in ("best", "within_se")}
        trials = [replace(t, results=tuple({"val_n": int(n), **r} for r in t.results)) for t in experiment.trials]
        changed = []
        for trial in trials:
            try:
                best, pick = (choose_best([trial], rules[rule]) for rule in rules)
            except UserError:  # errored, diverged, out of memory or no checkpoint: never chosen
                continue
            acc = {c.epoch: test_acc(c) for c in (best, pick)}
            print(
                f"{best.trial_id}: best val epoch {best.epoch} ({100 * best.value:.2f}) test {acc[best.epoch]:.2f}; "
                f"within-SE epoch {pick.epoch} ({100 * pick.value:.2f}) test {acc[pick.epoch]:.2f}",
                flush=True,
            )
            if pick.epoch != best.epoch:
                changed.append(acc[pick.epoch] - acc[best.epoch])
        print(
            f"{exp}: SE rule changed {len(changed)} trials' epoch; test accuracy change "
            f"{', '.join(f'{c:+.2f}' for c in changed) or '-'} pp"
        )


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(sys.argv[1:] or sys.exit(__doc__))
