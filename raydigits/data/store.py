"""The prepared dataset on disk: one Parquet file per split (`image_id`, `label`, `pixels`) and a
`manifest.json` (counts, class names, image shape, checksums). Read back as in-memory uint8 arrays."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_path, write_text
from ..errors import UserError
from .sources import Split

MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """What the trainer needs: per split (N, H, W, C) uint8 images, int64 labels, ids; class names."""
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    ids: dict[str, list[str]]
    class_names: list[str]


def write_split(path: Path, split: Split) -> str:
    n, h, w, c = split.images.shape
    pixels = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(h * w * c), n, [None, pa.py_buffer(np.ascontiguousarray(split.images).tobytes())])
    table = pa.table({"image_id": pa.array(split.ids, pa.string()),
                      "label": pa.array(split.labels, pa.int64()),
                      "pixels": pixels})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return digest


def write_store(out_dir: Path, splits: dict[str, Split], class_names: list[str], source: str) -> dict:
    """Write every split, then the manifest last: a store with a manifest is complete."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = list(splits["train"].images.shape[1:])
    manifest = {"source": source, "class_names": list(class_names), "image_shape": shape, "splits": {}}
    for name, split in splits.items():
        file = f"{name}.parquet"
        manifest["splits"][name] = {"count": len(split.ids), "file": file,
                                    "sha256": write_split(out_dir / file, split),
                                    "class_counts": np.bincount(split.labels, minlength=len(class_names)).tolist(),
                                    "skipped": split.skipped}
    write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def read_manifest(data_dir: Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        raise UserError(f"{data_dir}: no prepared dataset (missing {MANIFEST}); "
                        "run `python -m raydigits.data prepare`")
    return json.loads(path.read_text())


def read_split(data_dir: Path, name: str, manifest: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    info = manifest["splits"][name]
    table = pq.read_table(Path(data_dir) / info["file"])
    pixels = table.column("pixels").combine_chunks()
    h, w, c = manifest["image_shape"]
    width = h * w * c
    buf = pixels.buffers()[1]
    images = np.frombuffer(buf, dtype=np.uint8, count=len(pixels) * width,
                           offset=pixels.offset * width).reshape(len(pixels), h, w, c)
    labels = table.column("label").to_numpy().astype(np.int64)
    return images, labels, table.column("image_id").to_pylist()


def load_dataset(data_dir: Path, splits=SPLITS) -> Dataset:
    manifest = read_manifest(data_dir)
    ds = Dataset({}, {}, {}, manifest["class_names"])
    for name in splits:
        if name in manifest["splits"]:
            ds.images[name], ds.labels[name], ds.ids[name] = read_split(data_dir, name, manifest)
    for name in ("train", "val"):
        if name not in ds.images:
            raise UserError(f"{data_dir}: the prepared dataset has no {name} split")
    return ds
