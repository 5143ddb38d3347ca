"""final/ is written as a unit, fast and without Ray: `storage.staged` publishes a folder whole (a
local sibling swapped in by renames; on an object store a staged prefix copied in with the marker
last, against a real S3-compatible server), and final/'s completion marker
(experiment/completion.py) tells its readers whether it is missing, incomplete, stale or current,
and whether a file changed since it was written. The commands on a real search are in
tests/test_final_unit_e2e.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from support.helpers import REPO
from support.s3 import BUCKET

from raydigits.errors import UserError
from raydigits.experiment import Trial
from raydigits.experiment.completion import final_state, write_marker
from raydigits.experiment.layout import FINAL_MARKER
from raydigits.storage import Location, staged


def _trial(run: str, trial_id: str, epochs: int) -> Trial:
    results = tuple({"epoch": e, "training_iteration": e, "timestamp": 1_000 + e} for e in range(1, epochs + 1))
    return Trial(run, trial_id, "TERMINATED", "completed", epochs, {}, results, Location.parse("/nowhere"))


TRIALS = [_trial("search", "a", 3), _trial("search", "b", 2)]


def _write_final(folder: Location, trials, files: dict[str, bytes]) -> None:
    """A final/ as every writer writes one: staged, the marker written last."""
    with staged(folder, marker=FINAL_MARKER) as out:
        for name, data in files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
        write_marker(out, trials)


def _snapshot(folder: Location) -> dict[str, bytes]:
    """Every file under the folder, by relative path."""
    with tempfile.TemporaryDirectory() as tmp:
        if folder.local is not None:
            base = folder.local
        else:
            folder.download(Path(tmp))
            base = Path(tmp)
        return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def test_final_state_says_missing_incomplete_stale_or_current(root):
    final = root / "exp" / "final"
    assert final_state(final, TRIALS).problem == "missing"
    _write_final(final, TRIALS, {"metrics.json": b'{"x": 1}', "plots/p.png": b"png"})
    state = final_state(final, TRIALS)
    assert state.problem is None and state.require("report", root / "exp") is state.marker
    assert state.read("metrics.json") == b'{"x": 1}' and state.read("plots/p.png") == b"png"
    # an extension ran after final/ was written (`extend --no-final`): stale, and it says how
    stale = final_state(final, [*TRIALS, _trial("extend_1", "c", 1), _trial("extend_1", "d", 2)])
    assert stale.problem == "stale"
    assert stale.line == (
        f"{final}: older than the experiment's trials (it covers 2 trials, the experiment has 4 now: 2 new in extend_1)"
    )
    with pytest.raises(UserError, match=r"report refuses it: run `python launch.py export .*/exp` to rebuild"):
        stale.require("report", root / "exp")
    # a trial that reported more since (a --resume), and one whose run was deleted
    assert final_state(final, [_trial("search", "a", 4), TRIALS[1]]).line.endswith("now: 1 reported more)")
    assert final_state(final, TRIALS[:1]).line.endswith("now: 1 gone)")
    # a file changed after the final stage wrote it: its checksum says so
    (final / "metrics.json").write_bytes(b'{"x": 2}')
    with pytest.raises(UserError, match=r"metrics.json: changed, truncated or corrupt since the final stage wrote it"):
        final_state(final, TRIALS).read("metrics.json")
    (final / FINAL_MARKER).write_text("{not json")
    assert final_state(final, TRIALS).line == f"{final}: incomplete (COMPLETE.json is damaged (not JSON))"
    (final / FINAL_MARKER).write_text("[]")
    assert final_state(final, TRIALS).problem == "incomplete"
    (final / FINAL_MARKER).delete()
    none = final_state(final, TRIALS)
    assert none.problem == "incomplete" and "no COMPLETE.json (a final stage killed while writing it" in none.line
    with pytest.raises(UserError, match="incomplete .* export --images refuses it"):
        none.require("export --images", root / "exp")


def test_a_staged_folder_is_published_whole_or_not_at_all(root):
    exp = root / "exp"
    final = exp / "final"
    _write_final(final, TRIALS, {"a.txt": b"old", "sub/b.txt": b"old"})
    before = _snapshot(final)
    with pytest.raises(RuntimeError, match="the stage failed"):
        with staged(final, marker=FINAL_MARKER) as out:
            (out / "a.txt").write_bytes(b"new")
            raise RuntimeError("the stage failed")
    assert _snapshot(final) == before
    with pytest.raises(RuntimeError, match="no COMPLETE.json; not published"):
        with staged(final, marker=FINAL_MARKER) as out:  # a writer that never marked it complete
            (out / "a.txt").write_bytes(b"new")
    assert _snapshot(final) == before
    _write_final(final, TRIALS, {"c.txt": b"new"})
    assert sorted(_snapshot(final)) == [FINAL_MARKER, "c.txt"]  # the old files are gone: replaced whole
    assert final_state(final, TRIALS).read("c.txt") == b"new"
    assert [c.name for c in exp.iterdir()] == ["final"]  # no staging folder or prefix is left
    with staged(final, marker=FINAL_MARKER, start_from_current=True) as out:  # `report`: one file more
        (out / "d.txt").write_bytes(b"d")
        write_marker(out, TRIALS)
    assert sorted(_snapshot(final)) == [FINAL_MARKER, "c.txt", "d.txt"]
    assert final_state(final, TRIALS).read("c.txt") == b"new" and [c.name for c in exp.iterdir()] == ["final"]


class _LosesConnection:
    """A pyarrow filesystem whose server-side copies fail after `ok` of them (the connection lost,
    or the writer killed, while the staged objects are copied in)."""

    def __init__(self, fs, ok: int):
        self.fs, self.ok = fs, ok

    def copy_file(self, src: str, dest: str) -> None:
        if self.ok == 0:
            raise OSError("connection lost")
        self.ok -= 1
        self.fs.copy_file(src, dest)

    def __getattr__(self, name):
        return getattr(self.fs, name)


def test_an_object_store_publish_cut_short_leaves_final_unmarked_and_no_stage(s3):
    """On an object store the new objects are copied over the old ones one by one, the marker last:
    cut short after 2 copies, final/ holds a mixture but no marker, so every reader says incomplete
    (and `export` rebuilds it); the staging prefix is deleted."""
    root = Location.parse(f"s3://{BUCKET}/t{time.time_ns()}")
    final = root / "exp" / "final"
    names = [f"f{i}.txt" for i in range(5)]
    _write_final(final, TRIALS, {n: b"old" for n in names})
    fs, path = final._fs_path
    final._fs = (_LosesConnection(fs, ok=2), path)
    with pytest.raises(UserError, match=r"final: cannot publish it \(connection lost\)"):
        _write_final(final, TRIALS, {n: b"new" for n in names})
    state = final_state(Location.parse(str(final)), TRIALS)
    assert state.problem == "incomplete" and "no COMPLETE.json" in state.line
    assert sorted(_snapshot(final)) == names[:2]  # the mixture: unmarked
    assert [c.name for c in (root / "exp").iterdir()] == ["final"]
    final._fs = (fs, path)
    _write_final(final, TRIALS, {n: b"new" for n in names})
    assert final_state(final, TRIALS).read("f4.txt") == b"new"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_swap_killed_between_its_renames_is_named_and_put_back(tmp_path):
    """Locally a swap is two renames (old final/ aside, new one in): a kill between them leaves no
    final/ and the previous one at final.old-<pid>. Readers say where it is; the next writer puts it
    back before swapping its own in, so nothing is left behind."""
    from raydigits.atomic import remove_dead_stages

    final = Location.parse(tmp_path / "exp" / "final")
    _write_final(final, TRIALS, {"pre.csv": b"old run"})
    aside = tmp_path / "exp" / f"final.old-{_dead_pid()}"
    os.rename(final.local, aside)
    state = final_state(final, TRIALS)
    assert state.problem == "missing"
    assert (
        state.line == f"{final}: missing (a final stage killed while swapping it in left the previous one at {aside})"
    )
    remove_dead_stages(final.local)  # what every writer does first
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["final"]
    assert final_state(final, TRIALS).read("pre.csv") == b"old run"
    os.rename(final.local, aside)
    _write_final(final, TRIALS, {"pre.csv": b"next run"})
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["final"]
    assert final_state(final, TRIALS).read("pre.csv") == b"next run"


STAGE_AND_HANG = """
import sys, time
from raydigits.storage import Location, staged
with staged(Location.parse(sys.argv[1]), marker="COMPLETE.json") as out:
    (out / "pre.csv").write_text("new run")
    time.sleep(600)
"""


def test_a_killed_writer_leaves_the_previous_folder_and_its_stage_is_cleaned_up(tmp_path):
    """SIGKILL while the new pre.csv is written (what an `export` killed mid-way does): final/ is the
    previous one, byte for byte; the next writer deletes the dead writer's staging folder."""
    final = Location.parse(tmp_path / "exp" / "final")
    _write_final(final, TRIALS, {"pre.csv": b"old run", "metrics.json": b"{}"})
    before = _snapshot(final)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", STAGE_AND_HANG, str(final)], env=env)
    staged_pre = tmp_path / "exp" / f"final.tmp-{proc.pid}" / "pre.csv"
    deadline = time.time() + 120
    while not staged_pre.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert staged_pre.read_text() == "new run"
    assert _snapshot(final) == before and final_state(final, TRIALS).problem is None
    _write_final(final, TRIALS, {"pre.csv": b"next run"})
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["final"]


def test_readers_never_see_a_marked_mixture_while_final_is_rewritten(root):
    """A writer publishes two versions of a 12-file final/ in turn while a reader reads it as every
    reader does: marker, files, marker again. Whenever the marker is there and unchanged around the
    reads, every file matches it (locally the folder may be absent between the two renames; on an
    object store the marker is gone while the files are replaced, and comes back last)."""
    final = root / "exp" / "final"
    versions = [{f"f{i:02d}.txt": f"{v}{i}".encode() * 64 for i in range(12)} for v in "AB"]
    _write_final(final, TRIALS, versions[0])
    done = threading.Event()

    def writer():
        try:
            for k in range(1, 7):
                _write_final(final, TRIALS, versions[k % 2])
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    consistent = 0
    while not done.is_set() or consistent == 0:
        state = final_state(final, TRIALS)
        if state.problem is not None:
            continue
        try:
            seen = {name: (final / name).read_bytes() for name in versions[0]}
            again = json.loads((final / FINAL_MARKER).read_bytes())
        except (FileNotFoundError, ValueError):
            continue
        if again != state.marker:
            continue  # rewritten while it was read: a real reader reads it again
        sums = {n: hashlib.sha256(data).hexdigest() for n, data in seen.items()}
        assert sums == {n: state.marker["files"][n] for n in seen}, "a marked final/ mixing two writes"
        consistent += 1
    thread.join()
    assert consistent > 0


DRIVER = """
import subprocess, sys, time
from raydigits.search import reaper
reaper.watch()
# a child that ignores SIGTERM and outlives its parent, as Ray's agents do; and its own child
code = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
code += "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", code])
print(child.pid, flush=True)
time.sleep(600)
"""


def test_a_killed_drivers_processes_are_reaped_and_nothing_else():
    """SIGKILL a driver that called `reaper.watch()`: the process it started (which ignores SIGTERM
    and is re-parented to PID 1) and that one's child die within seconds; a process of the same user
    that the driver did not start lives on."""
    import psutil

    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, stdout=subprocess.PIPE, text=True)
    started = []
    try:
        child = psutil.Process(int(driver.stdout.readline()))
        started.append(child)
        deadline = time.time() + 60
        while not child.children() and time.time() < deadline:
            time.sleep(0.1)
        started += child.children()
        assert len(started) == 2
        time.sleep(2)  # the reaper has noted them (it looks every second)
        driver.kill()
        driver.wait()
        gone, alive = psutil.wait_procs(started, timeout=30)
        assert alive == [], f"left behind: {alive}"
        assert bystander.poll() is None
    finally:
        for proc in [bystander, driver, *started]:
            with contextlib.suppress(psutil.Error, OSError):
                proc.kill()
