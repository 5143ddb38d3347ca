"""The final stage's parts, fast and without Ray: how a trial's outcome is told (recorded or, for
older experiments, derived), which (trial, epoch) is chosen, what pre.csv and the metrics hold, and
that the saved predictor and the exported program agree with the trainer on real digits."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from support.helpers import tiny_cfg

from raydigits.errors import UserError
from raydigits.evaluation import predictions_frame, split_metrics
from raydigits.experiment import Trial, choose_best, read_results
from raydigits.experiment.records import derive_outcome, ended_outcome
from raydigits.spec import asha_rungs, parse_spec
from raydigits.storage import as_location

SPEC = parse_spec({"name": "t", "scheduler": {"type": "asha", "max_t": 9, "grace_period": 1, "reduction_factor": 3}})


def test_asha_rungs_are_grace_times_factor_powers_below_max_t():
    assert asha_rungs(SPEC) == {1, 3}
    spec = parse_spec(
        {"name": "t", "scheduler": {"type": "asha", "max_t": 12, "grace_period": 2, "reduction_factor": 2}}
    )
    assert asha_rungs(spec) == {2, 4, 8}
    assert asha_rungs(parse_spec({"name": "t", "scheduler": {"type": "fifo", "max_t": 5}})) == set()


@pytest.mark.parametrize(
    "status, results, outcome",
    [
        ("ERROR", [{"epoch": 1}], "error"),
        ("TERMINATED", [{"epoch": 1, "diverged": True}], "diverged"),
        ("TERMINATED", [{"epoch": 1}, {"epoch": 2, "stop_reason": "oom"}], "oom"),
        ("RUNNING", [{"epoch": 1}], "interrupted"),
        ("TERMINATED", [{"epoch": 1}, {"epoch": 2, "stop_reason": "early_stop"}], "early_stopped"),
        ("TERMINATED", [], "not_started"),
        ("TERMINATED", [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}], "asha_stopped"),  # stopped at a rung
        ("TERMINATED", [{"epoch": 1}, {"epoch": 2}], "time_budget"),  # between rungs
        ("TERMINATED", [{"epoch": e} for e in range(1, 10)], "completed"),
    ],
)
def test_outcome_derived_for_experiments_without_a_record(status, results, outcome):
    epochs = max((r["epoch"] for r in results), default=0)
    assert derive_outcome(status, results, epochs, SPEC) == outcome


@pytest.mark.parametrize(
    "last, outcome",
    [
        ({"epoch": 9}, "completed"),
        ({"epoch": 3}, "asha_stopped"),
        ({"epoch": 2, "stop_reason": "early_stop"}, "early_stopped"),
        ({"epoch": 2, "stop_reason": "oom"}, "oom"),
        ({"epoch": 1, "diverged": True}, "diverged"),
        (None, "not_started"),
    ],
)
def test_outcome_recorded_when_a_trial_ends(last, outcome):
    assert ended_outcome(last, 9) == outcome


def _trials(tmp_path, rows):
    out = []
    for trial_id, outcome, vals in rows:
        results = []
        for epoch, v in enumerate(vals, 1):
            ck = tmp_path / trial_id / f"checkpoint_{epoch:06d}"
            ck.mkdir(parents=True)
            (ck / "checkpoint.pt").write_bytes(b"x")
            results.append({"epoch": epoch, "val_acc": v, "checkpoint_dir_name": ck.name, "config": {"id": trial_id}})
        out.append(
            Trial(
                "search",
                trial_id,
                "TERMINATED",
                outcome,
                len(vals),
                {"id": trial_id},
                tuple(results),
                as_location(tmp_path / trial_id),
            )
        )
    return out


def _with(trials, **extra):
    """The same trials, every report carrying `extra` (e.g. val_n)."""
    return [replace(t, results=tuple({**r, **extra} for r in t.results)) for t in trials]


def test_choose_best_takes_the_best_epoch_of_usable_trials_earliest_on_ties(tmp_path):
    trials = _trials(
        tmp_path,
        [
            ("b", "diverged", [0.99]),
            ("a", "completed", [0.5, 0.9, 0.9]),
            ("c", "oom", [0.98]),
            ("d", "error", [0.97]),
            ("e", "asha_stopped", [0.8]),
        ],
    )
    c = choose_best(trials, SPEC)
    assert (c.trial_id, c.epoch, c.value) == ("a", 2, 0.9) and c.checkpoint.name == "checkpoint.pt"
    assert c.checkpoint.parent.name == "checkpoint_000002" and c.config == {"id": "a"}
    # a best epoch whose checkpoint was not kept gives way to the next best
    (tmp_path / "a" / "checkpoint_000002" / "checkpoint.pt").unlink()
    assert (choose_best(trials, SPEC).trial_id, choose_best(trials, SPEC).epoch) == ("a", 3)
    loss = parse_spec({"name": "t", "metric": "val_loss"})
    low = _trials(tmp_path / "l", [("x", "completed", [0.3, 0.1]), ("y", "completed", [0.2])])
    low = [replace(t, results=tuple({**r, "val_loss": r["val_acc"]} for r in t.results)) for t in low]
    assert (choose_best(low, loss).trial_id, choose_best(low, loss).epoch) == ("x", 2)  # min for a loss
    with pytest.raises(UserError, match="^no usable trial"):
        choose_best([t for t in trials if t.outcome in ("diverged", "oom", "error")], SPEC)
    # a tie across trials goes to the earlier epoch, whichever trial it is
    tie = _trials(tmp_path / "tie", [("a", "completed", [0.95, 0.9, 0.9]), ("b", "completed", [0.5, 0.6, 0.95])])
    assert (choose_best(tie, SPEC).trial_id, choose_best(tie, SPEC).epoch) == ("a", 1)


def test_choose_best_takes_the_latest_epoch_within_one_standard_error_of_the_trials_best(tmp_path):
    """Epochs of the best trial closer than the validation's noise are not told apart: the latest
    kept one wins (SE of 0.99 on 10,000 images is 0.000995). Trials are still ranked by their best."""
    vals = {"a": [0.5, 0.9900, 0.9892, 0.9891, 0.9880], "b": [0.9899, 0.9899]}
    trials = _trials(tmp_path, [(k, "completed", v) for k, v in vals.items()])
    trials = _with(trials, val_n=10_000)
    c = choose_best(trials, SPEC)  # epoch 4 (0.9891) is within 0.000995 of 0.99; epoch 5 is not
    assert (c.trial_id, c.epoch, c.value, c.checkpoint.parent.name) == ("a", 4, 0.9891, "checkpoint_000004")
    assert c.note == (
        "val_acc 0.9891, the latest epoch within one standard error (0.0010 on 10,000 "
        "images) of the trial's best, 0.9900 at epoch 2"
    )
    (tmp_path / "a" / "checkpoint_000004" / "checkpoint.pt").unlink()  # not kept: the next latest
    assert choose_best(trials, SPEC).epoch == 3
    small = _with(trials, val_n=100_000_000)
    assert (choose_best(small, SPEC).epoch, choose_best(small, SPEC).note) == (2, "")  # an exact validation
    best = parse_spec({"name": "t", "select_epoch": "best"})
    assert (choose_best(trials, best).trial_id, choose_best(trials, best).epoch) == ("a", 2)
    unsized = _trials(tmp_path / "old", [(k, "completed", v) for k, v in vals.items()])  # older runs: no val_n
    assert choose_best(unsized, SPEC).epoch == 2


def test_tie_candidates_are_the_best_checkpoints_of_trials_near_the_shipped_value_capped(tmp_path):
    """Shipped: a at 0.99 on 10,000 images. The screen keeps a trial whose best lies at most 4 paired
    standard errors √((q_w + q_t)/n) below it: for b (0.9882) that is 4·√(0.0218/10,000) = 0.0059; e
    (0.9820) is 0.0080 below, past its 0.0064. Each is represented by its best kept checkpoint; a
    diverged or errored trial never counts; beyond the cap the best are tested and the rest named."""
    from raydigits.experiment import candidates

    vals = {
        "a": [0.5, 0.9900, 0.985],
        "b": [0.9882, 0.97],
        "c": [0.9890],
        "d": [0.9950, 0.9851],  # above the shipped value: always a candidate
        "e": [0.9820],
        "x": [0.995],
        "y": [0.9899],
    }
    outcome = {"x": "diverged", "y": "error"}
    trials = _with(_trials(tmp_path, [(k, outcome.get(k, "completed"), v) for k, v in vals.items()]), val_n=10_000)
    choice = choose_best(trials, SPEC)
    assert (choice.trial_id, choice.epoch) == ("d", 1)
    shipped = replace(choose_best([t for t in trials if t.trial_id == "a"], SPEC), value=0.99)
    s = candidates(trials, SPEC, shipped, 10_000)
    assert [(c.trial_id, c.epoch, c.value) for c in s.tested] == [("d", 1, 0.995), ("c", 1, 0.989), ("b", 1, 0.9882)]
    assert s.untested == [] and s.screened_out == 1  # e
    (tmp_path / "d" / "checkpoint_000001" / "checkpoint.pt").unlink()  # its best not kept: its next best
    capped = candidates(trials, SPEC, shipped, 10_000, cap=2)
    assert [(c.trial_id, c.epoch) for c in capped.tested] == [("c", 1), ("b", 1)] and capped.untested == ["d"]
    assert candidates(trials, SPEC, shipped, 10_000).tested[-1].epoch == 2  # d at 0.9851
    # a winner at 100 %: the screen still admits near trials (q_w = 0, not a zero-width margin)
    perfect = candidates(trials, SPEC, replace(shipped, value=1.0), 500)
    assert {c.trial_id for c in perfect.tested} == {"b", "c", "d", "e"}


def _trained_experiment(root, data, runs):
    """An experiment folder as a search leaves it (the saved spec, Tune's state as JSON, each trial's
    result.json), its trials trained for real on `data` with a checkpoint per epoch."""
    from support.helpers import REPO

    from raydigits.trainer import Trainer

    exp = root / "exp"
    exp.mkdir()
    (exp / "raydigits_search.yaml").write_text((REPO / "search_spaces" / "smoke.yaml").read_text())
    trial_data = []
    for tid, over in runs.items():
        d, rows = exp / f"smoke_{tid}", []
        trainer = Trainer(tiny_cfg(**over), data)
        for epoch in range(1, trainer.cfg.epochs + 1):
            trainer.fit(stop_after=epoch)
            trainer.save(d / f"checkpoint_{epoch:06d}" / "checkpoint.pt")
            rows.append(json.dumps({**trainer.history[-1], "checkpoint_dir_name": f"checkpoint_{epoch:06d}"}))
        (d / "result.json").write_text("\n".join(rows) + "\n")
        state = {"trial_id": tid, "status": "TERMINATED", "config": over, "relative_logdir": d.name}
        trial_data.append([json.dumps(state), json.dumps({"num_failures": 0})])
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}))
    return exp


@pytest.mark.slow  # trains four small trials on real MNIST
def test_the_final_stage_names_the_trials_an_exact_mcnemar_test_cannot_tell_from_the_shipped_checkpoint(
    tmp_path, small_mnist
):
    """Real checkpoints: each trial's per-image predictions on the winner's validation images, the
    discordant counts, scipy's exact binomial p-values and Holm's correction computed here
    independently, and metrics.json's account of them (what `_final` writes)."""
    from scipy.stats import binomtest

    from raydigits.experiment import Experiment
    from raydigits.final import _search_metrics
    from raydigits.inference import predict_state
    from raydigits.ties import evaluate_ties, winner_validation
    from raydigits.trainer import load_checkpoint

    runs = {  # each validates on the same seeded, stratified 200 of the 256 validation images
        "a_00000": {"optimizer": "adamw", "lr": 3e-3, "epochs": 2, "val_items": 200},
        "a_00001": {"optimizer": "adamw", "lr": 1e-3, "epochs": 2, "val_items": 200},
        "a_00002": {"optimizer": "sgd", "lr": 3e-2, "epochs": 1, "val_items": 200},
        "a_00003": {"optimizer": "sgd", "lr": 1e-4, "epochs": 1, "val_items": 200},
    }
    exp = Experiment.open(_trained_experiment(tmp_path, small_mnist, runs))
    choice = exp.best()
    state = load_checkpoint(choice.checkpoint)
    ties = evaluate_ties(exp, choice, state, small_mnist, predict_state)
    images, labels = winner_validation(small_mnist, state["config"])
    right = predict_state(state, images).argmax(1) == labels
    assert ties.n == 200 and ties.accuracy == pytest.approx(choice.value) and ties.epoch == choice.epoch
    assert ties.compared and choice.trial_id not in [c.trial_id for c in ties.compared]
    ps = []
    for c in ties.compared:
        t = exp.trial(c.trial_id)
        best = max(t.checkpoints("val_acc"), key=lambda k: (k.value, -k.epoch))
        assert (c.epoch, c.reported) == (best.epoch, best.value)
        theirs = predict_state(load_checkpoint(best.location), images).argmax(1) == labels
        assert c.accuracy == pytest.approx(best.value)  # the same images its trainer validated on
        b, k = int((right & ~theirs).sum()), int((theirs & ~right).sum())
        assert (c.winner_only, c.other_only) == (b, k)
        ps.append(binomtest(b, b + k, 0.5).pvalue if b + k else 1.0)
        assert c.p == pytest.approx(ps[-1], rel=1e-9)
    order = np.argsort(ps)
    m = len(ps)
    holm = np.maximum.accumulate([min(1.0, (m - i) * ps[j]) for i, j in enumerate(order)])
    expected = dict(zip((ties.compared[j].trial_id for j in order), holm))
    assert {c.trial_id: c.p_holm for c in ties.compared} == pytest.approx(expected)
    metrics = json.loads(json.dumps(_search_metrics(exp, choice, state["config"], None, ties)))
    assert sorted(metrics["tied_trials"]) == sorted(t for t, p in expected.items() if p > 0.05)
    paired = metrics["paired_ties"]
    assert paired["test"] == "exact McNemar (two-sided)" and paired["correction"] == "holm" and paired["alpha"] == 0.05
    assert [r["p"] for r in paired["compared"]] == pytest.approx(ps)
    assert paired["winner"] == choice.trial_id and paired["seconds"] > 0
    assert ("not evidence that they are as good" in metrics["ties"]) == bool(metrics["tied_trials"])
    assert "so its validation score is optimistic" in metrics["ties"]


def test_choose_best_skips_an_epoch_whose_checkpoint_folder_a_later_epoch_wrote_again(tmp_path):
    """PBT: a trial restarted from another trial's checkpoint_000001 writes its next epoch into its
    own checkpoint_000001 again (Tune numbers on from the donor's index)."""
    trials = _trials(tmp_path, [("a", "completed", [0.5, 0.9, 0.6]), ("b", "completed", [0.7, 0.8])])
    reused = trials[0].results
    reused[2]["checkpoint_dir_name"] = reused[1]["checkpoint_dir_name"]  # epoch 3 overwrote epoch 2's folder
    c = choose_best(trials, SPEC)
    assert (c.trial_id, c.epoch) == ("b", 2)


@pytest.mark.parametrize(
    "reported, kept",
    [
        ([1, 2, 3], [1, 2, 3]),
        ([1, 2, 3, 4, 3, 4], [1, 2, 3, 4]),  # went on from its epoch-2 checkpoint: the re-run counts
        ([1, 2, 3, 4, 2, 3], [1, 2, 3]),  # from epoch 1: the abandoned epoch 4 goes too
        ([1, 2, 5, 6], [1, 2, 5, 6]),  # PBT: continued from a donor further on
    ],
)
def test_read_results_keeps_the_run_the_trial_ended_with(tmp_path, reported, kept):
    lines = [json.dumps({"epoch": e, "val_acc": e / 10 + 0.01 * i}) for i, e in enumerate(reported)]
    (tmp_path / "result.json").write_text("\n".join(lines) + '\n{"epoch": 9, "val_a')  # cut by a crash
    rows = read_results(tmp_path)
    assert [r["epoch"] for r in rows] == kept
    last_of = {e: i for i, e in enumerate(reported)}  # each kept epoch is its last report
    assert [r["val_acc"] for r in rows] == [pytest.approx(e / 10 + 0.01 * last_of[e]) for e in kept]


def test_predictions_frame_is_sorted_by_id_with_the_top_class_and_its_probability():
    probs = np.array([[0.1, 0.9], [0.7, 0.3], [0.2, 0.8]])
    df = predictions_frame(["02", "00", "01"], probs, ["cat", "dog"])
    assert df.to_dict("list") == {
        "image_id": ["00", "01", "02"],
        "label": ["cat", "dog", "dog"],
        "score": [0.7, 0.8, 0.9],
    }
    with pytest.raises(UserError, match="duplicate image ids"):
        predictions_frame(["a", "a"], probs[:2], ["cat", "dog"])


def test_split_metrics_match_scikit_learn_and_name_the_split():
    from sklearn.metrics import f1_score

    y_true, y_pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0])
    m = split_metrics(y_true, y_pred, ["a", "b", "c"], "val")
    assert m["val_accuracy"] == pytest.approx(4 / 6) and "test_accuracy" not in m
    assert [m["per_class"][c]["f1"] for c in "abc"] == pytest.approx(list(f1_score(y_true, y_pred, average=None)))
    assert m["macro"]["f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"]["support"] == 2
    # a class that never occurs keeps its row (zeros), and every other class its own numbers
    m4 = split_metrics(y_true, y_pred, ["a", "b", "c", "d"], "test")
    assert m4["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m4["per_class"]["c"] == m["per_class"]["c"] and len(m4["confusion_matrix"]) == 4


def test_saved_predictor_and_exported_program_agree_with_the_trainer(small_mnist):
    from raydigits.inference import export_program, predict_state, predictor_from_state
    from raydigits.trainer import Trainer

    t = Trainer(tiny_cfg(epochs=1, aug_strength=1.0), small_mnist)
    t.fit()
    state = t.state_dict()
    imgs = small_mnist.images["val"][:50]
    ours = t.predict(imgs)
    assert np.allclose(predict_state(state, imgs), ours, atol=1e-5)
    program = export_program(predictor_from_state(state), list(imgs.shape[1:]))
    with torch.no_grad():
        theirs = program.module()(torch.from_numpy(imgs.copy())).numpy()
    assert np.allclose(theirs, ours, atol=1e-5)
    with torch.no_grad():  # one image (torch.export would specialise a traced batch of 1) and 300
        one = program.module()(torch.from_numpy(imgs[:1].copy())).numpy()
        many = program.module()(torch.from_numpy(np.concatenate([imgs] * 6))).numpy()
    assert np.allclose(one, ours[:1], atol=1e-5) and np.allclose(many[-50:], ours, atol=1e-5)
    # the weights are the program's parameters (inspectable, replaceable), not baked-in constants
    weights = {k for k, _ in t.model.named_parameters()}
    assert weights <= {k.removeprefix("model.") for k in program.state_dict}
    # and validation used the same path: its accuracy is the predictor's on the val split
    acc = (t.predict(small_mnist.images["val"]).argmax(1) == small_mnist.labels["val"]).mean()
    assert t.evaluate()["val_acc"] == pytest.approx(acc)


def test_read_results_skips_a_cut_line_mid_file_and_keep_reruns_keeps_every_line(tmp_path):
    """A retry appends after the line the crash cut: what follows it is still read. A report without an
    epoch is not taken for a re-run of epoch 1; keep_reruns keeps every line as written."""
    lines = [
        '{"note": "no epoch"}',
        '{"epoch": 1}',
        '{"epoch": 2}',
        '{"epoch": 3, "val_a',
        '{"epoch": 2, "again": 1}',
        '{"epoch": 3}',
    ]
    (tmp_path / "result.json").write_text("\n".join(lines) + "\n")
    rows = read_results(tmp_path)
    assert [r.get("epoch") for r in rows] == [None, 1, 2, 3] and rows[2] == {"epoch": 2, "again": 1}
    assert [r.get("epoch") for r in read_results(tmp_path, keep_reruns=True)] == [None, 1, 2, 2, 3]
    assert read_results(tmp_path / "missing") == []
