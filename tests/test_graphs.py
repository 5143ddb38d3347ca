"""GraphRunner's orchestration without a GPU: the CUDA parts (the graph, the side stream, the device
sync) are replaced by stand-ins, so that what the runner decides (warm up, capture once per key,
replay, fall back to eager after a failed capture and say why) runs on the CPU. The real capture
is tests/test_gpu.py's."""

from __future__ import annotations

import contextlib
from typing import ClassVar

import pytest
import torch

from raydigits import graphs
from raydigits.config import make_config


class FakeGraph:
    """A CapturedStep stand-in: capture runs `fn` once (inside the lr context), a replay returns its output."""

    fail: ClassVar[Exception | None] = None
    made: ClassVar[list] = []
    opt: ClassVar[torch.optim.Optimizer]

    def __init__(self, fn, batch, device):
        self.fn, self.batch, self.replays = fn, batch, 0
        FakeGraph.made.append(self)

    def capture(self, index, context=contextlib.nullcontext):
        with context():
            if FakeGraph.fail is not None:
                raise FakeGraph.fail
            self.lr_during_capture = type(self.opt.param_groups[0]["lr"]).__name__
            self.out = self.fn(index)

    def __call__(self, index):
        self.replays += 1
        return ("replay", self.out)


@pytest.fixture
def runner(monkeypatch):
    FakeGraph.fail, FakeGraph.made = None, []
    monkeypatch.setattr(graphs, "CapturedStep", FakeGraph)
    monkeypatch.setattr(graphs, "side_stream", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(graphs.torch.cuda, "synchronize", lambda device=None: None)
    r = graphs.GraphRunner(make_config({}), torch.device("cpu"), False)
    assert r.blocker == "not on CUDA" and not r.on
    r.blocker = None  # as graph_blocker says on CUDA with the defaults
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    r.attach(opt)
    FakeGraph.opt = opt
    return r


def test_warmup_then_one_capture_per_key_then_replays(runner):
    calls = []

    def step(idx):
        calls.append(len(idx))
        return "eager"

    idx = torch.arange(4)
    out = [runner.train_step(False, step, idx) for _ in range(graphs.WARMUP_STEPS + 3)]
    assert out[: graphs.WARMUP_STEPS] == ["eager"] * graphs.WARMUP_STEPS
    assert out[graphs.WARMUP_STEPS :] == [("replay", "eager")] * 3
    assert len(FakeGraph.made) == 1 and FakeGraph.made[0].replays == 3
    assert len(calls) == graphs.WARMUP_STEPS + 1  # the warmups and the capture; replays call nothing
    assert FakeGraph.made[0].lr_during_capture == "Tensor"  # the device-side lr is swapped in for capture
    assert runner.optimizer.param_groups[0]["lr"] == 0.1  # and the float back after it
    runner.train_step(True, step, idx)  # another key (frozen), another batch size, the eval step:
    runner.train_step(False, step, torch.arange(3))  # each warms up on its own
    runner.eval_step(step, idx)
    assert len(FakeGraph.made) == 1 and runner.on


def test_a_failed_capture_turns_graphs_off_with_its_reason(runner, capsys):
    FakeGraph.fail = RuntimeError("operation not permitted when stream is capturing\nsecond line")
    idx = torch.arange(4)
    grads = runner.optimizer.param_groups[0]["params"][0]
    grads.grad = torch.ones(2)
    out = [runner.train_step(False, lambda i: "eager", idx) for _ in range(graphs.WARMUP_STEPS + 2)]
    assert out == ["eager"] * (graphs.WARMUP_STEPS + 2)  # the failed capture's step runs eagerly too
    assert runner.blocker == "capture failed: RuntimeError: operation not permitted when stream is capturing"
    assert not runner.on and grads.grad is None  # the half-captured step's gradients are dropped
    assert capsys.readouterr().out == f"cuda graphs: off ({runner.blocker})\n"


def test_the_lr_tensors_follow_the_schedule(runner):
    runner.optimizer.param_groups[0]["lr"] = 0.05
    runner.sync_lr()
    assert runner.device_lr.tensors[0].item() == pytest.approx(0.05)
