"""A search space from a file, a shipped name or a dict, validated: structure by the models
(model.py), everything else by `checks.check_spec`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config import format_validation_error, load_yaml_file
from ..errors import UserError
from ..storage import local_path
from .checks import check_spec
from .model import SearchSpec

# The shipped spaces: the source tree's search_spaces/, installed as the package data
# raydigits/search_spaces/ (pyproject.toml maps the one onto the other; one copy of each file).
_SOURCE_SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
_PACKAGED_SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
SEARCH_SPACES_DIR = _PACKAGED_SPACES if _PACKAGED_SPACES.is_dir() else _SOURCE_SPACES


def resolve_path(arg: str) -> Path:
    """A path (`~` expanded, file:// read; an object-store URI refused), or a file name / bare name
    looked up in search_spaces/."""
    p = local_path(arg, "--search-space", "the search space is read from this machine's disk")
    if p.exists():
        return p
    for cand in (SEARCH_SPACES_DIR / arg, SEARCH_SPACES_DIR / f"{arg}.yaml", SEARCH_SPACES_DIR / f"{arg}.yml"):
        if cand.exists():
            return cand
    known = sorted(f.stem for f in SEARCH_SPACES_DIR.glob("*.yaml"))
    raise UserError(f"--search-space {arg}: no such file (shipped spaces: {', '.join(known)})")


def load_spec(arg: str | Path) -> SearchSpec:
    path = resolve_path(str(arg))
    return parse_spec(load_yaml_file(path), str(path))


def parse_spec(data: dict[str, Any], where: str = "search space", saved: bool = False) -> SearchSpec:
    """A validated spec. `saved`: the copy an experiment keeps (resume, export, report), checked
    when its search started: its structure only, so that reading an experiment needs neither torch
    (TrainConfig's name checks consult torch's registries) nor the world (weights files, the
    dataset), and an experiment stays readable after its weights file moved or a check was added."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of keys at the top level")
    try:
        spec = SearchSpec(**data)
    except ValidationError as exc:
        raise UserError(f"{where}: {format_validation_error(exc)}") from None
    if not saved:
        check_spec(spec, where)
    return spec
