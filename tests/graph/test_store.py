"""The SQLite store: opening damaged or foreign files, WAL and durability settings, transactions."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading

import pytest

from mindloop.graph import DiskFull, GraphConfig, HashingEmbedder, Memory, MemoryGraph, Store, StoreCorrupt
from mindloop.graph.fulltext import bounded_query, fts_query
from mindloop.graph.schema import SCHEMA_VERSION


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



def test_an_older_graph_loses_the_unused_history_index_and_forgetting_still_clears_payloads(tmp_path):
    cfg = GraphConfig(home=tmp_path, embedder="hashing")
    with MemoryGraph.open(cfg, embedder=HashingEmbedder()) as g:
        t = g.log_turn("s", "user", "my card number is 4111")
        g.store.conn.execute("CREATE INDEX history_node ON history(node)")  # as graphs made before it was dropped
    with MemoryGraph.open(cfg, embedder=HashingEmbedder()) as g:
        conn = g.store.conn
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'history_node'").fetchall() == []
        assert "4111" in conn.execute("SELECT group_concat(payload) FROM history WHERE node = ?", (t.id,)).fetchone()[0]
        g.forget(session="s")
        payloads = conn.execute("SELECT payload FROM history WHERE node = ? OR dst = ?", (t.id, t.id)).fetchall()
        assert payloads and all(p[0] is None for p in payloads)


def test_fts_query_keeps_distinctive_words_and_escapes_quotes():
    assert fts_query('Please rename "foo" to bar, and the BAR') == '"rename" OR "foo" OR "bar"'
    assert fts_query("the of and a") is None
    assert fts_query("x") is None
    assert fts_query('say "hi"') == '"say" OR "hi"'


def test_a_bounded_query_ranks_only_the_rows_of_the_rarest_words_past_its_budget():
    counts = {"kafka": 40, "upgrade": 900, "error": 5000, "ghost": 0}
    # within the budget: every word that matches anything, ORed
    assert bounded_query(["kafka", "upgrade", "ghost"], counts, budget=1000) == ('"kafka" OR "upgrade"', 940)
    # past it: the rarest words that fit pick the rows, every word scores them
    assert bounded_query(["error", "kafka", "upgrade"], counts, budget=1000) == (
        '("kafka" OR "upgrade") AND ("error" OR "kafka" OR "upgrade")', 940)
    # the rarest word alone when even it is over the budget, and nothing counts the rows holding several
    assert bounded_query(["error", "upgrade"], counts, budget=500) == ('("upgrade") AND ("error" OR "upgrade")', 900)
    assert bounded_query(["ghost"], counts, budget=10) is None


def test_past_the_budget_the_rarest_words_together_pick_the_rows():
    counts = {"deploy": 9000, "invoice": 6000, "export": 7000, "weather": 8000}
    held = {("invoice", "export"): 2500, ("invoice", "export", "weather"): 0, ("invoice", "export", "deploy"): 300,
            ("invoice", "weather"): 10}
    asked: list[tuple[str, ...]] = []

    def count_all(terms):
        asked.append(tuple(terms))
        return held.get(tuple(terms), 0)

    query, rows = bounded_query(["deploy", "invoice", "export", "weather"], counts, budget=1000,
                                count_all=count_all, least=20)
    # rarest first; "weather" would leave fewer than 20 rows, so it is left out and "deploy" is tried after it
    assert asked == [("invoice", "export"), ("invoice", "export", "weather"), ("invoice", "export", "deploy")]
    assert (query, rows) == ('("invoice" AND "export" AND "deploy") AND '
                             '("deploy" OR "invoice" OR "export" OR "weather")', 300)
    # too few rows hold any pair: the rarest word alone picks, as before
    assert bounded_query(["deploy", "invoice"], counts, budget=1000, count_all=lambda terms: 5, least=20) == (
        '("invoice") AND ("deploy" OR "invoice")', 6000)


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
    texts = [lexical_graph.get(i).text for i, _ in bounded]
    # the rows with "kafka" first; scope "b" holds the third "kafka" row, so the rows of this scope among the
    # newest 20 (the budget) with either word fill up behind them
    assert set(texts[:2]) == {"an error after the kafka upgrades", "the kafka upgrade went fine"}
    assert 2 < len(texts) <= 20 and all("error" in t for t in texts[2:])
    assert "an error in report 0" not in texts  # the oldest are past the window
    # "error" still scores them: "kafka" counts twice (it picks the rows and scores them), "error" adds to that.
    # FTS5 scores are lower-is-better.
    row = next(i for i, _ in bounded[:2] if "error" in lexical_graph.get(i).text)
    kafka_alone = dict(store.lexical("kafka", **kw))[row]
    assert dict(bounded)[row] < 2 * kafka_alone
    assert store.lexical("kafka error", budget=1000, **kw) == everything  # within the budget: the plain OR
    assert store.lexical("zebra quagga", budget=20, **kw) == []


def test_a_search_for_memories_counts_and_ranks_memories_only(tmp_path):
    """"deploy" is the rarest word among all rows but only turns hold it: counted over every kind, it picked
    rows that the kind filter then dropped, and surfacing found nothing lexically."""
    with MemoryGraph.open(GraphConfig(home=tmp_path, embedder="hashing"), embedder=HashingEmbedder()) as g:
        with g.transaction():
            g.log_turns("s", [{"role": "user", "text": f"deploy the invoice export {i}"} for i in range(3)])
            for i in range(40):
                g.add(Memory(text=f"invoice export note {i}", memory_kind="note"))
            best = g.add(Memory(text="the invoice export must keep the customer column", memory_kind="lesson"))
        store, scope = g.store, g.resolve_scope(None)
        assert store.term_counts(["deploy", "customer"], cap=100, column="memory_text") == {"deploy": 0, "customer": 1}
        assert store.term_counts(["deploy", "customer"], cap=100, column="log_text") == {"deploy": 3, "customer": 0}
        hits = store.lexical("deploy the invoice export for the customer", scope=scope, kinds=["memory"], since=None,
                             limit=5, budget=10)
        assert hits and hits[0][0] == best.id
        assert all(g.get(i).kind == "memory" for i, _ in hits)
        turns = store.lexical("deploy invoice", scope=scope, kinds=["turn"], since=None, limit=10, budget=10)
        assert len(turns) == 3 and all(g.get(i).kind == "turn" for i, _ in turns)


def test_filters_that_drop_most_of_the_best_rows_fall_back_to_filtering_every_row(tmp_path):
    with MemoryGraph.open(GraphConfig(home=tmp_path, embedder="hashing"), embedder=HashingEmbedder()) as g:
        with g.transaction():
            for i in range(50):  # the best matches all live in another scope
                g.add(Memory(text=f"invoice invoice {i}", memory_kind="note", scope="other"))
            mine = [g.add(Memory(text=f"an invoice among many words number {i}", memory_kind="note", scope="me"))
                    for i in range(3)]
        hits = g.store.lexical("invoice", scope="me", kinds=["memory"], since=None, limit=2)
        assert [i for i, _ in hits] == [m.id for m in mine[:2]]


def test_past_the_budget_the_rows_holding_the_rarest_words_together_are_ranked_however_old(tmp_path):
    with MemoryGraph.open(GraphConfig(home=tmp_path, embedder="hashing"), embedder=HashingEmbedder()) as g:
        with g.transaction():
            old = [g.add(Memory(text=f"the invoice export failed for customer {i}", memory_kind="note"))
                   for i in range(3)]
            for i in range(40):
                g.add(Memory(text=f"invoice reminder {i}", memory_kind="note"))
                g.add(Memory(text=f"export job {i}", memory_kind="note"))
        kw = {"scope": g.resolve_scope(None), "kinds": ["memory"], "since": None, "limit": 3}
        assert g.store.term_counts(["invoice", "export"], cap=11, column="memory_text") == {"invoice": 11, "export": 11}
        # both words are over the budget of 10; the three rows holding both are the oldest, past the newest 10
        assert {i for i, _ in g.store.lexical("invoice export", budget=10, **kw)} == {m.id for m in old}
        ids = [i for i, _ in g.store.lexical("invoice export", budget=10, **kw)]
        assert ids == [i for i, _ in g.store.lexical("invoice export", **kw)]  # the unbounded search's order


def test_a_budget_bounds_the_rows_scored_to_the_newest(tmp_path):
    with MemoryGraph.open(GraphConfig(home=tmp_path, embedder="hashing"), embedder=HashingEmbedder()) as g:
        with g.transaction():
            old = g.add(Memory(text="invoice invoice invoice export", memory_kind="note"))  # the best BM25 match
            for i in range(30):
                g.add(Memory(text=f"invoice export number {i} of the batch", memory_kind="note"))
        kw = {"scope": g.resolve_scope(None), "kinds": ["memory"], "since": None, "limit": 50}
        assert g.store.lexical("invoice", **kw)[0][0] == old.id  # unbounded: every row is scored
        bounded = g.store.lexical("invoice", budget=10, **kw)
        assert len(bounded) == 10 and old.id not in {i for i, _ in bounded}


def test_a_version_1_graph_is_migrated_with_its_text_index(tmp_path, version_1):
    db = tmp_path / "graph.db"
    Store(db).close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO nodes (id, kind, scope, created, updated, text, data) VALUES "
                     "('memory_1', 'memory', 'default', 0, 0, 'kafka lesson', "
                     "'{\"kind\":\"memory\",\"scope\":\"default\",\"id\":\"memory_1\",\"created\":0}')")
    conn.close()
    version_1(db)
    store = Store(db)
    try:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.lexical("kafka", scope="default", kinds=["memory"], since=None, limit=5) == [
            ("memory_1", pytest.approx(store.lexical("kafka", scope="default", kinds=None, since=None, limit=5)[0][1]))]
        assert store.lexical("kafka", scope="default", kinds=["turn"], since=None, limit=5) == []
    finally:
        store.close()


def test_a_version_3_graph_gets_the_text_queue_with_its_rows_indexed(tmp_path):
    db = tmp_path / "graph.db"
    with MemoryGraph.open(GraphConfig(home=tmp_path), embedder=HashingEmbedder()) as g:
        g.add(Memory(text="kafka lesson", memory_kind="lesson"))
    conn = sqlite3.connect(db)
    with conn:  # back to schema 3: no fts column, and a delete trigger without its condition (the migration
        # drops the triggers that are there and makes all three)
        for name in ("nodes_ai", "nodes_ad", "nodes_au"):
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("DROP INDEX nodes_unindexed")
        conn.execute("ALTER TABLE nodes DROP COLUMN fts")
        conn.execute("CREATE TRIGGER nodes_ad AFTER DELETE ON nodes WHEN old.text IS NOT NULL BEGIN "
                     "INSERT INTO nodes_fts(nodes_fts, rowid, log_text, memory_text) "
                     "VALUES ('delete', old.rowid, old.log_text, old.memory_text); END")
        conn.execute("PRAGMA user_version = 3")
    conn.close()
    with MemoryGraph.open(GraphConfig(home=tmp_path), embedder=HashingEmbedder()) as g:
        g.worker.stop()
        assert g.store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        scope = g.resolve_scope(None)
        assert len(g.store.lexical("kafka", scope=scope, kinds=None, since=None, limit=5)) == 1  # indexed before
        turn = g.log_turns("s", [dict(role="user", text="kafka turn")])[0]
        assert g.store.conn.execute("SELECT fts FROM nodes WHERE id = ?", (turn.id,)).fetchone() == (0,)
        assert len(g.store.lexical("kafka", scope=scope, kinds=None, since=None, limit=5)) == 2
        g.forget(session="s")  # the new delete trigger: the settled turn's entry goes with it
        assert len(g.store.lexical("kafka", scope=scope, kinds=None, since=None, limit=5)) == 1
        g.store.conn.execute("INSERT INTO nodes_fts(nodes_fts) VALUES ('integrity-check')")


def _wal_frames(db) -> int:
    wal = db.with_name(db.name + "-wal")
    return 0 if not wal.exists() else (wal.stat().st_size - 32) // (4096 + 24)


def test_commits_leave_the_wal_checkpoint_to_the_background_thread(tmp_path):
    """Past SQLite's 1,000 pages a commit would checkpoint the WAL itself, inside the caller's write; here the
    WAL grows past that until the checkpointer thread runs, which then copies everything back."""
    db = tmp_path / "g.db"
    store = Store(db, checkpoint_delay_s=3600)  # the thread waits; only close() makes it run
    try:
        page = "x" * 3500
        for i in range(1300):  # one commit of about one page each
            with store.write() as conn:
                conn.execute("INSERT INTO history (at, op, node, kind, scope, payload) VALUES (0, 'x', ?, 'k', 's', ?)",
                             (f"n{i}", page))
        assert _wal_frames(db) > 1200
        assert store.checkpointer.checkpoints == 0
        before = store.checkpointer.checkpoints
    finally:
        store.close()  # stops the thread, which checkpoints what is left
    assert store.checkpointer.checkpoints == before + 1
    conn = sqlite3.connect(db)
    try:
        busy, log_frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, log_frames - done) == (0, 0)
        assert conn.execute("SELECT count(*) FROM history WHERE op = 'x'").fetchone()[0] == 1300
    finally:
        conn.close()


def test_the_checkpointer_runs_after_each_burst_of_writes(tmp_path):
    store = Store(tmp_path / "g.db", checkpoint_delay_s=0.01)
    try:
        for burst in (1, 2):
            ran = store.checkpointer.checkpoints
            with store.write() as conn:
                conn.execute("INSERT INTO history (at, op, node, kind, scope) VALUES (0, 'x', 'n', 'k', 's')")
            assert store.checkpointer.wait(ran + 1, timeout=30), f"no checkpoint after write burst {burst}"
    finally:
        store.close()


def test_a_checkpoint_due_inside_a_held_block_waits_for_its_end_or_for_max_hold(tmp_path):
    """The agent loop holds checkpoints for each turn: one took about 10 ms, and the log steps it overlapped
    were the slowest. Turns that never stop coming hold it for ``max_hold_s`` at most."""
    store = Store(tmp_path / "g.db", checkpoint_delay_s=0.01)
    ck = store.checkpointer
    try:
        with ck.held():
            with store.write() as conn:
                conn.execute("INSERT INTO history (at, op, node, kind, scope) VALUES (0, 'x', 'n', 'k', 's')")
            assert not ck.wait(1, timeout=0.3), "a checkpoint ran inside the held block"
        assert ck.wait(1, timeout=30)
        ck.max_hold_s = 0.05
        with ck.held():
            with store.write() as conn:
                conn.execute("INSERT INTO history (at, op, node, kind, scope) VALUES (0, 'x', 'n2', 'k', 's')")
            assert ck.wait(2, timeout=30), "a block held for good kept the WAL from ever being checkpointed"
    finally:
        store.close()


def _wal_salts(db) -> bytes:
    """The WAL header's salts: SQLite draws new ones each time the WAL starts over."""
    return db.with_name(db.name + "-wal").read_bytes()[16:24]


def test_the_checkpointer_starts_the_wal_over_so_that_the_next_commit_need_not(tmp_path):
    """The first commit after a complete checkpoint rewrote the WAL header and fsynced it apart from its own
    fsync: a chat's log step, which comes after the last turn's checkpoint, paid two."""
    db = tmp_path / "g.db"
    store = Store(db, checkpoint_delay_s=0.01)
    try:
        for turn in range(3):
            ran = store.checkpointer.checkpoints
            with store.write() as conn:
                conn.execute("INSERT INTO history (at, op, node, kind, scope) VALUES (0, 'x', ?, 'k', 's')", (f"n{turn}",))
            assert store.checkpointer.wait(ran + 1, timeout=30)
            salts = _wal_salts(db)
            with store.write() as conn:  # the next turn's commit: it appends to the WAL the thread started
                conn.execute("INSERT INTO history (at, op, node, kind, scope) VALUES (0, 'y', ?, 'k', 's')", (f"n{turn}",))
            assert _wal_salts(db) == salts, f"commit {turn} after the checkpoint started the WAL over itself"
            assert store.checkpointer.wait(ran + 2, timeout=30)
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION  # the restart changed nothing
        assert store.conn.execute("SELECT count(*) FROM history WHERE op IN ('x', 'y')").fetchone()[0] == 6
    finally:
        store.close()


class _BlockedSync:
    """Stands in for ``os.fdatasync``: records which file each call synced and holds it until released."""

    def __init__(self, fail: OSError | None = None) -> None:
        self.files: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, fd: int) -> None:
        self.files.append(os.readlink(f"/proc/self/fd/{fd}"))
        self.entered.set()
        assert self.release.wait(30)
        if self.fail is not None:
            raise self.fail


def _insert(store: Store, note: str, *, sync: bool = True) -> None:
    with store.write(sync=sync) as conn:
        conn.execute("INSERT INTO history (at, op, node, kind, scope) VALUES (0, 'x', ?, 'k', 's')", (note,))


needs_proc = pytest.mark.skipif(not hasattr(os, "fdatasync") or not os.path.isdir("/proc/self/fd"),
                                reason="reads which file was synced from /proc")


@pytest.fixture
def held(tmp_path, monkeypatch):
    """A store whose WAL syncs go through a :class:`_BlockedSync`, released before the store closes."""
    fdatasync = _BlockedSync()
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    store = Store(tmp_path / "g.db")
    yield store, fdatasync
    fdatasync.release.set()
    store.close()


@pytest.fixture
def synced(monkeypatch) -> list[int]:
    """The descriptors the WAL sync thread syncs, recorded instead of synced."""
    calls: list[int] = []
    monkeypatch.setattr(os, "fdatasync", calls.append, raising=False)
    monkeypatch.setattr(os, "fsync", calls.append)
    return calls


@needs_proc
def test_a_write_that_need_not_wait_is_committed_unsynced_and_its_wal_synced_by_the_thread(tmp_path, held):
    store, fdatasync = held
    _insert(store, "a", sync=False)
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again for the next write
    other = sqlite3.connect(tmp_path / "g.db")  # committed: another connection sees it at once
    assert other.execute("SELECT count(*) FROM history WHERE node = 'a'").fetchone()[0] == 1
    other.close()
    assert not store.sync(timeout=0.05), "sync() returned while the WAL's fdatasync had not"
    fdatasync.release.set()
    assert store.sync(timeout=30)
    assert fdatasync.files == [str(tmp_path / "g.db-wal")]
    _insert(store, "b")  # a write that waits syncs inside its commit (FULL): nothing for the thread
    assert store.syncer.syncs == 1 and fdatasync.files == [str(tmp_path / "g.db-wal")]


@needs_proc
def test_writes_committed_while_a_sync_runs_share_the_next_one(held):
    store, fdatasync = held
    _insert(store, "first", sync=False)
    assert fdatasync.entered.wait(30)  # the thread is in the first sync, held until released
    for note in ("a", "b", "c"):
        _insert(store, note, sync=False)
    fdatasync.release.set()
    assert store.sync(timeout=30)
    assert store.syncer.syncs == 2 and len(fdatasync.files) == 2


@needs_proc
def test_a_failed_sync_is_reported_to_every_later_wait(held, monkeypatch):
    store, fdatasync = held
    fdatasync.fail = OSError(errno.EIO, "Input/output error")
    fdatasync.release.set()
    _insert(store, "a", sync=False)
    with pytest.raises(DiskFull, match=r"g\.db-wal could not be synced to the disk .*Input/output error"):
        store.sync(timeout=30)
    monkeypatch.setattr(os, "fdatasync", lambda fd: None)
    _insert(store, "b", sync=False)  # Linux may report the next fsync clean after dropping the pages
    with pytest.raises(DiskFull):
        store.sync(timeout=30)
    assert store.conn.execute("SELECT count(*) FROM history WHERE op = 'x'").fetchone()[0] == 2  # committed


def test_with_durability_normal_nothing_is_synced_for_a_write(tmp_path, synced):
    store = Store(tmp_path / "g.db", durability="normal")
    try:
        _insert(store, "a", sync=False)
        assert store.sync(timeout=0) and synced == [] and store.syncer.syncs == 0
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    finally:
        store.close()


def test_closing_the_store_syncs_what_was_asked_for(tmp_path, synced):
    store = Store(tmp_path / "g.db")
    _insert(store, "a", sync=False)
    store.close()
    assert store.syncer.syncs == 1 and len(synced) == 1


def test_a_write_that_need_not_wait_after_close_is_synced_at_once(tmp_path, synced):
    store = Store(tmp_path / "g.db")
    store.close()
    _insert(store, "late", sync=False)  # a straggler thread's write: its connection reopens
    assert len(synced) == 1 and store.sync(timeout=0)
    store.close()
