"""Write files so that a reader never sees half of one: write a temp file beside it, then rename; and
folders likewise, as a whole: write a sibling folder, then swap it in."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path in the target's folder; on success rename it over `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ------------------------------------------------------------------ whole folders
STAGE_TAG, ASIDE_TAG = ".tmp-", ".old-"  # <folder>.tmp-<pid>: being written; <folder>.old-<pid>: being swapped out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_siblings(target: Path, tag: str) -> list[Path]:
    """`<target><tag><pid>` folders beside `target` whose process (pid) is gone, newest first."""
    if not target.parent.is_dir():
        return []
    out = []
    for p in target.parent.glob(f"{target.name}{tag}*"):
        pid = p.name[len(target.name) + len(tag) :]
        if pid.isdigit() and p.is_dir() and not pid_alive(int(pid)):
            out.append(p)
    return sorted(out, key=lambda p: p.stat().st_mtime, reverse=True)


def left_aside(target: str | os.PathLike) -> Path | None:
    """The previous `target` that a swap killed between its two renames left at `<target>.old-<pid>`."""
    target = Path(target)
    found = _dead_siblings(target, ASIDE_TAG)
    return found[0] if found and not target.exists() else None


def remove_dead_stages(target: str | os.PathLike) -> None:
    """Clean up after killed writers of `target`: delete the `<target>.tmp-<pid>` folders they were
    writing; put back the previous folder a swap killed between its renames left aside (when
    `target` is missing), and delete any other folder left aside."""
    target = Path(target)
    for p in _dead_siblings(target, STAGE_TAG):
        shutil.rmtree(p, ignore_errors=True)
    aside = _dead_siblings(target, ASIDE_TAG)
    if aside and not target.exists():
        os.rename(aside.pop(0), target)
    for p in aside:
        shutil.rmtree(p, ignore_errors=True)


def swap_folder(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the folder `new` (a sibling of `target`) in place of `target`: the old one renamed aside to
    `<target>.old-<pid>`, the new one renamed in, the old one deleted. A reader sees the old folder or
    the new one; a kill between the two renames leaves none, with the old one beside it."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        return
    old = target.with_name(f"{target.name}{ASIDE_TAG}{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)
