"""What a trial's model costs to deploy, measured once before its first epoch: parameter count, size
on disk, FLOPs per image and the latency of its eval-mode forward at batch 1 on the trial's device.

The numbers depend on the architecture (model name, classes), the image size, the memory format, the
device and the torch thread count, and on nothing a trial learns, so they are cached per machine
under that key (`~/.cache/raydigits/costs.json`, or $RAYDIGITS_COSTS_CACHE): a search times each
architecture once, and every trial of it reports the same numbers. Latency is the median of `CALLS` timed calls after `WARMUP`
untimed ones (the quietest of up to `ROUNDS` rounds), with the trial's own threads (stated in `threads`), synchronising on CUDA; it is
measured while the search's other trials run, which is the load a search measures under. Runs
without Ray."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import socket
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import atomic, env

# the TrainConfig keys a model's costs depend on (with the class count, the device and its threads):
# what tells one architecture from another in a multi-objective search
ARCHITECTURE_KEYS = ("model", "width_mult", "img_size", "channels_last")
CALLS = 30  # timed batch-1 calls; the median of them is the latency
WARMUP = 5  # untimed calls first (allocator, oneDNN primitive cache, cuDNN autotune)
# A trial measures while the search's other trials (and Ray's own processes) share the cores: a round
# whose calls were preempted is bimodal (seen on 2 cores: medians of 50-150 ms with an IQR as large,
# for models that answer in 5-12 ms). Up to ROUNDS rounds, stopping at the first quiet one.
ROUNDS = 4
QUIET_IQR = 0.25  # a round is quiet when its IQR is at most this share of its median
FORMAT = 2  # bump when what is measured, or how, changes (older entries are then measured again)


@dataclass(frozen=True)
class Costs:
    params: int  # parameters, trainable or not
    size_mb: float  # the state_dict as torch.save writes it (best_model.pt's weights), MiB
    mflops: float  # floating-point operations of one image's forward, millions (a multiply-add is 2)
    latency_ms: float  # median wall time of one eval-mode forward of one image
    latency_iqr_ms: float  # interquartile range of those calls: the measurement's own spread
    threads: int  # torch CPU threads the latency was measured with
    device: str  # where it was measured ("cpu", "cuda")

    def metrics(self) -> dict[str, float]:
        """The numbers every reported result carries (what multi-objective search ranks by)."""
        return {
            "params": float(self.params),
            "size_mb": self.size_mb,
            "mflops": self.mflops,
            "latency_ms": self.latency_ms,
        }


def of_trainer(trainer) -> Costs:
    """A `Trainer`'s model costs, from the cache or measured now on its device with its threads."""
    cfg = trainer.cfg
    key = config_key(cfg, len(trainer.class_names), trainer.device)
    return cached(key, lambda: measure(trainer.model, cfg.img_size, trainer.device, trainer.autocast))[0]


def config_key(cfg, num_classes: int, device: torch.device) -> str:
    """A trainer config's cache key: its architecture (each width_mult its own), image size, layout."""
    model = cfg.model if cfg.width_mult == 1.0 else f"{cfg.model} x{cfg.width_mult:g}"
    return cache_key(model, num_classes, cfg.img_size, cfg.channels_last, device)


def cache_key(model_name: str, num_classes: int, img_size: int, channels_last: bool, device: torch.device) -> str:
    """Everything the costs depend on, this machine and its torch included."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{socket.gethostname()} cpu"
    layout = "nhwc" if channels_last else "nchw"
    return (
        f"v{FORMAT}|{model_name}|{num_classes} classes|{img_size}px|{layout}|{where}|"
        f"{torch.get_num_threads()} threads|torch {torch.__version__}"
    )


def measure(
    model: nn.Module,
    img_size: int,
    device: torch.device,
    autocast=None,
    calls: int = CALLS,
    warmup: int = WARMUP,
    rounds: int = ROUNDS,
) -> Costs:
    """The model's costs, measured now. The model is put in eval mode for the measure and back in the
    mode it had; its weights, buffers and the random number generators are left as they were.
    Latency: up to `rounds` rounds of `calls` timed calls, until one is quiet (IQR ≤ QUIET_IQR × its
    median); the round with the smallest median is kept, with its IQR."""
    if calls < 1 or warmup < 0 or rounds < 1:
        raise ValueError(
            f"costs: calls and rounds must be ≥ 1 and warmup ≥ 0, got {calls} and {warmup} (rounds {rounds})"
        )
    params = sum(p.numel() for p in model.parameters())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fmt = torch.channels_last if _is_channels_last(model) else torch.contiguous_format
    x = torch.zeros(1, 3, img_size, img_size, device=device).contiguous(memory_format=fmt)  # no RNG drawn
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _context(autocast):
            counter = FlopCounterMode(display=False)
            with counter:
                model(x)
            for _ in range(warmup):
                model(x)
            best: tuple[float, float] | None = None  # (median, IQR) of the quietest round
            for _ in range(rounds):
                times = []
                for _ in range(calls):
                    _sync(device)
                    start = time.perf_counter()
                    model(x)
                    _sync(device)
                    times.append((time.perf_counter() - start) * 1e3)
                q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
                median, iqr = statistics.median(times), q[2] - q[0]
                if best is None or median < best[0]:
                    best = (median, iqr)
                if iqr <= QUIET_IQR * median:
                    break
    finally:
        model.train(was_training)
    assert best is not None
    return Costs(
        params=params,
        size_mb=buf.getbuffer().nbytes / 2**20,
        mflops=counter.get_total_flops() / 1e6,
        latency_ms=round(best[0], 4),
        latency_iqr_ms=round(best[1], 4),
        threads=torch.get_num_threads(),
        device=device.type,
    )


STATIC = ("params", "size_mb", "mflops")  # the costs known by construction, without timing anything


@functools.lru_cache(maxsize=256)
def static_costs(model_name: str, num_classes: int, img_size: int, width_mult: float = 1.0) -> dict[str, float]:
    """params, size_mb and mflops of a freshly built `model_name` (random weights, its head for
    `num_classes`) at `img_size` px, as `measure` counts them, on the CPU and without timing: what a
    search can check its constraints against before Ray starts (search/feasible.py). Latency is not
    here: it is only known on the trial's device, under its load."""
    from .config import TrainConfig
    from .models import build_model

    model = build_model(TrainConfig(model=model_name, img_size=img_size, width_mult=width_mult), num_classes)
    model.eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            model(torch.zeros(1, 3, img_size, img_size))
    return {
        "params": float(sum(p.numel() for p in model.parameters())),
        "size_mb": buf.getbuffer().nbytes / 2**20,
        "mflops": counter.get_total_flops() / 1e6,
    }


def cached(key: str, measure_now, path: Path | None = None) -> tuple[Costs, bool]:
    """(costs, whether they came from the cache: `path`, default env.costs_cache()). Concurrent
    trials take a file lock around read-measure-write, so the first measures and the others read
    its numbers; a missing or unreadable cache is measured anew and rewritten whole (temp file,
    then rename)."""
    path = (path or env.costs_cache()).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock", timeout=120)
        with lock:
            return _cached(key, measure_now, path)
    except (OSError, Timeout):  # a read-only home, or a lock held too long: measure without the cache
        return measure_now(), False


def _cached(key: str, measure_now, path: Path) -> tuple[Costs, bool]:
    entries = _read(path)
    if key in entries:
        try:
            return Costs(**entries[key]), True
        except TypeError:  # an entry of another shape: measured again below
            pass
    costs = measure_now()
    entries[key] = asdict(costs)
    atomic.write_text(path, json.dumps(entries, indent=1, sort_keys=True))
    return costs, False


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_channels_last(model: nn.Module) -> bool:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv is not None and conv.weight.is_contiguous(memory_format=torch.channels_last)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _context(autocast):
    return autocast() if autocast is not None else contextlib.nullcontext()
