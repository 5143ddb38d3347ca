"""Trainer speed, measured side by side in one run (not a test). Prints:
 (a) trainer epoch throughput ÷ a bare forward/backward loop over tensors already in memory (goal ≥ 0.90)
 (b) share of training step time spent preparing data in the trainer (goal ≤ 5 %)
 (c) the on-device input pipeline ÷ a seed-style per-image cv2 read+resize DataLoader, 2 workers,
     data only (goal ≥ 10×)
Usage: python bench/trainer_bench.py [--items 4096] [--batch-size 128] [--img-size 32] [--threads 2]"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from raydigits.config import make_config
from raydigits.data import ensure_prepared, load_dataset
from raydigits.pipeline import IMAGENET_MEAN, IMAGENET_STD, Preprocess, SplitBatches
from raydigits.trainer import Trainer


def bare_loop(cfg, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    t = Trainer(cfg, DATA)  # same model, optimiser, loss
    t.model.train()
    start = time.perf_counter()
    for i in range(steps):
        xb, yb = x[i % len(x)], y[i % len(y)]
        out = t.model(xb)
        loss = t.criterion(out, yb)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()
    return steps * cfg.batch_size / (time.perf_counter() - start)


class SeedStyle(torch.utils.data.Dataset):
    """What the seed tutorial did: a file list, cv2.imread + resize + ToTensor + Normalize per image."""

    def __init__(self, files, labels, size):
        self.files, self.labels, self.size = files, labels, size
        self.mean = np.array(IMAGENET_MEAN, np.float32)
        self.std = np.array(IMAGENET_STD, np.float32)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img = cv2.imread(self.files[i])
        img = cv2.resize(img, (self.size, self.size))
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        img = (img - self.mean) / self.std
        return torch.from_numpy(img.transpose(2, 0, 1)), self.labels[i]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="mobilenet_v3_small")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    global DATA
    DATA = load_dataset(ensure_prepared(Path("data/mnist")), splits=("train", "val"))
    cfg = make_config(dict(train_items=args.items, val_items=512, batch_size=args.batch_size,
                           img_size=args.img_size, threads=args.threads, epochs=3, model=args.model,
                           device="cpu", scheduler="cosine"))
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; model {args.model}, batch {args.batch_size}, {args.img_size} px, "
          f"{args.items} images")

    trainer = Trainer(cfg, DATA)
    trainer.train_one_epoch(1)  # warm-up
    ep = trainer.train_one_epoch(2)
    # bare loop: the same batches preprocessed up front, no augmentation, nothing but the model step
    pre = Preprocess(cfg, torch.device("cpu"))
    batches = [(pre.eval(xb), yb) for xb, yb, _ in trainer.train_set.batches(cfg.batch_size, True, None, True)]
    xs, ys = [b[0] for b in batches], [b[1] for b in batches]
    bare_loop(cfg, xs, ys, 5)  # warm-up
    bare = bare_loop(cfg, xs, ys, len(xs))
    print(f"(a) trainer {ep['images_per_s']:.0f} img/s ÷ bare loop {bare:.0f} img/s = "
          f"{ep['images_per_s'] / bare:.3f}   (goal ≥ 0.90)")
    print(f"(b) data share of step time: {ep['data_time_s']:.2f}s / {ep['train_time_s']:.2f}s = "
          f"{100 * ep['data_time_s'] / ep['train_time_s']:.2f} %   (goal ≤ 5 %)")

    # (c) data only: on-device pipeline vs per-image cv2 DataLoader over PNG files
    n = min(args.items, 4096)
    imgs, labels = DATA.images["train"][:n], DATA.labels["train"][:n]
    split = SplitBatches(imgs, labels, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(3):
        for xb, yb, _ in split.batches(cfg.batch_size, True, gen):
            pre.train(xb, gen)
    ours = 3 * n / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as d:
        files = []
        for i, img in enumerate(imgs):
            f = f"{d}/{i}.png"
            cv2.imwrite(f, img)
            files.append(f)
        loader = torch.utils.data.DataLoader(SeedStyle(files, labels, args.img_size), batch_size=cfg.batch_size,
                                             shuffle=True, num_workers=2)
        for _ in loader:  # warm-up (workers start, page cache)
            break
        start = time.perf_counter()
        for _ in loader:
            pass
        seed = n / (time.perf_counter() - start)
    print(f"(c) on-device pipeline {ours:.0f} img/s ÷ seed-style cv2 DataLoader {seed:.0f} img/s = "
          f"{ours / seed:.1f}×   (goal ≥ 10×)")


if __name__ == "__main__":
    main()
