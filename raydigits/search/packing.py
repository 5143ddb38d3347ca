"""`resources: {gpu: auto}`: as many trials per GPU as fit. A short probe (a Ray task on one GPU)
trains the most memory-hungry configuration the space can sample for a few steps, train and eval
graphs included, and measures its peak; trials are then packed with a safety margin, and each one
is capped at its share (`gpu_memory_fraction`), so a trial that outgrows it ends as `oom` instead of
starving its neighbours."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..spec import SearchSpec

MEMORY_KEYS = ("model", "img_size", "batch_size", "eval_batch_size")  # what sets a trial's peak memory
PROBE_STEPS = 6  # train steps: WARMUP_STEPS eager, then capture and replays
PROBE_EVAL_BATCHES = 5


@dataclass
class Packing:
    trials_per_gpu: int
    gpu_fraction: float  # Ray's per-trial GPU request
    memory_fraction: float  # each trial's cap on the GPU's memory
    peak_gib: float  # measured peak of one trial (allocator + CUDA context)
    total_gib: float

    def line(self) -> str:
        return (
            f"gpu: auto → {self.trials_per_gpu} trials per GPU (one trial peaks at {self.peak_gib:.2f} GiB "
            f"of {self.total_gib:.0f} GiB; each capped at {self.memory_fraction:.1%} of the GPU's memory)"
        )


def pack(peak_bytes: float, total_bytes: float, margin: float, max_per_gpu: int) -> Packing:
    """How many trials of `peak_bytes` fit in `total_bytes` leaving `margin` free, at most `max_per_gpu`."""
    usable = total_bytes * (1.0 - margin)
    k = int(usable // (peak_bytes * (1.0 + margin)))  # each trial gets its own margin too
    if k < 1:
        raise UserError(
            f"resources.gpu: auto: one trial needs {peak_bytes / 2**30:.1f} GiB at its peak, more than "
            f"this GPU's {total_bytes / 2**30:.0f} GiB allows with a {margin:.0%} margin; lower "
            "batch_size or img_size"
        )
    k = min(k, max_per_gpu)
    fraction = math.floor(1e4 / k) / 1e4  # Ray's GPU resource granularity is 1e-4
    return Packing(k, fraction, round(usable / k / total_bytes, 4), peak_bytes / 2**30, total_bytes / 2**30)


def probe_configs(spec: SearchSpec) -> list[dict]:
    """The configurations whose memory bounds every trial: the largest img_size / batch sizes the
    space can sample, once per model it can choose."""
    from ..config import TrainConfig

    base = {k: v for k, v in spec.fixed.items() if k in TrainConfig.model_fields}
    choices: dict[str, list] = {}
    for name, p in spec.parameters.items():
        key = spec.target(name)
        if key not in MEMORY_KEYS:
            continue
        if p.values is not None:
            vals = list(p.values)
        elif "value" in p.model_fields_set:
            vals = [p.value]
        else:
            vals = [p.max if p.max is not None else p.mu + 3 * p.sigma]
        choices.setdefault(key, []).extend(vals)
    largest = {k: max(int(v) for v in vals) for k, vals in choices.items() if k != "model"}
    models = choices.get("model") or [base.get("model", TrainConfig.model_fields["model"].default)]
    return [{**base, **largest, "model": m} for m in dict.fromkeys(models)]


def _probe_task(configs: list[dict], data_shape: tuple, num_classes: int) -> dict:
    """On one GPU: train each config briefly on random images; the peak (torch's reserved memory
    plus what the CUDA context holds outside it) and the GPU's total."""
    import torch

    from ..config import make_config
    from ..data.store import Dataset
    from ..trainer import Trainer

    torch.cuda.init()
    free0, total = torch.cuda.mem_get_info()
    peak = 0
    for values in configs:
        cfg = make_config(
            {
                **values,
                "device": "cuda",
                "epochs": 1,
                "warmup_epochs": 0,
                "freeze_epochs": 0,
                "train_items": 0,
                "val_items": 0,
                "gpu_memory_fraction": 0.0,
            }
        )
        rng = np.random.default_rng(0)
        n_train, n_val = cfg.batch_size * PROBE_STEPS, cfg.eval_batch_size * PROBE_EVAL_BATCHES
        imgs = {
            s: rng.integers(0, 256, (n, *data_shape), dtype=np.uint8) for s, n in (("train", n_train), ("val", n_val))
        }
        labels = {s: np.arange(len(v)) % num_classes for s, v in imgs.items()}
        data = Dataset(
            imgs,
            labels,
            {s: [str(i) for i in range(len(v))] for s, v in imgs.items()},
            [str(c) for c in range(num_classes)],
        )
        torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(cfg, data)
        trainer.fit()
        torch.cuda.synchronize()
        context = max(0, (total - torch.cuda.mem_get_info()[0]) - torch.cuda.memory_reserved())
        peak = max(peak, torch.cuda.max_memory_reserved() + context)
        del trainer, data
        torch.cuda.empty_cache()
    return {"peak_bytes": peak, "total_bytes": total, "free_bytes_at_start": free0}


def resolve_auto_gpu(spec: SearchSpec, data) -> tuple[SearchSpec, Packing | None]:
    """For `gpu: auto`: run the probe on a GPU of the cluster, and return a new spec with the
    per-trial GPU share and memory cap it measured (saved with the experiment), and the packing.
    A numeric `gpu`: the spec itself and None."""
    if spec.resources.gpu != "auto":
        return spec, None
    import ray

    if ray.cluster_resources().get("GPU", 0) < 1:
        raise UserError("resources.gpu: auto needs a GPU, and this Ray cluster has none")
    task = ray.remote(num_gpus=1, num_cpus=min(1.0, spec.resources.cpu))(_probe_task)
    shape = tuple(data.images["train"].shape[1:])
    result = ray.get(task.remote(probe_configs(spec), shape, len(data.class_names)))
    packing = pack(
        result["peak_bytes"], result["total_bytes"], spec.resources.gpu_margin, spec.resources.max_trials_per_gpu
    )
    packed = spec.model_copy(
        update={
            "resources": spec.resources.model_copy(update={"gpu": packing.gpu_fraction}),
            "fixed": {**spec.fixed, "gpu_memory_fraction": packing.memory_fraction},
        }
    )
    return packed, packing
