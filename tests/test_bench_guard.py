"""The test split chooses nothing in bench/: a static check (fast, no Ray, no torch) that no bench script
that compares designs can open the test split. A design scored on the test split and then reported on
it again (issue 20: the within-SE epoch rule) makes the test figure optimistic by construction.

A Python script opens the test split if it names it (the string "test"), calls `load_dataset` without
`splits=` (its default includes test), imports the split list `SPLITS` or the final stage (which
scores the shipped model on test), or runs `launch.py` (which runs the final stage). A shell script
does if it runs `launch.py`. Scripts that only REPORT the test accuracy of a model already chosen on
validation are allowed below, each with the reason."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

ALLOWED = {
    # runs the GPU headline search end to end (launch.py: search, then the final stage) to report its
    # wall time and the test accuracy of the model the final stage chose on validation; it compares
    # no designs, and nothing it measures on test feeds back into a choice
    "gpu_check.sh": "reports the shipped model's test accuracy only",
    # issue 25's race: each side's pick is chosen on validation (raydigits' final-stage rule, Tune's best
    # checkpoint by val_acc) and then scored once on test to report; it compares wall times, and no
    # figure from the test split feeds back into any choice
    "race.py": "reports each side's pick's test accuracy only",
}

FINAL_MODULES = {"raydigits.final", "raydigits.evaluation"}


def python_reasons(source: str) -> list[str]:
    """Why a Python bench script can open the test split (empty: it cannot)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.strip().lower() == "test":
                out.append(f"line {node.lineno}: names the test split ({node.value!r})")
            if "launch.py" in node.value and len(node.value) < 200:  # a command, not prose
                out.append(f"line {node.lineno}: runs launch.py (its final stage scores the test split)")
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name == "load_dataset" and not any(k.arg == "splits" for k in node.keywords) and len(node.args) < 2:
                out.append(f"line {node.lineno}: load_dataset without splits= (its default includes test)")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {a.name for a in node.names}
            if module in FINAL_MODULES or (module == "raydigits" and names & {"final", "evaluation"}):
                out.append(f"line {node.lineno}: imports the final stage (it scores the test split)")
            if "SPLITS" in names:
                out.append(f"line {node.lineno}: imports SPLITS (train, val and test)")
        elif isinstance(node, ast.Import) and any(a.name in FINAL_MODULES for a in node.names):
            out.append(f"line {node.lineno}: imports the final stage (it scores the test split)")
    return out


def shell_reasons(source: str) -> list[str]:
    return [
        f"line {i}: runs launch.py (its final stage scores the test split)"
        for i, line in enumerate(source.splitlines(), 1)
        if re.search(r"\blaunch\.py\b", line.split("#", 1)[0])
    ]


def reasons(path: Path) -> list[str]:
    text = path.read_text()
    return python_reasons(text) if path.suffix == ".py" else shell_reasons(text)


SCRIPTS = sorted(p for p in BENCH.iterdir() if p.suffix in (".py", ".sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_bench_script_that_compares_designs_opens_the_test_split(script):
    found = reasons(script)
    if script.name in ALLOWED:
        assert found, f"bench/{script.name} no longer opens the test split: take it off ALLOWED"
        return
    assert not found, f"bench/{script.name} can open the test split: " + "; ".join(found)


def test_the_guard_sees_each_way_in():
    """Each rule catches its case (so that the guard cannot pass vacuously), and stays quiet otherwise."""
    opens = [
        'data.images["test"]',
        "split = 'test'",
        "load_dataset(path)",
        "from raydigits.data.store import SPLITS",
        "from raydigits.final import run_final",
        "from raydigits import final",
        "import raydigits.evaluation",
        "subprocess.run(['python', 'launch.py', '--search-space', 'x'])",
    ]
    for source in opens:
        assert python_reasons(source), source
    quiet = 'load_dataset(path, splits=("train", "val"))\nx = data.images["train"]\n"""a test of it"""'
    assert python_reasons(quiet) == []
    assert shell_reasons("timeout 9 python3 launch.py --search-space gpu_headline")
    assert shell_reasons("# launch.py is described here only\npython3 bench/gpu_bench.py") == []
    assert set(ALLOWED) <= {p.name for p in SCRIPTS}


def _epoch_select():
    import importlib.util
    import sys

    sys.path.insert(0, str(BENCH))  # epoch_select imports bench/stats.py as a script does
    try:
        spec = importlib.util.spec_from_file_location("epoch_select", BENCH / "epoch_select.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_the_development_split_is_the_training_images_no_trial_trained_on():
    import numpy as np

    from raydigits.errors import UserError
    from raydigits.trainer import stratified_subset

    es = _epoch_select()
    labels = np.repeat(np.arange(10), 30)  # 300 training images, 30 a class
    states = [{"config": {"train_items": 50, "seed": 42}}, {"config": {"train_items": 40, "seed": 7}}]
    dev = es.dev_indices(labels, states, ["a", "b"], 0)
    used = set(stratified_subset(labels, 50, 42).tolist()) | set(stratified_subset(labels, 40, 7).tolist())
    assert set(dev.tolist()) == set(range(300)) - used and len(used) > 50  # the two seeds drew different images
    few = es.dev_indices(labels, states, ["a", "b"], 100)
    assert len(few) == 100 and set(few.tolist()) <= set(dev.tolist())
    assert np.bincount(labels[few]).tolist() == [10] * 10  # stratified
    for whole in (0, 300):
        with pytest.raises(UserError, match="b: trained on the whole train split"):
            es.dev_indices(labels, [states[0], {"config": {"train_items": whole, "seed": 1}}], ["a", "b"], 0)
