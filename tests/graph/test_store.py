"""The SQLite store: opening damaged or foreign files, WAL and durability settings, transactions."""

from __future__ import annotations

import sqlite3

import pytest

from graph import GraphConfig, HashingEmbedder, MemoryGraph, Store, StoreCorrupt
from graph.store import bounded_query, fts_query


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


def test_a_bounded_query_ranks_only_the_rows_of_the_rarest_words_past_its_budget():
    counts = {"kafka": 40, "upgrade": 900, "error": 5000, "ghost": 0}
    # within the budget: every word that matches anything, ORed
    assert bounded_query(["kafka", "upgrade", "ghost"], counts, budget=1000) == '"kafka" OR "upgrade"'
    # past it: the rarest words that fit pick the rows, every word scores them
    assert bounded_query(["error", "kafka", "upgrade"], counts, budget=1000) == (
        '("kafka" OR "upgrade") AND ("error" OR "kafka" OR "upgrade")')
    # the rarest word alone when even it is over the budget
    assert bounded_query(["error", "upgrade"], counts, budget=500) == '("upgrade") AND ("error" OR "upgrade")'
    assert bounded_query(["ghost"], counts, budget=10) is None


@pytest.fixture
def lexical_graph(tmp_path):
    with MemoryGraph.open(GraphConfig(home=tmp_path, embedder="hashing"), embedder=HashingEmbedder()) as g:
        with g.transaction():
            g.log_turns("s", [{"role": "user", "text": f"an error in report {i}"} for i in range(60)], scope="a")
            g.log_turns("w", [{"role": "user", "text": f"weather note {i}"} for i in range(100)], scope="a")
            g.log_turns("t", [{"role": "user", "text": "an error after the kafka upgrades"},
                              {"role": "user", "text": "the kafka upgrade went fine"}], scope="a")
            g.log_turns("u", [{"role": "user", "text": "kafka upgrade error"}], scope="b")
        yield g


def test_term_counts_are_what_fts5_matches_stems_included_and_capped(lexical_graph):
    store = lexical_graph.store
    # every scope counts; "upgrades" and "upgrade" share a Porter stem
    assert store.term_counts(["kafka", "upgrade", "upgrades", "nothing"], cap=100) == {
        "kafka": 3, "upgrade": 3, "upgrades": 3, "nothing": 0}
    assert store.term_counts(["error"], cap=10) == {"error": 10}  # 62 rows, counted up to the cap


def test_a_lexical_budget_keeps_the_best_rows_and_drops_the_common_only_ones(lexical_graph):
    store = lexical_graph.store
    kw = {"scope": "a", "kinds": None, "since": None, "limit": 100}
    everything = store.lexical("kafka error", **kw)
    bounded = store.lexical("kafka error", budget=20, **kw)
    assert len(everything) == 62  # 60 rows with "error" only, one with both words, one with "kafka" only
    texts = {lexical_graph.get(i).text for i, _ in bounded}
    assert texts == {"an error after the kafka upgrades", "the kafka upgrade went fine"}  # the rows with "kafka"
    # "error" still scores them: "kafka" counts twice (it picks the rows and scores them), "error" adds to that.
    # FTS5 scores are lower-is-better.
    row = next(i for i, _ in bounded if "error" in lexical_graph.get(i).text)
    kafka_alone = dict(store.lexical("kafka", **kw))[row]
    assert dict(bounded)[row] < 2 * kafka_alone
    assert store.lexical("kafka error", budget=1000, **kw) == everything  # within the budget: the plain OR
    assert store.lexical("zebra quagga", budget=20, **kw) == []
