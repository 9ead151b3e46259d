"""MemoryGraph: logging, linking, bad input, search signals, scopes, forgetting, export/import."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sqlite3
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mindloop.graph import (
    Flag,
    GraphConfig,
    HashingEmbedder,
    InvalidRecord,
    InvalidText,
    Memory,
    MemoryGraph,
    NodeNotFound,
    Pattern,
    ScopeMismatch,
    TextTooLarge,
    UnknownKind,
)
from mindloop.graph.memory_graph import session_id


def db_rows(graph, sql, *params):
    conn = sqlite3.connect(graph.store.path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# -- logging ---------------------------------------------------------------------


def test_log_turn_is_committed_when_it_returns(graph):
    t = graph.log_turn("s1", "user", "rename foo to bar", scope="alice")
    # a separate connection sees it at once: the transaction has committed
    assert db_rows(graph, "SELECT kind, scope, session, text FROM nodes WHERE id = ?", t.id) == [
        ("turn", "alice", "s1", "rename foo to bar")
    ]
    assert db_rows(graph, "PRAGMA journal_mode") == [("wal",)]


def test_turns_are_ordered_and_chained_per_session(graph):
    a = [graph.log_turn("s1", r, f"text {i}") for i, r in enumerate(["user", "assistant", "user"])]
    b = graph.log_turn("s2", "user", "other session")
    assert [t.index for t in a] == [0, 1, 2] and b.index == 0
    nxt = {(e.src, e.dst) for t in a + [b] for e in graph.edges(t.id, kinds=["next"])}
    assert nxt == {(a[0].id, a[1].id), (a[1].id, a[2].id)}
    assert [t.id for t in graph.session_turns("s1")] == [t.id for t in a]
    assert graph.nodes(kind="session") and len(graph.nodes(kind="session")) == 2


def test_log_turn_records_model_latency_and_meta(graph):
    t = graph.log_turn("s", "assistant", "hi", model="smollm2", checkpoint="ckpt_1", latency_ms=42.0,
                       meta={"surfaced": ["memory_1"]})
    back = graph.get(t.id)
    assert (back.model, back.checkpoint, back.latency_ms, back.meta) == ("smollm2", "ckpt_1", 42.0,
                                                                        {"surfaced": ["memory_1"]})


def test_history_is_append_only_log_of_changes(graph):
    t = graph.log_turn("s", "user", "a")
    graph.log_turn("s", "user", "b")
    ops = [(r[2], r[3]) for r in graph.store.history_since(0)]  # the queued next edge is settled first
    assert [op for op, _ in ops] == ["node+", "node+", "node+", "edge+"]  # session, turn, turn, next
    assert ops[1][1] == t.id and db_rows(graph, "SELECT count(*) FROM history") == [(4,)]


@pytest.mark.parametrize(
    "text, error",
    [("", InvalidText), ("   ", InvalidText), ("bad \udc80 byte", InvalidText), (None, InvalidText),
     (17, InvalidText)],
)
def test_bad_text_is_rejected_and_nothing_is_written(graph, text, error):
    graph.log_turn("s", "user", "before")
    before = db_rows(graph, "SELECT count(*) FROM nodes")[0][0], graph.store.last_seq()
    with pytest.raises(error):
        graph.log_turn("s", "user", text)
    with pytest.raises(error):  # a batch with one bad turn writes none of them
        graph.log_turns("s", [{"role": "user", "text": "fine"}, {"role": "assistant", "text": text}])
    assert (db_rows(graph, "SELECT count(*) FROM nodes")[0][0], graph.store.last_seq()) == before


def test_unknown_role_and_bad_session(graph):
    with pytest.raises(InvalidRecord, match="role 'tool'"):
        graph.log_turn("s", "tool", "x")
    with pytest.raises(InvalidRecord, match="session"):
        graph.log_turn("", "user", "x")
    assert graph.nodes() == []


def test_text_over_limit_is_rejected(home):
    g = MemoryGraph.open(GraphConfig(home=home, max_text_bytes=1000), embedder=HashingEmbedder())
    try:
        with pytest.raises(TextTooLarge, match="1001 bytes; the limit is 1000"):
            g.log_turn("s", "user", "x" * 1001)
        assert g.nodes() == []
    finally:
        g.close()


def test_text_over_1mb_is_stored_whole_and_embedded_truncated(graph):
    big = "needle " + "lorem ipsum " * 100_000  # ~1.2 MB
    assert len(big.encode()) > 1_000_000
    t = graph.log_turn("s", "user", big)
    assert t.meta["embed_truncated"] is True and t.meta["embedded_chars"] == graph.config.embed_max_chars
    assert graph.flush()
    back = graph.get(t.id)
    assert back.text == big and back.meta["embed_truncated"] is True
    assert graph.search("needle")[0].node.id == t.id
    short = graph.log_turn("s", "user", "short")
    assert "embed_truncated" not in short.meta


def test_unknown_ids_and_kinds(graph):
    t = graph.log_turn("s", "user", "x")
    with pytest.raises(NodeNotFound, match="no node with id 'nope'"):
        graph.get("nope")
    with pytest.raises(KeyError):  # NodeNotFound is also a KeyError
        graph.get("nope")
    with pytest.raises(NodeNotFound):
        graph.get(t.id, scope="elsewhere")
    with pytest.raises(NodeNotFound, match="nope"):
        graph.link(t.id, "nope", "corrects")
    with pytest.raises(UnknownKind, match="allowed: next"):
        graph.link(t.id, t.id, "likes")
    with pytest.raises(UnknownKind):
        graph.nodes(kind="widget")
    with pytest.raises(UnknownKind):
        graph.search("x", kinds=["widget"])
    assert graph.edges(t.id) == []


def test_edges_never_cross_scopes(graph):
    a = graph.log_turn("s", "user", "x", scope="alice")
    b = graph.log_turn("s", "assistant", "y", scope="bob")
    with pytest.raises(ScopeMismatch, match="scopes never connect"):
        graph.link(a.id, b.id, "corrects")
    assert graph.edges(a.id) == []


def test_add_node_with_edges_is_atomic(graph):
    u = graph.log_turn("s", "user", "do it")
    a = graph.log_turn("s", "assistant", "maybe not")
    flag = Flag(turn=a.id, correction=u.id, type="ignored_direction", confidence=0.9, reason="ignored direction")
    with pytest.raises(NodeNotFound):
        graph.add(flag, edges=[(flag.id, a.id, "flags"), (flag.id, "missing", "flags")])
    with pytest.raises(NodeNotFound):
        graph.get(flag.id)
    graph.add(flag, edges=[(flag.id, a.id, "flags")])
    assert [e.dst for e in graph.edges(flag.id, direction="out")] == [a.id]
    flag.status = "confirmed"
    graph.update(flag)
    assert graph.get(flag.id).status == "confirmed"


def test_link_is_idempotent_and_unlink(graph):
    u = graph.log_turn("s", "user", "x")
    a = graph.log_turn("s", "assistant", "y")
    graph.link(u.id, a.id, "corrects")
    graph.link(u.id, a.id, "corrects")
    assert len(graph.edges(u.id, kinds=["corrects"])) == 1
    assert graph.unlink(u.id, a.id, "corrects") is True
    assert graph.unlink(u.id, a.id, "corrects") is False
    assert graph.edges(u.id, kinds=["corrects"]) == []


def test_link_many_adds_every_edge_or_none(graph):
    u = graph.log_turn("s", "user", "x")
    a = graph.log_turn("s", "assistant", "y")
    m = graph.add(Memory(text="a note", memory_kind="note"))
    other = graph.log_turn("s", "user", "z", scope="elsewhere")
    history = graph.store.last_seq()
    with pytest.raises(ScopeMismatch, match="scopes never connect"):
        graph.link_many([(m.id, a.id, "surfaced", {"score": 0.5}), (m.id, other.id, "surfaced", None)])
    with pytest.raises(NodeNotFound, match="missing"):
        graph.link_many([(m.id, a.id, "surfaced", None), ("missing", a.id, "surfaced", None)])
    assert graph.edges(m.id) == [] and graph.store.last_seq() == history  # nothing half-written
    graph.link(u.id, a.id, "corrects")
    edges = graph.link_many([(m.id, a.id, "surfaced", {"score": 0.5}), (m.id, u.id, "surfaced", None),
                             (u.id, a.id, "corrects", None)])  # the last one is already stored
    assert [(e.scope, e.data) for e in edges] == [("default", {"score": 0.5}), ("default", {}), ("default", {})]
    assert {(e.dst, e.data.get("score")) for e in graph.edges(m.id)} == {(a.id, 0.5), (u.id, None)}
    assert len(graph.edges(u.id, kinds=["corrects"])) == 1
    assert graph.store.last_seq() == history + 3  # one history row per edge actually added
    assert [(r[2], r[3], r[4], r[7], json.loads(r[8])) for r in graph.store.history_since(history)] == [
        ("edge+", u.id, "corrects", a.id, {}), ("edge+", m.id, "surfaced", a.id, {"score": 0.5}),
        ("edge+", m.id, "surfaced", u.id, {})]
    graph.link_many([(u.id, m.id, "surfaced", None), (u.id, m.id, "surfaced", None)])  # twice in one call
    assert len(graph.edges(u.id, kinds=["surfaced"], direction="out")) == 1 and graph.store.last_seq() == history + 4


def test_log_turns_links_stored_nodes_to_the_new_turns_in_the_same_transaction(graph):
    kept = graph.add(Memory(text="kept", memory_kind="lesson"))
    gone = graph.add(Memory(text="forgotten meanwhile", memory_kind="lesson", session="old"))
    graph.forget(session="old")
    elsewhere = graph.add(Memory(text="other scope", memory_kind="lesson", scope="other"))
    history = graph.store.last_seq()
    user, reply = graph.log_turns("s", [dict(role="user", text="q"), dict(role="assistant", text="a")], links=[
        (kept.id, 1, "surfaced", {"score": 0.9}), (gone.id, 1, "surfaced", {"score": 0.8}),
        (elsewhere.id, 1, "surfaced", None), (kept.id, 1, "surfaced", {"score": 0.1})])
    # the forgotten memory and the other scope's are skipped, not an error that loses the turns; the repeat adds nothing
    assert sorted((e.src, e.kind, e.data.get("score")) for e in graph.edges(reply.id, direction="in")) == sorted(
        [(user.id, "next", None), (kept.id, "surfaced", 0.9)])
    rows = [(r[2], r[3], r[7]) for r in graph.store.history_since(history)]
    assert rows[:3] == [("node+", session_id("default", "s"), None), ("node+", user.id, None), ("node+", reply.id, None)]
    assert sorted(rows[3:]) == sorted([("edge+", user.id, reply.id), ("edge+", kept.id, reply.id)])
    nxt = graph.log_turns("s", [dict(role="user", text="q2")], links=[(reply.id, 0, "corrects", None)])[0]
    assert {(e.src, e.kind) for e in graph.edges(nxt.id, direction="in")} == {(reply.id, "next"), (reply.id, "corrects")}


def _log_with_links(graph, memories):
    return graph.log_turns("s", [dict(role="user", text="q"), dict(role="assistant", text="a")],
                           links=[(m.id, 1, "surfaced", {"score": 0.5}) for m in memories])


def test_log_turns_queues_its_links_and_the_first_read_of_edges_settles_them(graph):
    memories = [graph.add(Memory(text=f"lesson {i}", memory_kind="lesson")) for i in range(3)]
    graph.worker.stop()  # nothing settles behind the test's back
    history = graph.store.last_seq()
    user, reply = _log_with_links(graph, memories)
    # committed with the turns, but as a queue: the turn did not write the edge indexes
    assert db_rows(graph, "SELECT src, dst, kind FROM pending_edges") == [(user.id, reply.id, "next")] + [
        (m.id, reply.id, "surfaced") for m in memories]
    assert db_rows(graph, "SELECT src FROM edges WHERE dst = ?", reply.id) == []
    assert {e.src for e in graph.edges(reply.id, kinds=["surfaced"], direction="in")} == {m.id for m in memories}
    assert db_rows(graph, "SELECT count(*) FROM pending_edges") == [(0,)]
    assert sorted((r[3], r[7]) for r in graph.store.history_since(history) if r[2] == "edge+") == sorted(
        [(user.id, reply.id)] + [(m.id, reply.id) for m in memories])
    assert graph.store.settle() == 0 and len(graph.edges(reply.id, kinds=["surfaced"])) == 3  # added once


def test_the_worker_settles_queued_links_when_nothing_reads_them(graph):
    memories = [graph.add(Memory(text=f"lesson {i}", memory_kind="lesson")) for i in range(3)]
    _, reply = _log_with_links(graph, memories)
    assert graph.flush(timeout=30)  # the worker embedded the new turns, so it has settled what they queued
    assert db_rows(graph, "SELECT count(*) FROM pending_edges") == [(0,)]
    assert sorted(db_rows(graph, "SELECT src FROM edges WHERE dst = ? AND kind = 'surfaced'", reply.id)) == sorted(
        (m.id,) for m in memories)


def test_queued_links_neither_outlive_their_nodes_nor_come_back_once_unlinked(graph):
    memories = [graph.add(Memory(text=f"lesson {i}", memory_kind="lesson", session="m")) for i in range(2)]
    graph.worker.stop()
    _, reply = _log_with_links(graph, memories)
    assert graph.unlink(memories[0].id, reply.id, "surfaced")  # still queued when asked: settled, then removed
    graph.forget(session="m")  # the other memory, its edge still queued
    assert db_rows(graph, "SELECT count(*) FROM pending_edges") == [(0,)]
    assert [e.kind for e in graph.edges(reply.id, direction="in")] == ["next"]
    _, again = _log_with_links(graph, [graph.add(Memory(text="kept", memory_kind="lesson"))])
    graph.forget(session="s")  # the turns go with their queued edges
    assert db_rows(graph, "SELECT count(*) FROM pending_edges") == [(0,)]
    assert db_rows(graph, "SELECT count(*) FROM edges WHERE dst = ?", again.id) == [(0,)]


def _fts_rows(graph, *ids):
    marks = ",".join("?" * len(ids))
    return db_rows(graph, f"SELECT n.id, n.fts FROM nodes n JOIN nodes_fts_docsize d ON d.id = n.rowid "
                          f"WHERE n.id IN ({marks}) ORDER BY n.id", *ids)


def test_log_turns_queues_the_text_index_and_a_lexical_search_settles_it(graph):
    graph.worker.stop()
    user, reply = graph.log_turns("s", [dict(role="user", text="rename the zanzibar module"),
                                        dict(role="assistant", text="Renamed zanzibar.")])
    # committed, not yet in the full-text index: fts = 0 and no FTS5 entry
    assert db_rows(graph, "SELECT fts FROM nodes WHERE id IN (?, ?)", user.id, reply.id) == [(0,), (0,)]
    assert _fts_rows(graph, user.id, reply.id) == []
    scope = graph.resolve_scope(None)
    hits = graph.store.lexical("zanzibar", scope=scope, kinds=None, since=None, limit=5)
    assert {i for i, _ in hits} == {user.id, reply.id}  # found by the first search after the commit
    assert _fts_rows(graph, user.id, reply.id) == sorted([(user.id, 1), (reply.id, 1)])
    assert graph.store.settle() == 0  # indexed once
    assert db_rows(graph, "SELECT count(*) FROM nodes_fts_docsize") == db_rows(
        graph, "SELECT count(*) FROM nodes WHERE text IS NOT NULL")


def test_queued_text_edited_or_forgotten_before_it_is_indexed_leaves_the_index_right(graph):
    graph.worker.stop()
    kept, gone = graph.log_turns("s", [dict(role="user", text="walrus question"), dict(role="assistant", text="x")])
    graph.log_turns("other", [dict(role="user", text="walrus too")])
    graph.update(dataclasses.replace(kept, text="narwhal question"))  # still queued: nothing to delete from FTS5
    graph.forget(session="other")  # deleted while queued: no entry to remove
    scope = graph.resolve_scope(None)
    assert [i for i, _ in graph.store.lexical("narwhal", scope=scope, kinds=None, since=None, limit=5)] == [kept.id]
    assert graph.store.lexical("walrus", scope=scope, kinds=None, since=None, limit=5) == []
    # one entry per node with text and nothing else, and FTS5's own structure intact
    assert db_rows(graph, "SELECT count(*) FROM nodes WHERE fts = 0") == [(0,)]
    assert db_rows(graph, "SELECT count(*) FROM nodes_fts_docsize WHERE id NOT IN "
                          "(SELECT rowid FROM nodes WHERE text IS NOT NULL)") == [(0,)]
    assert db_rows(graph, "SELECT count(*) FROM nodes_fts_docsize") == db_rows(
        graph, "SELECT count(*) FROM nodes WHERE text IS NOT NULL")
    graph.store.conn.execute("INSERT INTO nodes_fts(nodes_fts) VALUES ('integrity-check')")


def test_the_worker_indexes_queued_text_when_nothing_searches(graph):
    user, reply = graph.log_turns("s", [dict(role="user", text="q"), dict(role="assistant", text="a")])
    assert graph.flush(timeout=30)
    assert _fts_rows(graph, user.id, reply.id) == sorted([(user.id, 1), (reply.id, 1)])


@pytest.mark.parametrize("link, error, message", [
    (("m", 2, "surfaced", None), InvalidRecord, "a position in turns"),
    (("m", "1", "surfaced", None), InvalidRecord, "a position in turns"),
    (("m", True, "surfaced", None), InvalidRecord, "a position in turns"),
    (("m", 0, "liked", None), UnknownKind, "unknown edge kind 'liked'")])
def test_log_turns_rejects_bad_links_and_writes_nothing(graph, link, error, message):
    history = graph.store.last_seq()
    with pytest.raises(error, match=message):
        graph.log_turns("s", [dict(role="user", text="q"), dict(role="assistant", text="a")], links=[link])
    assert graph.session_turns("s") == [] and graph.store.last_seq() == history


def test_history_rows_held_in_a_transaction_keep_their_order_and_are_dropped_with_it(graph):
    history = graph.store.last_seq()
    m = graph.add(Memory(text="note", memory_kind="note"))
    with pytest.raises(RuntimeError), graph.transaction():
        graph.log_turn("s", "user", "lost")
        graph.link(m.id, graph.log_turn("s", "assistant", "lost too").id, "surfaced")
        raise RuntimeError
    assert graph.store.last_seq() == history + 1 and graph.session_turns("s") == []
    with graph.transaction():
        t = graph.log_turn("s", "user", "kept")
        assert graph.store.last_seq() == history + 3  # read inside the transaction: the held rows are there
        graph.link(m.id, t.id, "surfaced")
        graph.forget(session="s")  # clears the payloads of rows this transaction added
    sid = session_id("default", "s")
    rows = graph.store.history_since(history)
    assert [(r[2], r[3]) for r in rows[:4]] == [("node+", m.id), ("node+", sid), ("node+", t.id), ("edge+", m.id)]
    assert sorted((r[2], r[3]) for r in rows[4:]) == sorted([("node-", sid), ("node-", t.id)])
    assert rows[0][8] is not None and rows[2][8] is None and rows[3][8] is None


def test_the_worker_is_woken_only_once_the_transaction_has_committed(graph, monkeypatch):
    """Woken inside a caller's transaction, the worker found no new rows (they were not committed yet) and
    slept until its next poll."""
    woken: list[bool] = []  # whether the write transaction was still open when the worker was woken
    monkeypatch.setattr(graph.worker, "notify", lambda: woken.append(graph.store.conn.in_transaction))
    with graph.transaction():
        turns = graph.log_turns("s", [{"role": "user", "text": "rename foo"}, {"role": "assistant", "text": "ok"}])
        graph.add(Memory(text="prefers short names", memory_kind="preference"))
        assert woken == []
    assert woken == [False]  # once, after the commit
    with pytest.raises(RuntimeError):
        with graph.transaction():
            graph.log_turn("s", "user", "never stored")
            raise RuntimeError("the caller fails")
    assert woken == [False]  # a rolled-back transaction wakes nothing
    graph.log_turn("s", "user", "on its own")
    assert woken == [False, False]
    assert graph.flush() and turns[0].id in graph.index.ids("default")



def test_wakes_inside_defer_embedding_wait_for_the_outermost_block(graph, monkeypatch):
    """The loop holds the worker's wake for a whole turn; writes inside the block wake it once, at the end."""
    woken: list[int] = []  # how many blocks were still open when the worker was woken
    monkeypatch.setattr(graph.worker._wake, "set", lambda: woken.append(graph.worker._deferring))
    with graph.defer_embedding():
        with graph.defer_embedding():  # another turn, in flight at the same time
            turn = graph.log_turn("s", "user", "rename foo")
        graph.add(Memory(text="prefers short names", memory_kind="preference"))
        assert woken == []
    assert woken == [0]  # once, when no block was open any more
    with graph.defer_embedding():
        pass
    assert woken == [0]  # nothing written, nothing to wake for
    monkeypatch.undo()
    with graph.defer_embedding():
        graph.log_turn("s", "assistant", "renamed")
        assert graph.flush()  # a flush inside the block still wakes the worker
        assert turn.id in graph.index.ids("default")



def test_a_program_that_exits_without_closing_its_graph_exits_cleanly(tmp_path):
    """The worker, woken by the write, was still running at exit: the interpreter's teardown closed its SQLite
    connection under it (a segfault), and embedded Chroma, never closed, was rebuilt at the next open."""
    import subprocess

    script = ("from mindloop.graph import GraphConfig, HashingEmbedder, MemoryGraph\n"
              f"g = MemoryGraph.open(GraphConfig(home={str(tmp_path)!r}), embedder=HashingEmbedder())\n"
              "print(g.log_turn('s', 'user', 'rename foo to bar').id)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    with MemoryGraph.open(GraphConfig(home=tmp_path), embedder=HashingEmbedder()) as g:
        assert g.index.rebuilt is False  # closed at exit, so its vectors were kept
        assert g.get(done.stdout.strip()).text == "rename foo to bar"
        assert g.flush() and done.stdout.strip() in g.index.ids("default")


# -- search ----------------------------------------------------------------------


def test_search_fuses_vector_and_lexical_and_explains(graph):
    target = graph.log_turn("s", "user", "please rename the function parse_config to load_config")
    graph.log_turn("s", "assistant", "I baked a chocolate cake yesterday")
    graph.log_turn("s2", "user", "what is the weather like in Lisbon")
    assert graph.flush()
    hits = graph.search("rename function parse_config", hops=0)
    assert hits[0].node.id == target.id
    assert hits[0].signals == ["vector", "lexical"]
    vec = next(r for r in hits[0].reasons if r["signal"] == "vector")
    assert vec["rank"] == 1 and 0 < vec["similarity"] <= 1
    assert hits == sorted(hits, key=lambda h: -h.score)


def test_an_exact_match_stays_first_when_its_neighbours_are_also_found(graph):
    """Expansion adds no vote to what the query found itself: the neighbours of the best hit, found by vector and
    keyword at lower ranks, once collected a third vote from the graph and pushed the exact match out of the top 5."""
    words = "zebra quantum falafel orbit lantern".split()
    exact = None
    for i in range(8):  # one session: every turn is a neighbour of the next
        text = " ".join(words) if i == 3 else " ".join(words[: 2 + i % 3]) + f" filler {i}"
        t = graph.log_turn("s", "user", text)
        exact = t if i == 3 else exact
    graph.log_turn("other", "user", "nothing to do with it")
    assert graph.flush()
    hits = graph.search(" ".join(words), k=5, hops=1)
    assert hits[0].node.id == exact.id, [h.node.text for h in hits]
    graphed = [r for h in hits for r in h.reasons if r["signal"] == "graph"]
    assert graphed and all(r["rank"] is None for r in graphed)  # the paths are still told, without a vote


def test_graph_expansion_returns_neighbours_with_their_path(graph):
    u = graph.log_turn("s", "user", "rename foo to bar")
    a = graph.log_turn("s", "assistant", "Sure. Alternatively you could consider a refactor")
    c = graph.log_turn("s", "user", "no, just do what I said")
    lesson = graph.add(Memory(text="when told to rename, just rename; do not offer refactors",
                              memory_kind="lesson"))
    graph.link(lesson.id, c.id, "surfaced")
    graph.link(c.id, a.id, "corrects")
    assert graph.flush()
    hits = graph.search("just do what I said", k=10, hops=1)
    by_id = {h.node.id: h for h in hits}
    assert lesson.id in by_id
    graph_reason = next(r for r in by_id[lesson.id].reasons if r["signal"] == "graph")
    assert graph_reason["from"] == c.id and graph_reason["path"] == [c.id, lesson.id]
    assert graph_reason["edges"] == ["surfaced"]
    # hops=0 turns expansion off: the lesson then only comes from its own text, never via the graph
    assert all("graph" not in h.signals for h in graph.search("just do what I said", hops=0))
    _ = u


def test_search_filters_kinds_and_since(graph):
    old = graph.add(Memory(text="deploy with the blue pipeline", created=1000.0))
    new = graph.add(Memory(text="deploy with the green pipeline"))
    turn = graph.log_turn("s", "user", "deploy the pipeline now")
    assert graph.flush()
    hits = graph.search("deploy pipeline", kinds=["memory"])
    assert {h.node.id for h in hits} == {old.id, new.id}
    hits = graph.search("deploy pipeline", since=2000.0)
    assert old.id not in {h.node.id for h in hits}
    assert {new.id, turn.id} <= {h.node.id for h in hits}


def test_search_never_crosses_scopes(graph):
    graph.log_turn("s", "user", "the secret launch code is swordfish", scope="alice")
    mine = graph.log_turn("s", "user", "my launch checklist", scope="bob")
    assert graph.flush()
    for hops in (0, 2):
        hits = graph.search("secret launch code swordfish", scope="bob", hops=hops)
        assert [h.node.id for h in hits] == [mine.id]
    assert graph.search("swordfish", scope="carol") == []


def test_search_rejects_bad_queries(graph):
    with pytest.raises(InvalidText):
        graph.search("  ")
    with pytest.raises(ValueError, match="k must be at least 1"):
        graph.search("x", k=0)


def test_search_works_lexically_without_an_index(config):
    """A process that does not own embedded Chroma still logs and searches (lexical + graph)."""
    owner = MemoryGraph.open(config, embedder=HashingEmbedder())
    try:
        other = MemoryGraph.open(config, embedder=HashingEmbedder())
        try:
            assert other.index is None and "one writer" in other.index_note
            t = other.log_turn("s", "user", "tabs not spaces please")
            hits = other.search("tabs spaces")
            assert [h.node.id for h in hits] == [t.id] and hits[0].signals == ["lexical"]
            assert other.flush(timeout=1) is False  # it cannot embed; the owner will
            assert owner.flush()  # the owner's worker picks up the other process's node
            assert t.id in owner.index.ids("default")
        finally:
            other.close()
    finally:
        owner.close()


# -- the networkx view -----------------------------------------------------------


def test_view_is_kept_current_across_graph_instances(config):
    """Two MemoryGraphs on one data dir (as two processes would be) see each other's writes."""
    g1 = MemoryGraph.open(config, embedder=HashingEmbedder())
    g2 = MemoryGraph.open(config, embedder=HashingEmbedder())
    try:
        t = g1.log_turn("s", "user", "x")
        u = g1.log_turn("s", "assistant", "y")
        assert g2.view.nx.has_edge(t.id, u.id, key="next")
        g2.forget(session="s")
        assert t.id not in g1.view.nx
        assert g1.view.nx.number_of_nodes() == 0
    finally:
        g2.close()
        g1.close()


def test_neighbourhood_path_and_communities(graph):
    a = [graph.log_turn("s1", "user", f"a{i}") for i in range(4)]
    b = [graph.log_turn("s2", "user", f"b{i}") for i in range(4)]
    hood = graph.view.neighbourhood(a[1].id, hops=1)
    assert set(hood.nodes) == {a[0].id, a[1].id, a[2].id}
    assert graph.view.path(a[0].id, a[3].id) == [t.id for t in a]
    assert graph.view.path(a[0].id, b[0].id) == []
    comms = graph.view.communities("default", kinds=["turn"])
    assert {frozenset(c) for c in comms} == {frozenset(t.id for t in a), frozenset(t.id for t in b)}
    with pytest.raises(NodeNotFound):
        graph.view.neighbourhood("nope")


# -- forgetting ------------------------------------------------------------------


def _every_path_finds(graph, text, scope):
    """Where a text could still be found: each search signal, the store, the index and the history."""
    found = set()
    for hops in (0, 2):
        if any(text in (h.node.embed_text() or "") for h in graph.search(text, scope=scope, hops=hops)):
            found.add(f"search(hops={hops})")
    lexical = graph.store.lexical(text, scope=scope, kinds=None, since=None, limit=100)
    if any(text in (n.embed_text() or "") for n in graph.store.get_nodes([i for i, _ in lexical]).values()):
        found.add("lexical")
    q = graph.embedder.embed([text])[0]
    for node_id, sim in graph.index.query(scope, q, 100):
        if sim > 0.99:
            found.add("vector")
    if any(text in (n.embed_text() or "") for n in graph.nodes(scope=scope)):
        found.add("nodes")
    if db_rows(graph, "SELECT count(*) FROM history WHERE payload LIKE ?", f"%{text}%")[0][0]:
        found.add("history")
    if db_rows(graph, "SELECT count(*) FROM nodes_fts WHERE nodes_fts MATCH ?", f'"{text.split()[0]}"')[0][0]:
        found.add("fts")
    if any(n in graph.view.nx for n in graph.index.ids(scope)) and any(
        graph.view.nx.nodes[n].get("session") == "secret" for n in graph.view.nx
    ):
        found.add("view")
    return found


def test_forget_session_removes_it_from_every_path(graph):
    secret = "zanzibar passphrase is quokka"
    s = [graph.log_turn("secret", "user", secret), graph.log_turn("secret", "assistant", "noted")]
    kept = graph.log_turn("other", "user", "keep this one about quokka habitats")
    mem = graph.add(Memory(text="about the zanzibar passphrase", session="secret"))
    graph.link(mem.id, s[0].id, "surfaced")
    assert graph.flush()
    assert {"search(hops=0)", "lexical", "vector", "nodes", "history", "fts"} <= _every_path_finds(
        graph, secret, "default")
    removed = graph.forget(session="secret")
    assert removed == 4  # session node, two turns, the memory
    assert _every_path_finds(graph, secret, "default") == set()
    assert all(n not in graph.view.nx for n in [t.id for t in s] + [mem.id])
    assert graph.get(kept.id).text.startswith("keep")
    assert graph.flush() and graph.index.ids("default") == graph.store.embeddable_ids("default") == {kept.id}


def test_forget_scope(graph):
    graph.log_turn("s", "user", "alice's private note", scope="alice")
    b = graph.log_turn("s", "user", "bob's note", scope="bob")
    assert graph.flush()
    assert graph.forget(scope="alice") == 2
    assert graph.nodes(scope="alice") == [] and graph.index.count("alice") == 0
    assert [n.id for n in graph.nodes(scope="bob", kind="turn")] == [b.id]
    with pytest.raises(ValueError):
        graph.forget()


# -- vectors ---------------------------------------------------------------------


def test_reconcile_rebuilds_missing_and_drops_stale_vectors(config):
    g = MemoryGraph.open(config, embedder=HashingEmbedder())
    t = g.log_turn("s", "user", "remember me")
    assert g.flush()
    g.index.delete("default", [t.id])  # vector lost
    g.index.upsert("default", ["ghost"], HashingEmbedder().embed(["ghost"]), [{"kind": "turn", "created": 0.0}])
    g.index.upsert("nobody", ["ghost2"], HashingEmbedder().embed(["g"]), [{"kind": "turn", "created": 0.0}])
    g.close()
    g = MemoryGraph.open(config, embedder=HashingEmbedder())
    try:
        assert g.flush()
        assert g.index.ids("default") == {t.id}
        assert "nobody" not in g.index.scopes()
    finally:
        g.close()


def test_changed_text_is_re_embedded(graph):
    m = graph.add(Memory(text="prefers spaces"))
    assert graph.flush()
    m.text = "prefers tabs"
    graph.update(m)
    assert graph.flush()
    q = graph.embedder.embed(["prefers tabs"])[0]
    assert graph.index.query("default", q, 1)[0] == (m.id, pytest.approx(1.0, abs=1e-5))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are a Linux feature")
@pytest.mark.parametrize("nice", [10, 0])
def test_the_worker_embeds_below_the_callers_priority(config, nice):
    # the caller's commits and searches get the CPUs first; the worker's own torch threads inherit its niceness
    seen = []

    class Recording(HashingEmbedder):
        def embed(self, texts):
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return super().embed(texts)

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    g = MemoryGraph.open(dataclasses.replace(config, embed_nice=nice), embedder=Recording())
    try:
        g.add(Memory(text="prefers spaces"))
        assert g.flush()
    finally:
        g.close()
    assert seen and set(seen) == {min(19, mine + nice)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the caller's own is untouched


def test_embedding_failure_is_retried_not_lost(config):
    class Flaky(HashingEmbedder):
        fail = 2

        def embed(self, texts):
            if self.fail:
                self.fail -= 1
                raise RuntimeError("model hiccup")
            return super().embed(texts)

    g = MemoryGraph.open(config, embedder=Flaky())
    try:
        t = g.log_turn("s", "user", "still here")
        assert g.flush(timeout=30)
        assert g.index.ids("default") == {t.id}
    finally:
        g.close()


# -- export / import -------------------------------------------------------------


def _populated(graph, scope):
    u = graph.log_turn("s", "user", "rename it", scope=scope)
    a = graph.log_turn("s", "assistant", "how about a refactor?", scope=scope)
    c = graph.log_turn("s", "user", "no, just rename it", scope=scope)
    p = graph.add(Pattern(scope=scope, name="suggests alternatives"))
    f = graph.add(Flag(scope=scope, turn=a.id, correction=c.id, type="unwanted_alternatives", confidence=0.9),
                  edges=[])
    graph.link(f.id, a.id, "flags")
    graph.link(f.id, p.id, "member_of")
    graph.link(c.id, a.id, "corrects")
    return u


def test_export_import_round_trip(graph):
    _populated(graph, "alice")
    graph.log_turn("x", "user", "not exported", scope="bob")
    first = io.StringIO()
    counts = graph.export("alice", first)
    assert counts == {"nodes": 6, "edges": 5}  # session, 3 turns, pattern, flag
    graph.forget(scope="alice")
    assert graph.import_(first.getvalue().splitlines()) == counts
    assert graph.import_(first.getvalue().splitlines()) == {"nodes": 0, "edges": 0}  # idempotent
    second = io.StringIO()
    graph.export("alice", second)
    assert second.getvalue() == first.getvalue()
    assert graph.flush() and graph.index.ids("alice") == graph.store.embeddable_ids("alice")
    # a turn appended after import continues the session's order
    assert graph.log_turn("s", "user", "next", scope="alice").index == 3


def test_import_into_another_scope(graph):
    _populated(graph, "alice")
    buf = io.StringIO()
    graph.export("alice", buf)
    lines = buf.getvalue().splitlines()
    # ids are global; moving records to a new scope needs them absent from the old one
    graph.forget(scope="alice")
    graph.import_(lines, scope="carol")
    assert len(graph.nodes(scope="carol")) == 6 and graph.nodes(scope="alice") == []


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda lines: lines[1:], "line 1: the first line must be a header"),
        (lambda lines: lines[:2] + ["{not json"] + lines[2:], "line 3: not JSON"),
        (lambda lines: lines + ['{"node": {"kind": "gizmo"}}'], "unknown node kind 'gizmo'"),
        (lambda lines: lines + ['{"edge": {"src": "a", "dst": "b", "kind": "next"}}'], "no node with id 'a'"),
        (lambda lines: lines + ['{"other": 1}'], 'expected {"node"'),
        (lambda lines: [], "empty"),
    ],
)
def test_import_rejects_bad_files_whole(graph, mutate, message):
    _populated(graph, "alice")
    buf = io.StringIO()
    graph.export("alice", buf)
    graph.forget(scope="alice")
    seq = graph.store.last_seq()
    with pytest.raises(InvalidRecord, match=message):
        graph.import_(mutate(buf.getvalue().splitlines()))
    assert graph.nodes(scope="alice") == [] and graph.store.last_seq() == seq


def test_stats(graph):
    _populated(graph, "default")
    assert graph.flush()
    s = graph.stats()
    assert s["nodes"] == {"session": 1, "turn": 3, "pattern": 1, "flag": 1}
    assert s["edges"] == {"next": 2, "flags": 1, "member_of": 1, "corrects": 1}
    assert s["sessions"] == 1
    assert s["vectors_pending"] == 0 and s["vectors_indexed"] == s["vectors_in_index"] == 4  # 3 turns + pattern
    json.dumps(s)


def test_embedder_contract_hashing_ranks_similar_strings_together():
    e = HashingEmbedder()
    v = e.embed(["rename the function", "rename that function please", "bake a chocolate cake", "rename the function"])
    assert v.dtype == np.float32 and v.shape == (4, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.allclose(v[0], v[3])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
