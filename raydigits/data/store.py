"""The prepared dataset on disk: one Parquet file per split (`image_id`, `label`, `pixels`) and a
`manifest.json` (per split: rows, shape, bytes and sha256 of its file; class names and counts).
Read back as in-memory uint8 arrays, every split checked against the manifest first.

A store is replaced as a whole: `write_store` writes a new sibling folder `<store>.tmp-<pid>` and then
swaps it in (old store renamed aside to `<store>.old-<pid>`, new one renamed in, old one deleted), so
a prepare killed at any point leaves the old store or no store, never splits of two preparations.

Checks on load (`read_split`), all from the manifest: the file's size and sha256 (hashing MNIST's
12 MB of Parquet takes ~10 ms, so it is done on every load), then the rows, the pixel shape, the
labels' range and the per-class counts of what was read. Stores written before the manifest had
`format`, `bytes` and per-split `shape` still carry `count`, `image_shape` and `sha256` (recorded
since the first version), so they are verified just as fully; nothing is rewritten.

The manifest itself (format 3) carries `manifest_sha256`, the sha256 of its other keys as canonical
JSON: an edited or damaged manifest is refused, naming it, before anything in it is used. The fields
the loader trusts are checked too: the class names (unique, each one folder name, one count per
class in every split), the image shape (1 to MAX_SIDE pixels a side, 1 or 3 channels), the splits
(train/val/test, each in <split>.parquet) and the format (not newer than this code)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..atomic import atomic_path, pid_alive, write_text
from ..errors import UserError
from .sources import Split

MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
FORMAT = 3  # 3: the manifest's own checksum; 2: per split `shape` and `bytes`; 1 (no `format` key): count, sha256
CHECKSUM_KEY = "manifest_sha256"  # sha256 of the manifest's other keys (`manifest_checksum`)
MAX_SIDE = 4096  # the largest image side a store may declare (prepare makes at most 1024)
CHANNELS = (1, 3)
TMP_TAG, OLD_TAG = ".tmp-", ".old-"  # <store>.tmp-<pid>: being written; <store>.old-<pid>: being swapped out
REPAIR = "prepare it again (`python -m raydigits.data prepare --force ...`)"
SHA_SHOWN = 12  # hex digits of a checksum shown in an error


@dataclass
class Dataset:
    """What the trainer needs: per split (N, H, W, C) uint8 images, int64 labels, ids; class names."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    ids: dict[str, list[str]]
    class_names: list[str]


class SplitInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    count: int = Field(ge=0)
    file: str = Field(pattern=r"^[^/\\]+$")  # a file inside the store, never a path out of it
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int | None = Field(None, ge=0)  # format 2
    shape: list[int] | None = None  # format 2: [count, H, W, C]
    class_counts: list[int] | None = None


class Manifest(BaseModel):
    """What the loader trusts, checked: the class names become folder names (export_image_tree) and
    the model's outputs, the image shape the model's input (export's input shape)."""

    model_config = ConfigDict(extra="allow")
    format: int = Field(1, ge=1, le=FORMAT)
    class_names: list[str] = Field(min_length=1)
    image_shape: list[int] = Field(min_length=3, max_length=3)
    splits: dict[str, SplitInfo]

    @field_validator("class_names")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
                raise ValueError(f"{name!r} is not a class name (one folder name)")
        if len(set(names)) != len(names):
            raise ValueError(f"{next(n for n in names if names.count(n) > 1)!r} given twice")
        return names

    @field_validator("image_shape")
    @classmethod
    def _shape(cls, shape: list[int]) -> list[int]:
        h, w, c = shape
        if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE) or c not in CHANNELS:
            raise ValueError(f"{shape} is not [height, width, channels] of 1-{MAX_SIDE} pixels and 1 or 3 channels")
        return shape

    @model_validator(mode="after")
    def _splits(self) -> "Manifest":
        for name, info in self.splits.items():
            if name not in SPLITS or info.file != f"{name}.parquet":
                raise ValueError(
                    f"split {name!r} in file {info.file!r}: expected one of {list(SPLITS)} in <split>.parquet"
                )
            if info.class_counts is not None and len(info.class_counts) != len(self.class_names):
                raise ValueError(
                    f"split {name}: {len(info.class_counts)} class counts for {len(self.class_names)} class names"
                )
        return self


def manifest_checksum(manifest: dict) -> str:
    """sha256 of the manifest without its checksum key, as canonical JSON (sorted keys, no spaces)."""
    body = {k: v for k, v in manifest.items() if k != CHECKSUM_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------ writing
def write_split(path: Path, split: Split) -> dict:
    """One split's Parquet file (atomically); returns its manifest entry's file facts."""
    n, h, w, c = split.images.shape
    pixels = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(h * w * c), n, [None, pa.py_buffer(np.ascontiguousarray(split.images).tobytes())]
    )
    table = pa.table(
        {"image_id": pa.array(split.ids, pa.string()), "label": pa.array(split.labels, pa.int64()), "pixels": pixels}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
        blob = tmp.read_bytes()
    return {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob), "shape": [n, h, w, c]}


def write_store(out_dir: Path, splits: dict[str, Split], class_names: list[str], source: str) -> dict:
    """Write every split and then the manifest into a fresh sibling folder, then swap it in."""
    out_dir = Path(out_dir)
    remove_stale_siblings(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}{TMP_TAG}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shape = list(splits["train"].images.shape[1:])
        manifest = {
            "format": FORMAT,
            "source": source,
            "class_names": list(class_names),
            "image_shape": shape,
            "splits": {},
        }
        for name, split in splits.items():
            file = f"{name}.parquet"
            manifest["splits"][name] = {
                "count": len(split.ids),
                "file": file,
                **write_split(tmp / file, split),
                "class_counts": np.bincount(split.labels, minlength=len(class_names)).tolist(),
                "skipped": split.skipped,
            }
        manifest[CHECKSUM_KEY] = manifest_checksum(manifest)
        write_text(tmp / MANIFEST, json.dumps(manifest, indent=2))
        _swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _swap_in(new: Path, target: Path) -> None:
    """Rename `new` to `target`, moving an existing `target` aside first and deleting it after."""
    if not target.exists():
        os.rename(new, target)
        return
    old = target.with_name(f"{target.name}{OLD_TAG}{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _siblings(store: Path, tag: str) -> list[tuple[Path, int]]:
    """`<store><tag><pid>` folders beside the store, with their pids."""
    out = []
    if store.parent.is_dir():
        for p in store.parent.glob(f"{store.name}{tag}*"):
            pid = p.name[len(store.name) + len(tag) :]
            if pid.isdigit() and p.is_dir():
                out.append((p, int(pid)))
    return out


def remove_stale_siblings(store: Path) -> None:
    """Delete half-written `<store>.tmp-<pid>` folders that a killed prepare left behind."""
    for path, pid in _siblings(Path(store), TMP_TAG):
        if not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def is_store(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


# ------------------------------------------------------------------ reading and checking
def _missing_store(data_dir: Path) -> UserError:
    if data_dir.exists() and not data_dir.is_dir():
        return UserError(f"data_dir {data_dir}: is a file, not a prepared dataset folder")
    aside = [p for p, pid in _siblings(data_dir, OLD_TAG) if is_store(p) and not pid_alive(pid)]
    if aside:
        return UserError(
            f"{data_dir}: no prepared dataset; a prepare killed while swapping stores left "
            f"the previous one at {aside[0]}: rename it back to {data_dir.name}, or {REPAIR}"
        )
    return UserError(f"{data_dir}: no prepared dataset (missing {MANIFEST}); run `python -m raydigits.data prepare`")


def read_manifest(data_dir: Path) -> dict:
    """The store's manifest, its structure checked (each split's files are checked by `read_split`)."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not path.is_file():
        raise _missing_store(data_dir)
    try:
        raw = json.loads(path.read_bytes())
        _check_checksum(path, raw)
        Manifest.model_validate(raw)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and ValidationError are ValueErrors
        if isinstance(exc, ValidationError):
            err = exc.errors()[0]
            loc, msg = ".".join(str(p) for p in err["loc"]), err["msg"].removeprefix("Value error, ")
            what = f"{loc}: {msg}" if loc else msg
        else:
            what = f"not valid JSON ({str(exc).splitlines()[0][:120]})"
        raise UserError(f"{path}: {what}; {REPAIR}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    return raw


def _check_checksum(path: Path, raw) -> None:
    """A manifest of format 3 or later carries its own checksum, which must match its content.
    (It finds edits and damage; a deliberate forger can recompute it, as with any checksum.)"""
    if not isinstance(raw, dict) or (
        CHECKSUM_KEY not in raw and not (isinstance(raw.get("format"), int) and raw["format"] >= 3)
    ):
        return  # a store written before format 3 (or not a mapping: the structure check says so)
    want = raw.get(CHECKSUM_KEY)
    if not isinstance(want, str):
        raise UserError(f"{path}: no {CHECKSUM_KEY} (every format-3 manifest has one: edited?); {REPAIR}")
    got = manifest_checksum(raw)
    if got != want:
        raise UserError(
            f"{path}: its content does not match its {CHECKSUM_KEY} ({_short(got)} vs {_short(want)}): "
            f"edited or damaged since it was prepared; {REPAIR}"
        )


def _short(sha: str) -> str:
    return sha[:SHA_SHOWN] + "…"


def _split_bytes(data_dir: Path, name: str, info: dict) -> bytes:
    """The split's file, checked against the manifest's size and sha256."""
    path = Path(data_dir) / info["file"]
    where = f"{data_dir}: split {name}: {info['file']}"
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{where}: missing (the manifest lists it); {REPAIR}") from None
    except OSError as exc:
        raise UserError(f"{where}: cannot read ({exc.strerror}); {REPAIR}") from None
    if info.get("bytes") is not None and len(blob) != info["bytes"]:
        raise UserError(
            f"{where}: {len(blob):,} bytes, the manifest says {info['bytes']:,} (truncated or replaced); {REPAIR}"
        )
    sha = hashlib.sha256(blob).hexdigest()
    if sha != info["sha256"]:
        raise UserError(
            f"{where}: sha256 {_short(sha)} differs from the manifest's {_short(info['sha256'])} "
            f"(changed since it was prepared); {REPAIR}"
        )
    return blob


def verify_store(data_dir: Path) -> dict:
    """Manifest structure and every split file's size and checksum (no decoding); the manifest."""
    manifest = read_manifest(data_dir)
    for name, info in manifest["splits"].items():
        _split_bytes(data_dir, name, info)
    return manifest


def read_split(data_dir: Path, name: str, manifest: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    info = manifest["splits"][name]
    blob = _split_bytes(data_dir, name, info)
    where = f"{data_dir}: split {name}: {info['file']}"
    h, w, c = manifest["image_shape"]
    width = h * w * c
    try:
        table = pq.read_table(pa.BufferReader(blob))
        pixels = table.column("pixels").combine_chunks()
        labels = table.column("label").to_numpy().astype(np.int64)
        ids = table.column("image_id").to_pylist()
    except (pa.ArrowException, KeyError) as exc:
        raise UserError(f"{where}: not a store split ({str(exc).splitlines()[0][:120]}); {REPAIR}") from None
    rows, shape = len(pixels), info.get("shape")
    if rows != info["count"]:
        raise UserError(f"{where}: {rows:,} rows, the manifest says {info['count']:,}; {REPAIR}")
    if pixels.type.byte_width != width:
        raise UserError(
            f"{where}: images of {pixels.type.byte_width} bytes, the manifest's image shape "
            f"{[h, w, c]} needs {width}; {REPAIR}"
        )
    if shape is not None and shape != [info["count"], h, w, c]:
        raise UserError(
            f"{where}: the manifest says shape {shape}, but also {info['count']} rows of {[h, w, c]} images; {REPAIR}"
        )
    n_classes = len(manifest["class_names"])
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserError(
            f"{where}: label {int(labels.max() if labels.max() >= n_classes else labels.min())} "
            f"outside the manifest's {n_classes} classes; {REPAIR}"
        )
    counts = info.get("class_counts")
    if counts is not None and np.bincount(labels, minlength=n_classes).tolist() != list(counts):
        raise UserError(
            f"{where}: per-class counts {np.bincount(labels, minlength=n_classes).tolist()}, "
            f"the manifest says {list(counts)}; {REPAIR}"
        )
    images = np.frombuffer(
        pixels.buffers()[1], dtype=np.uint8, count=len(pixels) * width, offset=pixels.offset * width
    ).reshape(len(pixels), h, w, c)
    return images, labels, ids


def load_dataset(data_dir: Path, splits=SPLITS) -> Dataset:
    manifest = read_manifest(data_dir)
    ds = Dataset({}, {}, {}, manifest["class_names"])
    for name in ("train", "val"):
        if name not in manifest["splits"]:
            raise UserError(f"{data_dir}: the prepared dataset has no {name} split")
    for name in splits:
        if name in manifest["splits"]:
            ds.images[name], ds.labels[name], ds.ids[name] = read_split(data_dir, name, manifest)
    return ds
