"""The shared smoke search (conftest's session fixture `smoke_run`): the shipped smoke space with its
defaults through the real CLI against a real local Ray, with one mid-epoch crash and one out-of-memory
trial injected, a stale `ray start` record in place, and a browser watching its dashboard while it
runs. tests/test_search_e2e.py checks it; tests/test_final_unit_e2e.py works on a copy of it."""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

from support.helpers import launch, results, stale_cluster_record


def _watch_dashboard(url: str, exp: Path, found: dict) -> None:
    """Runs beside the search (a thread): the browser checks, once a trial has reported."""
    try:
        import psutil

        port = int(url.rsplit(":", 1)[1].strip("/"))
        found["listening_on"] = sorted(
            {
                c.laddr.ip
                for c in psutil.net_connections("tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port
            }
        )
        from support.browser import browser_missing, check_dashboard

        why = browser_missing()
        if why:
            found["skipped"] = why
            return
        deadline = time.time() + 120
        while time.time() < deadline and not any(results(d) for d in exp.glob("smoke_*")):
            time.sleep(0.5)
        node_ip = next(results(d)[0]["node_ip"] for d in exp.glob("smoke_*") if results(d))
        found.update(check_dashboard(url, node_ip, "raydigits smoke_e2e"))
    except Exception:  # noqa: BLE001 — reported by the browser test, not lost in a thread
        import traceback

        found["error"] = traceback.format_exc()


def run_smoke_search(storage: Path) -> dict:
    """One smoke search into `storage`/smoke_e2e (it is the expensive part of the tests that read
    it); a browser watches its dashboard while it runs."""
    marker, oom_marker = storage / "fault_marker", storage / "oom_marker"
    with stale_cluster_record():  # what a killed `ray start` leaves: must not be waited for
        proc = launch(
            ["--search-space", "smoke", "--storage-path", str(storage), "--name", "smoke_e2e"],
            env={**os.environ, "RAYDIGITS_INJECT_FAULT": f"raise_once:2:{marker};oom_once:1:{oom_marker}"},
        )
        first = proc.stdout.readline()
    lines, dashboard_status, browser, watcher = [], None, {}, None
    deadline = time.time() + 600
    for line in itertools.chain([first], proc.stdout):
        lines.append(line)
        m = re.search(r"Ray dashboard: (http://\S+)", line)
        if m and dashboard_status is None:
            with urllib.request.urlopen(m.group(1), timeout=10) as resp:
                dashboard_status = resp.status
            watcher = threading.Thread(target=_watch_dashboard, args=(m.group(1), storage / "smoke_e2e", browser))
            watcher.start()
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    if watcher:
        watcher.join(timeout=120)
    out = "".join(lines)
    return {
        "rc": proc.returncode,
        "out": out,
        "exp": storage / "smoke_e2e",
        "marker": marker,
        "oom_marker": oom_marker,
        "dashboard_status": dashboard_status,
        "browser": browser,
    }
