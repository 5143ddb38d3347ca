"""Shared fixtures: the real MNIST, prepared once into the repo's data/ (as a user would), and
small real subsets of it for fast tests; the smoke search, run once for the suite; an S3 server and
local/S3 storage roots. Plain helpers and the harnesses are in support/"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
from support.helpers import REPO

os.environ.setdefault("RAYDIGITS_NO_PROGRESS", "1")
# the suite's own costs cache: latencies measured while the tests load the machine stay out of the
# user's (~/.cache/raydigits/costs.json), which every later search on this machine would report
os.environ.setdefault("RAYDIGITS_COSTS_CACHE", str(Path(tempfile.mkdtemp(prefix="raydigits-costs-")) / "costs.json"))


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

    return Dataset(
        {"train": mnist.images["train"][:512], "val": mnist.images["val"][:256]},
        {"train": mnist.labels["train"][:512], "val": mnist.labels["val"][:256]},
        {"train": mnist.ids["train"][:512], "val": mnist.ids["val"][:256]},
        mnist.class_names,
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, mnist_dir) -> dict:
    """The shipped smoke search through the real CLI on a real local Ray (support/smoke.py), run once
    for the whole suite: tests/test_search_e2e.py checks it, tests/test_final_unit_e2e.py works on a
    copy. A test that changes the experiment works on a copy of it, unless it puts back what it
    changed (test_search_e2e's `export` and `report` rebuild final/ as it was)."""
    from support.smoke import run_smoke_search

    return run_smoke_search(tmp_path_factory.mktemp("ray_results"))


@pytest.fixture(scope="module")
def s3():
    """A real S3-compatible server (moto) for a module, its endpoint and credentials in os.environ."""
    from support.s3 import s3_server

    with s3_server() as (port, env, client):
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield env, client
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A fresh storage root, once on local disk and once in the S3 server's bucket."""
    from support.s3 import BUCKET

    from raydigits.storage import Location

    if request.param == "local":
        return Location.parse(tmp_path / "store")
    request.getfixturevalue("s3")
    return Location.parse(f"s3://{BUCKET}/t{time.time_ns()}")
