"""A trained model outside its Trainer: a `Predictor` rebuilt from a checkpoint's state, and the
saved models (best_model.pt and the self-contained `torch.export` program best_model.pt2, which runs
the same `Predictor` steps so its outputs match)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path, write_text
from .config import make_config
from .errors import UserError
from .models import build_model
from .pipeline import Predictor, Preprocess
from .trainer import amp_dtype, resolve_device

EXPORT_MAX_BATCH = 1 << 20  # the exported program takes any batch size from 1 up to this
EXPORT_EXAMPLE_BATCH = 2  # torch.export specialises a traced size of 1, so the example batch is 2


def predictor_from_state(state: dict, device: str = "cpu") -> Predictor:
    """The checkpoint's model in eval mode on `device` ("cpu", "cuda", "auto"), preprocessed and
    autocast as its validation was (fp16 autocast falls back to full precision off CUDA)."""
    cfg = make_config({**state["config"], "pretrained": None, "device": device})
    dev = resolve_device(cfg.device)
    model = build_model(cfg, len(state["class_names"]))
    model.load_state_dict(state["model"])
    model = model.to(dev).eval()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    try:
        dtype = amp_dtype(cfg, dev)
    except UserError:  # amp: fp16 of a GPU trial, predicted on a CPU
        dtype = None
    autocast = (lambda: torch.autocast(dev.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    return Predictor(model, Preprocess(cfg, dev), cfg.eval_batch_size, autocast)


def predict_state(state: dict, images: np.ndarray, device: str = "cpu") -> np.ndarray:
    """(N, H, W, C) uint8 → (N, classes) probabilities from a checkpoint's state."""
    return predictor_from_state(state, device).predict(images)


class Exported(torch.nn.Module):
    """uint8 images (N, H, W, C) → class probabilities: a `Predictor`'s own steps, as a module."""

    def __init__(self, predictor: Predictor):
        super().__init__()
        self.model = predictor.model  # registered: its weights become the program's parameters
        self.predictor = predictor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.predictor.probabilities(images.permute(0, 3, 1, 2))


def export_program(predictor: Predictor, input_shape: list[int]):
    example = torch.zeros([EXPORT_EXAMPLE_BATCH, *input_shape], dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=EXPORT_MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(Exported(predictor).eval(), (example,), dynamic_shapes={"images": {0: batch}})


def save_models(out: Path, state: dict, input_shape: list[int]) -> None:
    """best_model.pt (weights, config, classes), best_model.pt2 (`torch.export.load(f).module()`
    (uint8 NHWC) → probabilities) and classes.json."""
    best = {
        "model": state["model"],
        "config": state["config"],
        "class_names": state["class_names"],
        "input_shape": list(input_shape),
        "epoch": state["epoch"],
    }
    with atomic_path(out / "best_model.pt") as tmp:
        torch.save(best, tmp)
    predictor = predictor_from_state(state, "cpu")
    # plain (NCHW) weights: channels_last ones are saved as views, and torch.export's writer warns
    # "No complete tensor found in the group" for each of them
    predictor.model.to(memory_format=torch.contiguous_format)
    program = export_program(predictor, input_shape)
    with atomic_path(out / "best_model.pt2") as tmp:
        torch.export.save(program, tmp)
    write_text(out / "classes.json", json.dumps(state["class_names"]))
