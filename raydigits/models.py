"""Build a torchvision classifier by name, give it a head for the dataset's classes, load pretrained
weights from local files only, set BatchNorm momentum, freeze/unfreeze the backbone, and put the
BatchNorms that precise BN recalibrates into cumulative-average mode."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torchvision
from torch import nn

from .errors import UserError

if TYPE_CHECKING:
    from .config import TrainConfig

KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.")
# the torchvision builders that take `width_mult` (torchvision 0.29: MobileNetV2's constructor, and
# MobileNetV3's config builder through mobilenet_v3_small / _large); every other one refuses it with a
# TypeError (tests/test_architectures.py checks both against torchvision)
WIDTH_MULT_MODELS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")


@functools.lru_cache(maxsize=1)
def list_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def head_path(model: nn.Module) -> str:
    """Name of the final Linear layer (the classifier head)."""
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    if last is None:
        raise UserError(f"{type(model).__name__}: no Linear classifier layer found")
    return last


def head_root(model: nn.Module) -> str:
    """The top-level attribute holding the head ('classifier', 'fc', 'heads', ...): not frozen."""
    return head_path(model).split(".")[0]


def _replace_head(model: nn.Module, num_classes: int) -> None:
    path = head_path(model)
    parent_name, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, nn.Linear(getattr(parent, leaf).in_features, num_classes))


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.momentum = momentum


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    # the width multiplier only when it scales (TrainConfig refuses another on a model without one)
    width = {"width_mult": cfg.width_mult} if cfg.width_mult != 1.0 else {}
    if width and cfg.model not in WIDTH_MULT_MODELS:
        raise UserError(
            f"width_mult: model {cfg.model} takes no width multiplier (only {', '.join(WIDTH_MULT_MODELS)} do)"
        )
    try:  # models whose constructor takes `dropout` (MobileNet, EfficientNet, ...) get cfg.dropout
        model = torchvision.models.get_model(cfg.model, weights=None, dropout=cfg.dropout, **width)
    except TypeError:
        model = torchvision.models.get_model(cfg.model, weights=None, **width)
    if cfg.pretrained:
        state = _imagenet_state(cfg.model) if cfg.pretrained == "imagenet" else read_state_dict(cfg.pretrained)
        load_matching(model, state, source=cfg.pretrained)
    _replace_head(model, num_classes)
    if cfg.pretrained and cfg.pretrained != "imagenet":
        # our own checkpoint of the same class count: its head loads too
        load_matching(model, read_state_dict(cfg.pretrained), source=cfg.pretrained, quiet=True)
    if cfg.bn_momentum is not None:
        set_bn_momentum(model, cfg.bn_momentum)
    return model


def read_state_dict(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"pretrained: {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, not a torch file, or holds non-tensor objects
        raise UserError(
            f"pretrained: {path}: not a loadable state dict ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # a raydigits checkpoint / best_model.pt
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"pretrained: {path}: expected a state dict")
    return strip_prefixes(obj)


def strip_prefixes(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in KNOWN_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = v
    return out


def load_matching(model: nn.Module, state: dict, source: str = "", quiet: bool = False) -> None:
    """Load every key whose name and shape match; print what was skipped (unless quiet)."""
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    mismatched = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in matched)
    model.load_state_dict(matched, strict=False)
    if not quiet:
        print(
            f"pretrained {source}: loaded {len(matched)}/{len(own)} tensors; "
            f"skipped (shape mismatch): {mismatched[:6]}{'...' if len(mismatched) > 6 else ''}; "
            f"missing: {missing[:6]}{'...' if len(missing) > 6 else ''}; "
            f"unexpected: {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}"
        )
    if not matched:
        raise UserError(f"pretrained {source}: no tensor matches model {type(model).__name__}")


def imagenet_file(name: str) -> Path | None:
    """Where the torch hub cache keeps `name`'s ImageNet weights (None: torchvision has none)."""
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _imagenet_state(name: str) -> dict:
    file = imagenet_file(name)
    if file is None:
        raise UserError(f"pretrained: imagenet: torchvision has no ImageNet weights for {name}")
    if not file.exists():
        raise UserError(
            f"pretrained: imagenet: no local weights for {name} at {file} (downloads are "
            f"not attempted); copy {file.name} there or give a path"
        )
    return strip_prefixes(torch.load(file, map_location="cpu", weights_only=True))


def set_frozen(model: nn.Module, frozen: bool) -> None:
    """Frozen: only the head trains; backbone params get no grads and its BatchNorms keep their
    running statistics (eval mode, see `train_mode`), so a frozen backbone is left exactly as it
    was. The caller keeps the frozen state (the Trainer does) and passes it to `train_mode`."""
    head = head_root(model)
    for name, p in model.named_parameters():
        p.requires_grad_(not frozen or name.split(".")[0] == head)


def train_mode(model: nn.Module, frozen: bool) -> None:
    """model.train(), with a frozen backbone's norm layers kept in eval mode."""
    model.train()
    if frozen:
        head = head_root(model)
        for name, mod in model.named_children():
            if name != head:
                mod.eval()


def norms_to_recalibrate(model: nn.Module, frozen: bool) -> list:
    """BatchNorm layers whose statistics follow the training weights: all of them, or only the
    head's while the backbone is frozen (a frozen backbone keeps its statistics)."""
    head = head_root(model)
    return [
        m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (not frozen or name.split(".")[0] == head)
    ]


@contextlib.contextmanager
def cumulative_statistics(model: nn.Module, norms: list):
    """Inside: the model in eval mode except `norms`, whose running statistics are reset (in place:
    captured graphs keep reading the same buffers) and then accumulate as an exact cumulative average
    (momentum None) over what is run through the model. After: their momenta back, the model in eval mode."""
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    yield
    for m, mom in zip(norms, momenta):
        m.momentum = mom
    model.eval()
