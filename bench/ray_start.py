"""What attaching to a running local cluster saves (issue 25, "Ray's start"): a command's Ray start
when it starts a Ray of its own (`--address local`, the old default) against attaching to a
`ray start --head` cluster that already runs on this machine (the default now, runner.start_ray).
Not a test.

Each side is a fresh `python` process doing what a search does before its first trial: import
raydigits, `runner.start_ray`, one Ray task (a worker process started for this job), then Ray's
shutdown; timed from the process's creation to its exit, and inside it start_ray, the first task
and the shutdown. The two sides alternate (the first side alternates too) for --rounds rounds;
medians, ranges and the ratio are printed. The cluster is started here and killed at the end; Ray's
record of the last `ray start` is put back as it was.

Usage: python bench/ray_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
RECORD = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"

CHILD = """
import json, sys, time
t0 = time.time()
from raydigits.search.runner import start_ray
import ray
info = start_ray(sys.argv[1] if len(sys.argv) > 1 else None)
t1 = time.time()
ray.get(ray.remote(num_cpus=0)(lambda: 1).remote())
t2 = time.time()
ray.shutdown()
t3 = time.time()
print(json.dumps({"found_local": info["found_local"], "start_ray": t1 - t0,
                  "first_task": t2 - t1, "shutdown": t3 - t2}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_session(head: subprocess.Popen) -> None:
    """Every process of the cluster: `ray start` ran in a session of its own, and its processes
    (GCS, raylet, dashboard, workers) stay in it."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == head.pid:
                proc.kill()
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    head.wait(timeout=60)


def _side(local: bool) -> dict:
    t = time.time()
    args = [sys.executable, "-c", CHILD] + (["local"] if local else [])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    wall = time.time() - t
    if done.returncode != 0:
        raise SystemExit(f"ray_start: a side failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    if row["found_local"] == local:
        raise SystemExit(f"ray_start: the {'own' if local else 'attach'} side did not do what it should: {row}")
    return {**row, "wall": wall}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    saved = RECORD.read_text() if RECORD.exists() else None
    log = tempfile.NamedTemporaryFile("w", prefix="ray_start_head_", suffix=".log", delete=False)
    port = _free_port()
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={_free_port()}",
         f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (RECORD.exists() and RECORD.read_text().strip().endswith(f":{port}")):
            if time.time() > deadline or head.poll() is not None:
                raise SystemExit(f"ray_start: the head did not start (see {log.name})")
            time.sleep(1)
        time.sleep(5)  # let the head's own processes settle
        rows: dict[str, list[dict]] = {"own": [], "attach": []}
        for r in range(args.rounds):
            order = ["own", "attach"] if r % 2 == 0 else ["attach", "own"]
            for side in order:
                rows[side].append(_side(local=side == "own"))
            print(
                f"round {r + 1}: own {rows['own'][-1]['wall']:.1f} s, attach {rows['attach'][-1]['wall']:.1f} s",
                flush=True,
            )
    finally:
        _kill_session(head)  # only this cluster's processes: never `ray stop`, which ends every Ray here
        if saved is None:
            RECORD.unlink(missing_ok=True)
        else:
            RECORD.write_text(saved)
    print(f"\n{args.rounds} interleaved rounds, seconds, median (min–max):")
    for key in ("wall", "start_ray", "first_task", "shutdown"):
        cells = []
        for side in ("own", "attach"):
            xs = [row[key] for row in rows[side]]
            cells.append(f"{side} {statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})")
        print(f"  {key:<10} " + "   ".join(cells))
    ratios = [a["wall"] / o["wall"] for o, a in zip(rows["own"], rows["attach"], strict=True)]
    saved_s = [o["wall"] - a["wall"] for o, a in zip(rows["own"], rows["attach"], strict=True)]
    print(
        f"attach ÷ own (whole process): median {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}); "
        f"saved {statistics.median(saved_s):.1f} s ({min(saved_s):.1f}–{max(saved_s):.1f})"
    )


if __name__ == "__main__":
    main()
