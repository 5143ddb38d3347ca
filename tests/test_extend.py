"""`launch.py extend`'s pieces without Ray: the extension's spec and seed, the request checks, and
TPE warm-started from finished trials (its suggestions move to where the finished trials scored
best). The whole command runs in tests/test_search_e2e.py."""

from __future__ import annotations

import numpy as np
import pytest

from raydigits.errors import UserError
from raydigits.search.extend import check_request, extension_spec
from raydigits.search.tune_space import build_search_alg
from raydigits.spec import parse_spec

SPACE = {
    "name": "t",
    "method": "tpe",
    "num_samples": 4,
    "seed": 3,
    "scheduler": {"type": "asha", "max_t": 3},
    "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        "optimizer": {"values": ["sgd", "adamw"]},
        "momentum": {"distribution": "uniform", "min": 0.8, "max": 0.99, "when": {"optimizer": "sgd"}},
    },
}


def test_extension_spec_has_its_own_seed_samples_and_budget():
    spec = parse_spec(SPACE, "t")
    one, two = extension_spec(spec, 1, 5, None), extension_spec(spec, 2, 5, 6)
    assert one.num_samples == 5 and one.epochs == 3 and two.epochs == 6
    assert len({spec.seed, one.seed, two.seed}) == 3
    assert one.parameters == spec.parameters and one.scheduler.grace_period == spec.scheduler.grace_period


GRID = {"method": "grid", "parameters": {"optimizer": {"values": ["sgd", "adamw"]}}}


@pytest.mark.parametrize(
    "change, words", [(GRID, "grid search"), ({}, "--num-samples 0"), ({}, "--max-t 2"), ({}, "--promote -1")]
)
def test_bad_extension_requests(change, words):
    spec = parse_spec({**SPACE, **change}, "t")
    n, max_t, promote = (
        (0 if "num-samples" in words else 1),
        (2 if "max-t" in words else None),
        (-1 if "promote" in words else 1),
    )
    with pytest.raises(UserError, match=words):
        check_request(spec, n, max_t, promote)


def _suggested_lrs(spec, warm, n=12):
    alg = build_search_alg(spec, warm=warm)
    alg.set_search_properties(spec.metric, spec.mode, {})
    return np.array([alg.suggest(f"t{i}")["lr"] for i in range(n)])


def test_tpe_starts_from_the_finished_trials():
    spec = parse_spec(SPACE, "t")
    rng = np.random.default_rng(0)
    warm = []
    for lr in np.exp(rng.uniform(np.log(1e-4), np.log(1e-1), 40)):  # finished trials: best near lr = 3e-2
        opt = "adamw"
        warm.append(({"lr": float(lr), "optimizer": opt}, float(1 - abs(np.log10(lr) - np.log10(3e-2)))))
    cold, hot = _suggested_lrs(spec, []), _suggested_lrs(spec, warm)
    dist = lambda lrs: np.median(np.abs(np.log10(lrs) - np.log10(3e-2)))  # noqa: E731
    assert dist(hot) < 0.5 < dist(cold), (dist(hot), dist(cold))


def test_pinned_configs_keep_their_conditional_values():
    """Random search re-runs a promoted config through points_to_evaluate (its unconditional values)
    and the conditional samplers, which give a trial with exactly those values the config's own."""
    from raydigits.search.tune_space import param_space

    spec = parse_spec({**SPACE, "method": "random"}, "t")
    best = {"lr": 0.0123, "optimizer": "sgd", "momentum": 0.8765}
    momentum = param_space(spec, pinned=(best,))["momentum"].func
    assert momentum({"config": {"lr": 0.0123, "optimizer": "sgd"}}) == 0.8765
    other = momentum({"config": {"lr": 0.0124, "optimizer": "sgd"}})
    assert other != 0.8765 and 0.8 <= other <= 0.99
    assert momentum({"config": {"lr": 0.0123, "optimizer": "adamw"}}) is None  # condition does not hold
    assert param_space(spec)["momentum"].func({"config": {"lr": 0.0123, "optimizer": "sgd"}}) != 0.8765


def test_extension_seeds_stay_in_range_and_edge_requests_pass():
    top = parse_spec({**SPACE, "seed": 2**32 - 1}, "t")
    assert 0 <= extension_spec(top, 1, 2, None).seed < 2**32  # parse_spec would refuse otherwise
    spec = parse_spec(SPACE, "t")
    check_request(spec, 1, spec.epochs, 0)  # the same epochs, and promoting none, are allowed


def _trial(tid, outcome, config, vals, **last):
    """A finished trial of the experiment as `Experiment.trials` holds it: its reports epoch by epoch,
    the last one carrying `last` (e.g. diverged, oom)."""
    from raydigits.experiment import Trial
    from raydigits.storage import as_location

    rows = [{"epoch": e, "val_acc": v} for e, v in enumerate(vals, 1)]
    if rows:
        rows[-1].update(last)
    status = "ERROR" if outcome == "error" else "TERMINATED"
    return Trial("search", tid, status, outcome, len(rows), config, tuple(rows), as_location(f"/nowhere/{tid}"))


def test_extend_warm_starts_tpe_from_failed_trials_too():
    """The original TPE was told of a diverged or out-of-memory trial's val_acc 0.0 and of an errored
    trial as a failure; extend's warm start must carry them too. Finished trials score best near
    lr = 1e-2 (the top of what they tried); every trial above it diverged or ran out of memory. Told of
    those, TPE keeps its suggestions below 1e-2; without them it follows the trend up past it."""
    from raydigits.search.extend import warm_start

    spec = parse_spec(SPACE, "t")
    rng = np.random.default_rng(1)
    trials = []
    for i, lr in enumerate(np.exp(rng.uniform(np.log(1e-4), np.log(1e-2), 20))):
        trials.append(
            _trial(f"f{i}", "asha_stopped", {"lr": float(lr), "optimizer": "adamw"}, [0.5, 1 + np.log10(lr) / 4])
        )
    for i, lr in enumerate(np.exp(rng.uniform(np.log(1.2e-2), np.log(1e-1), 20))):
        kind = ("diverged", {"diverged": True}) if i % 2 else ("oom", {"oom": True})
        trials.append(_trial(f"x{i}", kind[0], {"lr": float(lr), "optimizer": "adamw"}, [0.6, 0.0], **kind[1]))
    trials.append(_trial("e0", "error", {"lr": 0.05, "optimizer": "sgd", "momentum": 0.9}, [0.7]))
    warm = warm_start(tuple(trials), spec)
    assert len(warm) == 41 and ({"lr": 0.05, "optimizer": "sgd", "momentum": 0.9}, None) in warm
    assert sorted(v for _, v in warm if v is not None)[:20] == [0.0] * 20  # what TPE was told, not their 0.6
    usable = [w for w in warm if w[1]]
    above = lambda lrs: float(np.mean(lrs > 1.1e-2))  # noqa: E731
    told, blind = _suggested_lrs(spec, warm, 16), _suggested_lrs(spec, usable, 16)
    assert above(told) < 0.2 < above(blind), (above(told), above(blind))
