"""final/'s completion marker, `final/COMPLETE.json`: written last by every writer of final/ (the
final stage, `export`, `report`), it records what the folder was computed from (the experiment's
trials: each one's run, id, status, and the iteration and time of its last report) and the sha256 of
every file beside it. Readers compare it with the experiment as it is now (`final_state`): a final/
without a marker is incomplete (a writer was killed, or it predates markers), one whose trials differ
is stale (an `extend --no-final`, an `audit --no-final` or a resume ran since), a file whose
checksum differs was changed or damaged after it was written."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import left_aside, write_text
from ..errors import UserError
from ..storage import Location
from .layout import FINAL_MARKER
from .trials import Trial

MARKER_FORMAT = 1


def fingerprint(trials: Iterable[Trial]) -> list[dict[str, Any]]:
    """What the final stage's choice depends on: every trial and how far it has reported."""
    out = []
    for t in trials:
        last = t.results[-1] if t.results else {}
        out.append(
            {
                "run": t.run,
                "trial_id": t.trial_id,
                "status": t.status,
                "reports": len(t.results),
                "iteration": last.get("training_iteration"),
                "time": last.get("timestamp"),
            }
        )
    back: list[dict[str, Any]] = json.loads(json.dumps(out))  # as it reads back from the marker
    return back


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_marker(folder: Path, trials: Iterable[Trial]) -> None:
    """COMPLETE.json in the local (staging) folder, over every file already in it: call it last."""
    files = {
        p.relative_to(folder).as_posix(): _sha256(p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != FINAL_MARKER
    }
    marker = {"format": MARKER_FORMAT, "written": time.time(), "trials": fingerprint(trials), "files": files}
    write_text(folder / FINAL_MARKER, json.dumps(marker, indent=1))


@dataclass(frozen=True)
class FinalState:
    """final/ against the experiment now: `problem` is None when it is complete and current."""

    folder: Location
    problem: str | None  # "missing", "incomplete" or "stale"
    line: str  # what is wrong, in words (empty when nothing is)
    marker: dict[str, Any] | None

    def require(self, command: str, exp_location: Location) -> dict[str, Any]:
        """The marker, or a UserError saying what is wrong and what rebuilds final/."""
        if self.problem is None and self.marker is not None:
            return self.marker
        raise UserError(
            f"{self.line}; {command} refuses it: run `python launch.py export {exp_location}` to rebuild final/ "
            "over every trial first"
        )

    def read(self, name: str) -> bytes:
        """A file of a complete final/, checked against the checksum its marker holds."""
        assert self.marker is not None
        path = self.folder / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UserError(f"{path}: missing from a complete final/ (deleted since); rebuild it with export") from None
        want = self.marker["files"].get(name)
        if want != _sha256(data):
            raise UserError(
                f"{path}: changed, truncated or corrupt since the final stage wrote it (its sha256 differs "
                f"from {FINAL_MARKER}'s); rebuild final/ with `python launch.py export {self.folder.parent}`"
            )
        return data


def _read_marker(folder: Location) -> tuple[dict[str, Any] | None, str]:
    path = folder / FINAL_MARKER
    try:
        marker = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None, f"no {FINAL_MARKER} (a final stage killed while writing it, or one older than markers)"
    except (ValueError, UnicodeDecodeError):
        return None, f"{FINAL_MARKER} is damaged (not JSON)"
    ok = isinstance(marker, dict) and isinstance(marker.get("trials"), list) and isinstance(marker.get("files"), dict)
    return (marker, "") if ok else (None, f"{FINAL_MARKER} is damaged (not a completion marker)")


def _difference(then: list[dict[str, Any]], now: list[dict[str, Any]]) -> str:
    """How the experiment's trials moved on since final/ was written, in words."""
    before = {(t["run"], t["trial_id"]): t for t in then}
    new = [t for t in now if (t["run"], t["trial_id"]) not in before]
    runs = sorted({t["run"] for t in new})
    moved = [t for t in now if (t["run"], t["trial_id"]) in before and before[(t["run"], t["trial_id"])] != t]
    parts = [f"{len(new)} new in {', '.join(runs)}"] if new else []
    if moved:
        parts.append(f"{len(moved)} reported more")
    gone = len(before) - (len(now) - len(new))
    if gone:
        parts.append(f"{gone} gone")
    return f"it covers {len(then)} trials, the experiment has {len(now)} now: {'; '.join(parts)}"


def final_state(folder: Location, trials: Iterable[Trial]) -> FinalState:
    """Whether final/ (`folder`) is complete and current for these trials (the experiment's)."""
    if not folder.exists():
        aside = left_aside(folder.local) if folder.local is not None else None
        why = f"a final stage killed while swapping it in left the previous one at {aside}" if aside else ""
        return FinalState(folder, "missing", f"{folder}: missing ({why or 'the final stage never ran'})", None)
    marker, why = _read_marker(folder)
    if marker is None:
        return FinalState(folder, "incomplete", f"{folder}: incomplete ({why})", None)
    now = fingerprint(trials)
    if marker["trials"] != now:
        line = f"{folder}: older than the experiment's trials ({_difference(marker['trials'], now)})"
        return FinalState(folder, "stale", line, marker)
    return FinalState(folder, None, "", marker)
