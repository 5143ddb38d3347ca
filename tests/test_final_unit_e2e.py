"""final/ as a unit on a real search (a copy of the suite's smoke search, conftest's `smoke_run`: six
trials, one audited, its final stage done): the final stage marks it complete; `report` checks each
file it reads against the marker (a damaged metrics.json is one line); an `export` SIGKILLed after it
wrote its new pre.csv leaves the previous final/ byte for byte and no Ray process behind; after
`extend --no-final`, `report` and `export --images` refuse the stale final/, `reproduce` says so, and
`export` says it rebuilds it (the final stage alone, marked complete)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest
from support.helpers import launch

from raydigits.cli import main
from raydigits.experiment import Experiment

pytestmark = pytest.mark.slow


def _run(args: list[str], timeout: int = 900) -> str:
    proc = launch(args)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


N = 7  # the smoke search's trials: its 6 and the audit's 1 (tests/test_search_e2e.py checks both)


@pytest.fixture(scope="module")
def exp(tmp_path_factory, smoke_run) -> Path:
    """A copy of the suite's finished smoke search (the tests here change it)."""
    assert smoke_run["rc"] == 0, smoke_run["out"][-4000:]
    unit = tmp_path_factory.mktemp("ray_results") / "unit"
    shutil.copytree(smoke_run["exp"], unit)
    assert len(Experiment.open(unit).trials) == N
    return unit


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _cli(capsys, args: list[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_final_is_marked_complete_and_report_checks_what_it_reads(exp, capsys):
    assert Experiment.open(exp).final_state().problem is None
    assert sorted(p.name for p in exp.iterdir() if p.name.startswith("final")) == ["final"]
    metrics = exp / "final" / "metrics.json"
    good = metrics.read_bytes()
    metrics.write_bytes(good[: len(good) // 2])  # cut short, as a full disk or a bad copy leaves it
    code, _, err = _cli(capsys, ["report", str(exp)])
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [
        f"error: {metrics}: changed, truncated or corrupt since the final stage wrote it (its sha256 differs "
        f"from COMPLETE.json's); rebuild final/ with `python launch.py export {exp}`"
    ]
    metrics.write_bytes(good)
    code, out, _ = _cli(capsys, ["report", str(exp)])
    assert code == 0 and Experiment.open(exp).final_state().read("report.html")


def _session(sid: int) -> list[str]:
    """The processes still alive in a session (a driver started with start_new_session)."""
    out = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{proc.pid} (PPID {proc.info['ppid']}): {' '.join(proc.info['cmdline'] or [])[:60]}")
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def test_export_killed_after_writing_pre_csv_leaves_the_previous_final_and_no_ray_processes(exp, capsys):
    before = _hashes(exp / "final")
    proc = launch(["export", str(exp)])
    staged_pre = exp / f"final.tmp-{proc.pid}" / "pre.csv"
    deadline = time.time() + 600
    while not staged_pre.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert staged_pre.exists(), proc.communicate()[0][-3000:]
    os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as the OOM killer or `kill -9 PID` would
    proc.wait()
    assert _hashes(exp / "final") == before and Experiment.open(exp).final_state().problem is None
    deadline = time.time() + 60
    while _session(proc.pid) and time.time() < deadline:
        time.sleep(1)
    assert _session(proc.pid) == []  # its local Ray died with it (none re-parented to PID 1)
    code, _, _ = _cli(capsys, ["report", str(exp)])  # the next writer deletes the dead one's stage
    assert code == 0 and sorted(p.name for p in exp.iterdir() if p.name.startswith("final")) == ["final"]


def test_after_extend_without_final_the_stale_final_is_refused_noted_and_rebuilt(exp, capsys, tmp_path, mnist):
    import cv2

    page = (exp / "final" / "report.html").read_bytes()
    _run(["extend", str(exp), "--num-samples", "1", "--no-final", "--verbose", "0"])
    stale = (
        f"{exp}/final: older than the experiment's trials (it covers {N} trials, the experiment has {N + 1} now: "
        "1 new in extend_1)"
    )
    code, _, err = _cli(capsys, ["report", str(exp)])
    assert code == 2 and err.splitlines() == [
        f"error: {stale}; report refuses it: run `python launch.py export {exp}` to rebuild final/ over every "
        "trial first"
    ]
    assert (exp / "final" / "report.html").read_bytes() == page
    images = tmp_path / "imgs"
    images.mkdir()
    cv2.imwrite(str(images / "d0.png"), mnist.images["test"][0, :, :, 0])
    code, _, err = _cli(capsys, ["export", str(exp), "--images", str(images)])
    assert code == 2 and err.startswith(f"error: {stale}; export --images refuses it") and len(err.splitlines()) == 1
    assert not (images / "pre.csv").exists()
    code, out, _ = _cli(capsys, ["reproduce", str(exp), "--out", str(tmp_path / "repro")])
    assert out.startswith(f"note: {stale}; reproducing the best of the {N + 1} trials as they are now")
    out = _run(["export", str(exp)])
    assert f"{stale}: rebuilding it over all {N + 1} trials" in out
    rebuilt = Experiment.open(exp)
    n_trials = f'"n_trials": {N + 1}'.encode()
    assert rebuilt.final_state().problem is None and n_trials in rebuilt.final_state().read("metrics.json")
    assert _cli(capsys, ["report", str(exp)])[0] == 0
