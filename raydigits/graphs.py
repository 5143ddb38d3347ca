"""CUDA graphs for the trainer's fixed-shape steps. A training step (gather by index → augment →
forward → loss → backward → clip → optimiser step → metric sums) is captured once and then replayed:
one launch per step instead of hundreds of kernel launches and Python dispatches. The same for an
evaluation batch. Only the batch's indices are copied in per step; the lr lives in a device tensor
that the schedule writes after each step. Everything stays on the device: no host sync per step.

`graph_blocker` says why a configuration cannot be captured (the trainer then runs eagerly and says
so once in the trial's log)."""
from __future__ import annotations

import contextlib
import warnings

import torch

from .optim import CAPTURABLE_OPTIMIZERS  # torch's fused kernels take a device-tensor lr (optim's table)

WARMUP_STEPS = 3  # eager steps on a side stream before capture (lazy inits: cuBLAS/cuDNN, optimiser state)


def graph_blocker(cfg, device: torch.device, scaler_enabled: bool) -> str | None:
    """None when the train/eval steps can be captured, else the reason they cannot."""
    if not cfg.cuda_graphs:
        return "cuda_graphs: false"
    if device.type != "cuda":
        return "not on CUDA"
    if scaler_enabled:
        return "fp16's GradScaler checks for inf on the host every step (use amp: bf16)"
    if cfg.optimizer not in CAPTURABLE_OPTIMIZERS:
        return f"optimizer {cfg.optimizer} has no capturable implementation (graphs: {', '.join(CAPTURABLE_OPTIMIZERS)})"
    if cfg.scheduler == "onecycle" and cfg.cycle_momentum:
        return "cycle_momentum changes momentum/betas every step, which a graph would freeze"
    return None


@contextlib.contextmanager
def quiet_capturable():
    """Adam(capturable=True) warns when stepped outside a graph: our warmup steps do that on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*capturable=True.*")
        yield


class DeviceLR:
    """The optimiser's lrs as device tensors for the captured step; the schedule keeps working on
    floats, and `sync()` copies them over (a fill kernel each, no host sync)."""

    def __init__(self, opt: torch.optim.Optimizer, device: torch.device):
        self.opt = opt
        self.tensors = [torch.tensor(float(g["lr"]), device=device) for g in opt.param_groups]

    @contextlib.contextmanager
    def swapped_in(self):
        floats = [g["lr"] for g in self.opt.param_groups]
        for g, t in zip(self.opt.param_groups, self.tensors):
            g["lr"] = t
        try:
            yield
        finally:
            for g, f in zip(self.opt.param_groups, floats):
                g["lr"] = f

    def sync(self) -> None:
        for g, t in zip(self.opt.param_groups, self.tensors):
            t.fill_(float(g["lr"]))


class CapturedStep:
    """A graph of `fn(index_tensor)` over a static index buffer of `batch` items."""

    def __init__(self, fn, batch: int, device: torch.device):
        self.fn, self.device = fn, device
        self.index = torch.zeros(batch, dtype=torch.long, device=device)
        self.graph = torch.cuda.CUDAGraph()
        self.out = None

    def capture(self, index: torch.Tensor, context=contextlib.nullcontext) -> None:
        self.index.copy_(index)
        torch.cuda.synchronize(self.device)
        # thread_local: Tune runs the trial in a thread; other threads may touch CUDA meanwhile
        with context(), torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.out = self.fn(self.index)

    def __call__(self, index: torch.Tensor):
        self.index.copy_(index)
        self.graph.replay()
        return self.out


@contextlib.contextmanager
def side_stream(device: torch.device):
    """Run an eager warmup step on a side stream, as torch's capture recipe asks: the side stream
    waits for the work queued so far, and the current stream waits for the step."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream(device).wait_stream(side)
