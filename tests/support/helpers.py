"""Plain helpers shared by the tests (fixtures live in conftest.py): the repo root, a fast trainer
config, the CLI in a subprocess, a trial's reported results, a stale `ray start` record."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tiny_cfg(**over):
    """A fast CPU config for unit tests of the trainer."""
    from raydigits.config import make_config

    base = dict(
        img_size=32,
        batch_size=64,
        eval_batch_size=256,
        epochs=2,
        threads=2,
        scheduler="none",
        aug_strength=0.0,
        device="cpu",
    )
    base.update(over)
    return make_config(base)


def launch(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """`python launch.py ARGS` in its own session (so a test can signal its whole process group),
    stdout and stderr merged into one text pipe."""
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1", "RAYDIGITS_NO_PROGRESS": "1"}
    return subprocess.Popen(
        [sys.executable, "launch.py", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def launch_ok(args: list[str], timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python launch.py ARGS` to its end, output captured; it must exit 0 (else its output's tail fails
    the test)."""
    done = subprocess.run(
        [sys.executable, "launch.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def results(trial_dir: Path) -> list[dict]:
    """Every line of a trial's result.json as Tune wrote it, [] before its first report."""
    from raydigits.experiment import read_results

    return read_results(trial_dir, keep_reruns=True)


@contextlib.contextmanager
def stale_cluster_record():
    """Ray's record of the cluster a `ray start` launched, pointing at nothing (unless a real one
    is there: then it is left alone)."""
    from raydigits.search.runner import RAY_CURRENT_CLUSTER as record

    if record.exists():
        yield
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("127.0.0.1:9")
    try:
        yield
    finally:
        record.unlink(missing_ok=True)
