"""The epoch loop: one `train_one_epoch` / `evaluate` pair, AMP, clipping, freezing, early stopping,
atomic checkpoints, resume, predict. Knows nothing of Ray: every epoch's metrics go to a callback."""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from .atomic import atomic_path
from .config import TrainConfig
from .data.store import Dataset
from .errors import UserError
from .models import build_model, set_frozen, train_mode
from .optim import build_loss, build_optimizer, build_scheduler, current_lr
from .pipeline import Preprocess, SplitBatches

CHECKPOINT_FORMAT = 1
Callback = Callable[[dict, "Trainer"], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {name!r} asked for, but CUDA is not available here")
    return dev


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """None = full precision. fp16 and bf16 autocast on CUDA; bf16 also on CPU when asked for."""
    if cfg.amp == "off":
        return None
    if device.type != "cuda":
        if cfg.amp == "fp16":
            raise UserError("amp: fp16 needs CUDA; use amp: bf16 or off on CPU")
        return torch.bfloat16 if cfg.amp == "bf16" else None
    if cfg.amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cfg.amp == "bf16" else torch.float16


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray | None:
    """Indices of a class-stratified subset of size n (sorted), or None for 'all'."""
    if n <= 0 or n >= len(labels):
        return None
    idx, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed)
    return np.sort(idx)


class Trainer:
    def __init__(self, cfg: TrainConfig, data: Dataset):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.class_names = list(data.class_names)
        self.train_set = self._split(data, "train", cfg.train_items)
        self.val_set = self._split(data, "val", cfg.val_items)
        self.model = build_model(cfg, len(self.class_names)).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.pre = Preprocess(cfg, self.device)
        self.amp_dtype = amp_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = build_loss(cfg, len(self.class_names)).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        n = len(self.train_set)
        self.drop_last = n > cfg.batch_size  # a last batch of 1 would break BatchNorm
        self.steps_per_epoch = n // cfg.batch_size if self.drop_last else 1
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.epoch = 0                 # epochs completed
        self.best_metric = None        # best monitored value so far
        self.best_epoch = 0
        self.bad_epochs = 0            # epochs without improvement (early stopping)
        self.history: list[dict] = []
        self.stop_reason: str | None = None
        self.step_hook: Callable[[int, int], None] | None = None  # (epoch, step) → None; tests inject faults

    def _split(self, data: Dataset, name: str, items: int) -> SplitBatches:
        images, labels = data.images[name], data.labels[name]
        sub = stratified_subset(labels, items, self.cfg.seed)
        if sub is not None:
            images, labels = images[sub], labels[sub]
        return SplitBatches(images, labels, self.device)

    # ------------------------------------------------------------ one epoch each way
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _generator(self, epoch: int, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.cfg.seed * 100_003 + epoch)

    def train_one_epoch(self, epoch: int) -> dict:
        cfg, model, opt = self.cfg, self.model, self.optimizer
        torch.manual_seed(cfg.seed + epoch)  # dropout: the same per epoch, also after a resume
        order_gen, aug_gen = self._generator(epoch, torch.device("cpu")), self._generator(epoch, self.device)
        train_mode(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, data_time, start = 0, 0.0, time.perf_counter()
        for step, (xb, yb, _) in enumerate(self.train_set.batches(cfg.batch_size, True, order_gen, self.drop_last)):
            if self.step_hook is not None:
                self.step_hook(epoch, step)
            t0 = time.perf_counter()
            x = self.pre.train(xb, aug_gen)
            data_time += time.perf_counter() - t0
            with self.autocast():
                out = model(x)
                loss = self.criterion(out.float(), yb)
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.clip_grad_norm > 0:
                self.scaler.unscale_(opt)  # clip the true gradients of *this* step
                torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad_norm)
            self.scaler.step(opt)
            self.scaler.update()
            self.scheduler.step_batch()
            loss_sum += loss.detach().double() * len(yb)
            correct += (out.detach().argmax(1) == yb).sum()
            seen += len(yb)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        return {"train_loss": loss_sum.item() / max(seen, 1), "train_acc": correct.item() / max(seen, 1),
                "train_time_s": elapsed, "data_time_s": data_time, "images_per_s": seen / max(elapsed, 1e-9)}

    @torch.no_grad()
    def recalibrate_bn(self, n_images: int) -> None:
        """Recompute BatchNorm running statistics for the current weights: a cumulative average over
        `n_images` training images (un-augmented), instead of the lagging momentum average."""
        bns = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not bns or getattr(self.model, "_raydigits_frozen", False):
            return  # a frozen backbone keeps its statistics
        momenta = [m.momentum for m in bns]
        self.model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
            m.train()
        seen = 0
        for xb, _, _ in self.train_set.batches(self.cfg.eval_batch_size):
            with self.autocast():
                self.model(self.pre.eval(xb))
            seen += len(xb)
            if seen >= n_images:
                break
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        self.model.eval()

    @torch.no_grad()
    def predict_batches(self, split: SplitBatches):
        """Yield (logits float32, labels, indices) over a split in its order, eval mode."""
        self.model.eval()
        for xb, yb, sel in split.batches(self.cfg.eval_batch_size):
            with self.autocast():
                out = self.model(self.pre.eval(xb))
            yield out.float(), yb, sel

    def evaluate(self, split: SplitBatches | None = None) -> dict:
        """Plain cross-entropy (no smoothing, no weights) and accuracy: comparable across trials."""
        split = split or self.val_set
        loss_sum, correct = 0.0, 0
        for out, yb, _ in self.predict_batches(split):
            loss_sum += F.cross_entropy(out, yb, reduction="sum").item()
            correct += (out.argmax(1) == yb).sum().item()
        return {"val_loss": loss_sum / len(split), "val_acc": correct / len(split)}

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 → (N, classes) softmax probabilities, in input order."""
        split = SplitBatches(images, np.zeros(len(images), dtype=np.int64), self.device)
        return torch.cat([F.softmax(out, 1).cpu() for out, _, _ in self.predict_batches(split)]).numpy()

    # ------------------------------------------------------------ the loop
    def _improved(self, value: float) -> bool:
        if self.best_metric is None:
            return True
        delta = self.cfg.early_stop_min_delta
        if self.cfg.monitor == "val_acc":
            return value > self.best_metric + delta
        return value < self.best_metric - delta

    def fit(self, callback: Callback | None = None) -> list[dict]:
        cfg = self.cfg
        while self.epoch < cfg.epochs and self.stop_reason is None:
            epoch = self.epoch + 1
            frozen = epoch <= cfg.freeze_epochs
            set_frozen(self.model, frozen)
            t0 = time.perf_counter()
            tr = self.train_one_epoch(epoch)
            diverged = not math.isfinite(tr["train_loss"])
            if cfg.bn_recalibrate and not diverged:
                self.recalibrate_bn(cfg.bn_recalibrate)
            ev = self.evaluate() if not diverged else {"val_loss": float("nan"), "val_acc": 0.0}
            value = ev[cfg.monitor]
            if not diverged:
                self.scheduler.step_epoch(value)
            improved = not diverged and self._improved(value)
            if improved:
                self.best_metric, self.best_epoch, self.bad_epochs = value, epoch, 0
            else:
                self.bad_epochs += 1
            self.epoch = epoch
            metrics = {"epoch": epoch, **{k: tr[k] for k in ("train_loss", "train_acc")}, **ev,
                       "lr": current_lr(self.optimizer), "epoch_time_s": time.perf_counter() - t0,
                       "images_per_s": tr["images_per_s"], "data_time_s": tr["data_time_s"],
                       "train_time_s": tr["train_time_s"], "frozen": frozen, "improved": improved,
                       "best_epoch": self.best_epoch, "diverged": diverged}
            if diverged:
                self.stop_reason = "diverged"
            elif cfg.early_stop_patience and self.bad_epochs >= cfg.early_stop_patience:
                self.stop_reason = "early_stop"
            self.history.append(metrics)
            if callback is not None:
                callback(metrics, self)
        return self.history

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "history": self.history,
                "stop_reason": self.stop_reason, "config": self.cfg.model_dump(mode="json"),
                "class_names": self.class_names}

    def save(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)
        return Path(path)

    def load_state_dict(self, state: dict) -> None:
        if state.get("class_names") != self.class_names:
            raise UserError(f"checkpoint classes {state.get('class_names')} differ from the data's {self.class_names}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best_metric = state["epoch"], state["best_metric"]
        self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]
        self.history, self.stop_reason = list(state["history"]), state["stop_reason"]

    def resume(self, path: str | Path) -> None:
        self.load_state_dict(load_checkpoint(path))


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt: "
                        f"{type(exc).__name__})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path}: not a raydigits checkpoint")
    return state
