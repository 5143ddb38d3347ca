"""Issue #23: one path layer for every place a user names (`~`, file://, object-store URIs with
?options, a URI argparse would have folded), `extend` of a folder inside an experiment and its run
numbers, Ctrl-C at start-up, every environment variable checked, and three YAML cases (a boolean
for a number, 1e-3, merge keys). Through the real CLIs where the user meets them: one `error:` line
naming the culprit, exit 2, nothing written."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.helpers import REPO
from support.s3 import BUCKET, keys, s3_server

from raydigits.errors import UserError
from raydigits.storage import Location, local_path, path_arg

SMOKE = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())


def _cli(cwd: Path, args: list[str], env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python launch.py ARGS` (or `-m raydigits.train` / `-m raydigits.data` when ARGS start with
    -m) run from `cwd`, so that a test sees whatever it writes there."""
    cmd = [sys.executable, *(args if args[0] == "-m" else [str(REPO / "launch.py"), *args])]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "RAYDIGITS_NO_PROGRESS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def _one_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert "Ray dashboard" not in proc.stdout  # refused before Ray started
    return lines[0]


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ------------------------------------------------------------------ 1. one path layer
def test_a_uris_options_stay_apart_from_its_path():
    loc = Location.parse("s3://b/runs/?scheme=http&endpoint_override=127.0.0.1:9000")
    assert str(loc) == "s3://b/runs?scheme=http&endpoint_override=127.0.0.1:9000"
    exp = loc / "exp"
    assert str(exp) == "s3://b/runs/exp?scheme=http&endpoint_override=127.0.0.1:9000"
    assert exp.name == "exp" and exp.parent == loc and (exp / "f.txt").name == "f.txt"


@pytest.mark.parametrize(
    "text, words",
    [
        ("s3:/bucket/x", "a '/' missing; write s3://bucket/x"),  # what argparse's type=Path makes of s3://bucket/x
        ("file:/tmp/x", "a '/' missing"),
        ("s3://b/x?endpoint_override", "malformed ?options"),
        ("s3://b/a//c", "no '.', '..' or empty"),
        ("s3://b/../c", "no '.', '..' or empty"),
        ("file:///tmp/x?a=1", "no ?options"),
    ],
)
def test_uris_that_cannot_mean_what_they_say_are_refused(text, words):
    with pytest.raises(UserError, match=None) as err:
        Location.parse(text, "--storage-path")
    assert str(err.value).startswith(f"--storage-path {text}") and words in str(err.value), err.value


def test_local_places_expand_the_home_folder_and_refuse_object_stores():
    home = Path.home()
    assert local_path("~/data", "--out") == home / "data"
    assert local_path("file:///tmp/x", "--out") == Path("/tmp/x")
    assert local_path("rel/x", "--out") == Path("rel/x")  # kept relative (printed as given)
    assert path_arg()("~/w.pt") == home / "w.pt"
    with pytest.raises(UserError, match="--images s3://b/imgs: must be a local path"):
        local_path("s3://b/imgs", "--images")


def test_data_dir_from_the_environment_expands_a_literal_tilde(monkeypatch):
    from raydigits.config import DATA_ENV, data_dir_path, default_data_dir

    monkeypatch.setenv(DATA_ENV, "~/mnist")  # as an env file writes it: no shell expanded it
    assert default_data_dir() == str(Path.home() / "mnist") and data_dir_path(None) == Path.home() / "mnist"
    monkeypatch.setenv(DATA_ENV, "")  # `RAYDIGITS_DATA=` in an env file: the default
    assert default_data_dir() == "data/mnist"
    assert data_dir_path("~/other") == Path.home() / "other"


def test_a_folded_or_remote_path_is_refused_by_every_command_and_nothing_is_written(tmp_path):
    """`type=Path` turned `--out s3://b/run` into a local folder ./s3:/b/run; each of these is now one
    line naming the option before the command starts, and the working folder stays empty."""
    work = tmp_path / "work"
    work.mkdir()
    cases = [
        (["-m", "raydigits.train", "--out", "s3://b/run"], ["--out", "s3://b/run: must be a local path"]),
        (["-m", "raydigits.train", "--out", "s3:/b/run"], ["--out", "a '/' missing"]),
        (["-m", "raydigits.train", "--config", "gs://b/c.yaml"], ["--config", "must be a local path"]),
        (["-m", "raydigits.data", "prepare", "--out", "s3://b/mnist"], ["--out", "must be a local path"]),
        (["reproduce", "exp", "--out", "s3://b/re"], ["--out", "must be a local path"]),
        (["export", "exp", "--images", "s3://b/imgs"], ["--images", "must be a local path"]),
        (["export", "exp", "--images", "imgs", "--out", "s3:/b/pre.csv"], ["--out", "a '/' missing"]),
        (["--search-space", "s3://b/space.yaml"], ["--search-space s3://b/space.yaml: must be a local path"]),
        (["--search-space", "smoke", "--storage-path", "s3:/bucket/r"], ["--storage-path s3:/bucket/r", "missing"]),
        (["--search-space", "smoke", "--set", "pretrained=s3://b/w.pt"], ["pretrained", "must be a local path"]),
        (["--search-space", "smoke", "--set", "data_dir=s3://b/mnist"], ["data_dir", "must be a local path"]),
    ]
    for args, words in cases:
        _one_error(_cli(work, args), *words)
        assert _tree(work) == [], (args, _tree(work))


def test_a_spec_file_naming_a_remote_dataset_is_refused(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**SMOKE, "fixed": {**SMOKE["fixed"], "data_dir": "s3://b/mnist"}}))
    _one_error(
        _cli(tmp_path, ["--search-space", str(space), "--storage-path", str(tmp_path / "out")]),
        "data_dir",
        "s3://b/mnist",
        "must be a local path",
    )
    assert not (tmp_path / "out").exists()


def test_reproduce_never_writes_over_an_earlier_run_without_force(tmp_path):
    mine = tmp_path / "runs" / "mine"  # a `python -m raydigits.train --out runs/mine` run
    mine.mkdir(parents=True)
    (mine / "config.yaml").write_text("epochs: 1\n")
    (mine / "metrics.csv").write_text("epoch\n1\n")
    before = {p: p.read_bytes() for p in mine.iterdir()}
    _one_error(
        _cli(tmp_path, ["reproduce", "exp", "--out", "runs/mine"]),
        "--out runs/mine: holds an earlier run (config.yaml)",
        "--force",
    )
    # with --force the check passes (the missing experiment is what stops it here)
    _one_error(_cli(tmp_path, ["reproduce", "exp", "--out", "runs/mine", "--force"]), "not a raydigits experiment")
    assert {p: p.read_bytes() for p in mine.iterdir()} == before


def test_storage_uri_options_reach_the_store_and_the_name_joins_the_path(tmp_path, monkeypatch):
    """`?scheme=http&endpoint_override=...` (pyarrow's own options, no AWS_ENDPOINT_URL): the
    experiment `taken` is looked up at q/taken in the bucket, not at `...endpoint_override=.../taken`."""
    with s3_server() as (port, env, client):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_ENDPOINT_URL")  # only the URI's options say where the store is
        store = f"s3://{BUCKET}/q?scheme=http&endpoint_override=127.0.0.1:{port}"
        (Location.parse(store) / "taken" / "raydigits_search.yaml").write_text("name: x\n")
        assert keys(client, "q/") == ["q/taken/raydigits_search.yaml"]
        _one_error(
            _cli(tmp_path, ["--search-space", "smoke", "--storage-path", store, "--name", "taken"]),
            f"--name taken: s3://{BUCKET}/q/taken?scheme=http",
            "already holds a search",
        )
        assert keys(client, "q/") == ["q/taken/raydigits_search.yaml"] and _tree(tmp_path) == []


# ------------------------------------------------------------------ 3. extend
def _experiment(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "raydigits_search.yaml").write_text("name: x\n")
    return folder


@pytest.mark.parametrize("inner", ["extend_1", "audit_2", "smoke_abc12_00000_0_lr=0.01/checkpoint_000001", "final"])
def test_extend_and_audit_of_a_folder_inside_an_experiment_name_the_experiment(tmp_path, inner):
    exp = _experiment(tmp_path / "exp")
    if inner.startswith(("extend_", "audit_")):
        _experiment(exp / inner)  # a run is an experiment folder of its own
    else:
        (exp / inner).mkdir(parents=True)
    before = _tree(tmp_path)
    for command in ("extend", "audit"):
        extra = ["--num-samples", "2"] if command == "extend" else []
        _one_error(
            _cli(tmp_path, [command, str(exp / inner), *extra]),
            f"{command} {exp / inner}: a folder inside the experiment {exp}",
            f"python launch.py {command} {exp}",
        )
    assert _tree(tmp_path) == before


def test_extend_of_a_deleted_run_names_its_experiment(tmp_path):
    exp = _experiment(tmp_path / "exp")
    _one_error(_cli(tmp_path, ["extend", str(exp / "extend_1"), "--num-samples", "2"]), f"the experiment {exp}")


def test_run_numbers_go_past_the_highest_so_a_deleted_run_never_blocks_the_next(tmp_path):
    from raydigits.experiment.layout import extension_runs, next_audit, next_extension

    exp = _experiment(tmp_path / "exp")
    root = Location.parse(exp)
    assert next_extension(root).name == "extend_1" and next_audit(root).name == "audit_1"
    for k in (1, 2):
        _experiment(exp / f"extend_{k}")
    (exp / "extend_x").mkdir()  # not a run
    assert next_extension(root).name == "extend_3"
    import shutil

    shutil.rmtree(exp / "extend_1")  # the user deletes the first run: extend_2 must not be reused
    assert next_extension(root).name == "extend_3"
    assert [r.name for r in extension_runs(root)] == ["extend_2"]
    _experiment(exp / "audit_7")
    assert next_audit(root).name == "audit_8"
    _experiment(exp / "extend_10")
    assert next_extension(root).name == "extend_11"  # by number, not by name's sort order


# ------------------------------------------------------------------ 6. start-up inside the boundary
def _blocked_on_fifo(proc: subprocess.Popen, fifo: Path, timeout: float = 60) -> int:
    """Wait until `proc` opened `fifo` to read (it then blocks reading it: start-up, mid-way); the
    returned write end is held open, writing nothing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        time.sleep(0.05)
    raise AssertionError("the command never opened the FIFO")


@pytest.mark.parametrize(
    "args",
    [
        ["--search-space", "{fifo}", "--storage-path", "{tmp}/out"],
        ["-m", "raydigits.train", "--config", "{fifo}", "--out", "{tmp}/run"],
    ],
    ids=["launch", "train"],
)
def test_ctrl_c_while_a_command_starts_is_one_line_and_exit_130(tmp_path, args):
    """The search space (or config) is a FIFO nobody writes: the command blocks reading it, before
    Ray or training starts; Ctrl-C there is `interrupted` and 130, not a KeyboardInterrupt traceback."""
    fifo = tmp_path / "space.yaml"
    os.mkfifo(fifo)
    argv = [a.format(fifo=fifo, tmp=tmp_path) for a in args]
    cmd = [sys.executable, *(argv if argv[0] == "-m" else [str(REPO / "launch.py"), *argv])]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAYDIGITS_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writer = _blocked_on_fifo(proc, fifo)
    try:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(writer)
    assert proc.returncode == 130, out + err
    assert [ln for ln in err.splitlines() if ln.strip()] == ["interrupted"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


def test_ctrl_c_while_ray_starts_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    from raydigits import cli
    from raydigits.search import runner

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "data_dir_of", lambda spec: tmp_path)
    monkeypatch.setattr(runner, "load_data", lambda spec, data_dir=None: None)
    monkeypatch.setattr(runner, "start_ray", ctrl_c)
    assert cli.main(["--search-space", "smoke", "--storage-path", str(tmp_path / "out")]) == 130
    assert [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()] == ["interrupted"]


@pytest.mark.parametrize("entry", ["train", "data"])
def test_ctrl_c_in_the_other_entry_points_is_one_line_and_exit_130(entry, monkeypatch, capsys, tmp_path):
    import raydigits.data.__main__ as data_main
    from raydigits import train

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    if entry == "train":
        monkeypatch.setattr(train, "load_config", ctrl_c)
        rc = train.main(["--out", str(tmp_path / "run")])
    else:
        monkeypatch.setattr(data_main, "prepare_mnist", ctrl_c)
        rc = data_main.main(["prepare", "--out", str(tmp_path / "store")])
    assert rc == 130
    assert [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()] == ["interrupted"]


@pytest.mark.parametrize(
    "entry", [["-m", "raydigits.train"], ["-m", "raydigits.data", "prepare"], ["raydigits"]], ids=str
)
def test_ctrl_c_while_an_entry_point_still_imports_is_one_line_and_exit_130(tmp_path, entry):
    """SIGINT as soon as the process maps pydantic's or torch's library, i.e. while raydigits'
    modules still import (torch takes seconds), before the error boundary exists (earlier, in
    Python's own start-up, nothing of ours runs). Whichever moment it lands on, one line and 130 (a
    command that got further waits on a FIFO: it cannot finish first)."""
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    args = {"raydigits.train": ["--config", str(fifo)], "raydigits.data": ["--wheel", str(fifo), "--out", "s"]}
    if entry[0] == "raydigits":
        script = shutil.which("raydigits", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
        assert script, "the installed `raydigits` command"
        cmd = [script, "--search-space", str(fifo)]
    else:
        cmd = [sys.executable, *entry, *args[entry[1]]]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAYDIGITS_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.time() + 60
    while time.time() < deadline and proc.poll() is None:  # raydigits is imported: its imports run
        if re.search(r"pydantic_core|libtorch", maps.read_text()):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 130, out + err
    assert [ln for ln in err.splitlines() if ln.strip()] == ["interrupted"], err


# ------------------------------------------------------------------ 6. every environment variable
ENV_CASES = {
    "RAYDIGITS_NO_PROGRESS": ("yes", "expected 1 (on) or 0 (off)"),
    "RAYDIGITS_STORAGE_PROBE_S": ("-1", "not a number of seconds"),
    "RAYDIGITS_INJECT_FAULT": ("boom", "expected KIND:EPOCH:MARKER_FILE"),
    "RAYDIGITS_DATA": ("s3://b/mnist", "must be a local path"),
    "RAY_ADDRESS": ("http://head:8265", "expected auto, local, HOST:PORT or ray://HOST:PORT"),
    "RAY_AUTH_TOKEN_PATH": ("s3://b/token", "expected the path of a file"),
    "RAYDIGITS_COSTS_CACHE": ("s3://b/costs.json", "expected the path of a local file"),
}


@pytest.mark.parametrize("name", list(ENV_CASES))
def test_a_bad_environment_variable_is_named_before_anything_starts(name, tmp_path):
    value, words = ENV_CASES[name]
    proc = _cli(tmp_path, ["--search-space", "smoke", "--storage-path", str(tmp_path / "out")], {name: value})
    _one_error(proc, name, words)
    assert _tree(tmp_path) == []


def test_every_variable_the_project_reads_is_checked():
    """A new os.environ read outside raydigits/env.py would escape the check: there is none."""
    readers = [
        f"{p.relative_to(REPO)}:{n}"
        for p in sorted((REPO / "raydigits").rglob("*.py"))
        if p.name != "env.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if ("os.environ" in line and "setdefault" not in line) or "getenv" in line
    ]
    assert readers == []


def test_the_train_and_data_commands_check_the_environment_too(tmp_path):
    bad = {"RAYDIGITS_DATA": "s3://b/mnist"}
    _one_error(_cli(tmp_path, ["-m", "raydigits.train", "--out", "run"], bad), "RAYDIGITS_DATA")
    _one_error(_cli(tmp_path, ["-m", "raydigits.data", "prepare"], {"RAYDIGITS_NO_PROGRESS": "2"}), "NO_PROGRESS")
    assert _tree(tmp_path) == []


# ------------------------------------------------------------------ YAML
def test_a_boolean_is_no_number(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SMOKE).replace("num_samples: 6", "num_samples: true"))
    _one_error(
        _cli(tmp_path, ["--search-space", str(space), "--storage-path", str(tmp_path / "out")]),
        "num_samples: expected a number, got true",
    )
    assert _tree(tmp_path) == ["space.yaml"]


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    from raydigits.config import load_yaml_file, parse_overrides
    from raydigits.spec import parse_spec

    body = yaml.safe_dump({k: v for k, v in SMOKE.items() if k != "parameters"})
    space = tmp_path / "space.yaml"
    space.write_text(
        body + "parameters:\n  optimizer: {values: [sgd, adamw]}\n  weight_decay: {values: [1e-4, 5E-3]}\n"
    )
    raw = load_yaml_file(space)
    assert raw["parameters"]["weight_decay"]["values"] == [1e-4, 5e-3]
    spec = parse_spec(raw, str(space))
    assert all(isinstance(v, float) for v in spec.parameters["weight_decay"].values or [])
    assert parse_overrides(["lr=1e-3", "name=1e3x"]) == {"lr": 1e-3, "name": "1e3x"}


def test_a_quoted_number_for_a_numeric_knob_is_refused(tmp_path):
    body = yaml.safe_dump({k: v for k, v in SMOKE.items() if k != "parameters"})
    space = tmp_path / "space.yaml"
    space.write_text(body + "parameters:\n  weight_decay: {values: ['1e-4', '1e-3']}\n")
    _one_error(
        _cli(tmp_path, ["--search-space", str(space), "--storage-path", str(tmp_path / "out")]),
        "parameters.weight_decay.values",
        "'1e-4' is text, not a number",
    )
    assert _tree(tmp_path) == ["space.yaml"]


def test_yaml_merge_keys_load_and_a_repeated_own_key_is_still_refused(tmp_path):
    from raydigits.config import load_yaml_file
    from raydigits.spec import parse_spec

    body = yaml.safe_dump({k: v for k, v in SMOKE.items() if k != "parameters"})
    space = tmp_path / "space.yaml"
    space.write_text(
        body + "parameters:\n"
        "  optimizer: {values: [sgd, adamw]}\n"
        "  lr: &range {distribution: log_uniform_values, min: 1e-4, max: 1e-2}\n"
        "  weight_decay:\n"
        "    <<: *range\n"
        "    min: 1e-5\n"
    )
    spec = parse_spec(load_yaml_file(space), str(space))
    wd = spec.parameters["weight_decay"]
    assert (wd.distribution, wd.min, wd.max) == ("log_uniform_values", 1e-5, 1e-2)
    space.write_text(space.read_text() + "    min: 1e-6\n")
    with pytest.raises(UserError, match="key 'min' given twice"):
        load_yaml_file(space)
