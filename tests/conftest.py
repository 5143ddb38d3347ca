"""Shared fixtures: the real MNIST, prepared once into the repo's data/ (as a user would), and
small real subsets of it for fast tests."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAYDIGITS_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    from raydigits.data import ensure_prepared
    return ensure_prepared(REPO / "data" / "mnist")


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from raydigits.data import load_dataset
    return load_dataset(mnist_dir)


@pytest.fixture(scope="session")
def small_mnist(mnist):
    """512 train / 256 val real MNIST digits (first of each split)."""
    from raydigits.data.store import Dataset
    return Dataset({"train": mnist.images["train"][:512], "val": mnist.images["val"][:256]},
                   {"train": mnist.labels["train"][:512], "val": mnist.labels["val"][:256]},
                   {"train": mnist.ids["train"][:512], "val": mnist.ids["val"][:256]},
                   mnist.class_names)


def tiny_cfg(**over):
    """A fast CPU config for unit tests of the trainer."""
    from raydigits.config import make_config
    base = dict(img_size=32, batch_size=64, eval_batch_size=256, epochs=2, threads=2,
                scheduler="none", aug_strength=0.0, device="cpu")
    base.update(over)
    return make_config(base)





def launch(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """`python launch.py ARGS` in its own session (so a test can signal its whole process group),
    stdout and stderr merged into one text pipe."""
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1", "RAYDIGITS_NO_PROGRESS": "1"}
    return subprocess.Popen([sys.executable, "launch.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def results(trial_dir: Path) -> list[dict]:
    """A trial's reported results (Tune's result.json), [] before its first report."""
    f = trial_dir / "result.json"
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []


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
