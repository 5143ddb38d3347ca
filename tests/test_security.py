"""Security properties that a code change could silently break, checked over the source itself:
every torch.load uses weights_only=True, the only pickle load is the checksum-verified archive, and
no shell strings (the dashboard's loopback binding is checked on a live search in test_search_e2e.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from support.helpers import REPO

SOURCES = sorted((REPO / "raydigits").rglob("*.py")) + [REPO / "launch.py"]


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_every_torch_load_is_weights_only():
    seen = 0
    for path in SOURCES:
        for call, name in _calls(path):
            if name == "torch.load":
                seen += 1
                kw = {k.arg: k.value for k in call.keywords}
                assert "weights_only" in kw and ast.literal_eval(kw["weights_only"]) is True, (
                    f"{path.name}:{call.lineno}"
                )
    assert seen >= 1


def test_the_only_unpickling_is_the_verified_archive():
    hits = [
        (p.relative_to(REPO).as_posix(), c.lineno)
        for p in SOURCES
        for c, name in _calls(p)
        if name in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "torch.load")
        and name.startswith(("pickle", "cloudpickle"))
    ]
    assert [h[0] for h in hits] == ["raydigits/data/sources.py"], hits
    # ... and in that file it comes after both sha256 checks
    text = (REPO / "raydigits/data/sources.py").read_text()
    load = text.index("pickle.loads(")
    assert text.rfind("does not match", 0, load) > text.find("def load_hub_wheel")


def test_no_shell_strings():
    for path in SOURCES:
        for call, name in _calls(path):
            assert name not in ("os.system", "os.popen", "subprocess.getoutput"), f"{path.name}:{call.lineno}"
            for k in call.keywords:
                if k.arg == "shell":
                    assert ast.literal_eval(k.value) is False, f"{path.name}:{call.lineno}"
