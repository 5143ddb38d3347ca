"""The trainer does what each knob says: freezing freezes, clipping clips, resume continues the
same run, the same seed gives the same metrics, AMP paths run quietly, pretrained weights load."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from support.helpers import REPO, tiny_cfg

from raydigits.errors import UserError
from raydigits.models import head_root
from raydigits.trainer import Trainer, load_checkpoint

EPOCH_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s"}


def _snapshot(model, head: bool):
    root = head_root(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if (k.split(".")[0] == root) == head}


def _changed(a, b):
    return [k for k in a if a[k].dtype.is_floating_point and not torch.equal(a[k], b[k])]


def test_freeze_epochs_freeze_the_backbone_then_unfreeze(small_mnist):
    t = Trainer(tiny_cfg(freeze_epochs=1, epochs=2, aug_strength=1.0, bn_recalibrate=256), small_mnist)
    backbone0, head0 = _snapshot(t.model, False), _snapshot(t.model, True)
    after = {}
    t.fit(lambda m, tr: after.setdefault(m["epoch"], (_snapshot(tr.model, False), _snapshot(tr.model, True))))
    b1, h1 = after[1]
    assert _changed(backbone0, b1) == []  # weights *and* BatchNorm running stats untouched
    assert len(_changed(head0, h1)) > 0
    b2, _ = after[2]
    assert len(_changed(b1, b2)) > 0.5 * len(b1)
    assert t.history[0]["frozen"] is True and t.history[1]["frozen"] is False


def test_clipping_clips_this_steps_gradient(small_mnist):
    def one_step_update(clip):
        # 100 items, batch 64, drop_last → exactly one optimiser step; plain SGD: Δθ = -lr * g
        t = Trainer(
            tiny_cfg(
                train_items=100, epochs=1, optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=1.0, clip_grad_norm=clip
            ),
            small_mnist,
        )
        before = [p.detach().clone() for p in t.model.parameters()]
        t.train_one_epoch(1)
        return torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(t.model.parameters(), before))).item()

    assert one_step_update(1e-3) == pytest.approx(1e-3, rel=1e-3)
    assert one_step_update(0.0) > 0.1


def _strip_times(history):
    return [{k: v for k, v in m.items() if not k.endswith("_s")} for m in history]


def test_same_seed_same_metrics_and_resume_is_identical(small_mnist, tmp_path):
    cfg = tiny_cfg(epochs=2, aug_strength=1.0, scheduler="cosine", warmup_epochs=0.5, dropout=0.3)
    straight = Trainer(cfg, small_mnist)
    straight.fit()
    again = Trainer(cfg, small_mnist)
    again.fit()
    assert _strip_times(straight.history) == _strip_times(again.history)

    class Killed(Exception):
        pass

    def save_then_die(m, t):
        t.save(tmp_path / "last.pt")
        raise Killed

    first = Trainer(cfg, small_mnist)
    with pytest.raises(Killed):
        first.fit(save_then_die)
    resumed = Trainer(cfg, small_mnist)
    resumed.resume(tmp_path / "last.pt")
    assert resumed.epoch == 1
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _strip_times(resumed.history) == _strip_times(straight.history)


def test_onecycle_resumes_mid_cycle_from_a_checkpoint(small_mnist, tmp_path):
    """OneCycle's position and shape come back from a checkpoint: a run resumed after epoch 1 goes on
    with the same lrs and metrics as one that never stopped."""
    cfg = tiny_cfg(epochs=2, scheduler="onecycle")
    straight = Trainer(cfg, small_mnist)
    straight.fit()
    first = Trainer(cfg, small_mnist)
    first.fit(stop_after=1)
    first.save(tmp_path / "last.pt")
    resumed = Trainer(cfg, small_mnist)
    resumed.resume(tmp_path / "last.pt")
    resumed.fit()
    assert _strip_times(resumed.history) == _strip_times(straight.history)
    assert len({m["lr"] for m in straight.history}) == 2


def _batch_norms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("n, batch, sizes", [(300, 128, [100, 100, 100]), (10, 4, [4, 3, 3])])
def test_precise_bn_averages_every_image_of_its_sample_weighted_by_batch_size(small_mnist, n, batch, sizes):
    """Whatever the running statistics were, every image of the sample goes through the model once,
    in the sample's order, un-augmented, in batches of at most eval_batch_size as equal as they
    divide; each BatchNorm ends with the plain mean of its input over all those images and the
    batches' variances averaged by batch size (computed here in float64 from what each layer saw).
    The layers keep their momentum for training and the model is left in eval mode. Product
    defaults but the sample and batch sizes (10 in 4s: batches of 4, 3 and 3, weighted 4:3:3, not 1:1:1)."""
    from raydigits.config import make_config

    t = Trainer(make_config({"bn_recalibrate": n, "eval_batch_size": batch}), small_mnist)
    bns = _batch_norms(t.model)
    inputs = []
    seen: dict[int, list] = {i: [] for i in range(len(bns))}  # per layer, per batch: (images, sum, var)

    def record(i):
        def hook(m, a):
            x = a[0].double()
            dims = [0, *range(2, x.dim())]
            seen[i].append((len(x), x.sum(dim=dims), x.var(dim=dims), x[0].numel() // x.shape[1]))

        return hook

    hooks = [t.model.register_forward_pre_hook(lambda m, a: inputs.append(a[0].clone()))]
    hooks += [m.register_forward_pre_hook(record(i)) for i, m in enumerate(bns)]
    for m in bns:  # stale statistics, as after some training, must not leak into the new ones
        m.running_mean.fill_(5.0)
        m.running_var.fill_(7.0)
        m.num_batches_tracked.fill_(1000)
    t.model.train()
    start = time.perf_counter()
    took = t.recalibrate_bn()
    elapsed = time.perf_counter() - start
    for h in hooks:
        h.remove()
    assert len(t.bn_index) == n and [len(x) for x in inputs] == sizes
    assert torch.equal(torch.cat(inputs), t.pre.eval(t.train_set.images.index_select(0, t.bn_index)))
    for i, m in enumerate(bns):
        batches = seen[i]
        assert [b[0] for b in batches] == sizes
        mean = sum(b[1] for b in batches) / sum(b[0] * b[3] for b in batches)  # over every image's values
        var = sum(b[0] * b[2] for b in batches) / n  # unbiased per batch, as BatchNorm keeps it
        assert torch.allclose(m.running_mean.double(), mean, rtol=1e-4, atol=1e-5), i  # float32 sums
        assert torch.allclose(m.running_var.double(), var, rtol=1e-4, atol=1e-5), i
    assert {m.momentum for m in bns} == {t.cfg.bn_momentum} and not t.model.training
    assert 0 < took <= elapsed


def test_precise_bn_off_leaves_the_running_statistics_alone(small_mnist):
    from raydigits.config import make_config

    t = Trainer(make_config({"bn_recalibrate": 0}), small_mnist)
    before = {k: v.clone() for k, v in t.model.state_dict().items() if "running" in k}
    assert t.recalibrate_bn() == 0.0
    assert all(torch.equal(v, t.model.state_dict()[k]) for k, v in before.items())


def test_every_epoch_reports_the_metrics(small_mnist):
    seen = []
    Trainer(tiny_cfg(epochs=2), small_mnist).fit(lambda m, t: seen.append(m))
    assert [m["epoch"] for m in seen] == [1, 2]
    for m in seen:
        assert EPOCH_KEYS <= set(m) and 0 <= m["val_acc"] <= 1 and m["images_per_s"] > 0


def test_early_stopping_and_divergence(small_mnist):
    t = Trainer(tiny_cfg(epochs=5, early_stop_patience=1, early_stop_min_delta=1.0), small_mnist)
    t.fit()
    assert len(t.history) == 2 and t.stop_reason == "early_stop"
    t = Trainer(tiny_cfg(epochs=3, optimizer="sgd", lr=1e8), small_mnist)
    t.fit()
    assert t.stop_reason == "diverged" and t.history[-1]["diverged"] and len(t.history) == 1


def test_cpu_amp_paths_are_quiet(small_mnist):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # GradScaler/autocast warnings would fail here
        for amp in ("auto", "off", "bf16"):
            t = Trainer(tiny_cfg(epochs=1, amp=amp, train_items=128, clip_grad_norm=1.0), small_mnist)
            t.fit()
            assert not t.scaler.is_enabled()
    assert Trainer(tiny_cfg(amp="bf16"), small_mnist).amp_dtype == torch.bfloat16
    with pytest.raises(UserError, match="fp16 needs CUDA"):
        Trainer(tiny_cfg(amp="fp16"), small_mnist)


def test_predict_keeps_input_order(small_mnist):
    t = Trainer(tiny_cfg(epochs=1), small_mnist)
    imgs = small_mnist.images["val"][:40]
    p = t.predict(imgs)
    p_rev = t.predict(imgs[::-1].copy())
    assert p.shape == (40, 10) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.allclose(p, p_rev[::-1], atol=1e-5)


def test_predict_batches_gives_eval_mode_logits_of_the_whole_split_in_order(small_mnist):
    """What evaluate (and so ASHA, early stopping and the best checkpoint) reads: every image of the
    split once, in the split's order, eval_batch_size at a time with a short last batch, each batch's
    float32 logits in eval mode (no dropout, BatchNorm statistics untouched) with its labels and
    indices, whatever mode training left the model in."""
    t = Trainer(tiny_cfg(epochs=1, eval_batch_size=100, dropout=0.5), small_mnist)
    for split in (t.val_set, t.train_set):
        t.model.train()  # as training leaves it
        stats = [b.clone() for b in t.model.buffers()]
        outs, labels, idxs = [], [], []
        for out, yb, idx in t.predict_batches(split):
            assert out.dtype == torch.float32 and not out.requires_grad
            outs.append(out.clone()), labels.append(yb.clone()), idxs.append(idx.clone())
        n = len(split)
        assert [len(i) for i in idxs] == [100] * (n // 100) + [n % 100]
        assert torch.equal(torch.cat(idxs), torch.arange(n)) and torch.equal(torch.cat(labels), split.labels)
        assert not t.model.training and all(torch.equal(a, b) for a, b in zip(stats, t.model.buffers()))
        ref = t.predictor.logits(split.images).float()
        assert torch.allclose(torch.cat(outs), ref, atol=1e-4)
    ev = t.evaluate()
    ref = t.predictor.logits(t.val_set.images).float()
    assert ev["val_acc"] == pytest.approx((ref.argmax(1) == t.val_set.labels).double().mean().item())
    assert ev["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(ref, t.val_set.labels).item(), rel=1e-5)


def test_pretrained_from_local_files(small_mnist, tmp_path, monkeypatch, capsys):
    from raydigits.models import build_model

    src = build_model(tiny_cfg(), 5)  # a 5-class model saved by someone else, DataParallel-style keys
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, tmp_path / "w.pt")
    model = build_model(tiny_cfg(pretrained=str(tmp_path / "w.pt")), 10)
    out = capsys.readouterr().out
    assert "shape mismatch" in out and "classifier.3.weight" in out
    own, theirs = model.state_dict(), src.state_dict()
    assert torch.equal(own["features.0.0.weight"], theirs["features.0.0.weight"])
    assert own["classifier.3.weight"].shape == (10, 1024)
    # our own checkpoint as pretrained restores the head too
    t = Trainer(tiny_cfg(epochs=1), small_mnist)
    t.fit()
    t.save(tmp_path / "best.pt")
    again = build_model(tiny_cfg(pretrained=str(tmp_path / "best.pt")), 10)
    assert torch.equal(again.state_dict()["classifier.3.weight"], t.model.state_dict()["classifier.3.weight"])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    with pytest.raises(UserError, match="no local weights"):
        build_model(tiny_cfg(pretrained="imagenet"), 10)
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "best.pt").read_bytes()[:1000])
    with pytest.raises(UserError, match="trunc.pt"):
        build_model(tiny_cfg(pretrained=str(tmp_path / "trunc.pt")), 10)
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "trunc.pt")


def test_other_torchvision_models_get_a_new_head(small_mnist):
    t = Trainer(tiny_cfg(model="resnet18", epochs=1, train_items=128), small_mnist)
    t.fit()
    assert t.model.fc.out_features == 10 and head_root(t.model) == "fc"


def test_validation_means_something_from_epoch_one_with_the_defaults(mnist):
    """The product's defaults on 2,000 real digits: validation tracks training accuracy from the first
    epoch on (precise BN), so ASHA's early rungs rank trials on a real number. With the running
    statistics alone (bn_recalibrate 0) the same epoch validates at chance."""
    from raydigits.config import make_config

    base = {"train_items": 2000, "val_items": 2000, "threads": 2, "device": "cpu"}
    h = Trainer(make_config(base), mnist).fit()  # every other knob at its default (5 epochs)
    assert len(h) == 5
    for m in h:
        assert m["val_acc"] >= m["train_acc"] - 0.03, h
        assert m["bn_recalibrate_s"] > 0
    assert h[0]["val_acc"] >= 0.3 and h[-1]["val_acc"] >= 0.8, h
    stale = Trainer(make_config({**base, "epochs": 1, "bn_recalibrate": 0}), mnist).fit()[-1]
    assert stale["val_acc"] < 0.2 and stale["bn_recalibrate_s"] == 0, stale


def test_out_of_memory_stops_the_run_with_a_clear_line(small_mnist, capsys):
    t = Trainer(tiny_cfg(epochs=3), small_mnist)

    def oom(epoch, step):
        if epoch == 2 and step == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    t.step_hook = oom
    seen = []
    h = t.fit(lambda m, tr: seen.append(m))
    assert t.stop_reason == "oom" and len(h) == 2 and seen == h
    assert h[0].get("oom") is None and h[1]["oom"] is True and h[1]["val_acc"] == 0.0
    assert t.epoch == 1  # the failed epoch does not count as done
    assert "out of memory in epoch 2" in capsys.readouterr().out


def test_train_cli(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "raydigits.train", "--set", "learning_rate=1"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 2 and "learning_rate: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "raydigits.train",
            "--set",
            "train_items=256",
            "--set",
            "val_items=256",
            "--set",
            "epochs=1",
            "--set",
            "threads=2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch   1" in proc.stdout
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "last.pt", "best.pt", "metrics.csv"}
    state = load_checkpoint(out / "best.pt")
    assert state["class_names"] == [str(d) for d in range(10)] and state["epoch"] == 1


def test_interrupted_checkpoint_write_keeps_the_previous_one(small_mnist, tmp_path, monkeypatch):
    """A crash in the middle of writing a checkpoint (simulated: half the bytes, then the process
    'dies') leaves the previous checkpoint whole and loadable, and no temp file behind."""
    trainer = Trainer(tiny_cfg(epochs=2), small_mnist)
    trainer.fit(lambda m, t: t.save(tmp_path / "last.pt") if m["epoch"] == 1 else None)
    before = (tmp_path / "last.pt").read_bytes()
    real_save = torch.save

    def dies_halfway(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        os.truncate(f, os.path.getsize(f) // 2)
        raise KeyboardInterrupt  # the write never finished

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        trainer.save(tmp_path / "last.pt")
    monkeypatch.undo()
    assert (tmp_path / "last.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    resumed = Trainer(tiny_cfg(epochs=2), small_mnist)
    resumed.resume(tmp_path / "last.pt")
    assert resumed.epoch == 1
    # and a checkpoint that really is cut short is refused in one line, not unpickled
    (tmp_path / "cut.pt").write_bytes(before[: len(before) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")


def test_a_checkpoint_continued_with_other_knobs_trains_with_them(small_mnist, tmp_path):
    """PBT: a trial continues another trial's checkpoint with perturbed values: the weights,
    optimiser moments and epoch count carry over, the perturbed knobs take effect (the loaded
    optimiser state would otherwise bring the old lr and weight decay back)."""
    donor = Trainer(
        tiny_cfg(epochs=3, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4, scheduler="cosine"), small_mnist
    )
    donor.fit(stop_after=1)
    donor.save(tmp_path / "donor.pt")
    lr_now = donor.optimizer.param_groups[0]["lr"]  # cosine moved it below 0.05 during epoch 1
    clone = Trainer(
        tiny_cfg(
            epochs=3, optimizer="sgd", lr=0.1, momentum=0.8, weight_decay=5e-4, scheduler="cosine", label_smoothing=0.1
        ),
        small_mnist,
    )
    clone.resume(tmp_path / "donor.pt")
    assert clone.epoch == 1 and clone.history == donor.history
    assert set(clone.changed_knobs) == {"lr", "momentum", "weight_decay", "label_smoothing"}
    decay, no_decay = clone.optimizer.param_groups
    assert decay["lr"] == pytest.approx(lr_now * 2) and no_decay["lr"] == pytest.approx(lr_now * 2)
    assert clone.scheduler.main.base_lrs == pytest.approx([0.1, 0.1])  # the rest of the schedule too
    assert decay["momentum"] == 0.8 and decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert clone.criterion.label_smoothing == 0.1
    same = Trainer(donor.cfg, small_mnist)
    same.resume(tmp_path / "donor.pt")  # an ordinary resume changes nothing
    assert (
        same.changed_knobs == {}
        and same.optimizer.state_dict()["param_groups"] == donor.optimizer.state_dict()["param_groups"]
    )
    history = clone.fit()
    assert [m["epoch"] for m in history] == [1, 2, 3] and history[1]["lr"] < lr_now * 2


def test_stratified_subset_edges():
    """All images at n = 0 and n = len; exactly one per class at n = classes; fewer is refused
    naming the key; every class kept in proportion otherwise."""
    from raydigits.errors import UserError
    from raydigits.trainer import stratified_subset

    labels = np.repeat(np.arange(4), 25)  # 100 images, grouped by class as image folders store them
    assert stratified_subset(labels, 0, 0) is None and stratified_subset(labels, 100, 0) is None
    one_each = stratified_subset(labels, 4, 0)
    assert sorted(labels[one_each]) == [0, 1, 2, 3]
    for n in (1, 3):
        with pytest.raises(UserError, match=f"train_items: {n} is fewer than the 4 classes"):
            stratified_subset(labels, n, 0, key="train_items")
    half = stratified_subset(labels, 40, 7)
    assert np.bincount(labels[half]).tolist() == [10, 10, 10, 10] and (np.diff(half) > 0).all()
    assert not np.array_equal(half, stratified_subset(labels, 40, 8))  # seeded
