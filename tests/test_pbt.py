"""Population-based training through the real CLI on a real local Ray: the shipped pbt space cut
down to 2 trials of 4 epochs (one exploit step after epoch 2, synchronous so that both trials are
in). The bottom trial continues from the top trial's checkpoint (Tune's PBT log says so, its config
changed, its epochs go on from 2 rather than from 0, and its checkpoint's history is the donor's),
with the perturbed values in effect (its reported lr is the new one); both trials keep their processes
across the exploit (reuse_actors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from support.helpers import REPO, results

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pbt_run(tmp_path_factory, mnist_dir):
    tmp = tmp_path_factory.mktemp("pbt")
    space = yaml.safe_load((REPO / "search_spaces" / "pbt.yaml").read_text())
    space["num_samples"] = 2
    space["scheduler"].update(max_t=4, perturbation_interval=2, quantile_fraction=0.5, synch=True)
    space["fixed"].update(train_items=300, val_items=200, batch_size=32)
    (tmp / "pbt_small.yaml").write_text(yaml.safe_dump(space))
    proc = subprocess.run(
        [
            sys.executable,
            "launch.py",
            "--search-space",
            str(tmp / "pbt_small.yaml"),
            "--storage-path",
            str(tmp),
            "--name",
            "pbt_e2e",
            "--no-final",
            "--verbose",
            "0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAYDIGITS_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"},
    )
    return {"rc": proc.returncode, "out": proc.stdout + proc.stderr, "exp": tmp / "pbt_e2e"}


def test_a_trial_continues_from_another_trials_weights_with_perturbed_values(pbt_run):
    assert pbt_run["rc"] == 0, pbt_run["out"][-4000:]
    exp = pbt_run["exp"]
    policies = sorted(exp.glob("pbt_policy_*.txt"))  # Tune's PBT: one file per trial that exploited
    assert policies, pbt_run["out"][-4000:]
    target_id = policies[0].stem.removeprefix("pbt_policy_")
    # [target tag, donor tag, iterations (in synch mode not those of the exploit), donor config, new config]
    *_, donor_config, new_config = json.loads(policies[0].read_text().splitlines()[0])
    trials = {d.name.removeprefix("pbt_"): d for d in exp.iterdir() if (d / "result.json").exists()}
    target = trials.pop(target_id)
    ((donor_id, donor),) = trials.items()

    mine, theirs = results(target), results(donor)
    assert [r["epoch"] for r in mine] == [1, 2, 3, 4]  # on from epoch 2, not from 0
    assert theirs[0]["config"] == donor_config  # the donor named in the log is the other trial
    before, after = mine[1], mine[2]
    assert after["config"] == new_config and after["config"] != before["config"]
    assert after["lr"] == pytest.approx(new_config["lr"]) != pytest.approx(before["lr"])  # took effect
    assert after["lr"] != pytest.approx(theirs[2]["lr"])  # not the donor's lr either

    last = max(target.glob("checkpoint_*"), key=lambda d: d.name)
    history = torch.load(last / "checkpoint.pt", weights_only=True)["history"]
    assert [h["val_acc"] for h in history[:2]] == [r["val_acc"] for r in theirs[:2]]  # the donor's epochs
    assert [h["val_acc"] for h in history[2:]] == [r["val_acc"] for r in mine[2:]]
    assert f"resumed from epoch 2 with lr {donor_config['lr']} -> {new_config['lr']}" in pbt_run["out"]
    # the exploit restarted both trials in the two processes they ran in (reuse_actors), not in new ones
    assert len({r["pid"] for r in mine + theirs}) == 2
    assert "reuse_actors" not in pbt_run["out"]  # Tune's hint to enable it is no longer printed


def test_pbt_trials_end_completed_and_the_best_checkpoint_is_its_epochs(pbt_run):
    from raydigits.experiment import Experiment

    exp = Experiment.open(pbt_run["exp"])
    trials = exp.trials
    assert [t.outcome for t in trials] == ["completed", "completed"] and [t.epochs for t in trials] == [4, 4]
    for t in trials:  # every checkpoint kept (any may be handed to another trial)
        last = t.results[-1]["checkpoint_dir_name"]
        assert torch.load(t.path.local / last / "checkpoint.pt", weights_only=True)["epoch"] == 4
    # the exploiting trial may write its epoch-3 checkpoint into the folder its epoch 2 reported (Tune
    # numbers on from the donor's checkpoint): a folder holds the last epoch that reported it
    for t in trials:
        last_writer = {r["checkpoint_dir_name"]: r["epoch"] for r in t.results}
        for folder, epoch in last_writer.items():
            assert torch.load(t.path.local / folder / "checkpoint.pt", weights_only=True)["epoch"] == epoch
    choice = exp.best()
    assert torch.load(choice.checkpoint.local, weights_only=True)["epoch"] == choice.epoch
