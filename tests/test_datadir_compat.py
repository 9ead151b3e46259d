"""A data directory written before the package moved to mindloop.* opens unchanged.

tests/data/datadir-0.1.0.tar.gz was written by mindloop 0.1.0 with the folders installed as top-level packages
(graph, trainer, agents): a tiny model's whole cycle, left in the scheduler's `watch` phase with its checkpoint
promoted. Its graph.db, loop.db (LangGraph's checkpoints), checkpoints/ and runs/ hold no module path, so nothing is
migrated; this test keeps it that way.
"""

from __future__ import annotations

import json
import sqlite3
import tarfile
from pathlib import Path

import pytest

from mindloop.agents.cli import main

ARCHIVE = Path(__file__).parent / "data" / "datadir-0.1.0.tar.gz"
CHECKPOINT = "ckpt_20261208-005318_ceea64"


@pytest.fixture
def old_home(home):
    home.mkdir(parents=True)
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(home, filter="data")
    return home


def test_no_stored_value_names_a_module(old_home):
    for db in ("graph.db", "loop.db"):
        conn = sqlite3.connect(old_home / db)
        try:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                dump = "\n".join(map(repr, conn.execute(f'SELECT * FROM "{table}"').fetchall()))
                for name in ("agents.", "trainer.", "graph.records", "mindloop."):
                    assert name not in dump, f"{db}:{table} stores a module path ({name!r})"
        finally:
            conn.close()


def test_status_reads_the_old_cycle_where_it_stopped(old_home, capsys):
    assert main(["status", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["in_use"] == CHECKPOINT
    assert out["scheduler"]["phase"] == "watch" and out["scheduler"]["checkpoint"] == CHECKPOINT
    assert [w["id"] for w in out["watch"]] == [CHECKPOINT]
    (pattern,) = out["patterns"]
    assert pattern["untrained"] == 0  # the promoted checkpoint covers the flags it trained on


def test_the_scheduler_resumes_the_old_cycle(old_home, capsys):
    assert main(["daemon", "--once", "--json", "--min-flags", "3"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["phase"] == "watch" and state["checkpoint"] == CHECKPOINT
    assert "needs 30" in state["note"]
    assert sorted(p.name for p in (old_home / "runs").iterdir()) == ["run_20261208-005318_ceea64"]
