"""The local Ray a command starts dies with it. A killed driver (SIGKILL, OOM killer) takes its raylet
and GCS down (Ray starts them with PR_SET_PDEATHSIG), but the raylet's `ray::DashboardAgent` and
`ray::RuntimeEnvAgent` notice their parent's death, then wait forever publishing the error to the dead
GCS, and ignore SIGTERM: they were left behind with PPID 1.

`watch()` (called before `ray.init` starts a local Ray) starts this module as a small process of its
own session (a terminal's Ctrl-C or a kill of the driver's process group does not reach it). While
the driver lives it notes every process descended from it (pid and start time, so that a pid reused
later is never mistaken for one); once the driver has ended, however it ended, it SIGKILLs those
still alive and what they started. Processes are found by ancestry, not by a tag in their
environment: Ray's agents rename themselves (setproctitle), which overwrites the memory that
/proc/<pid>/environ shows. A Ray the command only attaches to (`--address`, a Ray job) is never
watched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

POLL_S = 1.0  # how often the driver's descendants are noted
ROUNDS = 20  # kill rounds after the driver ended (a dying raylet may still be starting an agent)
ROUND_S = 0.5
_watching: set[int] = set()  # the pid this process's reaper watches (once per process; fork-safe)


def watch() -> None:
    """Start the reaper for this process (once per process)."""
    if os.getpid() in _watching:
        return
    subprocess.Popen(
        [sys.executable, "-m", "raydigits.search.reaper", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    _watching.add(os.getpid())


Known = dict[int, float]  # pid -> its start time


def _table() -> dict[int, tuple[int, float]]:
    """Every process: pid -> (parent pid, start time)."""
    out = {}
    for p in psutil.process_iter(["ppid", "create_time"]):
        ppid, started = p.info["ppid"], p.info["create_time"]
        if ppid is not None and started is not None:
            out[p.pid] = (ppid, started)
    return out


def _below(roots: Known, table: dict[int, tuple[int, float]]) -> Known:
    """`roots` that are still the same processes, and every process descended from one of them."""
    alive = {pid: t for pid, t in roots.items() if pid in table and table[pid][1] == t}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, started) in table.items():
            if ppid in alive and pid not in alive and pid != os.getpid():
                alive[pid] = started
                grew = True
    return alive


def reap(owner: int) -> None:
    """Note `owner`'s (this process's parent's) descendants until it has ended, then kill them."""
    table = _table()
    if owner not in table:
        return
    known: Known = {}
    root = {owner: table[owner][1]}
    while os.getppid() == owner:
        known.update(_below(root, table))
        time.sleep(POLL_S)
        table = _table()
    known.pop(owner, None)
    for _ in range(ROUNDS):
        targets = _below(known, _table())
        if not targets:
            return
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(ROUND_S)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    reap(int(sys.argv[1]))
