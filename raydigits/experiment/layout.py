"""Every file name of an experiment folder, and reading / writing the spec and the run record.

<experiment>/
  raydigits_search.yaml     the spec as run (SPEC_FILE; data_dir made absolute)
  raydigits_run.json        the run record: name, started, finished (RUN_FILE)
  raydigits_outcomes.json   each trial's outcome as it ended (OUTCOMES_FILE, records.py)
  raydigits_eta.json        the ETA's estimates (ETA_FILE)
  experiment_state-*.json   Tune's own state (ray_compat.trial_states reads it as JSON)
  <name>_<trial id>/        one per trial: result.json (RESULT_FILE), checkpoint_*/checkpoint.pt
  extend_<k>/               each `launch.py extend` run, an experiment folder of its own
  audit_<k>/                each audit run (stopped trials trained on to max_t), likewise
  final/                    the final stage's outputs (FINAL_DIR), swapped in whole; its COMPLETE.json
                            (FINAL_MARKER, completion.py), written last, says what it was computed from"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import UserError
from ..spec import SearchSpec, parse_spec
from ..storage import Location, as_location

SPEC_FILE = "raydigits_search.yaml"
RUN_FILE = "raydigits_run.json"
OUTCOMES_FILE = "raydigits_outcomes.json"
ETA_FILE = "raydigits_eta.json"
RESULT_FILE = "result.json"  # Tune's per-trial results, one JSON line per report
CHECKPOINT_FILE = "checkpoint.pt"  # inside each of a trial's checkpoint_* folders
FINAL_DIR = "final"
FINAL_MARKER = "COMPLETE.json"  # inside final/: written last (experiment/completion.py)
EXTEND_PREFIX = "extend_"
AUDIT_PREFIX = "audit_"


# ------------------------------------------------------------------ the spec
def saved_spec(spec: SearchSpec, data_dir: Path) -> str:
    """The spec as written beside the experiment: with the absolute data dir, so that a resume
    from any working dir finds the same data."""
    d = spec.to_dict()
    d["fixed"] = {**d["fixed"], "data_dir": str(data_dir)}
    return str(yaml.safe_dump(d, sort_keys=False))


def write_spec(exp: Location, spec: SearchSpec, data_dir: Path) -> None:
    (exp / SPEC_FILE).write_text(saved_spec(spec, data_dir))


def holds_search(exp: Location) -> bool:
    return (exp / SPEC_FILE).exists()


def read_spec(exp: Location | str) -> SearchSpec:
    """The spec saved beside an experiment; a UserError naming the place when it is not one."""
    path = as_location(exp) / SPEC_FILE
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise UserError(f"{exp}: not a raydigits experiment (no {SPEC_FILE})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({type(exc).__name__})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_spec(raw, str(path), saved=True)


# ------------------------------------------------------------------ extensions
def _numbered(exp: Location, prefix: str) -> list[Location]:
    runs = [r for r in exp.glob(f"{prefix}*") if r.name[len(prefix) :].isdigit()]
    return sorted(runs, key=lambda r: int(r.name[len(prefix) :]))


def extension_runs(exp: Location) -> list[Location]:
    """The runs `extend` added inside an experiment, in the order they ran."""
    return _numbered(exp, EXTEND_PREFIX)


def audit_runs(exp: Location) -> list[Location]:
    """The audit runs inside an experiment, in the order they ran."""
    return _numbered(exp, AUDIT_PREFIX)


def _next(exp: Location, prefix: str) -> Location:
    """`<prefix><k>` with k one past the highest number present (not the count: after a user
    deletes extend_1, the next run is extend_3 beside extend_2, never extend_2 again)."""
    runs = _numbered(exp, prefix)
    return exp / f"{prefix}{int(runs[-1].name[len(prefix) :]) + 1 if runs else 1}"


def next_extension(exp: Location) -> Location:
    return _next(exp, EXTEND_PREFIX)


def next_audit(exp: Location) -> Location:
    return _next(exp, AUDIT_PREFIX)


def _is_run_name(name: str) -> bool:
    return any(name.startswith(p) and name[len(p) :].isdigit() for p in (EXTEND_PREFIX, AUDIT_PREFIX))


def outer_experiment(place: Location, levels: int = 3) -> Location | None:
    """The experiment that `place` lies inside, or None: for an extend_<k> / audit_<k> run (an
    experiment folder of its own, inside its experiment) or a folder without a spec (a trial's
    folder, final/), the nearest of its `levels` ancestors that holds a search."""
    if holds_search(place) and not _is_run_name(place.name):
        return None
    for _ in range(levels):
        parent = place.parent
        if parent == place or parent.name in ("", "."):
            return None
        place = parent
        if holds_search(place):
            return place
    return None
