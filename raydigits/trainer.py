"""The epoch loop: one `train_one_epoch` / `evaluate` pair, AMP, clipping, freezing, early stopping,
atomic checkpoints, resume, predict (through pipeline.Predictor). Knows nothing of Ray: every epoch's metrics go to a callback.
Around it: process setup in runtime.py, CUDA graphs in graphs.py (GraphRunner), optimisers, schedules
and the knob re-application after a PBT exploit in optim.py, precise BN's layer handling in models.py."""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from .atomic import atomic_path
from .config import MUTABLE_KNOBS, TrainConfig
from .data.store import Dataset
from .errors import UserError
from .graphs import GraphRunner
from .models import build_model, cumulative_statistics, norms_to_recalibrate, set_frozen, train_mode
from .optim import build_loss, build_optimizer, build_scheduler, built_knobs, current_lr, keep_own_knobs
from .pipeline import Predictor, Preprocess, SplitBatches
from .runtime import amp_dtype, release_cuda_memory, resolve_device, setup_process

CHECKPOINT_FORMAT = 1
Callback = Callable[[dict, "Trainer"], None]


def stratified_subset(labels: np.ndarray, n: int, seed: int, key: str = "items") -> np.ndarray | None:
    """Indices of a class-stratified subset of size n (sorted), or None for 'all'. A size that
    cannot be stratified is a UserError naming `key` (the config key that asked for it)."""
    if n <= 0 or n >= len(labels):
        return None
    classes = len(np.unique(labels))
    if n < classes:
        raise UserError(f"{key}: {n} is fewer than the {classes} classes present; give 0 (all) or at least {classes}")
    try:
        idx, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed)
    except ValueError as exc:  # e.g. a class with a single image, or too few left over
        raise UserError(
            f"{key}: {n} of {len(labels)} images cannot be drawn class-stratified "
            f"({str(exc).splitlines()[0]}); give 0 (all) or another size"
        ) from None
    return np.sort(idx)


def split_batches(data: Dataset, name: str, items: int, seed: int, device: torch.device) -> SplitBatches:
    """Split `name` of `data` on `device`: all of it, or a seeded class-stratified `items` of it."""
    images, labels = data.images[name], data.labels[name]
    sub = stratified_subset(labels, items, seed, f"{name}_items")
    if sub is not None:
        images, labels = images[sub], labels[sub]
    return SplitBatches(images, labels, device)


def bn_sample(train_set: SplitBatches, n: int, seed: int, device: torch.device) -> torch.Tensor | None:
    """Training indices for precise BN (`n` = cfg.bn_recalibrate; 0 = off): a seeded class-stratified
    sample (all of a smaller split), in a seeded random order so that every batch mixes classes
    (stores grouped by class exist)."""
    if not n:
        return None
    labels = train_set.labels.cpu().numpy()
    sub = stratified_subset(labels, n, seed + 1, "bn_recalibrate")
    idx = np.arange(len(labels)) if sub is None else sub
    order = np.random.default_rng(seed).permutation(len(idx))
    return torch.as_tensor(idx[order], dtype=torch.long, device=device)


def improves(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    """Whether `value` of the monitored metric beats `best` by more than `min_delta`."""
    if best is None:
        return True
    if monitor == "val_acc":
        return value > best + min_delta
    return value < best - min_delta


class Trainer:
    def __init__(self, cfg: TrainConfig, data: Dataset, default_threads: int = 0):
        """`default_threads`: torch threads when `cfg.threads` is 0 (a Tune trial's CPU share)."""
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        setup_process(cfg, self.device, default_threads)  # threads, cuDNN, GPU memory cap, seed
        self.class_names = list(data.class_names)
        self.train_set = split_batches(data, "train", cfg.train_items, cfg.seed, self.device)
        self.val_set = split_batches(data, "val", cfg.val_items, cfg.seed, self.device)
        self.bn_index = bn_sample(self.train_set, cfg.bn_recalibrate, cfg.seed, self.device)
        self.model = build_model(cfg, len(self.class_names)).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.pre = Preprocess(cfg, self.device)
        self.amp_dtype = amp_dtype(cfg, self.device)
        self.predictor = Predictor(self.model, self.pre, cfg.eval_batch_size, self.autocast)
        self.frozen = False  # backbone frozen this epoch (set by fit, read by the steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        # CUDA graphs (see graphs.py): the steps captured and replayed, or why they run eagerly
        self.graphs = GraphRunner(cfg, self.device, self.scaler.is_enabled())
        self.criterion = build_loss(cfg, len(self.class_names)).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg, capturable=self.graphs.on)
        n = len(self.train_set)
        self.drop_last = n > cfg.batch_size  # a last batch of 1 would break BatchNorm
        self.steps_per_epoch = n // cfg.batch_size if self.drop_last else 1
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.epoch = 0  # epochs completed
        self.best_metric = None  # best monitored value so far
        self.best_epoch = 0
        self.bad_epochs = 0  # epochs without improvement (early stopping)
        self.history: list[dict] = []
        self.stop_reason: str | None = None
        self.changed_knobs: dict = {}  # knobs whose value differs from the loaded checkpoint's (PBT)
        self.step_hook: Callable[[int, int], None] | None = None  # (epoch, step) → None; tests inject faults
        self._sums = torch.zeros(2, device=self.device, dtype=torch.float64)  # [loss * n, correct] this epoch
        self._data_time = 0.0
        self.graphs.attach(self.optimizer)  # on CUDA: says whether graphs are on

    @property
    def graph_blocker(self) -> str | None:
        """None = the steps are captured and replayed as CUDA graphs, else why they run eagerly."""
        return self.graphs.blocker

    # ------------------------------------------------------------ one epoch each way
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # a captured step must not keep autocast's cast-weight cache between replays
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=not self.graphs.on)

    def _generator(self, epoch: int, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.cfg.seed * 100_003 + epoch)

    def _train_step(self, idx: torch.Tensor, aug_gen: torch.Generator | None, trainable: list) -> None:
        """One optimiser step on the training items `idx`; adds its loss and hits to `_sums`.
        Written once: run eagerly, or captured into a CUDA graph (then `aug_gen` is None: the
        default generator is the one a graph can replay)."""
        cfg, opt = self.cfg, self.optimizer
        yb = self.train_set.labels.index_select(0, idx)
        t0 = time.perf_counter()
        x = self.pre.train(self.train_set.images.index_select(0, idx), aug_gen)
        self._data_time += time.perf_counter() - t0
        with self.autocast():
            out = self.model(x)
            loss = self.criterion(out.float(), yb)
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.clip_grad_norm > 0:
            self.scaler.unscale_(opt)  # clip the true gradients of *this* step
            torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad_norm)
        self.scaler.step(opt)
        self.scaler.update()
        self._sums[0] += loss.detach().double() * len(idx)
        self._sums[1] += (out.detach().argmax(1) == yb).sum()

    def train_one_epoch(self, epoch: int) -> dict:
        cfg, model = self.cfg, self.model
        torch.manual_seed(cfg.seed + epoch)  # dropout: the same per epoch, also after a resume
        order_gen = self._generator(epoch, torch.device("cpu"))
        aug_gen = None if self.graphs.on else self._generator(epoch, self.device)
        train_mode(model, self.frozen)
        frozen = self.frozen
        trainable = [p for p in model.parameters() if p.requires_grad]
        self._sums.zero_()
        self._data_time = 0.0
        self.graphs.sync_lr()  # e.g. after a resume restored the optimiser's lrs
        seen, start = 0, time.perf_counter()
        for step, idx in enumerate(self.train_set.index_batches(cfg.batch_size, True, order_gen, self.drop_last)):
            if self.step_hook is not None:
                self.step_hook(epoch, step)
            self.graphs.train_step(frozen, lambda i: self._train_step(i, aug_gen, trainable), idx)
            self.scheduler.step_batch()
            self.graphs.sync_lr()
            seen += len(idx)
        loss_sum, correct = self._sums.tolist()  # the epoch's one host sync
        elapsed = time.perf_counter() - start
        return {
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "train_time_s": elapsed,
            "images_per_s": seen / max(elapsed, 1e-9),
            # on CUDA the step is asynchronous: this host-side figure is only meaningful on CPU
            "data_time_s": self._data_time if self.device.type == "cpu" else float("nan"),
        }

    @torch.no_grad()
    def recalibrate_bn(self) -> float:
        """Precise BN: recompute BatchNorm running statistics for the current weights from every
        image of the `bn_index` sample (un-augmented; in batches of at most eval_batch_size, as
        equal as they divide), instead of the momentum average that lags the weights: each mean is
        the exact mean over all the images, each variance the batches' (unbiased) variances averaged
        by batch size. Returns the seconds it took."""
        bns = norms_to_recalibrate(self.model, self.frozen)
        if not bns or self.bn_index is None:
            return 0.0
        start = time.perf_counter()
        n = len(self.bn_index)
        seen = 0
        with cumulative_statistics(self.model, bns):
            for sel in torch.tensor_split(self.bn_index, -(-n // self.cfg.eval_batch_size)):
                seen += len(sel)
                for m in bns:  # the running average of batch statistics, weighted by batch size
                    m.momentum = len(sel) / seen
                xb = self.train_set.images.index_select(0, sel)
                with self.autocast():
                    self.model(self.pre.eval(xb))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def _eval_step(self, split: SplitBatches, idx: torch.Tensor):
        return self.predictor.logits(split.images.index_select(0, idx)), split.labels.index_select(0, idx)

    @torch.no_grad()
    def predict_batches(self, split: SplitBatches):
        """Yield (logits float32, labels, indices) over a split in its order, eval mode. The
        validation split's full batches replay a CUDA graph (the yielded tensors are reused: copy
        what you keep)."""
        self.model.eval()
        for idx in split.index_batches(self.cfg.eval_batch_size):
            if split is self.val_set:
                out, yb = self.graphs.eval_step(lambda i: self._eval_step(split, i), idx)
            else:
                out, yb = self._eval_step(split, idx)
            yield out, yb, idx

    def evaluate(self, split: SplitBatches | None = None) -> dict:
        """Plain cross-entropy (no smoothing, no weights) and accuracy: comparable across trials.
        Sums stay on the device; one host sync at the end."""
        split = split or self.val_set
        sums = torch.zeros(2, device=self.device, dtype=torch.float64)
        for out, yb, _ in self.predict_batches(split):
            sums[0] += F.cross_entropy(out, yb, reduction="sum").double()
            sums[1] += (out.argmax(1) == yb).sum()
        loss_sum, correct = sums.tolist()
        return {"val_loss": loss_sum / len(split), "val_acc": correct / len(split)}

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 → (N, classes) softmax probabilities, in input order."""
        return self.predictor.predict(images)

    # ------------------------------------------------------------ the loop
    def fit(self, callback: Callback | None = None, stop_after: int | None = None) -> list[dict]:
        """Train until `cfg.epochs` (or epoch `stop_after`, the schedule still spanning `cfg.epochs`:
        how a trial that a scheduler stopped early is replayed) or an early stop."""
        cfg = self.cfg
        last = min(cfg.epochs, stop_after or cfg.epochs)
        while self.epoch < last and self.stop_reason is None:
            epoch = self.epoch + 1
            frozen = self.frozen = epoch <= cfg.freeze_epochs
            set_frozen(self.model, frozen)
            t0 = time.perf_counter()
            try:
                tr = self.train_one_epoch(epoch)
                diverged = not math.isfinite(tr["train_loss"])
                bn_time = self.recalibrate_bn() if not diverged else 0.0
                ev = self.evaluate() if not diverged else {"val_loss": float("nan"), "val_acc": 0.0}
            except torch.OutOfMemoryError as exc:
                metrics = self._out_of_memory(epoch, exc)
                self.history.append(metrics)
                if callback is not None:
                    callback(metrics, self)
                break
            value = ev[cfg.monitor]
            if not diverged:
                self.scheduler.step_epoch(value)
            improved = not diverged and improves(value, self.best_metric, cfg.monitor, cfg.early_stop_min_delta)
            if improved:
                self.best_metric, self.best_epoch, self.bad_epochs = value, epoch, 0
            else:
                self.bad_epochs += 1
            self.epoch = epoch
            metrics = {
                "epoch": epoch,
                **{k: tr[k] for k in ("train_loss", "train_acc")},
                **ev,
                "val_n": len(self.val_set),  # how many images val_acc is over (its noise)
                "lr": current_lr(self.optimizer),
                "epoch_time_s": time.perf_counter() - t0,
                "images_per_s": tr["images_per_s"],
                "data_time_s": tr["data_time_s"],
                "train_time_s": tr["train_time_s"],
                "bn_recalibrate_s": bn_time,
                "frozen": frozen,
                "improved": improved,
                "best_epoch": self.best_epoch,
                "diverged": diverged,
                "cuda_graphs": self.graphs.on,
            }
            if diverged:
                self.stop_reason = "diverged"
            elif cfg.early_stop_patience and self.bad_epochs >= cfg.early_stop_patience:
                self.stop_reason = "early_stop"
            self.history.append(metrics)
            if callback is not None:
                callback(metrics, self)
        return self.history

    def _out_of_memory(self, epoch: int, exc: Exception) -> dict:
        """The run stops with stop_reason 'oom' and one clear line; its last metrics say so (never a
        candidate for 'best')."""
        self.stop_reason = "oom"
        self.graphs.clear()
        self.optimizer.zero_grad(set_to_none=True)
        peak = release_cuda_memory(self.device, self.cfg.gpu_memory_fraction)
        print(
            f"out of memory in epoch {epoch}{peak}: run stopped; lower batch_size or img_size, or give "
            f"the trial a larger GPU share",
            flush=True,
        )
        return oom_metrics(epoch, exc, current_lr(self.optimizer), self.best_epoch)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "stop_reason": self.stop_reason,
            "config": self.cfg.model_dump(mode="json"),
            "class_names": self.class_names,
        }

    def save(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)
        return Path(path)

    def load_state_dict(self, state: dict) -> None:
        if state.get("class_names") != self.class_names:
            raise UserError(f"checkpoint classes {state.get('class_names')} differ from the data's {self.class_names}")
        self.model.load_state_dict(state["model"])
        built = built_knobs(self.optimizer)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.changed_knobs = keep_own_knobs(
            self.optimizer,
            self.scheduler,
            built,
            state.get("config") or {},
            self.cfg.model_dump(mode="json"),
            MUTABLE_KNOBS,
        )
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best_metric = state["epoch"], state["best_metric"]
        self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]
        self.history, self.stop_reason = list(state["history"]), state["stop_reason"]

    def resume(self, path: str | Path) -> None:
        state = load_checkpoint(path)
        try:
            self.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as exc:  # another model, optimiser or scheduler
            why = misfit(state.get("config") or {}, self.cfg.model_dump(mode="json"), exc)
            raise UserError(f"{path}: this checkpoint does not fit the config: {why}") from None


def oom_metrics(epoch: int, exc: Exception, lr: float, best_epoch: int) -> dict:
    """The metrics of an epoch that ran out of memory."""
    return {
        "epoch": epoch,
        "train_loss": float("nan"),
        "train_acc": 0.0,
        "val_loss": float("nan"),
        "val_acc": 0.0,
        "lr": lr,
        "epoch_time_s": 0.0,
        "images_per_s": 0.0,
        "frozen": False,
        "improved": False,
        "best_epoch": best_epoch,
        "diverged": False,
        "oom": True,
        "error": str(exc).splitlines()[0][:200] if str(exc) else "OutOfMemoryError",
    }


def misfit(was: dict, now: dict, exc: Exception) -> str:
    """Why a checkpoint trained with config `was` does not load into a trainer of config `now`."""
    diff = [
        f"{k} {was[k]!r} (now {v!r})"
        for k, v in now.items()
        if k in ("model", "optimizer", "scheduler", "img_size", "betas") and k in was and was[k] != v
    ]
    return f"it was trained with {', '.join(diff)}" if diff else str(exc).strip().splitlines()[0][:160]


def load_checkpoint(path) -> dict:
    """A raydigits checkpoint dict from a local path, a URI or a storage.Location (weights only:
    no pickled code is run)."""
    from .storage import as_location

    loc = as_location(path)
    try:
        data = io.BytesIO(loc.read_bytes())
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"{path}: no such checkpoint") from None
    try:
        state = torch.load(data, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever torch.load raises, the file is not a checkpoint
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt: {type(exc).__name__})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path}: not a raydigits checkpoint")
    return state
