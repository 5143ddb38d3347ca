"""`launch.py reproduce`: a small real search, then its best trial retrained without Ray matches the
recorded validation epoch for epoch (CPU: equal), a trial ASHA stopped early replays only its epochs,
the printed `python -m raydigits.train` command is the same run, and a changed seed does not match.
The same search's final stage saves as final/best_model.pt exactly the chosen (trial, epoch)'s weights."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from support.helpers import REPO, launch, results

from raydigits.cli import main

pytestmark = pytest.mark.slow


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAYDIGITS_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, "launch.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


# Two trials, one at a time (grid order: the learning rate that learns first), Ray's ASHA with a
# rung at epoch 1: the second trial (an lr that cannot move the weights) reaches that rung after the
# first recorded its value there, is judged against it and is stopped — every run, whatever the timing.
REPRO = {
    "name": "repro",
    "num_samples": 1,
    "method": "grid",
    "seed": 0,
    "max_concurrent": 1,
    "scheduler": {"type": "asha", "max_t": 3, "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpu": 1, "gpu": 0},
    "audit": {"top_k": 0},
    "fixed": {
        "train_items": 300,
        "val_items": 200,
        "img_size": 32,
        "batch_size": 32,
        "scheduler": "none",
        "aug_strength": 0.0,
        "optimizer": "adamw",
    },
    "parameters": {"lr": {"values": [3.0e-3, 1.0e-7]}},
}


@pytest.fixture(scope="module")
def search(tmp_path_factory, mnist_dir):
    storage = tmp_path_factory.mktemp("ray_results")
    space = storage / "repro.yaml"
    space.write_text(yaml.safe_dump(REPRO))
    proc = launch(
        [
            "--search-space",
            str(space),
            "--storage-path",
            str(storage),
            "--name",
            "repro",
            "--verbose",
            "0",
        ]
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return storage / "repro"


def _recorded(exp, trial_id):
    from raydigits.experiment import Experiment

    trial = Experiment.open(exp).trial(trial_id)
    return trial, [r["val_acc"] for r in trial.results]


def test_best_trial_reproduces_exactly_and_the_printed_command_is_the_same_run(search, tmp_path):
    done = _cli(["reproduce", str(search)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from raydigits.experiment import Experiment

    best = Experiment.open(search).best().trial_id
    out = search / "reproduce" / best
    result = json.loads((out / "reproduce.json").read_text())
    row, recorded = _recorded(search, best)
    assert result["trial_id"] == best and result["reproduced"] and result["recorded_device"] == "cpu"
    assert [r["reproduced_val_acc"] for r in result["rows"]] == recorded  # equal, not close
    assert len(recorded) == row.epochs and result["max_val_loss_diff"] < 1e-6
    assert "reproduced (required val_acc equal every epoch" in done.stdout
    command = next(line for line in done.stdout.splitlines() if line.startswith("the same run: "))
    argv = shlex.split(command.removeprefix("the same run: "))
    assert argv[:3] == ["python", "-m", "raydigits.train"]
    out = Path(argv[argv.index("--out") + 1])  # run verbatim: over the retraining's own folder (--force)
    (out / "metrics.csv").unlink()
    again = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAYDIGITS_NO_PROGRESS": "1"},
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert pd.read_csv(out / "metrics.csv")["val_acc"].tolist() == recorded


def test_a_trial_stopped_early_replays_only_its_epochs(search, capsys):
    from raydigits.experiment import Experiment

    exp = Experiment.open(search)
    short = [t for t in exp.trials if t.epochs < exp.spec.epochs]
    # the fixture's search stops its second trial at the first rung, by construction: never skipped
    assert [(t.config["lr"], t.epochs, t.outcome) for t in short] == [(1.0e-7, 1, "asha_stopped")], [
        (t.trial_id, t.config.get("lr"), t.epochs, t.outcome) for t in exp.trials
    ]
    trial = short[0].path.name  # by its name this time
    assert main(["reproduce", str(search), "--trial", trial]) == 0, capsys.readouterr()  # in-process: no imports again
    result = json.loads((search / "reproduce" / short[0].trial_id / "reproduce.json").read_text())
    assert len(result["rows"]) == short[0].epochs and result["reproduced"]
    assert f"--stop-after {short[0].epochs}" in result["command"]


def test_best_model_holds_exactly_the_chosen_epochs_checkpoint(search):
    """final/best_model.pt's weights are tensor-equal to the checkpoint the chosen trial wrote at the
    chosen epoch (metrics.json names both; the folder is found from the trial's own result rows), and
    differ from its other kept checkpoint, so the comparison could tell them apart."""
    metrics = json.loads((search / "final" / "metrics.json").read_text())
    trial_dir = next(search.glob(f"repro_{metrics['best_trial']}"))
    kept = {}
    for r in results(trial_dir):  # a rerun's row replaces the earlier one
        if r.get("checkpoint_dir_name") and (trial_dir / r["checkpoint_dir_name"] / "checkpoint.pt").exists():
            kept[r["epoch"]] = trial_dir / r["checkpoint_dir_name"] / "checkpoint.pt"
    saved = torch.load(search / "final" / "best_model.pt", map_location="cpu", weights_only=True)
    chosen = torch.load(kept[metrics["best_epoch"]], map_location="cpu", weights_only=True)
    assert saved["epoch"] == chosen["epoch"] == metrics["best_epoch"]
    assert list(saved["model"]) == list(chosen["model"])
    for k, v in chosen["model"].items():
        assert v.dtype == saved["model"][k].dtype and torch.equal(v, saved["model"][k]), k
    others = [e for e in kept if e != metrics["best_epoch"]]
    assert others, kept  # checkpoints_to_keep 2: the trial's other kept epoch
    for e in others:
        other = torch.load(kept[e], map_location="cpu", weights_only=True)["model"]
        assert not all(torch.equal(v, saved["model"][k]) for k, v in other.items()), e


def test_a_changed_seed_does_not_reproduce(search, tmp_path, capsys):
    from raydigits.experiment import Experiment

    shortest = min(Experiment.open(search).trials, key=lambda t: t.epochs).trial_id  # quickest
    rc = main(["reproduce", str(search), "--trial", shortest, "--set", "seed=7", "--out", str(tmp_path / "seed7")])
    out = capsys.readouterr().out
    assert rc == 1 and "NOT reproduced" in out, out[-3000:]
    result = json.loads((tmp_path / "seed7" / "reproduce.json").read_text())
    assert not result["reproduced"] and result["max_val_acc_diff"] > 0


def test_an_unknown_trial_is_one_error_line(search, capsys):
    assert main(["reproduce", str(search), "--trial", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: --trial nope: no such trial")
