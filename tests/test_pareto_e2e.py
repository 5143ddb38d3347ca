"""A small real multi-objective search through the command line (2 architectures x 2 image sizes, 2
epochs, a constraint that makes one architecture infeasible), shared by every test here: its
final/pareto.csv agrees with trials.csv and the trials' own reports (every member non-dominated
among the feasible trials on validation, every other trial dominated or infeasible), every member
is exported and tested, report.html shows the front, and `export --pick` / `--trial` choose a
member and predict with it, or say in one line why not, writing nothing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from support.helpers import launch

from raydigits.cli import main
from raydigits.experiment import Experiment, read_results
from raydigits.spec.model import COST_METRICS

pytestmark = pytest.mark.slow

SPACE = {
    "name": "mo_smoke",
    "objectives": {"val_acc": "max", "latency_ms": "min"},
    "constraints": {"params": {"max": 1.0e6}},  # mobilenet_v3_small (1.5 M) infeasible, shufflenet 0.35 M not
    "num_samples": 1,
    "method": "grid",
    "scheduler": {"type": "fifo", "max_t": 2},
    "resources": {"cpu": 1},
    "max_concurrent": 2,
    "fixed": {"train_items": 300, "val_items": 200, "batch_size": 32, "aug_strength": 0.0, "scheduler": "none"},
    "parameters": {
        "model": {"values": ["mobilenet_v3_small", "shufflenet_v2_x0_5"]},
        "img_size": {"values": [32, 40]},
    },
}


@pytest.fixture(scope="module")
def exp(tmp_path_factory, mnist_dir) -> Path:
    root = tmp_path_factory.mktemp("mo")
    space = root / "mo_smoke.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    proc = launch(["--search-space", str(space), "--storage-path", str(root), "--name", "mo", "--verbose", "0"])
    out, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, out[-4000:]
    assert "Pareto front on validation (val_acc max, latency_ms min)" in out
    # the two mobilenet_v3_small trials (32 and 40 px) break the constraint, and the summary says so
    assert "failed, 2 infeasible: params <= 1e+06)" in out, out[-3000:]
    return root / "mo"


def _dominates(a: dict, b: dict) -> bool:
    """a beats b on validation: accuracy no lower, latency no higher, one of them strictly."""
    return (
        a["val_acc"] >= b["val_acc"]
        and a["latency_ms"] <= b["latency_ms"]
        and (a["val_acc"] > b["val_acc"] or a["latency_ms"] < b["latency_ms"])
    )


def test_pareto_csv_agrees_with_trials_csv_and_the_trials_reports(exp):
    final = exp / "final"
    front = pd.read_csv(final / "pareto.csv")
    trials = pd.read_csv(final / "trials.csv")
    assert len(trials) == 4 and len(front) >= 1
    points = {}
    for row in trials.itertuples():
        reports = read_results(next(exp.glob(f"*{row.trial_id}*")))
        costs = {k: reports[0][k] for k in COST_METRICS}
        assert all(r[k] == costs[k] for r in reports for k in COST_METRICS)  # measured once, reported always
        assert row.latency_ms == pytest.approx(costs["latency_ms"]) and row.params == costs["params"]
        assert (row.pareto == "infeasible") == (costs["params"] > 1.0e6), row
        points[row.trial_id] = {"latency_ms": costs["latency_ms"], "params": costs["params"]}
        if row.pareto == "infeasible" and math.isnan(row.pareto_epoch):
            continue  # stopped at its first report for breaking the constraint: no epoch to place
        at = next(r for r in reports if r["epoch"] == row.pareto_epoch)
        assert row.pareto_val_acc == pytest.approx(at["val_acc"]) and row.pareto_latency_ms == row.latency_ms
        points[row.trial_id]["val_acc"] = at["val_acc"]
    feasible = {t: p for t, p in points.items() if p["params"] <= 1.0e6}
    assert {t for t, p in points.items() if p["params"] > 1.0e6} and feasible  # both kinds occur
    undominated = {t for t, p in feasible.items() if not any(_dominates(q, p) for q in feasible.values())}
    assert set(front["trial_id"]) == undominated
    status = dict(zip(trials["trial_id"], trials["pareto"]))
    assert {t for t, s in status.items() if s == "front"} == undominated
    assert {t for t, s in status.items() if s == "dominated"} == set(feasible) - undominated
    for row in front.itertuples():
        assert row.val_acc == pytest.approx(points[row.trial_id]["val_acc"])
        assert row.latency_ms == pytest.approx(points[row.trial_id]["latency_ms"])
        assert int(row.epoch) == int(trials.set_index("trial_id").loc[row.trial_id, "pareto_epoch"])
        assert 0.0 < row.test_accuracy <= 1.0
    assert list(front["val_acc"]) == sorted(front["val_acc"], reverse=True)  # most accurate first


def test_every_member_is_exported_tested_and_marked(exp):
    final = exp / "final"
    front = pd.read_csv(final / "pareto.csv")
    state = Experiment.open(exp).final_state()
    assert state.problem is None
    for row in front.itertuples():
        for name in (row.model_pt, row.model_pt2):
            assert state.read(name)  # in the completion marker, checksum as written
        program = torch.export.load(final / row.model_pt2).module()
        digits = torch.zeros(3, 28, 28, 1, dtype=torch.uint8)
        probs = program(digits)
        assert probs.shape == (3, 10) and torch.allclose(probs.sum(1), torch.ones(3), atol=1e-4)
        saved = torch.load(final / row.model_pt, weights_only=False)
        assert saved["epoch"] == row.epoch
    html = (final / "report.html").read_text()
    assert "<h2>Pareto front</h2>" in html and "plot_front_latency_ms" in html
    for t in front["trial_id"]:
        assert t in html


def _cli(capsys, args):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_export_pick_predicts_with_the_most_accurate_member_within_the_bound(exp, capsys, tmp_path, mnist):
    front = pd.read_csv(exp / "final" / "pareto.csv")
    fastest = front.sort_values("latency_ms").iloc[0]
    bound = float(fastest.latency_ms)
    within = front[front["latency_ms"] <= bound].sort_values("val_acc", ascending=False).iloc[0]
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(mnist.images["test"][i][:, :, 0]).save(folder / f"d{i}.png")
    out_file = tmp_path / "pre.csv"
    code, out, err = _cli(
        capsys,
        ["export", str(exp), "--pick", f"latency_ms<={bound!r}", "--images", str(folder), "--out", str(out_file)],
    )
    assert code == 0, err
    assert f"front member {within.trial_id} " in out
    pre = pd.read_csv(out_file)
    assert len(pre) == 4
    from raydigits.inference import predict_state

    state = torch.load(exp / "final" / within.model_pt, weights_only=False)
    want = predict_state(state, np.stack([mnist.images["test"][i] for i in range(4)]))
    assert list(pre["label"].astype(str)) == [state["class_names"][k] for k in want.argmax(1)]
    # --trial: a given member; without --images it is named with its model files, nothing written
    code, out, _ = _cli(capsys, ["export", str(exp), "--trial", str(front.iloc[-1].trial_id)])
    assert code == 0 and f"front member {front.iloc[-1].trial_id} " in out and "best_model.pt" in out


def test_export_pick_errors_are_one_line_and_write_nothing(exp, capsys, tmp_path):
    front = pd.read_csv(exp / "final" / "pareto.csv")
    trials = pd.read_csv(exp / "final" / "trials.csv")
    out_file = tmp_path / "never.csv"
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "a.png")
    fastest = front.sort_values("latency_ms").iloc[0]
    too_fast = float(fastest.latency_ms) / 2
    infeasible = trials[trials["pareto"] == "infeasible"].iloc[0].trial_id
    before = sorted(p.name for p in tmp_path.rglob("*"))
    cases = [
        (["--pick", f"latency_ms<={too_fast!r}"], f"the closest is trial {fastest.trial_id} (latency_ms "),
        (["--pick", "latency_ms=2"], "cannot read 'latency_ms=2'"),
        (["--pick", "loss<=2"], "loss is not a metric a pick may bound"),
        (["--trial", str(infeasible)], f"--trial {infeasible}: not on the Pareto front (infeasible: breaks params"),
        (["--pick", "val_acc>=0", "--trial", str(fastest.trial_id)], "--pick and --trial: give one of them"),
    ]
    for args, says in cases:
        code, out, err = _cli(capsys, ["export", str(exp), *args, "--images", str(folder), "--out", str(out_file)])
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], (args, err)
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and not out_file.exists()
