"""The process a run trains in: its device, its precision, and the process-wide torch settings
(threads, cuDNN, the GPU memory cap, the seed), set in one place: `setup_process`. Every Trainer
calls it first, so the Ray-free CLI (train.py) and a Tune trial (search/trainable.py, which hands
over its CPU share as the default thread count) set up their process the same way."""

from __future__ import annotations

import torch

from .errors import UserError

OWN_THREADS = torch.get_num_threads()  # torch's own choice in this process, before any run set another


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {name!r} asked for, but CUDA is not available here")
    return dev


def amp_dtype(cfg, device: torch.device) -> torch.dtype | None:
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


def setup_process(cfg, device: torch.device, default_threads: int = 0) -> None:
    """Process-wide torch state for training `cfg` on `device`.

    Threads: `cfg.threads`, else `default_threads` (a Tune trial's CPU share, so that concurrent
    trials do not oversubscribe the machine), else torch's own choice. The count changes CPU results
    (README, "Reproduce a trial": 1 vs 2 threads moved epoch-1 val_acc from 0.300 to 0.325), which is
    why a trial's TrainConfig records its count and a reproduction uses it. Last, torch's global RNG
    is seeded with `cfg.seed`: the model's initialisation, built next. Everything here is set on every
    call, never only when asked for: Tune reuses a trial's process for the next trial (runner.py)."""
    torch.set_num_threads(cfg.threads or default_threads or OWN_THREADS)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        # a packed trial stays inside its share (an overrun is an OOM); no cap is 1.0, set too: a process
        # Tune reuses may have run a capped trial before
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(cfg.gpu_memory_fraction or 1.0, index)  # needs an index
    torch.manual_seed(cfg.seed)


def release_cuda_memory(device: torch.device, memory_fraction: float) -> str:
    """After an out-of-memory error: the peak this process reached, as a note for its log line
    ('' off CUDA), then the cached blocks handed back."""
    if device.type != "cuda":
        return ""
    total = torch.cuda.get_device_properties(device).total_memory
    cap = f", capped at {memory_fraction:.0%}" if memory_fraction else ""
    peak = f" (peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB of {total / 2**30:.0f} GiB{cap})"
    torch.cuda.empty_cache()
    return peak
