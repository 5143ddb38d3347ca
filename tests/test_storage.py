"""The storage layer (raydigits/storage.py) against a local folder and a real S3-compatible server
(moto's server mode), and the launch.py checks built on it that refuse bad names, places and
--resume options before Ray starts."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.helpers import REPO
from support.s3 import BUCKET, keys

from raydigits.errors import UserError
from raydigits.storage import Location, check_name, staged


def test_files_round_trip_and_folders_list(root):
    exp = root / "exp"
    assert not exp.exists() and exp.iterdir() == [] and exp.glob("*") == []
    exp.mkdir()
    (exp / "a.json").write_text('{"x": 1}')
    (exp / "b.json").write_bytes(b"\x00\x01")
    (exp / "sub" / "c.txt").write_text("deep")
    assert (exp / "a.json").read_text() == '{"x": 1}' and (exp / "b.json").read_bytes() == b"\x00\x01"
    assert (exp / "a.json").is_file() and not (exp / "a.json").is_dir()
    assert (exp / "sub").is_dir() and exp.is_dir() and exp.exists()
    assert [c.name for c in exp.iterdir()] == ["a.json", "b.json", "sub"]
    assert [c.name for c in exp.glob("*.json")] == ["a.json", "b.json"]
    assert (exp / "sub" / "c.txt").parent == exp / "sub" and (exp / "sub").name == "sub"
    with pytest.raises(FileNotFoundError):
        (exp / "missing").read_text()
    (exp / "a.json").write_text("replaced")
    assert (exp / "a.json").read_text() == "replaced"
    (exp / "sub").delete()
    assert not (exp / "sub").exists() and [c.name for c in exp.iterdir()] == ["a.json", "b.json"]


def test_local_writes_leave_no_temporary_files(tmp_path):
    loc = Location.parse(tmp_path) / "x.txt"
    for i in range(3):
        loc.write_text(str(i))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"] and loc.read_text() == "2"


def test_staged_folder_is_published_whole_and_only_on_success(root):
    final = root / "exp" / "final"
    with staged(final) as out:
        (out / "pre.csv").write_text("id,label\n")
        (out / "plots").mkdir()
        (out / "plots" / "p.png").write_bytes(b"png")
    assert (final / "pre.csv").read_text() == "id,label\n" and (final / "plots" / "p.png").read_bytes() == b"png"
    other = root / "exp" / "other"
    with pytest.raises(RuntimeError):
        with staged(other) as out:
            (out / "half.csv").write_text("x")
            raise RuntimeError("the stage failed")
    assert not other.exists()  # nothing published, locally or remotely
    with staged(final) as out:  # staging again into a folder that exists: replaced whole
        (out / "pre.csv").write_text("id,label\n1,7\n")
    assert (final / "pre.csv").read_text() == "id,label\n1,7\n" and not (final / "plots").exists()


def test_location_pickles_as_its_uri_and_works_after(root):
    loc = root / "p.txt"
    loc.write_text("hi")
    loc.read_text()  # the filesystem object is built and cached
    back = pickle.loads(pickle.dumps(loc))
    assert back == loc and back._fs is None  # no filesystem object travels (a Ray worker builds its own)
    assert back.read_text() == "hi"


def test_s3_objects_are_where_the_uri_says(s3):
    env, client = s3
    loc = Location.parse(f"s3://{BUCKET}/deep/er/")  # a trailing slash is the same place
    assert str(loc) == f"s3://{BUCKET}/deep/er" and loc.local is None and loc.tune_path == str(loc)
    (loc / "n" / "f.txt").write_text("x")
    assert keys(client, "deep/er/n/") == ["deep/er/n/f.txt"]


@pytest.mark.parametrize(
    "text, expect",
    [
        ("relative/dir", str(Path.cwd() / "relative/dir")),
        ("file:///tmp/abs/dir", "/tmp/abs/dir"),  # file:// is a local folder, not ./file:/tmp/...
        ("~/x", str(Path.home() / "x")),
    ],
)
def test_local_paths_and_file_uris_are_plain_folders(text, expect):
    loc = Location.parse(text)
    assert loc.local == Path(expect) and str(loc / "n") == str(Path(expect) / "n")


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "empty"),
        ("file://relative/x", "absolute path"),
        ("foo://bucket/x", "not a storage URI pyarrow can open"),
        ("s3://", "names no bucket"),
        ("~nosuchuser_raydigits/x", "cannot expand '~nosuchuser_raydigits' \\(no such user's home folder\\)"),
        ("gopher://a\nb", "^--storage-path 'gopher://a\\\\nb': not a storage URI"),  # one line: quoted
    ],
)
def test_bad_storage_paths_are_named(text, words):
    with pytest.raises(UserError, match=words) as err:
        Location.parse(text, "--storage-path")
    assert "--storage-path" in str(err.value)


def test_missing_bucket_and_unreachable_store_are_refused(s3, monkeypatch):
    with pytest.raises(UserError, match="no bucket 'nope'"):
        Location.parse("s3://nope/x").check_writable()
    Location.parse(f"s3://{BUCKET}/x").check_writable()  # the bucket exists: fine
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(UserError, match="cannot reach the storage"):
        Location.parse(f"s3://{BUCKET}/x").check_writable()


def test_a_store_that_does_not_answer_is_refused_within_the_probe_time(monkeypatch, capsys):
    """gs:// without credentials (and without a network, as here): pyarrow's GCS client would retry
    silently for 15 minutes; launch.py gives up after the probe time with one line."""
    from raydigits import cli
    from raydigits.storage import PROBE_ENV

    monkeypatch.setenv(PROBE_ENV, "2")
    started = time.monotonic()
    code = cli.main(["--search-space", "smoke", "--storage-path", "gs://raydigits-no-such-bucket/r"])
    took = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --storage-path gs://raydigits-no-such-bucket/r: ")
    assert "no answer from the storage in 2 s" in err[0] or "cannot reach the storage" in err[0], err[0]
    assert took < 10
    monkeypatch.setenv(PROBE_ENV, "soon")
    with pytest.raises(UserError, match=f"{PROBE_ENV}='soon': not a number"):
        Location.parse("gs://raydigits-no-such-bucket/r").check_writable()


@pytest.mark.parametrize(
    "name",
    ["..", ".", "../x", "a/b", "/abs", "a\\b", "-rf", ".hidden", "", "x" * 201, "a\0b", "tab\there", "new\nline"],
)
def test_experiment_names_are_one_folder_name(name):
    with pytest.raises(UserError, match="one folder name"):
        check_name(name)


@pytest.mark.parametrize("name", ["smoke_20261128-101500", "a.b", "run+1", "ünïcode", "x" * 200])
def test_good_experiment_names_pass(name):
    assert check_name(name) == name


def _cli(args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "launch.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _one_error(proc, *words):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert "Ray dashboard" not in proc.stdout  # refused before Ray started


def test_launch_refuses_names_places_and_resume_options_before_ray(tmp_path, s3):
    env, client = s3
    store = tmp_path / "results"
    _one_error(
        _cli(["--search-space", "smoke", "--storage-path", str(store), "--name", "../../escape"]),
        "--name",
        "'../../escape'",
        "one folder name",
    )
    assert not store.exists() and not (tmp_path.parent / "escape").exists()
    taken = store / "taken"
    taken.mkdir(parents=True)
    (taken / "raydigits_search.yaml").write_text("name: x\n")
    _one_error(
        _cli(["--search-space", "smoke", "--storage-path", str(store), "--name", "taken"]),
        "--name taken",
        "already holds a search",
        f"--resume {taken}",
    )
    (store / "junk").mkdir()
    (store / "junk" / "notes.txt").write_text("mine")
    _one_error(
        _cli(["--search-space", "smoke", "--storage-path", str(store), "--name", "junk"]),
        "--name junk",
        "not an empty folder",
    )
    assert (store / "junk" / "notes.txt").read_text() == "mine"
    for extra, flag in (
        [["--num-samples", "9"], "--num-samples"],
        [["--set", "lr=0.1"], "--set"],
        [["--storage-path", "elsewhere"], "--storage-path"],
        [["--name", "n"], "--name"],
        [["--gpus-per-trial", "auto"], "--gpus-per-trial"],
        [["--seed", "3"], "--seed"],
    ):
        _one_error(_cli(["--resume", str(taken), *extra]), "--resume", flag, "cannot change a saved search")
    _one_error(
        _cli(["--search-space", "smoke", "--storage-path", "s3://no-such-bucket/r"], env),
        "--storage-path s3://no-such-bucket/r",
        "no bucket",
    )
    _one_error(_cli(["--search-space", "smoke", "--storage-path", "gopher://x/y"]), "--storage-path gopher://x/y")
    _one_error(_cli(["--resume", f"s3://{BUCKET}/nothing/here"], env), "not a raydigits experiment")
    assert keys(client, "nothing/") == []


def test_location_identity_joining_and_coercion(tmp_path):
    from raydigits.storage import as_location

    a, b = Location.parse(tmp_path / "a"), Location.parse(tmp_path / "b")
    assert a != b and a == Location.parse(str(tmp_path / "a")) and len({a, Location(a.uri)}) == 1
    assert a != str(a)  # a Location never equals a plain string
    assert a / "/x/" == a / "x" and str(Location.parse("s3://bkt/p") / "/x/") == "s3://bkt/p/x"
    assert as_location(str(tmp_path / "a")) == a and as_location(a) is a
    assert as_location("s3://bkt/p/") == Location("s3://bkt/p")
    with pytest.raises(UserError, match="names no bucket"):
        Location.parse("s3:///")
    (a / "deep" / "er").mkdir()
    (a / "deep" / "er").mkdir()  # again: a folder that exists is fine
    assert (a / "deep" / "er").is_dir()


def test_local_check_writable_climbs_to_the_first_existing_folder(tmp_path):
    Location.parse(tmp_path / "new" / "deeper").check_writable()  # created later: fine
    Location.parse(tmp_path).check_writable()
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is not a writable folder"):
        Location.parse(tmp_path / "f" / "sub").check_writable("--storage-path")
    assert not (tmp_path / "new").exists()  # nothing created


def test_names_and_parents_keep_spaces_and_stay_in_their_store(tmp_path):
    """A file name with a space is one name (not the part after the space); a parent stays in its store."""
    loc = Location.parse(tmp_path / "my runs" / "best model.pt")
    assert (
        loc.name == "best model.pt" and loc.parent.name == "my runs" and loc.parent.parent == Location.parse(tmp_path)
    )
    remote = Location.parse("s3://bkt/my runs/best model.pt")
    assert remote.name == "best model.pt" and remote.parent == Location("s3://bkt/my runs")
    assert remote.parent.parent == Location("s3://bkt") and remote.parent.parent.name == "bkt"


def test_a_store_that_cannot_be_opened_is_one_clear_error():
    """pyarrow cannot open this HDFS (no JVM / libhdfs here, or no such host): a UserError naming the URI
    and pyarrow's reason."""
    with pytest.raises(UserError) as err:
        Location.parse("hdfs://nohost:1/x").exists()
    cause = err.value.__context__  # pyarrow's error (hidden from the user's traceback by `from None`)
    assert isinstance(cause, (ValueError, OSError, ImportError))
    assert str(err.value) == f"hdfs://nohost:1/x: cannot open this storage ({str(cause).strip().splitlines()[0]})"


class _CutShort:
    """The real S3 filesystem whose first `fails` GETs break mid-stream, as moto's server does when
    the object is replaced while it streams."""

    def __init__(self, fs, fails):
        self.fs, self.fails = fs, fails

    def open_input_stream(self, path):
        if self.fails:
            self.fails -= 1
            raise OSError("AWS Error INTERNAL_FAILURE during GetObject operation: Failed to flush")
        return self.fs.open_input_stream(path)

    def __getattr__(self, name):
        return getattr(self.fs, name)


def test_an_object_read_cut_short_is_read_again_and_a_lasting_failure_is_one_error(s3):
    loc = Location.parse(f"s3://{BUCKET}/flaky/f.txt")
    loc.write_text("whole")
    fs, path = loc._fs_path
    loc._fs = (_CutShort(fs, fails=2), path)
    assert loc.read_text() == "whole"  # two cut-short reads, then the bytes
    loc._fs = (_CutShort(fs, fails=99), path)
    with pytest.raises(UserError, match=r"flaky/f\.txt: cannot read it \(AWS Error INTERNAL_FAILURE"):
        loc.read_bytes()
    gone = Location.parse(f"s3://{BUCKET}/flaky/gone.txt")
    gone._fs = (_CutShort(fs, fails=99), f"{BUCKET}/flaky/gone.txt")
    with pytest.raises(FileNotFoundError):
        gone.read_bytes()  # a read that fails because the object is gone says so
