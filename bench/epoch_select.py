"""Which epoch of a trial to ship: the best on validation, or the latest kept one within one standard
error of it (the final stage's `select_epoch: within_se`)? Both of `experiment.selection.choose_best`'s
rules are applied to every usable trial of finished experiments, and where they pick different epochs
both checkpoints (as saved, precise-BN statistics included) are scored on a DEVELOPMENT split: the
training images that none of the experiments' trials trained on (they trained on a seeded stratified
`train_items` subset of the train split; the rest of it is carved off here). The test split is never
read: a design chosen on it would be scored on it again (tests/test_bench_guard.py checks).
Per changed trial: each epoch's dev accuracy, the images only one of the two gets right and the exact
McNemar p-value; in all: how many changes helped or hurt, and the mean change with a bootstrap 95 %
interval over the changed trials. Not a test: a measurement for BENCHMARKS.md.
Usage: python bench/epoch_select.py [--dev-items N] [--val-n N] [--threads N] EXP [EXP ...]"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from stats import bootstrap_mean, mcnemar_exact

from raydigits.config import TrainConfig, default_data_dir
from raydigits.data import load_dataset
from raydigits.errors import UserError
from raydigits.experiment import Experiment, choose_best
from raydigits.pipeline import SplitBatches
from raydigits.trainer import Trainer, load_checkpoint, stratified_subset

DEV_SEED = 20  # the seeded stratified draw of --dev-items from the unused training images


def changed_trials(exp_path: str, val_n: int) -> tuple[list, tuple]:
    """[(best, pick)] of every usable trial of the experiment whose within-SE epoch differs from its
    best epoch, and (best, pick) of the trial the final stage would ship under each rule."""
    experiment = Experiment.open(exp_path)
    rules = [experiment.spec.model_copy(update={"select_epoch": rule}) for rule in ("best", "within_se")]
    trials = [
        replace(t, results=tuple({"val_n": val_n, **r} if val_n else r for r in t.results)) for t in experiment.trials
    ]
    out = []
    for trial in trials:
        try:
            best, pick = (choose_best([trial], rule) for rule in rules)
        except UserError:  # errored, diverged, out of memory or no checkpoint: never chosen
            continue
        if pick.epoch != best.epoch:
            out.append((best, pick))
    winner = tuple(choose_best(trials, rule) for rule in rules)
    return out, winner


def dev_indices(train_labels: np.ndarray, states: list[dict], where: list[str], items: int) -> np.ndarray:
    """Indices of the train split that no trial trained on (each trial's `train_items` subset drawn as
    the trainer draws it, from its own seed), or a seeded stratified `items` of them. A trial that
    trained on the whole split leaves nothing to carve: a UserError naming it."""
    used = np.zeros(len(train_labels), dtype=bool)
    for state, name in zip(states, where):
        cfg = state["config"]
        sub = stratified_subset(train_labels, int(cfg.get("train_items") or 0), int(cfg["seed"]), "train_items")
        if sub is None:
            raise UserError(
                f"{name}: trained on the whole train split (train_items {cfg.get('train_items')}), so no "
                "training image is left for a development split; compare epoch rules on a search run with train_items"
            )
        used[sub] = True
    dev = np.flatnonzero(~used)
    if items:
        pick = stratified_subset(train_labels[dev], items, DEV_SEED, "--dev-items")
        dev = dev if pick is None else dev[pick]
    return dev


class DevScorer:
    """Per-image correctness of checkpoints on the development images (one Trainer, reloaded)."""

    def __init__(self, data, dev: np.ndarray, threads: int):
        self.data, self.threads, self.trainer = data, threads, None
        self.dev = SplitBatches(data.images["train"][dev], data.labels["train"][dev], torch.device("cpu"))

    def right(self, state: dict) -> np.ndarray:
        if self.trainer is None:
            cfg = {**state["config"], "data_dir": default_data_dir(), "device": "cpu", "threads": self.threads}
            self.trainer = Trainer(TrainConfig(**cfg), self.data)
        self.trainer.model.load_state_dict(state["model"])
        hits = [(out.argmax(1) == yb).cpu().numpy() for out, yb, _ in self.trainer.predict_batches(self.dev)]
        return np.concatenate(hits)


def compare(pairs: list, states: dict, scorer: DevScorer) -> list[float]:
    """Print one line per changed trial; return each change in dev accuracy (pp, within-SE - best)."""
    diffs = []
    for best, pick in pairs:
        a, b = (scorer.right(states[c.checkpoint.local]) for c in (best, pick))
        only_best, only_pick, p = mcnemar_exact(a, b)
        diffs.append(100 * (b.mean() - a.mean()))
        print(
            f"  {best.trial_id}: best-val epoch {best.epoch} (val {100 * best.value:.2f}) dev {100 * a.mean():.2f}; "
            f"within-SE epoch {pick.epoch} (val {100 * pick.value:.2f}) dev {100 * b.mean():.2f}; "
            f"{diffs[-1]:+.2f} pp; images only the best-val epoch gets right {only_best}, only the within-SE "
            f"epoch {only_pick}: exact McNemar p={p:.3g}",
            flush=True,
        )
    return diffs


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiments", nargs="+", metavar="EXP")
    p.add_argument("--dev-items", type=int, default=0, help="a stratified sample of the dev images (0: all)")
    p.add_argument("--val-n", type=int, default=0, help="validation size of results that do not report val_n")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    found = {exp: changed_trials(exp, args.val_n) for exp in args.experiments}
    chosen = [c for pairs, _ in found.values() for pair in pairs for c in pair]
    if not chosen:  # no trial's epoch changes: nothing to score, and no development split to carve
        for exp, (_, (w_best, _)) in found.items():
            print(
                f"{exp}: the SE rule changes 0 trials' epoch; the shipped trial {w_best.trial_id} epoch {w_best.epoch} "
                f"under both rules",
                flush=True,
            )
        print("all: 0 changed trials: the two rules pick the same epoch of every usable trial; nothing to compare")
        return
    states = {c.checkpoint.local: load_checkpoint(c.checkpoint.local) for c in chosen}
    data = load_dataset(Path(default_data_dir()), splits=("train", "val"))
    where = [f"{c.checkpoint.local}" for c in chosen]
    dev = dev_indices(data.labels["train"], [states[c.checkpoint.local] for c in chosen], where, args.dev_items)
    print(f"development split: {len(dev):,} training images no compared trial trained on", flush=True)
    scorer, diffs = DevScorer(data, dev, args.threads), []
    for exp, (pairs, (w_best, w_pick)) in found.items():
        print(
            f"{exp}: the SE rule changes {len(pairs)} trials' epoch; the shipped trial {w_best.trial_id}: epoch "
            f"{w_best.epoch} under 'best', {w_pick.trial_id} epoch {w_pick.epoch} under 'within_se'",
            flush=True,
        )
        diffs += compare(pairs, states, scorer)
    mean, low, high = bootstrap_mean(diffs)
    print(
        f"all: {len(diffs)} changed trials, dev accuracy higher at the within-SE epoch in "
        f"{sum(d > 0 for d in diffs)}, lower in {sum(d < 0 for d in diffs)}, equal in {sum(d == 0 for d in diffs)}; "
        f"mean change {mean:+.3f} pp (bootstrap 95% CI over trials {low:+.3f}..{high:+.3f})"
    )


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as exc:
        sys.exit(f"error: {exc}")
