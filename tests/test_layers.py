"""The package's layers (CONTRIBUTING.md): every import arrow points down, none closes a cycle
(imports inside functions counted, `if TYPE_CHECKING:` ones not), and the experiment folder and the
search-space language are read without Ray or torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "raydigits"

# a module's layer: lower numbers may not import higher ones
LAYERS = [
    (
        "base",
        [
            "raydigits",
            "raydigits.errors",
            "raydigits.env",
            "raydigits.atomic",
            "raydigits.storage",
            "raydigits.ray_compat",
            "raydigits.pareto",
        ],
    ),
    (
        "training",
        [
            "raydigits.config",
            "raydigits.data",
            "raydigits.models",
            "raydigits.optim",
            "raydigits.pipeline",
            "raydigits.graphs",
            "raydigits.trainer",
            "raydigits.train",
            "raydigits.runtime",
            "raydigits.costs",
        ],
    ),
    ("spec", ["raydigits.spec"]),
    ("experiment", ["raydigits.experiment"]),
    ("search", ["raydigits.search"]),
    (
        "after",
        [
            "raydigits.final",
            "raydigits.report",
            "raydigits.report_html",
            "raydigits.insight",
            "raydigits.reproduce",
            "raydigits.evaluation",
            "raydigits.inference",
            "raydigits.ties",
        ],
    ),
    ("cli", ["raydigits.cli", "raydigits.__main__"]),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The raydigits modules `name` imports anywhere in its file (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import x` imports the submodule x
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        # "raydigits" itself (its __init__: the version, the entry points' Ctrl-C) is base; its
        # submodules are placed by their own entries
        if any(module == p or (p != "raydigits" and module.startswith(p + ".")) for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: place it")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (a package importing its own submodules counts), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state:
                found = dfs(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = dfs(m)
            if found:
                return found
    return None


def test_no_import_cycle_counting_imports_inside_functions():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_import_points_down_the_layers():
    wrong = [
        f"{m} ({LAYERS[_layer(m)][0]}) imports {n} ({LAYERS[_layer(n)][0]})"
        for m, targets in sorted(_graph().items())
        for n in sorted(targets)
        if _layer(n) > _layer(m)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_an_import_inside_a_function(monkeypatch):
    """They can fail: spec/ importing search/ (as an import inside a function would) closes a cycle
    through search/extend.py and points up."""
    graph = _graph()
    assert "raydigits.search.runner" in graph["raydigits.search.extend"]
    graph["raydigits.spec.derived"] = graph["raydigits.spec.derived"] | {"raydigits.search.extend"}
    cycle = _cycle(graph)
    assert cycle is not None and "raydigits.spec.derived" in cycle and "raydigits.search.extend" in cycle
    assert _layer("raydigits.search.extend") > _layer("raydigits.spec.derived")


def _tiny_experiment(root: Path) -> Path:
    """An experiment folder as a search leaves it: the saved spec, Tune's state (JSON), two trials'
    result.json and checkpoints."""
    import json

    exp = root / "exp"
    exp.mkdir()
    (exp / "raydigits_search.yaml").write_text((PKG.parent / "search_spaces" / "smoke.yaml").read_text())
    trial_data = []
    for tid, vals in (("a_00000", [0.5, 0.7]), ("a_00001", [0.6, 0.9])):
        d = exp / f"smoke_{tid}"
        rows = []
        for epoch, v in enumerate(vals, 1):
            (d / f"checkpoint_{epoch:06d}").mkdir(parents=True)
            (d / f"checkpoint_{epoch:06d}" / "checkpoint.pt").write_bytes(b"weights")
            rows.append(json.dumps({"epoch": epoch, "val_acc": v, "checkpoint_dir_name": f"checkpoint_{epoch:06d}"}))
        (d / "result.json").write_text("\n".join(rows) + "\n")
        state = {"trial_id": tid, "status": "TERMINATED", "config": {"lr": 0.1}, "relative_logdir": d.name}
        trial_data.append([json.dumps(state), json.dumps({"num_failures": 0})])
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}))
    return exp


@pytest.mark.parametrize(
    "code",
    [
        "import raydigits.experiment, raydigits.spec",
        # reading a finished experiment, not only importing the package
        "from raydigits.experiment import Experiment; e = Experiment.open(EXP); "
        "assert (e.best().trial_id, e.best().epoch) == ('a_00001', 2); e.frame(); e.tie_candidates(e.best(), 500)",
    ],
)
def test_experiment_and_spec_need_neither_ray_nor_torch(code, tmp_path):
    code = code.replace("EXP", repr(str(_tiny_experiment(tmp_path))))
    check = f"{code}; import sys; bad = [m for m in ('ray', 'torch') if m in sys.modules]; assert not bad, bad"
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=PKG.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
