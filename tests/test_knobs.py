"""Every TrainConfig field a search may set takes effect: for each field, a trainer built with a
changed value differs from one built without it in the part of the run that field is about (the
model, the optimiser, the lr schedule, the pipeline, the loss, the data, the run itself). A field
whose change leaves that part as it was fails here; a new field without a case fails the coverage test.
Each case changes one knob from the defaults, in the context it applies to (momentum with sgd, ...)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raydigits.config import TrainConfig, make_config
from raydigits.errors import UserError
from raydigits.trainer import Trainer

NOT_SEARCHABLE = {"data_dir"}  # the dataset is loaded once per search (spec.check_spec refuses it)
CUDA_ONLY = {"gpu_memory_fraction"}  # its effect (a memory cap) exists on CUDA only: tests/test_gpu.py
BASE = {"epochs": 2, "train_items": 256, "val_items": 128}  # small, else the product's defaults

# field: (context it applies in, changed value, the fingerprint parts that must change)
CASES = {
    "train_items": ({}, 128, ["data"]),
    "val_items": ({}, 64, ["data"]),
    "img_size": ({}, 48, ["pipeline_train", "pipeline_eval"]),
    "aug_strength": ({}, 0.0, ["pipeline_train"]),
    "aug_shift": ({}, 0.3, ["pipeline_train"]),
    "aug_rotate": ({}, 45.0, ["pipeline_train"]),
    "aug_scale": ({}, 0.4, ["pipeline_train"]),
    "model": ({}, "mobilenet_v3_large", ["model"]),
    "pretrained": ({}, "<weights file>", ["weights0"]),
    "dropout": ({}, 0.5, ["model"]),
    "width_mult": ({}, 0.5, ["model", "weights0"]),
    "bn_momentum": ({}, 0.5, ["model"]),
    "bn_recalibrate": ({}, 64, ["bn_sample", "history"]),
    "channels_last": ({}, False, ["memory_format"]),
    "freeze_epochs": ({}, 1, ["history", "final_weights"]),
    "epochs": ({}, 3, ["lrs", "history"]),
    "batch_size": ({}, 32, ["batches", "lrs"]),
    "eval_batch_size": ({}, 64, ["batches"]),
    "optimizer": ({}, "sgd", ["optimizer"]),
    "lr": ({}, 1e-2, ["optimizer", "lrs"]),
    "weight_decay": ({}, 0.05, ["optimizer"]),
    "momentum": ({"optimizer": "sgd"}, 0.5, ["optimizer", "optimizer_after"]),
    "nesterov": ({"optimizer": "sgd"}, True, ["optimizer"]),
    "betas": ({}, (0.8, 0.99), ["optimizer", "optimizer_after"]),
    "scheduler": ({}, "step", ["scheduler", "lrs"]),
    "warmup_epochs": ({}, 0.5, ["lrs"]),
    "warmup_start_factor": ({"warmup_epochs": 0.5}, 0.5, ["lrs"]),
    "min_lr": ({}, 1e-3, ["lrs"]),
    "step_size": ({"scheduler": "step"}, 1.0, ["lrs"]),
    "gamma": ({"scheduler": "step", "step_size": 1.0}, 0.5, ["lrs"]),
    "milestones": ({"scheduler": "multistep"}, [1.0], ["lrs"]),
    "restart_epochs": ({"scheduler": "cosine_restarts"}, 1.0, ["lrs"]),
    "restart_mult": ({"scheduler": "cosine_restarts", "restart_epochs": 0.5}, 1, ["lrs"]),
    "plateau_patience": ({"scheduler": "plateau"}, 0, ["scheduler"]),
    "plateau_factor": ({"scheduler": "plateau"}, 0.1, ["scheduler"]),
    "onecycle_pct_start": ({"scheduler": "onecycle"}, 0.5, ["lrs"]),
    "cycle_momentum": ({"scheduler": "onecycle"}, True, ["optimizer_after"]),
    "loss": ({}, "focal", ["loss"]),
    "label_smoothing": ({}, 0.1, ["loss"]),
    "class_weights": ({}, [1.0, 2.0, 3.0, 4.0, 5.0, 1.0, 1.0, 1.0, 1.0, 9.0], ["loss"]),
    "focal_gamma": ({"loss": "focal"}, 0.5, ["loss"]),
    "clip_grad_norm": ({}, 0.01, ["final_weights"]),
    "amp": ({}, "bf16", ["amp", "final_weights"]),
    "monitor": ({"scheduler": "plateau"}, "val_loss", ["scheduler"]),
    "early_stop_patience": ({"early_stop_min_delta": 1.0}, 1, ["stop"]),
    "early_stop_min_delta": ({"early_stop_patience": 1}, 1.0, ["stop"]),
    "seed": ({}, 7, ["weights0", "data"]),
    "device": ({}, "cpu" if torch.cuda.is_available() else "cuda", ["device"]),
    "cuda_graphs": ({}, False, ["graphs"]),
    "threads": ({}, 1, ["threads"]),
    "gpu_memory_fraction": ({}, 0.5, ["memory_cap"]),
}


def _digest(t: torch.Tensor) -> tuple:
    t = t.detach().double().cpu()
    return tuple(t.shape), round(float(t.sum()), 6), round(float((t * t).sum()), 6)


def _groups(opt) -> list:
    return [
        {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in g.items() if k != "params"}
        for g in opt.param_groups
    ]


def fingerprint(values: dict, data) -> dict:
    """What a trainer built from `values` is and does, part by part."""
    torch.set_num_threads(2)
    try:
        t = Trainer(make_config(values), data)
    except UserError as exc:
        return {"device": f"refused: {exc}"}
    fp = {
        "threads": torch.get_num_threads(),
        "device": str(t.device),
        "amp": str(t.amp_dtype),
        "graphs": t.graph_blocker,
        "model": repr(t.model),
        "memory_cap": torch.cuda.get_per_process_memory_fraction() if t.device.type == "cuda" else None,
        "weights0": _digest(torch.cat([p.flatten() for p in t.model.parameters()])),
        "memory_format": [
            p.is_contiguous(memory_format=torch.channels_last) for p in t.model.parameters() if p.ndim == 4
        ][:3],
        "optimizer": (type(t.optimizer).__name__, _groups(t.optimizer)),
        "data": (
            len(t.train_set),
            len(t.val_set),
            _digest(t.train_set.labels),
            _digest(t.val_set.labels),
            _digest(t.train_set.images.float()[:, :, 10:18, 10:18]),
        ),
        "bn_sample": None if t.bn_index is None else _digest(t.bn_index),
    }
    batch = t.train_set.images[:16]
    fp["pipeline_train"] = _digest(t.pre.train(batch, torch.Generator(device=t.device).manual_seed(0)))
    fp["pipeline_eval"] = _digest(t.pre.eval(batch))
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(16, 10, generator=g).to(t.device), (torch.arange(16) % 10).to(t.device)
    fp["loss"] = (repr(t.criterion), round(float(t.criterion(logits, target)), 6))
    lrs, batches = [round(float(t.optimizer.param_groups[0]["lr"]), 10)], []  # the first step's lr, then each next
    step = t.scheduler.step_batch

    def record_step():
        step()
        lrs.append(round(float(t.optimizer.param_groups[0]["lr"]), 10))

    t.scheduler.step_batch = record_step
    t.model.register_forward_pre_hook(lambda m, args: batches.append(int(args[0].shape[0])))
    history = t.fit()
    fp.update(
        lrs=lrs,
        batches=batches,
        stop=t.stop_reason,
        optimizer_after=_groups(t.optimizer),
        scheduler=repr(
            sorted(
                (k, v)
                for k, v in t.scheduler.main.state_dict().items()
                if not callable(v) and k != "_get_lr_called_within_step"
            )
        ),
        history=[{k: v for k, v in m.items() if not k.endswith("_s") and k != "images_per_s"} for m in history],
        final_weights=_digest(torch.cat([p.flatten() for p in t.model.parameters()])),
    )
    return fp


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    from raydigits.models import build_model

    path = tmp_path_factory.mktemp("w") / "other_init.pt"
    torch.manual_seed(123)
    torch.save(build_model(make_config({}), 10).state_dict(), path)
    return str(path)


_base_cache: dict = {}


@pytest.mark.parametrize("field", sorted(CASES))
def test_changing_a_field_changes_what_the_trainer_builds_or_does(field, small_mnist, weights_file):
    if field in CUDA_ONLY and not torch.cuda.is_available():
        pytest.skip("a CUDA memory cap: its effect is checked on a GPU (tests/test_gpu.py)")
    context, value, parts = CASES[field]
    base = {**BASE, **context}
    key = repr(sorted(base.items()))
    if key not in _base_cache:
        _base_cache[key] = fingerprint(base, small_mnist)
    if value == "<weights file>":
        value = weights_file
    assert getattr(TrainConfig(), field) != value, "the case must change the field from its default"
    threads = torch.get_num_threads()
    try:
        changed = fingerprint({**base, field: value}, small_mnist)
    finally:
        torch.set_num_threads(threads)
    before = _base_cache[key]
    unchanged = [p for p in parts if before.get(p) == changed.get(p)]
    differing = sorted(k for k in set(before) | set(changed) if before.get(k) != changed.get(k))
    assert not unchanged, f"{field}={value!r}: {unchanged} did not change (what did: {differing})"


def test_every_searchable_field_has_a_case():
    assert set(TrainConfig.model_fields) - NOT_SEARCHABLE == set(CASES)


def test_onecycle_keeps_the_configured_momentum_and_betas(small_mnist):
    """PyTorch's OneCycleLR cycles momentum 0.95→0.85 by default, overwriting what a search chose."""
    for opt, key, value in (("sgd", "momentum", 0.7), ("adamw", "betas", (0.8, 0.99))):
        cfg = make_config({**BASE, "optimizer": opt, "scheduler": "onecycle", key: value})
        t = Trainer(cfg, small_mnist)
        seen = set()
        t.fit(lambda m, tr: seen.add(repr(tr.optimizer.param_groups[0][key])))  # noqa: B023
        assert seen == {repr(value)}, seen
        cyc = Trainer(
            make_config({**BASE, "optimizer": opt, "scheduler": "onecycle", key: value, "cycle_momentum": True}),
            small_mnist,
        )
        cyc.fit()
        first = cyc.optimizer.param_groups[0][key]
        assert (first if key == "momentum" else first[0]) != (value if key == "momentum" else value[0])


def test_precise_bn_sample_is_stratified_seeded_and_shuffled(small_mnist):
    """The recalibration sample covers every class in proportion, whatever the store's order."""
    from raydigits.data.store import Dataset

    order = np.argsort(small_mnist.labels["train"], kind="stable")  # a store grouped by class
    grouped = Dataset(
        {"train": small_mnist.images["train"][order], "val": small_mnist.images["val"]},
        {"train": small_mnist.labels["train"][order], "val": small_mnist.labels["val"]},
        {"train": [small_mnist.ids["train"][i] for i in order], "val": small_mnist.ids["val"]},
        small_mnist.class_names,
    )
    t = Trainer(make_config({"bn_recalibrate": 100}), grouped)
    labels = t.train_set.labels[t.bn_index].numpy()
    assert len(labels) == 100 and len(set(t.bn_index.tolist())) == 100
    assert np.bincount(labels, minlength=10).min() >= 7  # every class, near its share
    first_batch = labels[:20]
    assert len(set(first_batch.tolist())) >= 5  # shuffled: a batch mixes classes
    again = Trainer(make_config({"bn_recalibrate": 100}), grouped)
    assert torch.equal(t.bn_index, again.bn_index)
    other = Trainer(make_config({"bn_recalibrate": 100, "seed": 1}), grouped)
    assert not torch.equal(t.bn_index, other.bn_index)
    whole = Trainer(make_config({}), grouped)  # a split smaller than the sample is used whole
    assert sorted(whole.bn_index.tolist()) == list(range(len(grouped.labels["train"])))
