"""A damaged data directory: detected with a message naming the file, reported and repaired by ``mindloop doctor``.

One data directory is built per module: 1,250 turns in two scopes (enough
for Chroma to persist an HNSW segment), flags and memories linked to them,
two checkpoints (the second promoted) and a ``loop.db``. Each test copies
it, damages one thing, and checks the whole path:

1. opening notices: ``MemoryGraph.open`` (and ``mindloop search``) refuse a
   damaged graph.db with a message naming it and the damage, never a raw
   sqlite3 traceback; derived vectors are rebuilt silently, as designed;
   checkpoints report the damaged one;
2. ``mindloop doctor`` exits 1 and lists the problem with its path;
3. ``mindloop doctor --repair`` exits 0: damaged files are backed up byte
   for byte beside themselves, what SQLite can read is recovered;
4. afterwards ``doctor`` is clean, the graph opens, its integrity holds,
   search finds recovered turns, and everything the damage did not touch
   is as before (counts of turns, flags and memories per scope, the other
   checkpoints, loop.db).

Run::

    .venv/bin/python -m pytest tests/reliability/test_damaged.py -q
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import struct
from pathlib import Path

import pytest

from mindloop.agents.cli import main
from mindloop.graph import Flag, GraphConfig, Memory, MemoryGraph, StoreCorrupt
from mindloop.graph.index import ChromaIndex
from mindloop.graph.schema import SCHEMA_VERSION
from mindloop.trainer.checkpoints import Checkpoints
from mindloop.trainer.errors import CheckpointError

TURNS, BOB_TURNS, FLAGS, MEMORIES, LOOP_ROWS = 1200, 50, 40, 20, 400


def _safetensors(path: Path, n: int = 64) -> None:
    """A small, valid safetensors file, written without torch."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + struct.pack(f"<{n}f", *range(n)))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("damaged") / "home"
    g = MemoryGraph.open(GraphConfig(home=home, embedder="hashing", embed_batch=256))
    turns = []
    for s in range(12):
        turns += g.log_turns(f"s{s}", [{"role": "user" if i % 2 == 0 else "assistant",
                                        "text": f"alice session {s} turn {i}: rename widget{s}x{i} to gadget"}
                                       for i in range(TURNS // 12)], scope="alice")
    for i in range(BOB_TURNS):
        g.log_turn("b", "user", f"bob turn {i} about tabs{i} and spaces", scope="bob")
    for i in range(FLAGS):
        reply, correction = turns[2 * i + 1], turns[2 * i + 2]
        f = g.add(Flag(scope="alice", session=reply.session, turn=reply.id, correction=correction.id,
                       confidence=0.9, reason=f"flag {i}: corrected the rename"), [])
        g.link(f.id, reply.id, "flags")
    for i in range(MEMORIES):
        g.add(Memory(scope="alice", text=f"memory {i}: the user prefers plain renames of widget{i}"))
    assert g.flush(timeout=120), g.worker.last_error
    g.close()

    store = Checkpoints(home / "checkpoints")
    for ckpt, parent in (("ckpt_a", None), ("ckpt_b", "ckpt_a")):
        def save(folder: Path) -> None:
            _safetensors(folder / "adapter_model.safetensors")
            (folder / "adapter_config.json").write_text("{}")
        store.write(ckpt, save, {"kind": "lora", "parent": parent, "created": len(ckpt)})
        store.promote(ckpt)

    loop = sqlite3.connect(home / "loop.db")
    loop.execute("PRAGMA journal_mode=WAL")
    loop.execute("CREATE TABLE checkpoints (thread_id TEXT, checkpoint_id TEXT, checkpoint BLOB, "
                 "PRIMARY KEY (thread_id, checkpoint_id))")
    with loop:
        loop.executemany("INSERT INTO checkpoints VALUES (?, ?, ?)",
                         [(f"t{i % 7}", f"c{i}", os.urandom(300)) for i in range(LOOP_ROWS)])
    loop.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    loop.close()
    return home


@pytest.fixture
def home(base, tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    shutil.copytree(base, h)
    monkeypatch.setenv("MINDLOOP_HOME", str(h))
    monkeypatch.setenv("MINDLOOP_GRAPH_EMBEDDER", "hashing")
    return h


def _census(home: Path) -> dict:
    """Counts of nodes by (scope, kind) and the ids of turns, read straight from graph.db."""
    conn = sqlite3.connect(home / "graph.db")
    try:
        counts = {f"{s}/{k}": n for s, k, n in
                  conn.execute("SELECT scope, kind, count(*) FROM nodes GROUP BY scope, kind")}
        ids = {r[0] for r in conn.execute("SELECT id FROM nodes WHERE kind = 'turn'")}
    finally:
        conn.close()
    return {"counts": counts, "turns": ids}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _doctor(capsys, *flags) -> tuple[int, dict]:
    code, out, err = _run(capsys, "doctor", "--json", *flags)
    assert "Traceback" not in err, err
    return code, json.loads(out)


def _check_whole(home: Path) -> dict:
    """Open the repaired graph: integrity, FTS, no dangling edges, vectors exactly the embeddable nodes."""
    with MemoryGraph.open(GraphConfig(home=home, embedder="hashing")) as g:
        conn = g.store.conn
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.execute("INSERT INTO nodes_fts(nodes_fts) VALUES ('integrity-check')")
        assert conn.execute("SELECT count(*) FROM nodes WHERE text IS NOT NULL AND rowid NOT IN "
                            "(SELECT id FROM nodes_fts_docsize)").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM edges WHERE src NOT IN (SELECT id FROM nodes) "
                            "OR dst NOT IN (SELECT id FROM nodes)").fetchone()[0] == 0
        assert g.flush(timeout=120), g.worker.last_error
        for scope in set(g.store.scopes()) | set(g.index.scopes()):
            assert g.index.ids(scope) == g.store.embeddable_ids(scope), scope
        turn = conn.execute("SELECT id, text, scope FROM nodes WHERE kind = 'turn' ORDER BY rowid DESC LIMIT 1"
                            ).fetchone()
        if turn:
            hits = g.search(turn[1], scope=turn[2], k=5, hops=0)  # graph expansion can outrank an exact match
            assert turn[0] in [h.node.id for h in hits], "search does not find a recovered turn"
    return _census(home)


# -- graph.db ------------------------------------------------------------------


def _overwrite_pages(path: Path, first: int, n: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(4096 * first)
        fh.write(os.urandom(4096 * n))


GRAPH_DAMAGE = {
    "truncated": (lambda db: os.truncate(db, db.stat().st_size * 55 // 100), "cannot be opened"),
    "pages overwritten": (lambda db: _overwrite_pages(db, 40, 3), "quick_check"),
    "not a database": (lambda db: db.write_bytes(os.urandom(db.stat().st_size)), "not a database"),
    "emptied": (lambda db: os.truncate(db, 0), "empty (0 bytes)"),
}


@pytest.mark.parametrize("damage", list(GRAPH_DAMAGE))
def test_damaged_graph_db_is_refused_reported_and_recovered(home, capsys, figures, damage):
    before = _census(home)
    loop_sha, ckpts = _sha(home / "loop.db"), sorted(p.name for p in (home / "checkpoints").iterdir())
    db = home / "graph.db"
    hurt, words = GRAPH_DAMAGE[damage]
    hurt(db)
    damaged_sha = _sha(db)

    with pytest.raises(StoreCorrupt) as e:
        MemoryGraph.open(GraphConfig(home=home, embedder="hashing"))
    assert str(db) in str(e.value) and words in str(e.value), str(e.value)
    code, _, err = _run(capsys, "search", "rename widget")
    assert code == 2 and "Traceback" not in err and err.startswith(f"mindloop: error: {db}"), err

    code, report = _doctor(capsys)
    assert code == 1 and not report["healthy"]
    assert [p["path"] for p in report["problems"]] == [str(db)], report["problems"]
    assert db.stat().st_size == 0 or _sha(db) == damaged_sha, "a check without --repair changed graph.db"

    code, report = _doctor(capsys, "--repair")
    assert code == 0 and report["healthy"], report
    if damage == "emptied":
        assert list(home.glob("chroma.orphaned-*")), "the old vectors were not kept aside"
    else:
        [backup] = home.glob("graph.db.damaged-????????-??????")
        assert _sha(backup) == damaged_sha, "the backup is not the damaged file, byte for byte"
    assert _doctor(capsys)[0] == 0

    after = _check_whole(home)
    assert after["turns"] <= before["turns"], "recovery invented turns"
    for key, n in after["counts"].items():
        assert n <= before["counts"][key], key
    if damage == "pages overwritten":  # three pages of 4 KB: most of the graph is still there
        assert len(after["turns"]) > 0.8 * len(before["turns"]), len(after["turns"])
    if damage == "truncated":
        assert len(after["turns"]) > 0.3 * len(before["turns"]), len(after["turns"])
    assert _sha(home / "loop.db") == loop_sha
    assert sorted(p.name for p in (home / "checkpoints").iterdir()) == ckpts
    figures.record(f"graph.db {damage}: turns recovered", f"{len(after['turns'])} of {len(before['turns'])}",
                   "a new graph; the old vectors kept as chroma.orphaned-*" if damage == "emptied" else
                   "rows SQLite could still read; the damaged file kept as graph.db.damaged-*")


def _dangling(db: Path) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany("INSERT INTO edges (src, dst, kind, scope, created) VALUES (?, ?, 'surfaced', 'alice', 0)",
                         [(f"memory_ghost{i}", f"turn_ghost{i}") for i in range(7)])
    conn.close()


def _fts_drop(db: Path) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO nodes_fts(nodes_fts, rowid, log_text, memory_text) "
                     "SELECT 'delete', rowid, log_text, memory_text FROM nodes WHERE text LIKE '%widget3x%'")
    conn.close()


def _fts_flagged_then_repaired(capsys) -> None:
    """The doctor reports the full-text index, and only it, as a problem; ``--repair`` leaves the home healthy."""
    code, report = _doctor(capsys)
    assert code == 1 and [p["check"] for p in report["problems"]] == ["fts"], report["problems"]
    code, report = _doctor(capsys, "--repair")
    assert code == 0 and report["healthy"]


def test_a_full_text_index_out_of_step_is_rebuilt(home, capsys, figures):
    before = _census(home)
    _fts_drop(home / "graph.db")
    with MemoryGraph.open(GraphConfig(home=home, embedder="hashing")) as g:  # opens: the FTS check is the doctor's
        missed = g.store.lexical("widget3x5", scope="alice", kinds=None, since=None, limit=5)
    assert missed == [], "the damage did not take"
    _fts_flagged_then_repaired(capsys)
    assert _check_whole(home) == before
    with MemoryGraph.open(GraphConfig(home=home, embedder="hashing")) as g:
        assert g.store.lexical("widget3x5", scope="alice", kinds=None, since=None, limit=5)
    figures.record("FTS index out of step", "rebuilt", "lexical search finds the dropped turns again")


def test_text_queued_for_the_index_is_healthy_and_an_entry_beside_the_queue_is_not(home, capsys):
    """A turn's text waits for the full-text index until settled (``fts = 0``): the doctor counts it as
    queued, not missing; an FTS5 entry for such a row would be indexed twice by the settle, so it is a problem."""
    with MemoryGraph.open(GraphConfig(home=home, embedder="hashing")) as g:
        g.worker.stop()  # closed with the text still queued
        g.log_turns("queued", [dict(role="user", text="quokka3x question")], scope="alice")
    db = home / "graph.db"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM nodes WHERE fts = 0").fetchone()[0] == 1
        code, report = _doctor(capsys)
        assert code == 0 and report["healthy"], report["problems"]
        with conn:
            conn.execute("INSERT INTO nodes_fts(rowid, log_text, memory_text) "
                         "SELECT rowid, log_text, memory_text FROM nodes WHERE fts = 0")
    finally:
        conn.close()
    _fts_flagged_then_repaired(capsys)
    with MemoryGraph.open(GraphConfig(home=home, embedder="hashing")) as g:
        assert len(g.store.lexical("quokka3x", scope="alice", kinds=None, since=None, limit=5)) == 1
        assert g.store.conn.execute("SELECT count(*) FROM nodes WHERE fts = 0").fetchone()[0] == 0


def test_a_version_1_graph_s_text_index_is_rebuilt_in_the_new_layout(home, capsys, version_1):
    """A graph from before memories had their own FTS5 column, never opened since: the repair migrates it."""
    version_1(home / "graph.db")
    conn = sqlite3.connect(home / "graph.db")
    with conn:
        conn.execute("INSERT INTO nodes_fts(nodes_fts, rowid, text) SELECT 'delete', rowid, text FROM nodes "
                     "WHERE text LIKE '%widget3x%'")
    conn.close()
    _fts_flagged_then_repaired(capsys)
    with MemoryGraph.open(GraphConfig(home=home, embedder="hashing")) as g:
        assert g.store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert g.store.lexical("widget3x5", scope="alice", kinds=None, since=None, limit=5)


def test_edges_to_missing_nodes_are_removed(home, capsys, figures):
    before = _census(home)
    _dangling(home / "graph.db")
    code, report = _doctor(capsys)
    assert code == 1 and "7 edge(s) point at missing nodes" in report["problems"][0]["problem"]
    code, report = _doctor(capsys, "--repair")
    assert code == 0 and report["healthy"]
    conn = sqlite3.connect(home / "graph.db")
    logged = conn.execute("SELECT op, node, kind, scope, session, dst, payload FROM history "
                          "WHERE node LIKE 'memory_ghost%' ORDER BY seq").fetchall()
    conn.close()
    assert logged == [("edge-", f"memory_ghost{i}", "surfaced", "alice", None, f"turn_ghost{i}", None) for i in range(7)]
    assert _check_whole(home) == before
    figures.record("edges to missing nodes", 7, "removed; nothing else changed")


# -- vectors (derived: open reconciles or rebuilds them, as designed) ------------


def _stale_vectors(home: Path) -> None:
    index = ChromaIndex(path=home / "chroma")
    try:
        index.upsert("alice", [f"turn_gone{i}" for i in range(5)], [[1.0] + [0.0] * 383] * 5,
                     [{"kind": "turn", "created": 0.0}] * 5)
        index.delete("alice", sorted(index.ids("alice"))[:9])
    finally:
        index.close()


def _torn_header(home: Path) -> None:
    data = max((home / "chroma").glob("*/data_level0.bin"), key=lambda p: p.stat().st_size)  # the non-empty one
    os.truncate(data.parent / "header.bin", 40)


VECTOR_DAMAGE = {
    "stale vectors": (_stale_vectors, "5 vector(s) of nodes that are gone, 9 indexed node(s) without a vector"),
    "chroma deleted": (lambda h: shutil.rmtree(h / "chroma"), "indexed node(s) without a vector"),
    "torn HNSW header": (_torn_header, "header.bin is 40 bytes"),
}


@pytest.mark.parametrize("damage", list(VECTOR_DAMAGE))
def test_vectors_out_of_step_are_reported_and_rebuilt(home, capsys, figures, damage):
    before = _census(home)
    hurt, words = VECTOR_DAMAGE[damage]
    hurt(home)
    code, report = _doctor(capsys)
    assert code == 1 and any(words in p["problem"] for p in report["problems"]), report["problems"]
    assert all(p["check"] == "vectors" for p in report["problems"])
    if damage == "torn HNSW header":  # opening alone rebuilds it (hnswlib used to segfault here)
        assert _check_whole(home) == before
        assert _doctor(capsys)[0] == 0
    code, report = _doctor(capsys, "--repair")
    assert code == 0 and report["healthy"], report
    assert _check_whole(home) == before
    figures.record(f"vectors: {damage}", "repaired", "reconciled or rebuilt from graph.db")


# -- checkpoints -----------------------------------------------------------------


def _history(home: Path) -> list[str]:
    return [f"{e['event']} {e['checkpoint']}->{e.get('to', e['checkpoint'])}"
            for e in Checkpoints(home / "checkpoints").history()]


CHECKPOINT_DAMAGE = {
    "manifest corrupt": (lambda c: (c / "ckpt_a" / "manifest.json").write_text("{not json"),
                         "ckpt_a", "manifest.json is not valid JSON", "ckpt_b"),
    "manifest missing": (lambda c: (c / "ckpt_a" / "manifest.json").unlink(),
                         "ckpt_a", "manifest.json is missing", "ckpt_b"),
    "promoted weights truncated": (lambda c: os.truncate(c / "ckpt_b" / "adapter_model.safetensors", 100),
                                   "ckpt_b", "adapter_model.safetensors is 100 bytes", "ckpt_a"),
    "promoted checkpoint deleted": (lambda c: shutil.rmtree(c / "ckpt_b"), None, "does not exist", None),
    "promoted.json garbage": (lambda c: (c / "promoted.json").write_text("\x00\x01garbage"),
                              None, "is not valid JSON", "ckpt_b"),
}


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE))
def test_damaged_checkpoints_are_quarantined_and_the_pointer_follows(home, capsys, figures, damage):
    before, loop_sha = _census(home), _sha(home / "loop.db")
    root = home / "checkpoints"
    hurt, bad, words, served_after = CHECKPOINT_DAMAGE[damage]
    hurt(root)
    store = Checkpoints(root)
    if damage == "promoted.json garbage":
        with pytest.raises(CheckpointError, match="promoted.json is not valid JSON"):
            store.promoted()
    else:
        listed = {m["id"]: m.get("error") for m in store.list()}
        assert bad is None or (listed[bad] and bad in listed[bad]), listed  # `checkpoints list`: UNREADABLE

    code, report = _doctor(capsys)
    assert code == 1 and any(words in p["problem"] for p in report["problems"]), report["problems"]
    code, report = _doctor(capsys, "--repair")
    assert code == 0 and report["healthy"], report
    assert _doctor(capsys)[0] == 0

    if bad:
        assert (root / ".quarantine" / bad).is_dir() and not (root / bad).exists()
    pointer = store.promoted()
    assert (pointer["checkpoint"] if pointer else None) == served_after, pointer
    assert [m["id"] for m in store.list()] == [c for c in ("ckpt_a", "ckpt_b") if (root / c).exists()]
    assert all("error" not in m for m in store.list())
    assert _sha(home / "loop.db") == loop_sha
    assert _census(home) == before  # (graph.db's bytes move when any process opens it; its content must not)
    figures.record(f"checkpoints: {damage}", f"served after: {served_after or 'base model'}",
                   "damaged checkpoint quarantined, nothing deleted" if bad else "pointer repaired")


# -- loop.db -----------------------------------------------------------------------


def test_a_damaged_loop_db_is_recovered_beside_its_backup(home, capsys, figures):
    before = _census(home)
    loop = home / "loop.db"
    _overwrite_pages(loop, 10, 2)
    damaged_sha = _sha(loop)
    code, report = _doctor(capsys)
    assert code == 1 and [p["path"] for p in report["problems"]] == [str(loop)], report["problems"]
    code, report = _doctor(capsys, "--repair")
    assert code == 0 and report["healthy"], report
    [backup] = home.glob("loop.db.damaged-????????-??????")
    assert _sha(backup) == damaged_sha
    conn = sqlite3.connect(loop)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    finally:
        conn.close()
    assert 0.5 * LOOP_ROWS < rows < LOOP_ROWS, rows
    assert report["recovered"]["loop.db"]["checkpoints recovered"] == rows
    assert _census(home) == before
    figures.record("loop.db pages overwritten: rows recovered", f"{rows} of {LOOP_ROWS}")


def test_a_healthy_data_directory_is_left_alone(home, capsys, figures):
    before = _census(home)
    shas = {p: _sha(p) for p in (home / "loop.db", home / "checkpoints" / "promoted.json")}
    code, report = _doctor(capsys)
    assert code == 0 and report["healthy"] and report["problems"] == []
    code, report = _doctor(capsys, "--repair")
    assert code == 0 and report["problems"] == []
    assert {p: _sha(p) for p in shas} == shas and _census(home) == before
    code, out, _ = _run(capsys, "doctor")
    assert code == 0 and "healthy" in out.splitlines()[0]
    kinds = len(GRAPH_DAMAGE) + 2 + len(VECTOR_DAMAGE) + len(CHECKPOINT_DAMAGE) + 1
    figures.record("damage kinds tried", kinds, "each detected, reported by doctor and repaired by --repair")
