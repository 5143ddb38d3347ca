"""Batches on the training device: each split is one uint8 tensor there; a batch is gathered by
index, resized, normalised and (training only) randomly shifted/rotated/scaled with batched tensor
ops. No per-image Python work per step. `Predictor`: the one way images become class scores
(validation, `Trainer.predict`, the final stage and the exported program all go through it)."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .config import TrainConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_device_uint8(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, C) uint8 numpy (possibly a read-only view of Ray's object store) → (N, C, H, W)
    uint8 tensor on `device`. On CPU this is a zero-copy view."""
    with warnings.catch_warnings():  # read-only buffers: we never write into them
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(images)
    return t.permute(0, 3, 1, 2).to(device)


class Preprocess:
    """uint8 (B, C, H, W) → normalised float (B, 3, S, S). Grey digits are repeated to 3 channels and
    normalised with ImageNet statistics, so torchvision models (and ImageNet weights) work unchanged."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.size = cfg.img_size
        self.device = device
        # (x - mean) / std as one fused x * scale + bias, broadcast from 1 or 3 channels to 3
        self.norm_scale = 1.0 / torch.tensor(IMAGENET_STD, device=device)
        self.norm_bias = -torch.tensor(IMAGENET_MEAN, device=device) * self.norm_scale
        s = cfg.aug_strength
        self.shift, self.rotate, self.scale = cfg.aug_shift * s, math.radians(cfg.aug_rotate * s), cfg.aug_scale * s
        self.channels_last = cfg.channels_last

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:  # compute in NHWC: the result is channels_last with no extra copy
            return torch.addcmul(self.norm_bias, x.permute(0, 2, 3, 1), self.norm_scale).permute(0, 3, 1, 2)
        return torch.addcmul(self.norm_bias.view(1, 3, 1, 1), x, self.norm_scale.view(1, 3, 1, 1))

    def _base_grid(self, device) -> torch.Tensor:
        """Pixel-centre coordinates (x, y, 1) in [-1, 1], (S*S, 3): F.affine_grid's base grid
        (align_corners=False), built once; affine_grid itself is ~6x slower than grid_sample on CPU."""
        if getattr(self, "_grid", None) is None or self._grid.device != device:
            c = (torch.arange(self.size, device=device, dtype=torch.float32) * 2 + 1) / self.size - 1
            yy, xx = torch.meshgrid(c, c, indexing="ij")
            self._grid = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(-1, 3)
        return self._grid

    def eval(self, batch_u8: torch.Tensor) -> torch.Tensor:
        x = batch_u8.float().div_(255.0)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > self.size
            )
        return self._normalise(x)

    def train(self, batch_u8: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if self.shift == 0 and self.rotate == 0 and self.scale == 0:
            return self.eval(batch_u8)
        x = batch_u8.float().div_(255.0)
        if x.shape[-1] > self.size:  # shrink first (antialiased), then warp at the target size
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        b = x.shape[0]

        def uniform(lim):
            return (torch.rand(b, generator=gen, device=x.device) * 2 - 1) * lim

        angle, zoom = uniform(self.rotate), 1 + uniform(self.scale)
        tx, ty = uniform(self.shift * 2), uniform(self.shift * 2)  # grid units: side = 2
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        # one GEMM (S*S, 3) @ (3, B*2) instead of F.affine_grid's batched matmul
        grid = self._base_grid(x.device) @ theta.permute(2, 0, 1).reshape(3, b * 2)
        grid = grid.view(-1, b, 2).transpose(0, 1).reshape(b, self.size, self.size, 2)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return self._normalise(x)


class SplitBatches:
    """One split held on the device; yields (inputs, labels) batches by index."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device):
        self.images = to_device_uint8(images, device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device)
        self.device = device

    def __len__(self) -> int:
        return self.labels.shape[0]

    def order(self, shuffle: bool, gen: torch.Generator | None) -> torch.Tensor:
        if shuffle:
            return torch.randperm(len(self), generator=gen, device="cpu").to(self.device)
        return torch.arange(len(self), device=self.device)

    def index_batches(
        self, batch_size: int, shuffle: bool = False, gen: torch.Generator | None = None, drop_last: bool = False
    ):
        """Index tensors (on the device) of each batch, in a seeded order when shuffled."""
        idx = self.order(shuffle, gen)
        n = len(idx) - (len(idx) % batch_size if drop_last and len(idx) >= batch_size else 0)
        for start in range(0, n, batch_size):
            yield idx[start : start + batch_size]

    def batches(
        self, batch_size: int, shuffle: bool = False, gen: torch.Generator | None = None, drop_last: bool = False
    ):
        for sel in self.index_batches(batch_size, shuffle, gen, drop_last):
            yield self.images.index_select(0, sel), self.labels.index_select(0, sel), sel


class Predictor:
    """uint8 images → class scores with `model` in eval mode: `Preprocess.eval`, the model under
    `autocast` (the same context validation uses), float32 logits."""

    def __init__(
        self,
        model: torch.nn.Module,
        pre: Preprocess,
        batch_size: int,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ):
        self.model, self.pre, self.batch_size, self.autocast = model, pre, batch_size, autocast

    def logits(self, batch_u8: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 on the model's device → (B, classes) float32 logits."""
        with torch.no_grad(), self.autocast():
            out = self.model(self.pre.eval(batch_u8))
        return out.float()

    def probabilities(self, batch_u8: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.logits(batch_u8), 1)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 → (N, classes) softmax probabilities, in input order."""
        self.model.eval()
        x = to_device_uint8(images, self.pre.device)
        return torch.cat(
            [self.probabilities(x[i : i + self.batch_size]).cpu() for i in range(0, len(x), self.batch_size)]
        ).numpy()
