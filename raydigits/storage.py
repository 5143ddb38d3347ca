"""Where experiments live: a local folder or any URI pyarrow understands (s3://, gs://, file://, ...).

Every read and write of raydigits' own files in an experiment (the spec, the run record, the outcome
record, Tune's state and results as the final stage reads them, the final stage's outputs, export,
resume, the "already holds a search" check) goes through a `Location`. Ray Tune is handed the same
place (`Location.tune_path`) and does its own writing through pyarrow too.

A local location writes atomically (temp file + rename); a remote one writes each file with one PUT,
which object stores make visible all at once. Credentials and endpoints come from the environment as
pyarrow reads them (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION,
AWS_ENDPOINT_URL for an S3-compatible server); on a cluster every node needs them."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath

from . import env
from .atomic import STAGE_TAG, remove_dead_stages, swap_folder, write_bytes
from .errors import UserError

# An experiment name is one folder name: letters, digits and . _ - + = @ , (no separators, no
# leading dot or dash, so never "..", a hidden folder or something that reads as an option)
NAME_RE = re.compile(r"[\w+=@,-][\w.+=@,-]{0,199}")
ERROR_CHARS = 200  # the part of a storage error shown in our one-line message
# URI schemes pyarrow.fs.FileSystem.from_uri opens (besides file://); the filesystem itself is made at
# first use, since making one may already contact the store (S3 asks a bucket for its region)
SCHEMES = {"s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "mock"}
# how long the check before a search waits for an object store's first answer: without credentials
# pyarrow's GCS client retries for 15 minutes, silently (RAYDIGITS_STORAGE_PROBE_S overrides it)
PROBE_ENV, PROBE_S = env.PROBE_ENV, 30.0


def check_name(name: str, what: str = "--name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.startswith("-"):
        raise UserError(
            f"{what} {name!r}: an experiment name is one folder name (letters, digits and "
            "._-+=@, only; no '/', no '..', not starting with '.' or '-', at most 200 characters)"
        )
    return name


# An object read is tried once per entry, after waiting that many seconds, before it is an error.
READ_ATTEMPT_WAITS_S = (0.0, 0.2, 0.5)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:ERROR_CHARS]


# `scheme:` then slashes: a URI when two follow; `s3:/b` (a slash lost, as argparse's Path folds
# `s3://b`) is refused rather than made a local folder named `s3:`
URI_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(/*)(.*)", re.DOTALL)
NO_BUCKET_OK = {"hdfs", "viewfs", "mock"}  # schemes whose URI may leave the host out (scheme:///path)


def _shown(what: str, text: str) -> str:
    text = text if text.isprintable() else repr(text)  # a line break would split our one line
    return f"{what} {text}" if what else text


def _expanded(text: str, what: str) -> Path:
    """A local path with `~` / `~user` expanded (also a literal '~' from an env file)."""
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~user that does not exist, or no home directory
        head = text.split("/", 1)[0]
        raise UserError(f"{_shown(what, text)}: cannot expand {head!r} (no such user's home folder)") from None


def _file_uri_path(text: str, rest: str, what: str) -> str:
    """The absolute local path a file:// URI names (file:///abs or file://localhost/abs)."""
    from urllib.parse import unquote

    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    if not rest.startswith("/"):
        raise UserError(f"{_shown(what, text)}: a file:// URI needs an absolute path (file:///abs/path)")
    if "?" in rest or "#" in rest:
        raise UserError(f"{_shown(what, text)}: a file:// URI takes no ?options or #fragment")
    return unquote(rest)


def _remote_uri(text: str, scheme: str, rest: str, what: str) -> str:
    """A checked object-store URI: `scheme://path[?query]`, trailing slashes dropped."""
    from urllib.parse import parse_qsl

    path, sep, query = rest.partition("?")
    bad = next((c for c in text if ord(c) < 32 or c in "#\x7f"), None)
    if bad is not None:
        raise UserError(f"{_shown(what, repr(text))}: a storage URI cannot hold {bad!r}")
    path = path.rstrip("/")
    segments = path.split("/")
    if not path.strip("/") or (segments[0] == "" and scheme not in NO_BUCKET_OK):
        raise UserError(f"{_shown(what, text)}: the URI names no bucket or folder ({scheme}://BUCKET/PREFIX)")
    if any(seg in (".", "..") for seg in segments) or "" in segments[1:]:
        raise UserError(f"{_shown(what, text)}: a storage URI's path has no '.', '..' or empty ('//') parts")
    if not query:
        sep = ""  # `s3://b/p?`: no options
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if sep else []
    except ValueError:
        pairs = [("", "")]
    if any(not key for key, _ in pairs):
        raise UserError(f"{_shown(what, text)}: malformed ?options (expected ?key=value&key=value)")
    return f"{scheme}://{path}{sep}{query}"


def parse_location(text: str | os.PathLike, what: str = "--storage-path") -> Location:
    """Every place a user names (a folder, a file, a URI) read one way: `~` expanded, a local path
    made absolute, file:// a local path, any other scheme one pyarrow opens, its ?options kept apart
    from its path (`/` joins names to the path). Pure: nothing is created or contacted. Bad input
    raises a UserError naming `what` and the text; nothing else is raised."""
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    if not isinstance(text, str):
        raise UserError(f"{what} {text!r}: not a path")
    if not text.strip() or "\0" in text:
        raise UserError(f"{_shown(what, repr(text))}: empty or not a path")
    m = URI_RE.fullmatch(text)
    scheme = m.group(1).lower() if m else ""
    if m and m.group(2).startswith("//"):
        rest = text[len(m.group(1)) + 3 :]
        if scheme == "file":
            return Location(_absolute(Path(_file_uri_path(text, rest, what)), text, what))
        if scheme not in SCHEMES:
            raise UserError(
                f"{_shown(what, text)}: not a storage URI pyarrow can open (scheme {scheme!r}; "
                f"use a local path or one of {', '.join(s + '://' for s in sorted(SCHEMES | {'file'}))})"
            )
        return Location(_remote_uri(text, scheme, rest, what))
    if m and scheme in SCHEMES | {"file"}:
        raise UserError(
            f"{_shown(what, text)}: reads as a {scheme}:// URI with a '/' missing; write "
            f"{scheme}://{m.group(3).lstrip('/')} (or ./{text} for a local folder of that name)"
        )
    return Location(_absolute(_expanded(text, what), text, what))


def _absolute(path: Path, text: str, what: str) -> str:
    try:
        return str(path.absolute())
    except OSError as exc:  # the working folder was deleted
        raise UserError(f"{_shown(what, text)}: cannot make it absolute ({exc.strerror or exc})") from None


def local_path(text: str | os.PathLike, what: str, purpose: str = "this is read and written on this machine") -> Path:
    """A place that must be on this machine's disk (a dataset, a weights file, an image folder, a
    training run's folder): `~` expanded, file:// accepted, a relative path kept relative; an
    object-store URI is refused in one line that says why (`purpose`)."""
    loc = parse_location(text, what)
    if loc.local is None:
        raise UserError(f"{_shown(what, str(text))}: must be a local path ({purpose}); not an object-store URI")
    text = os.fspath(text)
    return loc.local if URI_RE.fullmatch(text) else _expanded(text, what)


def path_arg(purpose: str = "this is read and written on this machine"):
    """An argparse `type=` for a local path: what `local_path` accepts, else argparse's one-line
    usage error (exit 2) before the command runs. Never `type=Path`: it folds `s3://b` to `s3:/b`."""
    import argparse

    def convert(text: str) -> Path:
        try:
            return local_path(text, "", purpose)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


class Location:
    """A file or folder in local or remote storage, with the small Path-like API raydigits needs.
    Pickles as its URI (the filesystem object is rebuilt where it is unpickled)."""

    def __init__(self, uri: str):
        self.uri = uri
        self._fs = None

    # ------------------------------------------------------------ naming
    @classmethod
    def parse(cls, text: str | os.PathLike, what: str = "--storage-path") -> "Location":
        """`parse_location` (the one parser of every place a user names)."""
        return parse_location(text, what)

    def _parts(self) -> tuple[str, str, str]:
        """(scheme, path, query) of a remote URI: `s3://b/p?endpoint_override=h` → ('s3', 'b/p',
        '?endpoint_override=h'). Names are joined to the path, never to the query."""
        scheme, rest = self.uri.split("://", 1)
        path, sep, query = rest.partition("?")
        return scheme, path, sep + query

    @property
    def local(self) -> Path | None:
        """The local path, or None for remote storage."""
        return None if "://" in self.uri else Path(self.uri)

    @property
    def tune_path(self) -> str:
        """What Ray Tune's storage_path / restore take for this place."""
        return self.uri

    @property
    def name(self) -> str:
        if self.local is not None:
            return self.local.name
        return PurePosixPath(self._parts()[1]).name

    @property
    def parent(self) -> "Location":
        if self.local is not None:
            return Location(str(self.local.parent))
        scheme, path, query = self._parts()
        return Location(f"{scheme}://{PurePosixPath(path).parent}{query}")

    def __truediv__(self, part: str) -> "Location":
        part = str(part).strip("/")
        if self.local is not None:
            return Location(str(self.local / part))
        scheme, path, query = self._parts()
        return Location(f"{scheme}://{path}/{part}{query}")

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __getstate__(self) -> dict:
        return {"uri": self.uri, "_fs": None}

    # ------------------------------------------------------------ the filesystem
    @property
    def _fs_path(self):
        import pyarrow.fs as pafs

        if self._fs is None:
            if self.local is not None:
                self._fs = (pafs.LocalFileSystem(), str(self.local))
            else:
                try:
                    self._fs = pafs.FileSystem.from_uri(self.uri)
                except (ValueError, OSError, ImportError) as exc:
                    raise UserError(f"{self}: cannot open this storage ({_first_line(exc)})") from None
        return self._fs

    def _info(self):
        import pyarrow.fs as pafs

        fs, path = self._fs_path
        try:
            return fs.get_file_info(path).type
        except OSError as exc:
            raise UserError(f"{self}: storage error ({_first_line(exc)})") from None
        except Exception:  # noqa: BLE001 — pyarrow's errors for an unreadable path
            return pafs.FileType.NotFound

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._info() != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._info() == pafs.FileType.Directory

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info() == pafs.FileType.File

    def iterdir(self) -> list["Location"]:
        """The entries directly under this folder ([] when it does not exist)."""
        import pyarrow.fs as pafs

        if self.local is not None:
            return [Location(str(p)) for p in sorted(self.local.iterdir())] if self.local.is_dir() else []
        fs, path = self._fs_path
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        except OSError as exc:
            raise UserError(f"{self}: storage error ({_first_line(exc)})") from None
        return [self / PurePosixPath(i.path).name for i in sorted(infos, key=lambda i: i.path)]

    def glob(self, pattern: str) -> list["Location"]:
        """Entries of this folder whose name matches `pattern` (one level, fnmatch), sorted."""
        return [c for c in self.iterdir() if fnmatch.fnmatchcase(c.name, pattern)]

    def read_bytes(self) -> bytes:
        if self.local is not None:
            return self.local.read_bytes()
        fs, path = self._fs_path
        for wait in READ_ATTEMPT_WAITS_S:
            # A GET cut short (a server error mid-stream, an object replaced while it was read) is
            # read again: readers of a folder being republished see the old bytes, the new ones or
            # no object, never a storage error.
            time.sleep(wait)
            try:
                with fs.open_input_stream(path) as f:
                    return f.read()
            except FileNotFoundError:
                raise
            except OSError as exc:
                if not self.exists():
                    raise FileNotFoundError(str(self)) from None
                error = exc
        raise UserError(f"{self}: cannot read it ({_first_line(error)})") from None

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        if self.local is not None:
            write_bytes(self.local, data)
            return
        fs, path = self._fs_path
        try:
            with fs.open_output_stream(path) as f:
                f.write(data)
        except OSError as exc:
            raise UserError(f"{self}: cannot write it ({_first_line(exc)})") from None

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def mkdir(self) -> None:
        """Create the folder (and its parents) where folders exist: a local disk. Object stores
        have none to create."""
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)

    def delete(self) -> None:
        """Remove this file or folder tree (nothing when it does not exist)."""
        import pyarrow.fs as pafs

        fs, path = self._fs_path
        kind = self._info()
        if kind == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif kind == pafs.FileType.File:
            fs.delete_file(path)

    # ------------------------------------------------------------ whole folders
    def upload(self, local_dir: Path) -> None:
        """Copy every file under `local_dir` to the same relative place under this folder."""
        local_dir = Path(local_dir)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        if self.local is not None:
            for f in files:
                write_bytes(self.local / f.relative_to(local_dir), f.read_bytes())
            return
        fs, path = self._fs_path  # one filesystem for every file (making one may ask the store)
        try:
            for f in files:
                with fs.open_output_stream(f"{path}/{f.relative_to(local_dir).as_posix()}") as out:
                    out.write(f.read_bytes())
        except OSError as exc:
            raise UserError(f"{self}: cannot write it ({_first_line(exc)})") from None

    def download(self, local_dir: Path) -> None:
        """Copy every file under this folder to the same relative place under `local_dir`."""
        import pyarrow.fs as pafs

        fs, path = self._fs_path
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
            for info in infos:
                if info.type == pafs.FileType.File:
                    target = Path(local_dir) / info.path[len(path) :].lstrip("/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with fs.open_input_stream(info.path) as f:
                        target.write_bytes(f.read())
        except OSError as exc:
            raise UserError(f"{self}: cannot read it ({_first_line(exc)})") from None

    def check_writable(self, what: str = "--storage-path", shown=None) -> None:
        """Refuse, before any work starts and without creating anything, a place raydigits could not
        write into: a local folder's first existing ancestor must be a writable folder; an object
        store's bucket must exist and answer with these credentials."""
        if self.local is not None:
            existing = self.local
            while not existing.exists():
                existing = existing.parent
            if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
                raise UserError(f"{what} {shown or self}: cannot write there ({existing} is not a writable folder)")
            return
        import pyarrow.fs as pafs

        def probe():  # making the filesystem may contact the store already (S3 asks for the region)
            fs, path = self._fs_path
            bucket = path.split("/", 1)[0]
            kind = fs.get_file_info(bucket).type
            fs.get_file_info(path)
            return bucket, kind

        bucket, kind = _within_probe_time(probe, f"{what} {self}")
        if kind != pafs.FileType.Directory:
            raise UserError(f"{what} {self}: no bucket {bucket!r} there (create it first)")


def _within_probe_time(fn, shown: str):
    """fn() (a storage request), or a UserError when it fails or gives no answer within the probe
    time. The request runs in a daemon thread: one that never returns does not keep the CLI alive."""
    wait = env.seconds(PROBE_ENV, PROBE_S)
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except Exception as exc:  # noqa: BLE001 — reported below, in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="raydigits-storage-probe", daemon=True)
    thread.start()
    thread.join(wait)
    if thread.is_alive():
        raise UserError(
            f"{shown}: no answer from the storage in {wait:g} s (check its credentials and the "
            f"network; {PROBE_ENV} sets the wait)"
        )
    if "error" in box:
        if isinstance(box["error"], OSError):
            raise UserError(f"{shown}: cannot reach the storage ({_first_line(box['error'])})") from None
        raise box["error"]
    return box["value"]


def as_location(place: "Location | str | os.PathLike") -> Location:
    """A Location for a Location, a local path or a URI (raydigits' own paths: already checked)."""
    return place if isinstance(place, Location) else Location.parse(place, "path")


@contextlib.contextmanager
def staged(folder: Location, marker: str | None = None, start_from_current: bool = False):
    """A local folder to write `folder`'s new content into, published as a whole on success and not
    at all on failure. `marker` names the completion marker the caller writes last into the staging
    folder: it is published last too, so a reader that finds it finds the rest. `start_from_current`:
    the staging folder starts as a copy of the folder as it is (a command that rewrites one file).

    Local: a sibling `<folder>.tmp-<pid>`, then swapped in by two renames (atomic.swap_folder): a
    reader sees the old folder or the new one. Object stores have no rename: see `_publish`."""
    if folder.local is not None:
        target = folder.local
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_stages(target)
        tmp = target.with_name(f"{target.name}{STAGE_TAG}{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if start_from_current and target.is_dir():
                shutil.copytree(target, tmp)
            else:
                tmp.mkdir()
            yield tmp
            _check_marker(tmp, marker, folder)
            swap_folder(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="raydigits-stage-") as tmp:
        if start_from_current:
            folder.download(Path(tmp))
        yield Path(tmp)
        _check_marker(Path(tmp), marker, folder)
        _publish(folder, Path(tmp), marker)


def _check_marker(local: Path, marker: str | None, folder: Location) -> None:
    if marker is not None and not (local / marker).is_file():
        raise RuntimeError(f"{folder}: the staged folder has no {marker}; not published")


def _publish(folder: Location, local: Path, marker: str | None) -> None:
    """A staged folder published on an object store: uploaded to a sibling prefix `<folder>.tmp-<pid>/`
    first (the slow part: the old folder stays whole meanwhile), then the old marker deleted (from
    here a reader sees the folder as incomplete), the old objects deleted, the staged ones copied in
    (server-side) and the marker copied LAST, then the staging prefix deleted. A kill at any point
    leaves the previous complete folder or one without a marker, never a marked mixture."""
    stage = folder.parent / f"{folder.name}{STAGE_TAG}{os.getpid()}"
    stage.delete()
    try:
        stage.upload(local)
        names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        ordered = [n for n in names if n != marker] + ([marker] if marker in names else [])
        fs, dest = folder._fs_path
        _, src = stage._fs_path
        try:
            if marker is not None:
                (folder / marker).delete()
            folder.delete()
            for name in ordered:
                fs.copy_file(f"{src}/{name}", f"{dest}/{name}")
        except OSError as exc:
            raise UserError(f"{folder}: cannot publish it ({_first_line(exc)})") from None
    finally:  # the staging prefix goes, published or not (a killed writer's stays: no pid to check there)
        with contextlib.suppress(UserError, OSError):
            stage.delete()
