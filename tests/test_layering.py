"""The layering is one-way (graph <- trainer <- agents) and `import graph` stays light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"graph": set(), "trainer": {"graph"}, "agents": {"graph", "trainer"}}
OURS = set(ALLOWED)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_wrong_way_imports(package):
    wrong = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = (_imports(path) & OURS) - ALLOWED[package] - {package}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert wrong == {}, f"{package} may import only {sorted(ALLOWED[package])}"


def test_graph_never_imports_torch_even_lazily():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "graph").rglob("*.py") if "torch" in _imports(p)]
    assert offenders == []


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


HEAVY = {"torch", "transformers", "sentence_transformers", "chromadb", "langgraph"}


def test_import_graph_loads_no_heavy_library():
    assert _loaded_after("import graph") & HEAVY == set()


def test_cli_help_loads_no_heavy_library():
    loaded = _loaded_after("import contextlib, io\nfrom agents.cli import main\n"
                           "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
                           "    main(['--help'])")
    assert loaded & (HEAVY | {"graph"}) == set()
