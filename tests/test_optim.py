"""Registries: every optimiser, scheduler and loss by name; warmup lr values; float step gamma;
focal loss; unknown names list the valid ones."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raydigits import optim
from raydigits.config import make_config
from raydigits.errors import UserError


def _toy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    return model, x, y


@pytest.mark.parametrize("name", optim.list_optimizers())
def test_every_optimizer_reduces_loss(name):
    model, x, y = _toy()
    cfg = make_config({"optimizer": name, "lr": 1e-2, "weight_decay": 1e-4})
    opt = optim.build_optimizer(model, cfg)
    loss_fn = nn.CrossEntropyLoss()
    first = loss_fn(model(x), y).item()
    for _ in range(100):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    assert loss_fn(model(x), y).item() < first * 0.9
    # no decay on biases and norm weights
    assert opt.param_groups[1]["weight_decay"] == 0.0 and all(p.ndim == 1 for p in opt.param_groups[1]["params"])


def _lrs(cfg, spe=10, epochs=None, metric=lambda e: 0.5):
    model, _, _ = _toy()
    opt = optim.build_optimizer(model, cfg)
    sched = optim.build_scheduler(opt, cfg, spe)
    lrs = []
    for e in range(epochs or cfg.epochs):
        for _ in range(spe):
            lrs.append(optim.current_lr(opt))
            opt.step()
            sched.step_batch()
        sched.step_epoch(metric(e))
    return lrs, opt, sched


@pytest.mark.parametrize("name", optim.list_schedulers())
@pytest.mark.parametrize("warmup", [0.0, 1.0])
def test_every_scheduler_runs_with_and_without_warmup(name, warmup):
    cfg = make_config(
        {
            "scheduler": name,
            "epochs": 6,
            "lr": 0.1,
            "warmup_epochs": warmup,
            "milestones": [2, 4],
            "step_size": 2,
            "gamma": 0.5,
            "restart_epochs": 2,
        }
    )
    lrs, _opt, sched = _lrs(cfg)
    assert all(math.isfinite(v) and v > 0 for v in lrs), lrs
    assert lrs[0] > 0 and max(lrs) <= 0.1 * (1 + 1e-6) + 1e-9 or name == "onecycle"
    if warmup:
        assert lrs[0] == pytest.approx(lrs[10] * cfg.warmup_start_factor, rel=1e-6) or name == "onecycle"
    # state round trip: a fresh schedule resumed from the state continues identically
    state = sched.state_dict()
    _lrs2, _, sched2 = _lrs(cfg, epochs=0)
    sched2.load_state_dict(state)
    assert sched2.steps == sched.steps


def test_onecycle_peaks_at_pct_start_and_spans_the_steps_after_warmup():
    """OneCycle rises from lr/25 to lr at `onecycle_pct_start` of the steps that follow the warmup, then
    anneals to lr/25e4 at the run's last step, in every parameter group; one step past the run is
    refused (the cycle is exactly as long as the run)."""
    for pct, warmup in ((0.3, 0.0), (0.5, 1.0)):
        cfg = make_config(
            {"scheduler": "onecycle", "lr": 0.1, "epochs": 6, "onecycle_pct_start": pct, "warmup_epochs": warmup}
        )
        lrs, opt, sched = _lrs(cfg)  # 10 steps an epoch
        main = lrs[round(warmup * 10) :]
        assert max(main) == pytest.approx(0.1) and main.index(max(main)) == round(pct * len(main)) - 1
        assert main[0] == pytest.approx(0.1 / 25) and main[-1] == pytest.approx(0.1 / 25 / 1e4)
        assert len({g["lr"] for g in opt.param_groups}) == 1
        with pytest.raises(ValueError, match="Tried to step"):
            sched.step_batch()


def test_rung_cosine_anneals_at_every_milestone_and_restarts_on_the_whole_runs_cosine():
    """Budget-aware rungs: with milestones 1, 2, 4 of 8 epochs (10 steps each) the lr falls to the
    floor within every segment, the last step before each milestone is within 3 % of lr of it, and a
    segment starts at a plain cosine's value over the whole run there (1, cos-envelope at 1/8, 2/8,
    4/8); warmup epochs count as epochs of the run (a milestone is an epoch of the run, as a rung is)."""
    cfg = make_config({"scheduler": "rung_cosine", "lr": 1.0, "epochs": 8, "milestones": [1, 2, 4]})
    lrs, _, _ = _lrs(cfg)
    env = [0.5 * (1 + math.cos(math.pi * e / 8)) for e in (0, 1, 2, 4)]
    assert [lrs[s] for s in (0, 10, 20, 40)] == pytest.approx(env)
    for a, b in ((0, 10), (10, 20), (20, 40), (40, 80)):
        seg = lrs[a:b]
        assert all(x > y for x, y in zip(seg, seg[1:], strict=False)), (a, seg)
        assert seg[-1] < 0.03 * seg[0]
    assert lrs[-1] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    floor = make_config({"scheduler": "rung_cosine", "lr": 1.0, "epochs": 8, "milestones": [1, 2, 4], "min_lr": 0.1})
    lrs, _, _ = _lrs(floor)
    assert min(lrs) >= 0.1 - 1e-9 and lrs[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(0.9 * math.pi)))
    warm = make_config({"scheduler": "rung_cosine", "lr": 1.0, "epochs": 6, "milestones": [2, 4], "warmup_epochs": 1})
    lrs, _, _ = _lrs(warm)  # warmup over epoch 1, then segments end at epochs 2, 4 and 6 of the run
    assert lrs[19] < 0.03 and lrs[39] < 0.1 and lrs[20] > 0.5 and lrs[40] > 0.2 and lrs[59] < 0.01


def test_rung_cosine_cuts_floor_and_the_runs_end_step_by_step():
    """rung_cosine at one step an epoch and at ten: a milestone at step 1 is a cut of its own; the
    floor is min_lr relative to lr (lr 0.5, min_lr 0.05); a segment whose whole-run cosine has fallen
    below min_lr starts and stays at min_lr, never below; after the run's last step the lr is min_lr
    and steps past the run hold it there; a run of one step with a milestone at its end, and a run
    whose warmup takes every step, build and run."""
    env = lambda e, n: 0.5 * (1 + math.cos(math.pi * e / n))  # a plain cosine over the whole run
    cfg = make_config({"scheduler": "rung_cosine", "lr": 1.0, "epochs": 4, "milestones": [1, 2]})
    lrs, opt, sched = _lrs(cfg, spe=1)
    assert lrs == pytest.approx([1.0, env(1, 4), env(2, 4), env(2, 4) * 0.5])
    for _ in range(3):  # the run's end and past it: the lr stays at min_lr
        assert optim.current_lr(opt) == pytest.approx(0.0, abs=1e-12)
        opt.step()
        sched.step_batch()
    cfg = make_config({"scheduler": "rung_cosine", "lr": 0.5, "min_lr": 0.05, "epochs": 8, "milestones": [2, 7]})
    lrs, opt, _ = _lrs(cfg, spe=10)
    floor = 0.1  # min_lr / lr
    seg = lambda s, a, b, peak: floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * (s - a) / (b - a)))
    assert lrs[:20] == pytest.approx([0.5 * seg(s, 0, 20, 1.0) for s in range(20)])
    assert lrs[20:70] == pytest.approx([0.5 * seg(s, 20, 70, env(2, 8)) for s in range(20, 70)])
    assert lrs[70:] == pytest.approx([0.05] * 10)  # the whole-run cosine is at 0.038 < 0.1 after epoch 7
    assert optim.current_lr(opt) == pytest.approx(0.05)
    one = make_config({"scheduler": "rung_cosine", "lr": 1.0, "min_lr": 0.1, "epochs": 1, "milestones": [1]})
    lrs, opt, _ = _lrs(one, spe=1)
    assert lrs == [1.0] and optim.current_lr(opt) == pytest.approx(0.1)
    warm = make_config({"scheduler": "rung_cosine", "lr": 1.0, "epochs": 1, "warmup_epochs": 0.9, "milestones": [0.5]})
    lrs, opt, _ = _lrs(warm, spe=1)  # the warmup's one step is the whole run: no step is left to anneal
    assert lrs == pytest.approx([0.1]) and optim.current_lr(opt) == pytest.approx(1.0)


def test_warmup_lrs_are_what_they_claim():
    cfg = make_config({"scheduler": "none", "lr": 0.1, "epochs": 3, "warmup_epochs": 1, "warmup_start_factor": 0.2})
    lrs, _, _ = _lrs(cfg, spe=4)
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])  # never 0; full lr after warmup
    assert lrs[5:] == pytest.approx([0.1] * 7)


def test_warmup_then_cosine_and_plateau():
    cfg = make_config({"scheduler": "cosine", "lr": 0.1, "epochs": 3, "warmup_epochs": 1})
    lrs, _, _ = _lrs(cfg, spe=4)
    assert lrs[0] == pytest.approx(0.01) and lrs[4] == pytest.approx(0.1)  # cosine starts at full lr
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # noqa: RUF007
    cfg = make_config(
        {
            "scheduler": "plateau",
            "lr": 0.1,
            "epochs": 5,
            "warmup_epochs": 1,
            "plateau_patience": 0,
            "plateau_factor": 0.5,
        }
    )
    lrs, _, _ = _lrs(cfg, spe=2)  # the metric never improves → halves every epoch after the first
    assert lrs[0] == pytest.approx(0.01) and lrs[2] == pytest.approx(0.1)
    assert lrs[4] == pytest.approx(0.05) and lrs[6] == pytest.approx(0.025)


def test_step_gamma_is_a_float_and_multistep_is_its_own():
    cfg = make_config({"scheduler": "step", "lr": 1.0, "epochs": 8, "step_size": 4, "gamma": 0.8})
    lrs, _, _ = _lrs(cfg, spe=1)
    assert lrs == pytest.approx([1.0] * 4 + [0.8] * 4)
    cfg = make_config({"scheduler": "multistep", "lr": 1.0, "epochs": 8, "milestones": [3, 6], "gamma": 0.1})
    lrs, _, _ = _lrs(cfg, spe=1)
    assert lrs == pytest.approx([1.0] * 3 + [0.1] * 3 + [0.01] * 2)


@pytest.mark.parametrize("name", optim.list_losses())
def test_every_loss(name):
    cfg = make_config({"loss": name, "label_smoothing": 0.1, "class_weights": [1.0, 2.0, 0.5]})
    loss_fn = optim.build_loss(cfg, 3)
    logits = torch.randn(32, 3, requires_grad=True)
    y = torch.randint(0, 3, (32,))
    loss = loss_fn(logits, y)
    loss.backward()
    assert math.isfinite(loss.item()) and logits.grad.abs().sum() > 0


def test_focal_loss_matches_ce_at_gamma_zero_and_down_weights_easy_examples():
    torch.manual_seed(0)
    logits, y = torch.randn(64, 10) * 3, torch.randint(0, 10, (64,))
    w = torch.rand(10) + 0.5
    for weight in (None, w):
        for ls in (0.0, 0.1):
            ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=ls)(logits, y)
            fl = optim.FocalLoss(0.0, weight, ls)(logits, y)
            assert fl.item() == pytest.approx(ce.item(), rel=1e-5)
    assert optim.FocalLoss(2.0)(logits, y) < nn.CrossEntropyLoss()(logits, y)
    few = y % 3  # a batch without the last classes still scores all 10 logits
    assert optim.FocalLoss(0.0)(logits, few).item() == pytest.approx(
        nn.CrossEntropyLoss()(logits, few).item(), rel=1e-5
    )


def test_class_weights_change_the_loss_and_must_match_classes():
    logits, y = torch.randn(16, 3), torch.zeros(16, dtype=torch.long)
    a = optim.build_loss(make_config({}), 3)(logits, y)
    b = optim.build_loss(make_config({"class_weights": [1.0, 5.0, 5.0]}), 3)(logits, torch.ones(16, dtype=torch.long))
    assert a.item() != b.item()
    with pytest.raises(UserError, match="class_weights"):
        optim.build_loss(make_config({"class_weights": [1.0, 2.0]}), 3)


@pytest.mark.parametrize(
    "key,value,valid",
    [
        ("optimizer", "adamx", "adabelief, adam, adamw, ranger, sgd"),
        ("scheduler", "sgdr", "cosine"),
        ("loss", "hinge", "ce, focal"),
        ("model", "mobilenetv3", "mobilenet_v3_small"),
    ],
)
def test_unknown_names_list_the_valid_ones(key, value, valid):
    with pytest.raises(UserError) as err:
        make_config({key: value})
    assert key in str(err.value) and repr(value) in str(err.value) and valid in str(err.value)


def test_unknown_and_bad_config_keys_are_named():
    with pytest.raises(UserError, match="learning_rate: unknown key"):
        make_config({"learning_rate": 0.1})
    with pytest.raises(UserError, match="lr: Input should be greater than 0"):
        make_config({"lr": -1})
    with pytest.raises(UserError, match="warmup_epochs"):
        make_config({"epochs": 2, "warmup_epochs": 2})


@pytest.mark.parametrize("name", optim.list_optimizers())
def test_each_optimizer_takes_the_configured_hyperparameters(name):
    """Each builder hands its optimiser the configured lr, weight decay (none on norms and biases),
    betas (adam family) or momentum and nesterov (sgd); torch's fused kernel where there is one; the
    capturable step exactly when the trainer asks for it."""
    model, _, _ = _toy()
    cfg = make_config(
        {
            "optimizer": name,
            "lr": 0.037,
            "weight_decay": 0.0123,
            "momentum": 0.77,
            "nesterov": True,
            "betas": (0.81, 0.977),
        }
    )
    for capturable in (False, True):
        opt = optim.build_optimizer(model, cfg, capturable=capturable)
        assert type(opt).__name__.lower() == name  # SGD, Adam, AdamW, AdaBelief, Ranger
        decay, no_decay = opt.param_groups
        assert [p.ndim for p in decay["params"]] == [2, 2] and [p.ndim for p in no_decay["params"]] == [1] * 4
        assert decay["weight_decay"] == 0.0123 and no_decay["weight_decay"] == 0.0
        for g in opt.param_groups:
            assert g["lr"] == 0.037
            if name == "sgd":
                assert (g["momentum"], g["nesterov"]) == (0.77, True)
            else:
                assert tuple(g["betas"]) == (0.81, 0.977)
            assert g.get("fused") is (True if name in optim.FUSED_OPTIMIZERS else None)
            if name in ("adam", "adamw"):
                assert g["capturable"] is capturable
            if name in ("adabelief", "ranger"):
                assert g["weight_decouple"] is True  # AdamW-style decay
    if name == "sgd":  # nesterov only when asked, and dropped (not refused) without momentum
        for momentum, nesterov in ((0.9, False), (0.0, True)):
            cfg = make_config({"optimizer": "sgd", "momentum": momentum, "nesterov": nesterov})
            assert optim.build_optimizer(model, cfg).param_groups[0]["nesterov"] is False


@pytest.mark.parametrize("name", optim.list_optimizers())
def test_the_optimizer_table_says_what_each_builds(name):
    """OptimInfo's capabilities match the optimiser built: momentum or betas in its param groups, torch's
    fused kernel, and the capturable ones are those graphs.py replays."""
    from raydigits import graphs

    info = optim.optimizer_info(name)
    group = optim.build_optimizer(_toy()[0], make_config({"optimizer": name})).param_groups[0]
    assert info.name == name and ("momentum" in group) == info.has_momentum and ("betas" in group) == info.has_betas
    assert (group.get("fused") is True) == info.fused
    assert (name in graphs.CAPTURABLE_OPTIMIZERS) == info.capturable


def _cosine_at(t, lr, floor, period):
    return floor + (lr - floor) * (1 + math.cos(math.pi * t / period)) / 2


def test_step_multistep_and_restarts_count_epochs_in_steps():
    """step_size, milestones and restart_epochs are epochs (fractions too), turned into optimiser
    steps at `steps_per_epoch`; never less than one step."""
    step = lambda **kw: _lrs(make_config({"scheduler": "step", "lr": 1.0, "gamma": 0.5, **kw}), spe=4)[0]
    assert step(epochs=4, step_size=1.5) == pytest.approx([1.0] * 6 + [0.5] * 6 + [0.25] * 4)
    assert step(epochs=1, step_size=0.25) == pytest.approx([1.0, 0.5, 0.25, 0.125])
    assert step(epochs=1, step_size=0.1) == pytest.approx([1.0, 0.5, 0.25, 0.125])  # 0.4 steps → 1
    cfg = make_config({"scheduler": "multistep", "lr": 1.0, "gamma": 0.5, "epochs": 2, "milestones": [0.25, 1.25]})
    assert _lrs(cfg, spe=4)[0] == pytest.approx([1.0] + [0.5] * 4 + [0.25] * 3)
    # cosine_restarts: first cycle restart_epochs long (here 1 step), each next restart_mult times longer,
    # annealing to min_lr
    cfg = make_config(
        {
            "scheduler": "cosine_restarts",
            "lr": 1.0,
            "min_lr": 0.01,
            "epochs": 4,
            "restart_epochs": 0.25,
            "restart_mult": 2,
        }
    )
    expect, t, period = [], 0, 1
    for _ in range(16):
        expect.append(_cosine_at(t, 1.0, 0.01, period))
        t += 1
        if t == period:
            t, period = 0, period * 2
    lrs = _lrs(cfg, spe=4)[0]
    assert lrs == pytest.approx(expect) and [i for i, v in enumerate(lrs) if v == pytest.approx(1.0)] == [
        0,
        1,
        3,
        7,
        15,
    ]
    cfg = make_config(
        {"scheduler": "cosine_restarts", "lr": 1.0, "epochs": 2, "restart_epochs": 0.75, "restart_mult": 1}
    )
    assert _lrs(cfg, spe=4)[0] == pytest.approx([_cosine_at(i % 3, 1.0, 0.0, 3) for i in range(8)])


def test_cosine_anneals_to_min_lr_over_the_steps_after_warmup():
    cfg = make_config({"scheduler": "cosine", "lr": 1.0, "min_lr": 0.05, "epochs": 3, "warmup_epochs": 1})
    lrs = _lrs(cfg, spe=4)[0]
    assert lrs[4:] == pytest.approx([_cosine_at(t, 1.0, 0.05, 8) for t in range(8)])


@pytest.mark.parametrize("monitor", ["val_acc", "val_loss"])
def test_plateau_follows_the_monitored_metric_direction_patience_factor_and_floor(monitor):
    """plateau cuts the lr by plateau_factor once the monitored metric has not improved for more than
    plateau_patience epochs (improving = rising for val_acc, falling for val_loss), never below min_lr."""
    cfg = make_config(
        {
            "scheduler": "plateau",
            "lr": 1.0,
            "epochs": 9,
            "monitor": monitor,
            "plateau_factor": 0.5,
            "plateau_patience": 1,
            "min_lr": 0.2,
        }
    )
    better, worse = (lambda e: 0.5 + e / 100), (lambda e: 0.5 - e / 100)
    if monitor == "val_loss":
        better, worse = worse, better
    assert _lrs(cfg, spe=1, metric=better)[0] == [1.0] * 9
    assert _lrs(cfg, spe=1, metric=worse)[0] == pytest.approx([1.0] * 3 + [0.5] * 2 + [0.25] * 2 + [0.2] * 2)


def test_each_loss_takes_the_configured_smoothing_weights_and_gamma():
    """ce is torch's cross-entropy and focal the focal loss, each with the configured label smoothing
    and class weights; focal with the configured focal_gamma (at 0 it is that same cross-entropy)."""
    torch.manual_seed(0)
    logits, y = torch.randn(48, 3) * 3, torch.randint(0, 3, (48,))
    w = [0.5, 2.0, 1.0]
    ce = nn.CrossEntropyLoss(weight=torch.tensor(w), label_smoothing=0.15)(logits, y).item()
    for loss, gamma in (("ce", 2.0), ("focal", 0.0)):
        fn = optim.build_loss(
            make_config({"loss": loss, "label_smoothing": 0.15, "class_weights": w, "focal_gamma": gamma}), 3
        )
        assert fn(logits, y).item() == pytest.approx(ce, rel=1e-5), loss
    fn = optim.build_loss(
        make_config({"loss": "focal", "label_smoothing": 0.15, "class_weights": w, "focal_gamma": 1.5}), 3
    )
    assert isinstance(fn, optim.FocalLoss) and (fn.gamma, fn.label_smoothing) == (1.5, 0.15)
    assert torch.equal(fn.weight, torch.tensor(w))
    assert fn(logits, y).item() == pytest.approx(optim.FocalLoss(1.5, torch.tensor(w), 0.15)(logits, y).item())
