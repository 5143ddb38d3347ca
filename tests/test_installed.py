"""raydigits as a user installs it: a wheel built from the source (`pip wheel`, not editable),
installed into a fresh venv, and its `raydigits` console script run from a folder outside the
source tree: the shipped search spaces are found as package data, data and results go to the
documented defaults (./data/mnist or $RAYDIGITS_DATA; ./ray_results)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from support.helpers import REPO

pytestmark = pytest.mark.slow


def _run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAYDIGITS_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("PYTHONPATH", None)  # the installed package, not the checkout
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv that sees the running interpreter's site packages (torch and Ray are not installed
    again) holding the wheel built from a copy of the source (the build leaves nothing in the
    checkout). Not `--system-site-packages`: run from inside a venv, that reaches the base
    interpreter's packages, not the venv's the suite runs in."""
    root = tmp_path_factory.mktemp("installed")
    src = root / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("raydigits", "search_spaces"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", root / "wheels", src],
        cwd=root,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next((root / "wheels").glob("raydigits-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    own = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    theirs = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    # after the venv's own site-packages, as --system-site-packages would put the system's
    (Path(own) / "_running_interpreter.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in theirs)
    )
    done = _run([python, "-m", "pip", "install", "--no-deps", wheel], cwd=root, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return {"root": root, "wheel": wheel, "python": python, "script": venv / "bin" / "raydigits"}


def test_wheel_ships_every_package_and_search_space(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    packages = {str(p.parent.relative_to(REPO)) for p in (REPO / "raydigits").rglob("__init__.py")}
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"pyproject.toml's package list misses {missing}"
    spaces = sorted(f.name for f in (REPO / "search_spaces").glob("*.yaml"))
    assert spaces and all(f"raydigits/search_spaces/{s}" in names for s in spaces)


def test_console_script_runs_a_shipped_space_outside_the_source_tree(installed, mnist_dir):
    work = installed["root"] / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "mnist").symlink_to(mnist_dir)  # the default place: ./data/mnist
    where = _run(
        [installed["python"], "-c", "import raydigits.spec as s; print(s.__file__); print(s.resolve_path('smoke'))"],
        cwd=work,
    )
    module, smoke = where.stdout.split()
    assert module.startswith(str(installed["root"] / "venv")), where.stdout + where.stderr
    assert Path(smoke).parent.name == "search_spaces" and Path(smoke).is_relative_to(installed["root"] / "venv")

    bad = _run([installed["script"], "--search-space", "no_such_space"], cwd=work)
    assert bad.returncode == 2 and "smoke" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr

    run = _run(
        [
            installed["script"],
            "--search-space",
            "smoke",
            "--num-samples",
            "1",
            "--name",
            "inst",
            "--set",
            "train_items=300",
            "--set",
            "val_items=200",
            "--verbose",
            "0",
        ],
        cwd=work,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    exp = work / "ray_results" / "inst"  # the default --storage-path, under the working dir
    saved = yaml.safe_load((exp / "raydigits_search.yaml").read_text())
    assert saved["name"] == "smoke" and saved["fixed"]["train_items"] == 300
    assert Path(saved["fixed"]["data_dir"]) == mnist_dir.resolve()  # found through ./data/mnist
    assert (exp / "final" / "metrics.json").exists() and (exp / "final" / "pre.csv").exists()
    assert not (REPO / "ray_results" / "inst").exists()


def test_data_env_variable_sets_the_default_data_folder(installed, mnist_dir):
    elsewhere = installed["root"] / "elsewhere"
    elsewhere.mkdir()
    out = _run(
        [installed["python"], "-m", "raydigits.data", "prepare"], cwd=elsewhere, env={"RAYDIGITS_DATA": str(mnist_dir)}
    )
    assert out.returncode == 0 and f"prepared {mnist_dir.resolve()}:" in out.stdout, out.stdout + out.stderr
    assert not (elsewhere / "data").exists()
