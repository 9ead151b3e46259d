"""The built wheel installs as one package, mindloop, beside OpenAI's openai-agents (whose import name is `agents`).

Before the layout moved under mindloop.*, the wheel put top-level `graph`, `trainer` and `agents` packages into
site-packages, where `agents` overwrote openai-agents. This builds the wheel from a copy of the source tree, checks
what it holds and what the build printed, then installs it into a fresh venv that also sees openai-agents and imports
both in one process.

The fresh venv reuses this venv's installed dependencies through a `.pth` file, so pip installs only the wheel, and
openai-agents when this venv lacks it (the `dev` extra brings it; then only the isolated build fetches setuptools,
which pip usually has cached).

    .venv/bin/python -m pytest -q -n0 tests/test_install.py
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# setuptools' warnings about how our packages and their data are declared: each means a file left out of the wheel
# or a layout setuptools is going to stop accepting
_PACKAGING_WARNINGS = re.compile(
    r"Package would be ignored|_IncludePackageDataAbuse|not declared|is not a package|SetuptoolsDeprecationWarning",
    re.IGNORECASE,
)
_OUR_FILES = re.compile(r"\b(graph|trainer|agents|tests|bench|examples)/|pyproject\.toml|mindloop")

_BOTH = """
import json, agents, mindloop.graph, mindloop.agents.cli
from agents import Agent
print(json.dumps({"agents": agents.__file__, "graph": mindloop.graph.__file__, "cli": mindloop.agents.cli.__file__,
                  "agent": Agent.__module__}))
"""


_NOT_SOURCE = {".git", ".venv", "__pycache__", ".pytest_cache"}


def _not_source(folder: str, names: list[str]) -> set[str]:
    """What a checkout holds besides the source: git, venvs, build outputs, caches, run data."""
    skip = {n for n in names if n in _NOT_SOURCE or n.endswith(".egg-info")}
    if Path(folder) == ROOT:
        skip |= {n for n in names if n in {"build", "dist", "demo-data"}}
    return skip


def _run(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{output}"
    return output


def _has_openai_agents() -> bool:
    try:
        importlib.metadata.distribution("openai-agents")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """The wheel, built from a clean copy of the tree (an in-tree build would reuse a stale build/), and pip's log."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_not_source)
    wheels = work / "wheels"
    log = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", wheels, source, cwd=work)
    (wheel,) = wheels.glob("mindloop-*.whl")
    return wheel, log


@pytest.mark.slow
def test_wheel_holds_only_mindloop(built):
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
    dist_info = {name for name in top if name.endswith(".dist-info")}
    assert len(dist_info) == 1, top
    assert top - dist_info == {"mindloop"}, f"top-level entries besides mindloop: {sorted(top - dist_info)}"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    # the package data the code opens at run time is inside the wheel, under its package
    for prefix in ("mindloop/trainer/probes/", "mindloop/agents/signal/data/", "mindloop/agents/ui/templates/"):
        assert any(n.startswith(prefix) and not n.endswith(".py") for n in names), f"no data files under {prefix}"


@pytest.mark.slow
def test_build_prints_no_packaging_warnings_of_ours(built):
    _, log = built
    ours = [
        line
        for line in log.splitlines()
        if _PACKAGING_WARNINGS.search(line) or ("warn" in line.lower() and _OUR_FILES.search(line))
    ]
    assert not ours, "the build warned about our packaging:\n" + "\n".join(ours)


@pytest.mark.slow
def test_installs_beside_openai_agents(built, tmp_path):
    wheel, _ = built
    env = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site_packages = Path(_run(python, "-I", "-c", purelib, cwd=tmp_path).strip())
    # this venv's site dirs (and those its own .pth files add) serve the dependencies; .pth files in them do not run,
    # so the editable install of mindloop there stays out of the fresh venv
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site_packages / "project-venv.pth").write_text("\n".join(ours) + "\n", encoding="utf-8")

    # --ignore-installed: this venv's mindloop-0.1.0.dist-info is visible through the .pth; install beside it
    _run(python, "-I", "-m", "pip", "install", "--quiet", "--no-deps", "--ignore-installed", wheel, cwd=tmp_path)
    if not _has_openai_agents():
        _run(python, "-I", "-m", "pip", "install", "--quiet", "openai-agents", cwd=tmp_path)

    # -I and a cwd outside the repository: neither this checkout's folders nor PYTHONPATH can stand in for the wheel
    found = json.loads(_run(python, "-I", "-c", _BOTH, cwd=tmp_path).strip().splitlines()[-1])
    assert Path(found["graph"]).is_relative_to(site_packages / "mindloop"), found
    assert Path(found["cli"]).is_relative_to(site_packages / "mindloop"), found
    assert not Path(found["agents"]).is_relative_to(ROOT / "agents"), found  # not this checkout's folder
    assert Path(found["agents"]).parent.name == "agents" and found["agent"].startswith("agents."), found
