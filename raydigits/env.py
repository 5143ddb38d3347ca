"""Every environment variable raydigits reads, read here and checked: a bad value is one UserError
line naming the variable, raised before any work starts (`check_environment`, called by each entry
point inside its error boundary), never a traceback or a silent default.

    RAYDIGITS_DATA             the default dataset folder (a local path; `~` expanded)
    RAYDIGITS_STORAGE_PROBE_S  seconds the storage check waits for an object store (> 0)
    RAYDIGITS_NO_PROGRESS      1 hides progress bars, 0 or unset shows them
    RAYDIGITS_INJECT_FAULT     tests: ";"-separated KIND:EPOCH:MARKER faults a trial raises
    RAYDIGITS_COSTS_CACHE      the file of measured model costs (raydigits/costs.py; a local path,
                               `~` expanded; default ~/.cache/raydigits/costs.json)
    RAY_ADDRESS                the cluster to attach to when --address is not given (Ray's own):
                               auto, local, HOST:PORT or ray://HOST:PORT
    RAY_AUTH_TOKEN             Ray's dashboard token: only whether it is set is read (never its value)
    RAY_AUTH_TOKEN_PATH        where the head node keeps that token (a file path, shown in the login hint)"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from .errors import UserError

DATA_ENV = "RAYDIGITS_DATA"
PROBE_ENV = "RAYDIGITS_STORAGE_PROBE_S"
NO_PROGRESS_ENV = "RAYDIGITS_NO_PROGRESS"
FAULT_ENV = "RAYDIGITS_INJECT_FAULT"
COSTS_CACHE_ENV = "RAYDIGITS_COSTS_CACHE"
COSTS_CACHE_DEFAULT = "~/.cache/raydigits/costs.json"  # per machine: latency is this machine's
ADDRESS_ENV = "RAY_ADDRESS"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
FAULT_KINDS = ("raise_once", "oom_once")


def text(name: str) -> str | None:
    """The variable's value, or None when it is unset or empty (an env file's `NAME=`)."""
    value = os.environ.get(name)
    return value if value else None


def seconds(name: str, default: float) -> float:
    value = text(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise UserError(f"{name}={value!r}: not a number of seconds (expected a number > 0)")
    return number


def flag(name: str) -> bool:
    value = (text(name) or "0").strip()
    if value not in ("0", "1"):
        raise UserError(f"{name}={os.environ[name]!r}: expected 1 (on) or 0 (off)")
    return value == "1"


def no_progress() -> bool:
    return flag(NO_PROGRESS_ENV)


def faults() -> list[tuple[str, int, Path]]:
    """$RAYDIGITS_INJECT_FAULT as (kind, epoch, marker file) triples."""
    out = []
    for item in filter(None, (text(FAULT_ENV) or "").split(";")):
        kind, _, rest = item.partition(":")
        epoch, _, marker = rest.partition(":")
        if kind not in FAULT_KINDS or not epoch.isdigit() or not marker:
            raise UserError(
                f"{FAULT_ENV}: {item!r}: expected KIND:EPOCH:MARKER_FILE with KIND one of {', '.join(FAULT_KINDS)}"
            )
        out.append((kind, int(epoch), Path(marker)))
    return out


# what ray.init takes for an existing cluster (runner._probe checks that something answers there)
ADDRESS_RE = re.compile(r"auto|local|(?:ray://)?(?:\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+):[0-9]{1,5}/?")


def address() -> str | None:
    """$RAY_ADDRESS, its form checked here (whether a cluster answers: runner.start_ray, naming it)."""
    value = text(ADDRESS_ENV)
    if value is not None and not ADDRESS_RE.fullmatch(value.strip()):
        raise UserError(f"{ADDRESS_ENV}={value!r}: expected auto, local, HOST:PORT or ray://HOST:PORT (or unset it)")
    return None if value is None else value.strip()


def token_set() -> bool:
    """Whether $RAY_AUTH_TOKEN holds a token (its value is never read into raydigits' output)."""
    return text(TOKEN_ENV) is not None


def costs_cache() -> Path:
    """$RAYDIGITS_COSTS_CACHE: the costs cache file (a local path; a URI or a folder is refused)."""
    value = text(COSTS_CACHE_ENV)
    path = Path(value or COSTS_CACHE_DEFAULT).expanduser()
    if value is not None and ("://" in value or "\n" in value or path.is_dir()):
        raise UserError(f"{COSTS_CACHE_ENV}={value!r}: expected the path of a local file (or unset it)")
    return path


def token_path() -> str | None:
    """$RAY_AUTH_TOKEN_PATH: a file path on the head node (a URI or a several-line value is refused)."""
    value = text(TOKEN_PATH_ENV)
    if value is not None and ("://" in value or "\n" in value or not value.strip()):
        raise UserError(f"{TOKEN_PATH_ENV}={value!r}: expected the path of a file on the head node (or unset it)")
    return value


def check_environment() -> None:
    """Read every variable once, so that a bad one is refused before a command starts anything
    ($RAYDIGITS_DATA: config.check_environment, which reads it as a path)."""
    seconds(PROBE_ENV, 1.0)
    no_progress()
    faults()
    address()
    token_path()
    costs_cache()
