"""The final stage's paired ties, evaluated: the winner's shipped checkpoint and each screened
candidate's best checkpoint predict the winner's own validation images (its `val_items` subset,
drawn as its trainer drew it), and `experiment/paired.py` tests each candidate against the winner."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from .data.store import Dataset
from .experiment import Choice, Experiment, PairedTies, paired_ties

Predict = Callable[[dict, np.ndarray], np.ndarray]  # (checkpoint state, uint8 images) → probabilities


def winner_validation(data: Dataset, config: dict) -> tuple[np.ndarray, np.ndarray]:
    """The validation images and labels the winner was scored on (all of val, or its stratified
    `val_items` subset with its seed, as `trainer.split_batches` draws it)."""
    from .config import TrainConfig
    from .trainer import stratified_subset

    default = {k: TrainConfig.model_fields[k].default for k in ("val_items", "seed")}  # a config without them
    items, seed = (int(config.get(k, default[k])) for k in ("val_items", "seed"))
    images, labels = data.images["val"], data.labels["val"]
    sub = stratified_subset(labels, items, seed, "val_items")
    return (images, labels) if sub is None else (images[sub], labels[sub])


def evaluate_ties(exp: Experiment, choice: Choice, state: dict, data: Dataset, predict: Predict) -> PairedTies | None:
    """The paired ties of the shipped `choice` (its checkpoint `state`), or None for a search that
    ranks by something other than val_acc."""
    from .trainer import load_checkpoint

    if exp.spec.metric != "val_acc" or "val" not in data.images:
        return None
    start = time.perf_counter()
    images, labels = winner_validation(data, state["config"])
    if not len(labels):
        return None
    screen = exp.tie_candidates(choice, len(labels))
    right = (predict(state, images).argmax(1) == labels).tolist()
    others = [
        (c.trial_id, c.epoch, c.value, (predict(load_checkpoint(c.location), images).argmax(1) == labels).tolist())
        for c in screen.tested
    ]
    return paired_ties(
        (choice.trial_id, choice.epoch, right), others, screen, seconds=round(time.perf_counter() - start, 3)
    )
