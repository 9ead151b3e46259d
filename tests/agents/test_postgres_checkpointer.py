"""The loop's state in PostgreSQL (MINDLOOP_POSTGRES_URL), against a real server started by the test (slow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from mindloop.agents.chat.backends import ScriptedBackend
from mindloop.agents.chat.loop import ChatLoop, open_checkpointer

from .conftest import free_port

pytestmark = pytest.mark.slow

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(*cmd: str) -> list[str]:
    # initdb and postgres refuse to run as root; CI runs as root, so they run as the postgres user
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@pytest.fixture(scope="module")
def postgres_url():
    initdb = shutil.which("initdb") or str(PG_BIN / "initdb")
    pg_ctl = shutil.which("pg_ctl") or str(PG_BIN / "pg_ctl")
    if not Path(initdb).exists():
        pytest.fail("PostgreSQL is not installed (initdb not found); apt-get install postgresql")
    # pytest's tmp dirs are private to root; the postgres user needs a directory it can reach
    root = Path(tempfile.mkdtemp(prefix="mindloop-pg-"))
    root.chmod(0o777)
    data = root / "data"
    port = free_port()
    subprocess.run(_as_postgres(initdb, "-D", str(data), "-U", "mindloop", "--auth=trust"), check=True,
                   capture_output=True)
    subprocess.run(_as_postgres(pg_ctl, "-D", str(data), "-w", "-l", str(data / "log"), "start", "-o",
                                f"-p {port} -k {data} -c listen_addresses=127.0.0.1"), check=True,
                   capture_output=True)
    yield f"postgresql://mindloop@127.0.0.1:{port}/postgres"
    subprocess.run(_as_postgres(pg_ctl, "-D", str(data), "-m", "fast", "stop"), capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def test_loop_state_lives_in_postgres_and_survives_a_restart(graph, postgres_url, monkeypatch):
    monkeypatch.setenv("MINDLOOP_POSTGRES_URL", postgres_url)
    saver = open_checkpointer(graph.config.home)
    assert type(saver).__name__ == "PostgresSaver"
    loop = ChatLoop(graph, ScriptedBackend(["first reply", "second reply"]), checkpointer=saver)
    loop.run("s", "hello")
    saver.conn.close()
    assert not (graph.config.home / "loop.db").exists()

    # a new process would reconnect: the conversation resumes from Postgres
    again = ChatLoop(graph, ScriptedBackend(["second reply"]), checkpointer=open_checkpointer(graph.config.home))
    try:
        again.run("s", "and again")
        assert [m["content"] for m in again.backend.calls[0]] == ["hello", "first reply", "and again"]
    finally:
        again.checkpointer.conn.close()
