"""Shared fixtures: the real MNIST, prepared once into the repo's data/ (as a user would), and
small real subsets of it for fast tests. Plain helpers and the harnesses are in support/"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.helpers import REPO

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

    return Dataset(
        {"train": mnist.images["train"][:512], "val": mnist.images["val"][:256]},
        {"train": mnist.labels["train"][:512], "val": mnist.labels["val"][:256]},
        {"train": mnist.ids["train"][:512], "val": mnist.ids["val"][:256]},
        mnist.class_names,
    )
