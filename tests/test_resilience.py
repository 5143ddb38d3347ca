"""Resilience against real faults: a worker node of a real two-node cluster dies mid-search; a trial
diverges; Ctrl-C on the driver. Each runs the real CLI in a subprocess against a real Ray."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from support.cluster import TwoNodeCluster
from support.helpers import REPO, launch, launch_ok, results
from support.s3 import BUCKET, s3_env, s3_server

pytestmark = pytest.mark.slow


def _space(tmp_path: Path, **over) -> Path:
    """The smoke space with a FIFO scheduler (no trial ends before its last epoch) and overrides."""
    spec = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    spec["scheduler"] = {"type": "fifo", "max_t": 3}
    spec.update(over)
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _staged_trials(name: str) -> list[Path]:
    """The driver's local copies of a running experiment's trial folders (Tune stages them under
    the Ray session's artifacts/ and uploads them to remote storage every sync period)."""
    root = Path(tempfile.gettempdir()) / "ray"
    return sorted(root.glob(f"session_*/artifacts/*/{name}/driver_artifacts/cluster_*"))


def test_search_on_s3_survives_losing_a_worker_node(tmp_path, mnist_dir, mnist, monkeypatch):
    """Two nodes (the worker in its own network namespace where possible) and an S3-compatible
    server both reach; the search writes to s3://; the worker node is SIGKILLed while one of its
    trials is mid-run. Its trial is retried from its checkpoint (read back from S3) on the surviving
    node; every trial finishes; the final stage reads the experiment from S3 and writes its outputs
    there; export predicts a folder with the model it reads from S3. Nothing lands on local disk."""
    from raydigits.experiment import read_results
    from raydigits.storage import Location

    space = _space(tmp_path, name="cluster", num_samples=3)
    name = f"s3c{os.getpid()}"
    with s3_server() as (port, env, client):

        def endpoint(cluster):  # the head's address: the worker node (maybe another netns) reaches it
            return s3_env(cluster.head_ip, port)

        with TwoNodeCluster(tmp_path, extra_env=endpoint) as cluster:
            uri = f"s3://{BUCKET}/shared"
            proc = launch(
                ["--search-space", str(space), "--address", cluster.address, "--storage-path", uri, "--name", name],
                env=cluster.env,
            )
            victim, deadline = None, time.time() + 300
            while victim is None and time.time() < deadline and proc.poll() is None:
                time.sleep(0.5)
                on_worker = cluster.node_pids("worker")
                for d in _staged_trials(name):
                    rows = results(d)
                    if rows and rows[-1]["pid"] in on_worker and not rows[-1].get("done"):
                        victim = (d.name, rows)
            assert victim is not None, "no trial ran on the worker node"
            cluster.kill("worker")
            assert not cluster.node_pids("worker")  # the whole node is gone
            out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-5000:]
        # attached to a cluster: how to reach its dashboard from elsewhere, and how to log in
        assert f"Ray dashboard: http://127.0.0.1:{cluster.dashboard_port}" in out
        assert f"ssh -L {cluster.dashboard_port}:localhost:{cluster.dashboard_port}" in out and "login:" in out
        from support.browser import read_token

        assert read_token() not in out
        for k, v in env.items():  # this process reads the bucket through the storage layer too
            monkeypatch.setenv(k, v)
        exp = Location.parse(f"{uri}/{name}")
        trial_name, before = victim
        rows = read_results(exp / trial_name)
        assert rows[: len(before)] == before
        assert [r["epoch"] for r in rows] == [1, 2, 3]  # continued from its checkpoint, nothing done twice
        assert rows[-1]["pid"] != before[-1]["pid"]
        if cluster.netns:  # the two nodes had different IPs: the retry ran on the head
            assert before[-1]["node_ip"] == cluster.worker_ip and rows[-1]["node_ip"] == cluster.head_ip
        final = exp / "final"
        trials = pd.read_csv(io.StringIO((final / "trials.csv").read_text()))
        assert len(trials) == 3 and (trials["status"] == "TERMINATED").all() and (trials["epochs"] == 3).all()
        assert trials.set_index("trial_id").loc[trial_name.split("_", 1)[1], "retries"] >= 1
        pre = pd.read_csv(io.StringIO((final / "pre.csv").read_text()), dtype=str)
        metrics = json.loads((final / "metrics.json").read_text())
        assert len(pre) == 10_000 and metrics["n_trials"] == 3 and metrics["checkpoint"].startswith(uri)
        assert json.loads((exp / "raydigits_outcomes.json").read_text())["ended"] == "finished"
        for f in ("best_model.pt", "best_model.pt2", "learning_curves.png", "confusion_matrix.png"):
            assert (final / f).is_file(), f
        assert f"files: {uri}/{name}/final/" in out
        assert not list(REPO.glob("s3*")) and not (REPO / "ray_results" / name).exists()
        # export reads best_model.pt from S3 and predicts a local folder
        import cv2

        folder = tmp_path / "imgs"
        folder.mkdir()
        for i in range(4):
            cv2.imwrite(str(folder / f"d{i}.png"), mnist.images["test"][i, :, :, 0])
        proc = subprocess.run(
            [sys.executable, "launch.py", "export", str(exp), "--images", str(folder)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **env},
        )  # the head's IP is gone with the cluster
        assert proc.returncode == 0, proc.stderr[-3000:]
        exported = pd.read_csv(folder / "pre.csv", dtype=str)
        assert exported["image_id"].tolist() == [f"d{i}.png" for i in range(4)]
        best = pre.set_index("image_id").loc[[str(x) for x in mnist.ids["test"][:4]]]
        assert (exported["label"].to_numpy() == best["label"].to_numpy()).all()


def test_diverging_trial_is_marked_and_never_chosen(tmp_path, mnist_dir):
    """An absurd learning rate makes the loss non-finite: that trial ends after one epoch, marked
    diverged in trials.csv; the other trial and the final stage go on without it."""
    space = _space(
        tmp_path,
        name="diverge",
        method="grid",
        num_samples=1,
        scheduler={"type": "fifo", "max_t": 2},
        fixed={
            "train_items": 600,
            "val_items": 300,
            "img_size": 32,
            "batch_size": 32,
            "scheduler": "none",
            "aug_strength": 0.0,
            "optimizer": "sgd",
            "momentum": 0.9,
        },
        parameters={"lr": {"values": [1.0e6, 0.01]}},
    )
    proc = launch(["--search-space", str(space), "--storage-path", str(tmp_path), "--name", "d"])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    final = tmp_path / "d" / "final"
    trials = pd.read_csv(final / "trials.csv").set_index("param.lr")
    assert trials.loc[1.0e6, "outcome"] == "diverged" and trials.loc[1.0e6, "epochs"] == 1
    assert trials.loc[0.01, "outcome"] == "completed" and trials.loc[0.01, "epochs"] == 2
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics["best_trial"] == trials.loc[0.01, "trial_id"] and metrics["n_diverged"] == 1
    assert metrics["best_config"]["lr"] == 0.01
    assert "1 diverged" in out


def test_ctrl_c_stops_cleanly_and_the_search_resumes(tmp_path, mnist_dir):
    """SIGINT to the driver's whole process group, as a terminal's Ctrl-C sends it: the driver says
    how to resume and exits 130 without a traceback; --resume finishes and re-runs nothing. The
    storage is given as a file:// URI: the experiment is the plain folder it names."""
    proc = launch(
        [
            "--search-space",
            "smoke",
            "--storage-path",
            f"file://{tmp_path}",
            "--name",
            "ctrlc",
            "--num-samples",
            "3",
            "--max-concurrent",
            "1",
            "--no-final",
            "--set",
            "train_items=500",
            "--set",
            "val_items=200",
        ]
    )
    exp, seen, deadline = tmp_path / "ctrlc", {}, time.time() + 300
    while not seen and time.time() < deadline:
        time.sleep(0.5)
        seen = {d.name: results(d) for d in exp.glob("smoke_*") if results(d)}
    assert seen, "no trial reported before the deadline"
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert f"Resume with: python launch.py --resume {exp}" in out
    assert "Traceback" not in out and "Tuner.restore" not in out
    snapshot = {name: results(exp / name) for name in seen}
    launch_ok(["--resume", str(exp), "--no-final"])
    dirs = [d for d in exp.glob("smoke_*") if d.is_dir()]
    assert len(dirs) == 3 and all(results(d)[-1].get("done") for d in dirs)
    for name, rows in snapshot.items():  # what had been reported is kept, not redone
        assert results(exp / name)[: len(rows)] == rows
    assert not (REPO / "file:").exists() and (exp / "raydigits_outcomes.json").exists()


def test_a_trial_that_had_ended_when_its_driver_died_reports_its_end_on_resume(tmp_path, mnist_dir):
    """The driver is killed after a trial's last checkpoint but before Tune recorded its end (the
    experiment state still says RUNNING), and storage's result.json lags the checkpoint by a sync
    period (its last line missing). --resume restores the trial from that last checkpoint: nothing
    is left to train, and its history still ends with its last epoch."""
    space = _space(tmp_path, num_samples=1)
    sets = ["--set", "train_items=300", "--set", "val_items=100", "--no-final"]
    launch_ok(["--search-space", str(space), "--storage-path", str(tmp_path), "--name", "e", *sets])
    exp = tmp_path / "e"
    (trial,) = [d for d in exp.glob("smoke_*") if d.is_dir()]
    rows = results(trial)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    lines = (trial / "result.json").read_text().splitlines()
    (trial / "result.json").write_text("\n".join(lines[:-1]) + "\n")  # the lagging copy
    (state_file,) = sorted(exp.glob("experiment_state-*.json"))[-1:]
    state = json.loads(state_file.read_text())
    for pair in state["trial_data"]:
        trial_state = json.loads(pair[0])
        trial_state["status"] = "RUNNING"
        pair[0] = json.dumps(trial_state)
    state_file.write_text(json.dumps(state))
    resumed = launch_ok(["--resume", str(exp), "--no-final"])
    after = results(trial)
    assert [r["epoch"] for r in after] == [1, 2, 3]
    assert "had ended at epoch 3" in resumed.stdout
    assert not re.search(r"\[smoke_\w+\] epoch \d ", resumed.stdout), "it trained again"
    assert after[-1]["val_acc"] == rows[-1]["val_acc"]


def test_an_interrupted_audit_is_continued_by_launch_audit_not_started_over(tmp_path, mnist_dir):
    """Ctrl-C during the audit (after the search finished): exit 130 with how to continue; then
    `launch.py audit EXP` continues audit_1 from the audited trial's own checkpoint (what it had
    reported is kept, not redone), runs to max_t, and starts no audit_2 for the same trial. One
    trial at a time, so the search (and which trial ASHA stops) is the same on every CPU run."""
    # smoke with one rung (epoch 1) under max_t 6, so the audited trial has five epochs left to run
    space = _space(tmp_path, scheduler={"type": "asha", "max_t": 6, "grace_period": 1, "reduction_factor": 6})
    args = ["--storage-path", str(tmp_path), "--name", "aud", "--num-samples", "4", "--max-concurrent", "1"]
    sets = ["--set", "train_items=500", "--set", "val_items=200"]
    launch_ok(["--search-space", str(space), *args, "--no-final", *sets], timeout=900)
    exp = tmp_path / "aud"
    stopped = [d for d in exp.glob("smoke_*") if len(results(d)) == 1]
    assert stopped, "ASHA stopped no trial at its first rung: nothing to audit"
    proc = launch(["audit", str(exp), "--no-final"])
    lines, deadline = [], time.time() + 300
    for line in proc.stdout:  # the audited trial reported its second epoch of five ...
        lines.append(line)
        if "audit: trial" in "".join(lines) and re.search(r"\[smoke_\w+\] epoch 3 ", line) or time.time() > deadline:
            break
    first = exp / "audit_1"
    while time.time() < deadline and not list(first.glob("smoke_*/checkpoint_000001")):
        time.sleep(0.2)  # ... and its checkpoint is on disk: Ctrl-C now, three epochs before its end
    os.killpg(proc.pid, signal.SIGINT)
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out[-3000:]
    assert f"`python launch.py audit {exp}` continues it" in out and "Traceback" not in out
    (audit_dir,) = [d for d in first.glob("smoke_*") if d.is_dir()]
    kept = sorted(p.name for p in audit_dir.glob("checkpoint_*"))
    assert "checkpoint_000000" in kept and "checkpoint_000004" not in kept, f"nothing to continue, or done: {kept}"
    before = results(audit_dir)
    again = launch_ok(["audit", str(exp), "--no-final"])
    assert "continuing the interrupted audit_1" in again.stdout
    # Tune restores the last checkpoint its driver had recorded: epoch 3's, or epoch 2's when the
    # Ctrl-C came before the driver took in epoch 3's result; never the stopped trial's epoch 1
    trained = [int(n) for n in re.findall(r"\[smoke_\w+\] epoch (\d+) ", again.stdout)]
    assert trained and trained[-1] == 6 and 2 not in trained, trained
    after = results(audit_dir)
    assert after[: len(before)] == before
    epochs = [r["epoch"] for r in after]
    assert epochs[0] == 2 and epochs.count(2) == 1 and epochs[-1] == 6 and set(epochs) == set(range(2, 7)), epochs
    assert not (exp / "audit_2").exists()
    resume = subprocess.run(
        [sys.executable, "launch.py", "--resume", str(exp / "audit_1")], cwd=REPO, capture_output=True, text=True
    )
    assert resume.returncode == 2 and f"continue it with `python launch.py audit {exp}`" in resume.stderr
