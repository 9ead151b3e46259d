"""The SQLite store: opening damaged or foreign files, WAL and durability settings, transactions."""

from __future__ import annotations

import sqlite3

import pytest

from graph import GraphConfig, HashingEmbedder, MemoryGraph, Store, StoreCorrupt
from graph.store import fts_query


def test_garbage_file_is_reported_by_name(tmp_path):
    db = tmp_path / "graph.db"
    db.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreCorrupt, match="graph.db"):
        Store(db)
    assert db.read_bytes().startswith(b"this is not")  # left as it was


def test_foreign_sqlite_file_is_refused(tmp_path):
    db = tmp_path / "graph.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE songs (title TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorrupt, match="not a mindloop graph"):
        Store(db)


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "graph.db"
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorrupt, match="schema version 99"):
        Store(db)


@pytest.mark.parametrize("durability, level", [("full", 2), ("normal", 1)])
def test_durability_sets_synchronous(tmp_path, durability, level):
    store = Store(tmp_path / "g.db", durability=durability)
    try:
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


def test_write_rolls_back_on_error(tmp_path):
    store = Store(tmp_path / "g.db")
    try:
        with pytest.raises(RuntimeError):
            with store.write() as conn:
                conn.execute("INSERT INTO history (at, op, node, kind, scope) VALUES (0, 'x', 'n', 'k', 's')")
                raise RuntimeError("boom")
        assert store.last_seq() == 0
    finally:
        store.close()


def test_reopening_keeps_everything(tmp_path):
    cfg = GraphConfig(home=tmp_path, embedder="hashing")
    with MemoryGraph.open(cfg, embedder=HashingEmbedder()) as g:
        t = g.log_turn("s", "user", "persist me")
    with MemoryGraph.open(cfg, embedder=HashingEmbedder()) as g:
        assert g.get(t.id).text == "persist me"
        assert g.log_turn("s", "assistant", "ok").index == 1
        assert g.view.nx.has_edge(t.id, g.session_turns("s")[1].id)


def test_fts_query_keeps_distinctive_words_and_escapes_quotes():
    assert fts_query('Please rename "foo" to bar, and the BAR') == '"rename" OR "foo" OR "bar"'
    assert fts_query("the of and a") is None
    assert fts_query("x") is None
    assert fts_query('say "hi"') == '"say" OR "hi"'
