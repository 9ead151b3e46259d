"""The graph's own check and repair (graph/check.py), and the schema facts they are written from (graph/schema.py)."""

from __future__ import annotations

import sqlite3

from mindloop.graph import HashingEmbedder, MemoryGraph, Store
from mindloop.graph import check as graph_check
from mindloop.graph.schema import EDGE_COLUMNS, HISTORY_COLUMNS, NODE_COLUMNS


def test_the_schema_s_column_lists_are_the_tables_a_store_creates(tmp_path):
    Store(tmp_path / "graph.db").close()
    conn = sqlite3.connect(tmp_path / "graph.db")
    columns = {t: tuple(r[1] for r in conn.execute(f"PRAGMA table_info({t})"))
               for t in ("nodes", "edges", "pending_edges", "history")}
    conn.close()
    assert columns == {"nodes": (*NODE_COLUMNS, "fts"), "edges": EDGE_COLUMNS, "pending_edges": EDGE_COLUMNS,
                       "history": HISTORY_COLUMNS}


def _two_turns_and_a_ghost_edge(config) -> tuple[str, int]:
    """A graph of two turns, closed; then an edge from one of them to a node that does not exist."""
    with MemoryGraph.open(config, embedder=HashingEmbedder()) as g:
        first, _ = g.log_turns("s", [{"role": "user", "text": "use tabs"}, {"role": "assistant", "text": "ok"}])
        assert g.flush()
        seq = g.store.last_seq()
    conn = sqlite3.connect(config.db_path)
    with conn:
        conn.execute("INSERT INTO edges (src, dst, kind, scope, created) VALUES (?, 'memory_ghost', 'surfaced', "
                     "'default', 0)", (first.id,))
    conn.close()
    return first.id, seq


def test_check_reports_an_edge_to_a_missing_node_and_changes_nothing(config):
    src, seq = _two_turns_and_a_ghost_edge(config)
    found = graph_check.check(config)
    assert [(p.check, p.fixed, p.repair) for p in found.problems] == [("edges", False, None)]
    assert f"1 edge(s) point at missing nodes (e.g. surfaced {src} -> memory_ghost)" in found.problems[0].problem
    assert found.checks == {"graph.db": "ok", "fts": "ok", "edges": "problem", "vectors": "ok"}
    conn = sqlite3.connect(config.db_path)
    assert conn.execute("SELECT count(*) FROM edges WHERE dst = 'memory_ghost'").fetchone()[0] == 1
    conn.close()


def test_repair_removes_it_through_the_store_s_history(config):
    src, seq = _two_turns_and_a_ghost_edge(config)
    found = graph_check.repair(config, embedder=HashingEmbedder())
    assert [(p.check, p.fixed) for p in found.problems] == [("edges", True)]
    assert found.problems[0].repair == "removed the 1 edge(s) (logged in the history)"
    store = Store(config.db_path)
    try:
        assert [r[2:] for r in store.history_since(seq)] == [
            ("edge-", src, "surfaced", "default", None, "memory_ghost", None)]
        assert store.edges_of(src, kinds=["surfaced"]) == []
    finally:
        store.close()
    assert graph_check.check(config).problems == []
