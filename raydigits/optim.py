"""Name → builder registries for optimisers, learning-rate schedules and losses (timm-style). The
optimisers are one table of `OptimInfo` entries: builder and capabilities (momentum or betas, fused,
CUDA-graph capturable).

Schedules step per batch (`step_batch`) except plateau, which steps per epoch on the monitored
metric (`step_epoch`). A linear warmup from `lr * warmup_start_factor` (never 0) wraps any of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler as lrs

_SCHEDULERS: dict[str, Callable] = {}
_LOSSES: dict[str, Callable] = {}


def _register(table):
    def deco(fn):
        table[fn.__name__.removeprefix("_").removesuffix("_")] = fn
        return fn

    return deco


def list_optimizers() -> list[str]:
    return sorted(_OPTIMIZERS)


def list_schedulers() -> list[str]:
    return sorted(_SCHEDULERS)


def list_losses() -> list[str]:
    return sorted(_LOSSES)


# ------------------------------------------------------------------ optimisers
@dataclass(frozen=True)
class OptimInfo:
    """One optimiser and what it can do (modelled on timm's `OptimInfo`). `_OPTIMIZERS` below is the one
    table of them: `build_optimizer` reads it here, graphs.py reads which steps a CUDA graph can replay."""

    name: str
    builder: Callable  # (param groups, cfg, fused, capturable) → the optimiser
    has_momentum: bool = False  # takes `momentum` and `nesterov` (sgd)
    has_betas: bool = False  # takes `betas` (the adam family)
    # torch's single-kernel (fused) implementation: the step is one launch per dtype instead of a loop
    # over tensors, and on CUDA it is what makes the step graph-capturable with a device-side lr
    fused: bool = False
    capturable: bool = False  # its step can be captured into a CUDA graph (a device-tensor lr; graphs.py)
    description: str = ""


def _sgd(params, cfg, fused, capturable):
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
        fused=fused,
    )


def _adam(params, cfg, fused, capturable):
    # capturable: the step counter lives on the device, so a CUDA graph can replay the step
    return torch.optim.Adam(
        params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused, capturable=capturable
    )


def _adamw(params, cfg, fused, capturable):
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused, capturable=capturable
    )


def _adabelief(params, cfg, fused, capturable):
    from pytorch_optimizer import AdaBelief

    return AdaBelief(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, weight_decouple=True)


def _ranger(params, cfg, fused, capturable):
    from pytorch_optimizer import Ranger

    return Ranger(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


_OPTIMIZERS: dict[str, OptimInfo] = {
    info.name: info
    for info in (
        OptimInfo("sgd", _sgd, has_momentum=True, fused=True, capturable=True, description="SGD, momentum, nesterov"),
        OptimInfo("adam", _adam, has_betas=True, fused=True, capturable=True, description="Adam, L2 weight decay"),
        OptimInfo("adamw", _adamw, has_betas=True, fused=True, capturable=True, description="Adam, decoupled decay"),
        OptimInfo("adabelief", _adabelief, has_betas=True, description="AdaBelief (pytorch_optimizer)"),
        OptimInfo("ranger", _ranger, has_betas=True, description="RAdam + Lookahead (pytorch_optimizer)"),
    )
}
FUSED_OPTIMIZERS = tuple(name for name, info in _OPTIMIZERS.items() if info.fused)
CAPTURABLE_OPTIMIZERS = tuple(name for name, info in _OPTIMIZERS.items() if info.capturable)


def optimizer_info(name: str) -> OptimInfo:
    return _OPTIMIZERS[name]


def build_optimizer(model: nn.Module, cfg, capturable: bool = False) -> torch.optim.Optimizer:
    """All parameters are handed over (frozen ones have no grad and are skipped by every optimiser),
    so unfreezing later needs no new optimiser. No weight decay on norms and biases. `capturable`:
    the step will be replayed from a CUDA graph (the trainer decides)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    info = _OPTIMIZERS[cfg.optimizer]
    return info.builder(groups, cfg, True if info.fused else None, capturable)


# ------------------------------------------------------------------ schedules (steps = batches)
@_register(_SCHEDULERS)
def _none(opt, cfg, spe, total):
    return lrs.LambdaLR(opt, lambda _: 1.0)


@_register(_SCHEDULERS)
def _cosine(opt, cfg, spe, total):
    return lrs.CosineAnnealingLR(opt, T_max=max(1, total), eta_min=cfg.min_lr)


@_register(_SCHEDULERS)
def _cosine_restarts(opt, cfg, spe, total):
    return lrs.CosineAnnealingWarmRestarts(
        opt, T_0=max(1, round(cfg.restart_epochs * spe)), T_mult=cfg.restart_mult, eta_min=cfg.min_lr
    )


@_register(_SCHEDULERS)
def _step(opt, cfg, spe, total):
    return lrs.StepLR(opt, step_size=max(1, round(cfg.step_size * spe)), gamma=cfg.gamma)


@_register(_SCHEDULERS)
def _multistep(opt, cfg, spe, total):
    return lrs.MultiStepLR(opt, milestones=[max(1, round(m * spe)) for m in cfg.milestones], gamma=cfg.gamma)


@_register(_SCHEDULERS)
def _onecycle(opt, cfg, spe, total):
    # cycle_momentum off unless asked for: PyTorch's default would overwrite the configured momentum / betas
    return lrs.OneCycleLR(
        opt,
        max_lr=[g["lr"] for g in opt.param_groups],
        total_steps=max(2, total),
        pct_start=cfg.onecycle_pct_start,
        cycle_momentum=cfg.cycle_momentum,
    )


@_register(_SCHEDULERS)
def _rung_cosine(opt, cfg, spe, total):
    """Budget-aware rungs (Li, Yumer, Ramanan, "Budgeted Training", ICLR 2020: anneal within the
    budget a run is given): the lr anneals to min_lr at every milestone (epochs: `milestones`, which
    a search with early stopping fills with its first rung), so that rung judges every trial at an
    annealed point of its schedule, not mid-schedule; after a milestone it restarts at the value a
    plain cosine over the whole run would have there, so the run as a whole decays like `cosine` and
    ends at min_lr."""
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    warm = cfg.epochs * spe - total  # the warmup's steps: the main schedule starts after them
    cuts = sorted({round(m * spe) - warm for m in cfg.milestones} & set(range(1, max(1, total))))
    bounds = [0, *cuts, max(1, total)]

    def factor(step: int) -> float:
        i = max(k for k in range(len(bounds) - 1) if bounds[k] <= step) if step < bounds[-1] else len(bounds) - 2
        a, b = bounds[i], bounds[i + 1]
        peak = max(floor, 0.5 * (1 + math.cos(math.pi * a / bounds[-1])))
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - a) / (b - a))))

    return lrs.LambdaLR(opt, factor)


@_register(_SCHEDULERS)
def _plateau(opt, cfg, spe, total):
    return lrs.ReduceLROnPlateau(
        opt,
        mode="max" if cfg.monitor == "val_acc" else "min",
        factor=cfg.plateau_factor,
        patience=cfg.plateau_patience,
        min_lr=cfg.min_lr,
    )


class LRSchedule:
    """Warmup + the named schedule behind one interface: `step_batch()` after every optimiser step,
    `step_epoch(metric)` after every validation. Warmup scales the main schedule's first lr linearly
    from `warmup_start_factor` up to 1 over `warmup_epochs`; the main schedule then starts at its
    own step 0 and runs over the remaining steps."""

    def __init__(self, opt: torch.optim.Optimizer, cfg, steps_per_epoch: int):
        self.opt = opt
        self.warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
        self.start_factor = cfg.warmup_start_factor
        self.is_plateau = cfg.scheduler == "plateau"
        main_steps = cfg.epochs * steps_per_epoch - self.warmup_steps
        self.main = _SCHEDULERS[cfg.scheduler](opt, cfg, steps_per_epoch, main_steps)
        self.target = [g["lr"] for g in opt.param_groups]  # the main schedule's lr at its step 0
        self.steps = 0
        self._warm()

    def _warm(self) -> None:
        if self.steps <= self.warmup_steps and self.warmup_steps:
            f = self.start_factor + (1 - self.start_factor) * self.steps / self.warmup_steps
            for g, t in zip(self.opt.param_groups, self.target):
                g["lr"] = t * f

    def step_batch(self) -> None:
        self.steps += 1
        if self.steps <= self.warmup_steps:
            self._warm()
        elif not self.is_plateau:
            self.main.step()

    def step_epoch(self, metric: float) -> None:
        if self.is_plateau and self.steps >= self.warmup_steps:
            self.main.step(metric)

    def rescale(self, factor: float) -> None:
        """Scale the whole schedule by `factor` (the base lr changed mid-run: PBT): the current lr,
        the warmup target, the main schedule's base and peak lrs. Floors (min_lr) stay."""
        for g in self.opt.param_groups:
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):  # the last three: OneCycle's group keys
                if key in g and not (key == "min_lr" and "max_lr" not in g):
                    g[key] = g[key] * factor
        self.target = [t * factor for t in self.target]
        if hasattr(self.main, "base_lrs"):
            self.main.base_lrs = [b * factor for b in self.main.base_lrs]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "main": self.main.state_dict(), "target": self.target}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.target = state["steps"], state["target"]
        self.main.load_state_dict(state["main"])


def build_scheduler(opt, cfg, steps_per_epoch: int) -> LRSchedule:
    return LRSchedule(opt, cfg, steps_per_epoch)


# ------------------------------------------------------------------ a config changed in place (PBT)
OPTIMIZER_KNOBS = ("weight_decay", "momentum", "nesterov", "betas")  # TrainConfig key = param-group key


def built_knobs(opt: torch.optim.Optimizer) -> list[dict]:
    """Each param group's `OPTIMIZER_KNOBS` as this config built them: taken before a checkpoint's
    optimiser state is loaded over them, for `keep_own_knobs`."""
    return [{k: g[k] for k in OPTIMIZER_KNOBS if k in g} for g in opt.param_groups]


def keep_own_knobs(
    opt: torch.optim.Optimizer,
    schedule: LRSchedule,
    built: list[dict],
    saved: dict,
    now: dict,
    mutable: tuple[str, ...],
) -> dict:
    """The loaded optimiser state carries the saved run's hyperparameters in its param groups and
    its lr schedule. Where this run's config (`now`) differs from the saved one in a `mutable` knob
    (config.MUTABLE_KNOBS: PBT continued another trial's checkpoint with perturbed values), this
    config's value is applied: param-group values as this config built them (`built`), and a changed
    `lr` scales the whole schedule. Returns {knob: (saved, now)}."""
    changed = {k: (saved[k], now[k]) for k in mutable if k in saved and saved[k] != now[k]}
    for key in OPTIMIZER_KNOBS:
        if key in changed:
            for group, fresh in zip(opt.param_groups, built):
                if key in fresh:
                    group[key] = fresh[key]
    if "lr" in changed:
        schedule.rescale(now["lr"] / saved["lr"])
    return changed


# ------------------------------------------------------------------ losses
class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al.): mean of -w_y (1 - p_y)^gamma log p_y, with label smoothing
    applied to the target distribution. gamma = 0 equals cross-entropy."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        n = logits.shape[1]
        onehot = F.one_hot(target, n).float()
        soft = onehot * (1 - self.label_smoothing) + self.label_smoothing / n
        per_class = -soft * (1 - logp.exp()).pow(self.gamma) * logp
        if self.weight is not None:
            per_class = per_class * self.weight
            return per_class.sum() / self.weight[target].sum()
        return per_class.sum(dim=1).mean()


def _class_weight(cfg, num_classes):
    if cfg.class_weights is None:
        return None
    if len(cfg.class_weights) != num_classes:
        from .errors import UserError

        raise UserError(f"class_weights: {len(cfg.class_weights)} values for {num_classes} classes")
    return torch.tensor(cfg.class_weights, dtype=torch.float32)


@_register(_LOSSES)
def _ce(cfg, num_classes):
    return nn.CrossEntropyLoss(weight=_class_weight(cfg, num_classes), label_smoothing=cfg.label_smoothing)


@_register(_LOSSES)
def _focal(cfg, num_classes):
    return FocalLoss(cfg.focal_gamma, _class_weight(cfg, num_classes), cfg.label_smoothing)


def build_loss(cfg, num_classes: int) -> nn.Module:
    return _LOSSES[cfg.loss](cfg, num_classes)


def current_lr(opt) -> float:
    return float(opt.param_groups[0]["lr"])
