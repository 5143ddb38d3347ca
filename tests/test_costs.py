"""costs.py: a model's parameters, size, FLOPs and batch-1 latency, against hand-computed values on a
tiny network, without disturbing the model or the random generators, cached per key."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from raydigits import costs


def _tiny() -> nn.Module:
    # conv 3→4, 3×3, padding 1, no bias: 108 weights; linear 4→10 with bias: 50
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4, 10),
    )


def test_counts_agree_with_hand_computation(tmp_path):
    model = _tiny()
    c = costs.measure(model, 8, torch.device("cpu"), calls=3, warmup=1)
    assert c.params == 108 + 8 + 50  # conv, BatchNorm's weight and bias, linear
    # conv: 2 FLOPs per multiply-add, (4 × 8 × 8) outputs × (3 × 3 × 3) inputs each; linear: 2 × 4 × 10
    assert c.mflops * 1e6 == pytest.approx(2 * 4 * 64 * 27 + 2 * 4 * 10, rel=1e-12)  # an exact count
    torch.save(model.state_dict(), tmp_path / "archive")  # the name torch.save gives an in-memory file
    assert c.size_mb * 2**20 == (tmp_path / "archive").stat().st_size
    assert c.latency_ms > 0 and c.latency_iqr_ms >= 0
    assert (c.threads, c.device) == (torch.get_num_threads(), "cpu")
    assert set(c.metrics()) == {"params", "size_mb", "mflops", "latency_ms"}


def test_flops_scale_with_the_image_and_follow_the_architecture():
    small = costs.measure(_tiny(), 8, torch.device("cpu"), calls=1, warmup=0)
    big = costs.measure(_tiny(), 16, torch.device("cpu"), calls=1, warmup=0)
    assert (big.mflops * 1e6 - 80) == pytest.approx(4 * (small.mflops * 1e6 - 80))  # conv ∝ pixels


def test_measuring_leaves_the_model_and_the_generators_as_they_were():
    torch.manual_seed(0)
    model = _tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    costs.measure(model, 8, torch.device("cpu"), calls=2, warmup=1)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)  # a trial's seeded run is unchanged by the measure
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm's statistics included
    model.eval()
    costs.measure(model, 8, torch.device("cpu"), calls=1, warmup=0)
    assert not model.training


def test_the_cache_measures_a_key_once_and_survives_a_damaged_file(tmp_path):
    path = tmp_path / "costs.json"
    calls = []

    def measure_now():
        calls.append(1)
        return costs.measure(_tiny(), 8, torch.device("cpu"), calls=1, warmup=0)

    first, hit = costs.cached("k", measure_now, path)
    assert not hit and len(calls) == 1
    again, hit = costs.cached("k", measure_now, path)
    assert hit and again == first and len(calls) == 1
    other, hit = costs.cached("k2", measure_now, path)
    assert not hit and len(calls) == 2 and set(json.loads(path.read_text())) == {"k", "k2"}
    path.write_text("{not json")
    _, hit = costs.cached("k", measure_now, path)
    assert not hit and len(calls) == 3 and set(json.loads(path.read_text())) == {"k"}
    path.write_text("[1, 2]")  # JSON, but not a table of entries
    _, hit = costs.cached("k", measure_now, path)
    assert not hit and len(calls) == 4 and set(json.loads(path.read_text())) == {"k"}


def test_the_cache_file_is_the_one_the_environment_names(tmp_path, monkeypatch):
    """$RAYDIGITS_COSTS_CACHE moves the cache (the suite keeps its own, so latencies measured while
    the tests load the machine never reach a user's searches); unset, it is the user's cache."""
    from raydigits import env

    named = tmp_path / "elsewhere" / "c.json"
    monkeypatch.setenv(env.COSTS_CACHE_ENV, str(named))
    costs.cached("k", lambda: costs.measure(_tiny(), 8, torch.device("cpu"), calls=1, warmup=0))
    assert set(json.loads(named.read_text())) == {"k"}
    monkeypatch.delenv(env.COSTS_CACHE_ENV)
    assert env.costs_cache() == Path("~/.cache/raydigits/costs.json").expanduser()


def test_concurrent_trials_measure_an_architecture_once(tmp_path):
    path, calls, out = tmp_path / "costs.json", [], []

    def measure_now():
        calls.append(1)
        return costs.measure(_tiny(), 8, torch.device("cpu"), calls=20, warmup=0)

    threads = [threading.Thread(target=lambda: out.append(costs.cached("k", measure_now, path))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({c for c, _ in out}) == 1 and sum(hit for _, hit in out) == 3


def test_the_key_names_everything_the_costs_depend_on():
    cpu = torch.device("cpu")
    base = costs.cache_key("mobilenet_v3_small", 10, 32, True, cpu)
    assert costs.cache_key("mobilenet_v3_small", 10, 32, True, cpu) == base
    others = {
        costs.cache_key("mobilenet_v3_large", 10, 32, True, cpu),
        costs.cache_key("mobilenet_v3_small", 2, 32, True, cpu),
        costs.cache_key("mobilenet_v3_small", 10, 64, True, cpu),
        costs.cache_key("mobilenet_v3_small", 10, 32, False, cpu),
    }
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        others.add(costs.cache_key("mobilenet_v3_small", 10, 32, True, cpu))
    finally:
        torch.set_num_threads(threads)
    assert base not in others and len(others) == 5


def test_the_key_names_the_machine_and_the_gpu_it_was_measured_on(monkeypatch):
    """Latency is a machine's: two hosts sharing a home directory, or two GPU models in one host, keep
    apart entries, and a GPU's key is not its host's CPU key."""
    cpu = torch.device("cpu")

    def key(device):
        return costs.cache_key("mobilenet_v3_small", 10, 32, True, device)

    monkeypatch.setattr(costs.socket, "gethostname", lambda: "node-1")
    on_node_1 = key(cpu)
    monkeypatch.setattr(costs.socket, "gethostname", lambda: "node-2")
    assert key(cpu) != on_node_1

    names = {0: "Tesla T4", 1: "NVIDIA A100"}  # a host with two GPU models (no real GPU needed)

    def device_name(device=None):
        return names[0 if device is None else (torch.device(device).index or 0)]

    monkeypatch.setattr(torch.cuda, "get_device_name", device_name)
    first, second = key(torch.device("cuda", 0)), key(torch.device("cuda", 1))
    assert "Tesla T4" in first and "NVIDIA A100" in second and "NVIDIA A100" not in first
    assert key(cpu) not in (first, second) and "node-2" not in first


def test_the_cache_works_in_a_home_without_its_folders_and_writes_nothing_elsewhere(tmp_path, monkeypatch):
    """A fresh machine has no ~/.cache yet: the cache makes the folders and still caches; and it
    leaves nothing in the working directory (the lock lives beside the cache)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    path, calls = tmp_path / "home" / ".cache" / "raydigits" / "costs.json", []

    def measure_now():
        calls.append(1)
        return costs.measure(_tiny(), 8, torch.device("cpu"), calls=1, warmup=0)

    assert costs.cached("k", measure_now, path)[1] is False
    assert costs.cached("k", measure_now, path)[1] is True and len(calls) == 1
    assert set(json.loads(path.read_text())) == {"k"} and list(cwd.iterdir()) == []


@pytest.mark.parametrize("calls, warmup", [(0, 5), (30, -1)])
def test_a_measure_needs_a_timed_call_and_no_negative_warmup(calls, warmup):
    with pytest.raises(ValueError, match=f"got {calls} and {warmup}"):
        costs.measure(_tiny(), 8, torch.device("cpu"), calls=calls, warmup=warmup)


@pytest.mark.parametrize("channels_last", [True, False])
def test_the_model_is_timed_as_the_trial_runs_it(channels_last):
    """On input in the model's own memory format, under the trial's autocast (what the latency is of)."""
    model = _tiny()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    seen = []
    model.register_forward_pre_hook(
        lambda m, args: seen.append(
            (args[0].is_contiguous(memory_format=torch.channels_last), torch.is_autocast_enabled("cpu"))
        )
    )
    costs.measure(
        model, 8, torch.device("cpu"), lambda: torch.autocast("cpu", dtype=torch.bfloat16), calls=2, warmup=1, rounds=1
    )
    assert seen == [(channels_last, True)] * 4  # the FLOP count, one warm-up, two timed


def test_latency_is_the_median_and_its_spread_the_interquartile_range_in_ms(monkeypatch):
    """With a stand-in clock (nothing is timed): each timed call takes the next of these milliseconds."""
    durations = iter([1.5, 3.25, 2.0, 10.0, 4.0, 1.0, 3.0])
    ticks = []

    def clock():
        if not ticks:  # a call starts at 100 s, ends its duration later
            ticks.extend([100.0, 100.0 + next(durations) / 1e3])
        return ticks.pop(0)

    monkeypatch.setattr(costs.time, "perf_counter", clock)
    c = costs.measure(_tiny(), 8, torch.device("cpu"), calls=5, warmup=1, rounds=1)
    # sorted 1.5, 2, 3.25, 4, 10: median 3.25; quartiles (statistics.quantiles) 1.75 and 7.0
    assert (c.latency_ms, c.latency_iqr_ms) == (3.25, 5.25)
    two = costs.measure(_tiny(), 8, torch.device("cpu"), calls=2, warmup=0, rounds=1)  # 1 and 3 ms
    assert (two.latency_ms, two.latency_iqr_ms) == (2.0, 3.0)


def test_a_model_without_convolutions_is_measured():
    c = costs.measure(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)), 8, torch.device("cpu"), calls=1, warmup=0)
    assert c.params == 192 * 10 + 10 and c.mflops * 1e6 == pytest.approx(2 * 192 * 10, rel=1e-12)


def test_what_a_result_carries_is_what_a_search_may_optimise():
    """The spec's cost metrics (objectives, constraints) are exactly the keys every result carries."""
    from raydigits.spec import COST_METRICS

    c = costs.Costs(params=1, size_mb=0.1, mflops=2.0, latency_ms=0.5, latency_iqr_ms=0.1, threads=1, device="cpu")
    assert tuple(c.metrics()) == COST_METRICS


class _Preempted(nn.Module):
    """Answers in ~1 ms, but every other call of its first `disturbed` calls takes 40 ms more, as a
    call preempted by another process does on a shared core; `extra(call)` instead, when given."""

    def __init__(self, disturbed: int = 0, extra=None):
        super().__init__()
        self.calls, self.disturbed = 0, disturbed
        self.extra = extra or (lambda n: 0.04 if n <= self.disturbed and n % 2 else 0.0)

    def forward(self, x):
        self.calls += 1
        time.sleep(0.001 + self.extra(self.calls))
        return x.mean()


def test_a_disturbed_latency_round_is_measured_again_and_the_quiet_one_kept():
    # warm-up 0, the FLOP count's call is the first: calls 2-21 are round one (half of them 41 ms)
    model = _Preempted(disturbed=21)
    got = costs.measure(model, 8, torch.device("cpu"), calls=20, warmup=0, rounds=3)
    assert got.latency_ms < 10 and got.latency_iqr_ms < 5, got  # round two: quiet, ~1 ms
    assert model.calls == 41  # and no third round after a quiet one
    one = costs.measure(_Preempted(disturbed=21), 8, torch.device("cpu"), calls=20, warmup=0, rounds=1)
    assert one.latency_iqr_ms > 20, one  # one round: the disturbed one, and its IQR says so
    # no round is quiet (every other call slowed: by 40, 12 and 40 ms): the smallest median is kept
    slowed = {0: 0.04, 1: 0.012, 2: 0.04}
    noisy = _Preempted(extra=lambda n: slowed[(n - 2) // 10] if n >= 2 and n % 2 else 0.0)
    got = costs.measure(noisy, 8, torch.device("cpu"), calls=10, warmup=0, rounds=3)
    assert 4 < got.latency_ms < 14 and noisy.calls == 31, got  # round two's (~7 ms; the others ~21)
    with pytest.raises(ValueError, match=r"rounds must be ≥ 1 .*\(rounds 0\)"):
        costs.measure(_tiny(), 8, torch.device("cpu"), rounds=0)
