"""CUDA graphs for the trainer's fixed-shape steps. A training step (gather by index → augment →
forward → loss → backward → clip → optimiser step → metric sums) is captured once and then replayed:
one launch per step instead of hundreds of kernel launches and Python dispatches. The same for an
evaluation batch. Only the batch's indices are copied in per step; the lr lives in a device tensor
that the schedule writes after each step. Everything stays on the device: no host sync per step.

`GraphRunner` is what the trainer asks for its steps: it captures, replays, or runs them eagerly, and
says why graphs are off (`graph_blocker`: a configuration that cannot be captured, or a capture that
failed; the trainer then runs eagerly and says so once in the trial's log)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

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
        return (
            f"optimizer {cfg.optimizer} has no capturable implementation (graphs: {', '.join(CAPTURABLE_OPTIMIZERS)})"
        )
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


class GraphRunner:
    """The trainer's fixed-shape steps, each run eagerly or from its CUDA graph. Per key (a training
    step: frozen or not, batch size; an evaluation batch: its size): a few eager warmup calls on a
    side stream, then one capture, then replays. `blocker`: None while steps are captured and
    replayed, else why they run eagerly. A failed capture turns graphs off for the run, with its reason."""

    def __init__(self, cfg, device: torch.device, scaler_enabled: bool):
        self.device = device
        self.blocker = graph_blocker(cfg, device, scaler_enabled)
        self.optimizer: torch.optim.Optimizer  # set by attach()
        self.device_lr: DeviceLR | None = None
        self._graphs: dict = {}  # (phase, frozen, batch) → CapturedStep
        self._warm: dict = {}  # eager warmup steps taken per key before its capture

    @property
    def on(self) -> bool:
        return self.blocker is None

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimiser whose step is captured (its lrs get device tensors); says on CUDA whether graphs are on."""
        self.optimizer = optimizer
        self.device_lr = DeviceLR(optimizer, self.device) if self.on else None
        if self.device.type == "cuda":
            print(f"cuda graphs: {'on' if self.blocker is None else 'off (' + self.blocker + ')'}", flush=True)

    def sync_lr(self) -> None:
        """The schedule's current lrs into the captured step's device tensors (e.g. after a resume)."""
        if self.device_lr is not None:
            self.device_lr.sync()

    def train_step(self, frozen: bool, step: Callable, idx: torch.Tensor):
        return self._run(("train", frozen, len(idx)), step, idx)

    def eval_step(self, step: Callable, idx: torch.Tensor):
        return self._run(("eval", len(idx)), step, idx)

    def clear(self) -> None:
        """Drop the captured graphs (their memory): after an out-of-memory error."""
        self._graphs.clear()

    def _run(self, key: tuple, fn: Callable, idx: torch.Tensor):
        """`fn(idx)` eagerly, or from its CUDA graph."""
        if self.blocker is not None:
            return fn(idx)
        graph = self._graphs.get(key)
        if graph is not None:
            return graph(idx)
        with quiet_capturable():
            if self._warm.get(key, 0) < WARMUP_STEPS:
                self._warm[key] = self._warm.get(key, 0) + 1
                with side_stream(self.device):
                    return fn(idx)
            graph = CapturedStep(fn, len(idx), self.device)
            try:
                graph.capture(idx, context=self.device_lr.swapped_in)
            except Exception as exc:  # noqa: BLE001 - a model or op that cannot be captured: run eagerly instead
                self._capture_failed(exc)
                return fn(idx)
        self._graphs[key] = graph
        return graph(idx)

    def _capture_failed(self, exc: Exception) -> None:
        torch.cuda.synchronize(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        self.blocker = f"capture failed: {type(exc).__name__}: {first}"
        self._graphs.clear()
        print(f"cuda graphs: off ({self.blocker})", flush=True)
