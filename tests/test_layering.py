"""The layering is one-way and stays light.

Between packages: mindloop.graph <- mindloop.trainer <- mindloop.agents. Inside agents: chat <- signal <- cycle <- the
front ends (cli, server, terminal, ui, report, doctor), and only the command line (cli) calls the other front ends.
`import mindloop.graph` loads no torch, and `mindloop --help` no heavy library.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"mindloop.graph": "graph", "mindloop.trainer": "trainer", "mindloop.agents": "agents"}
FRONT_ENDS = {"server", "terminal", "ui", "report", "doctor"}
# What each unit may import of ours besides itself: a unit is a package, or a subpackage/module of agents.
ALLOWED = {
    "mindloop.graph": set(),
    "mindloop.trainer": {"mindloop.graph"},
    "mindloop.agents.chat": {"mindloop.graph", "mindloop.trainer"},
    "mindloop.agents.signal": {"mindloop.graph", "mindloop.trainer", "mindloop.agents.chat"},
    "mindloop.agents.cycle": {"mindloop.graph", "mindloop.trainer", "mindloop.agents.chat", "mindloop.agents.signal"},
    **{f"mindloop.agents.{f}": {"mindloop.graph", "mindloop.trainer", "mindloop.agents.chat", "mindloop.agents.signal",
                                "mindloop.agents.cycle"} for f in FRONT_ENDS},
}
ALLOWED["mindloop.agents.cli"] = ALLOWED["mindloop.agents.server"] | {f"mindloop.agents.{f}" for f in FRONT_ENDS}
ALLOWED["mindloop.agents"] = set()  # agents/__init__.py: a docstring, nothing imported


def _unit(module: str) -> str | None:
    """The layering unit a dotted module name belongs to (None: not ours)."""
    parts = module.split(".")
    if parts[0] != "mindloop" or len(parts) < 2:
        return None
    if parts[1] != "agents" or len(parts) == 2:
        return ".".join(parts[:2])
    return ".".join(parts[:3])


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "mindloop." + ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, lazily or not, as an absolute dotted name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:  # the tests' own helpers come in relatively
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _files() -> list[Path]:
    return sorted(p for folder in FOLDERS.values() for p in (ROOT / folder).rglob("*.py"))


def test_every_file_belongs_to_a_layer():
    assert {_unit(_module_of(p)) for p in _files()} == set(ALLOWED)


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_no_wrong_way_imports(unit):
    wrong = {}
    for path in _files():
        if _unit(_module_of(path)) != unit:
            continue
        bad = {u for u in map(_unit, _imports(path)) if u and u != unit} - ALLOWED[unit]
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert wrong == {}, f"{unit} may import only {sorted(ALLOWED[unit])}"


def test_old_top_level_names_are_gone():
    """Nothing imports the folders by their own names: they install as mindloop.*."""
    old = {str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] in set(FOLDERS.values()))
           for p in _files() + sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "examples").rglob("*.py"))
           + sorted((ROOT / "bench").rglob("*.py"))}
    assert {k: v for k, v in old.items() if v} == {}


def test_the_package_imports_itself_by_absolute_names():
    relative = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in _files() for n in ast.walk(ast.parse(p.read_text()))
                if isinstance(n, ast.ImportFrom) and n.level]
    assert relative == []


def test_no_private_names_imported_across_modules():
    crossing = {}
    for path in _files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mindloop"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    crossing[f"{path.relative_to(ROOT)}:{node.lineno}"] = f"{node.module}: {private}"
    assert crossing == {}


def test_graph_never_imports_torch_even_lazily():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "graph").rglob("*.py")
                 if any(m.split(".")[0] == "torch" for m in _imports(p))]
    assert offenders == []


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


HEAVY = {"torch", "transformers", "sentence_transformers", "chromadb", "langgraph"}


def test_import_graph_loads_no_heavy_library():
    assert _loaded_after("import mindloop.graph") & HEAVY == set()


def test_cli_help_loads_no_heavy_library():
    loaded = _loaded_after("import contextlib, io\nfrom mindloop.agents.cli import main\n"
                           "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
                           "    main(['--help'])")
    assert loaded & (HEAVY | {"mindloop.graph"}) == set()
