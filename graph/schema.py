"""The layout of ``graph.db``: its tables, the schema version, the migrations from older versions, the application id.

Tables:

- ``nodes``: one row per record. ``text`` holds the node's indexed text (FTS5
  keeps a BM25 index of it, through the generated columns ``memory_text`` for
  memories and ``log_text`` for every other kind; ``fts`` is 0 while a row
  ``MemoryGraph.log_turns`` wrote waits for that index), ``data`` the rest of the record as JSON, ``vec``
  the state of its vector (NULL: nothing to embed, 0: pending, 1: in the index)
  and ``rev`` a random tag drawn anew whenever the row is inserted or its text
  changes, so that a vector computed from an older text, or for an earlier
  row with the same id (forgotten, then imported again), is never marked
  current.
- ``edges``: typed, directed, unique per (src, dst, kind), never across scopes.
- ``pending_edges``: edges a hot path queued instead of inserting (the
  ``next`` and ``surfaced`` edges of ``MemoryGraph.log_turns``), unindexed,
  so that queuing one appends to a single page where inserting it touches a
  random page of each edge index.
  :meth:`Store.settle` moves them into ``edges`` (with their history
  rows) and indexes the queued text; every read of edges, history or the
  full-text index settles first, and the embedding worker's thread settles
  after each turn, so no reader ever sees them pending.
- ``history``: an append-only log of every change (node+, node~, node-, edge+,
  edge-). The networkx view catches up from it, in this process and in any
  other that shares the data directory. Forgetting a node also blanks the
  payloads its history rows carried (the rows stay, so views still replay).

Version 1 kept every text in one FTS5 column; 2 gives memories a column of
their own; 3 adds ``pending_edges``; 4 adds ``nodes.fts``. :func:`create`
migrates a file of any earlier version in place, inside the opening
transaction of :class:`~mindloop.graph.store.Store`. The column lists here
are what every version holds, in order: the store's inserts and
``mindloop doctor``'s salvage (graph/check.py) are written from them.
"""

from __future__ import annotations

import sqlite3

__all__ = ["APPLICATION_ID", "EDGE_COLUMNS", "FTS_REBUILD", "HISTORY_COLUMNS", "NODE_COLUMNS", "SCHEMA_VERSION",
           "TEXT_FIELD", "create", "foreign_application_id"]

APPLICATION_ID = 0x4D4C4F50  # "MLOP"
SCHEMA_VERSION = 4

# Version 1 kept every text in one FTS5 column. Version 2 puts memories' text in a column of its own, so that a
# search for memories counts and ranks only memories (surfacing's rarest word was often one only turns held).
_MIGRATE_1_TO_2 = """
DROP TRIGGER IF EXISTS nodes_ai;
DROP TRIGGER IF EXISTS nodes_ad;
DROP TRIGGER IF EXISTS nodes_au;
DROP TABLE IF EXISTS nodes_fts;
ALTER TABLE nodes ADD COLUMN log_text TEXT
    GENERATED ALWAYS AS (CASE WHEN kind = 'memory' THEN NULL ELSE text END) VIRTUAL;
ALTER TABLE nodes ADD COLUMN memory_text TEXT
    GENERATED ALWAYS AS (CASE WHEN kind = 'memory' THEN text END) VIRTUAL;
"""
# Version 4 lets a row's text wait for the full-text index (``fts = 0``): the triggers index only rows inserted with
# ``fts = 1``, and Store.settle indexes the rest and sets ``fts = 1`` (an update of ``fts`` alone fires none of
# them); deleting or editing such a row before then has no entry to remove. The triggers are made again.
_MIGRATE_TO_4 = """
DROP TRIGGER IF EXISTS nodes_ai;
DROP TRIGGER IF EXISTS nodes_ad;
DROP TRIGGER IF EXISTS nodes_au;
ALTER TABLE nodes ADD COLUMN fts INTEGER NOT NULL DEFAULT 1;
"""
# Every node with text into an empty full-text index, all marked indexed (two statements, in one transaction).
FTS_REBUILD = ("INSERT INTO nodes_fts(rowid, log_text, memory_text) "
               "SELECT rowid, log_text, memory_text FROM nodes WHERE text IS NOT NULL",
               "UPDATE nodes SET fts = 1 WHERE fts = 0")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    id      TEXT PRIMARY KEY,
    kind    TEXT NOT NULL,
    scope   TEXT NOT NULL,
    session TEXT,
    pos     INTEGER,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    text    TEXT,
    data    TEXT NOT NULL,
    vec     INTEGER,
    rev     INTEGER NOT NULL DEFAULT 0,
    log_text    TEXT GENERATED ALWAYS AS (CASE WHEN kind = 'memory' THEN NULL ELSE text END) VIRTUAL,
    memory_text TEXT GENERATED ALWAYS AS (CASE WHEN kind = 'memory' THEN text END) VIRTUAL,
    fts     INTEGER NOT NULL DEFAULT 1  -- version 4; 0: the text waits for the full-text index (Store.settle)
);
CREATE INDEX IF NOT EXISTS nodes_scope_kind ON nodes(scope, kind, created);
CREATE INDEX IF NOT EXISTS nodes_session ON nodes(scope, session, pos);
CREATE INDEX IF NOT EXISTS nodes_pending ON nodes(vec) WHERE vec = 0;
CREATE INDEX IF NOT EXISTS nodes_unindexed ON nodes(fts) WHERE fts = 0;

CREATE TABLE IF NOT EXISTS edges (
    src     TEXT NOT NULL,
    dst     TEXT NOT NULL,
    kind    TEXT NOT NULL,
    scope   TEXT NOT NULL,
    created REAL NOT NULL,
    data    TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (src, dst, kind)
);
CREATE INDEX IF NOT EXISTS edges_dst ON edges(dst);

-- Version 3: edges queued by MemoryGraph.log_turns (a chat turn's log step), settled into edges by
-- Store.settle.
CREATE TABLE IF NOT EXISTS pending_edges (
    src     TEXT NOT NULL,
    dst     TEXT NOT NULL,
    kind    TEXT NOT NULL,
    scope   TEXT NOT NULL,
    created REAL NOT NULL,
    data    TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE IF NOT EXISTS history (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      REAL NOT NULL,
    op      TEXT NOT NULL,
    node    TEXT NOT NULL,
    kind    TEXT NOT NULL,
    scope   TEXT NOT NULL,
    session TEXT,
    dst     TEXT,
    payload TEXT
);
-- No index on history(node): no query reads history by node (forgetting scans it, for node or dst), and the
-- index cost a random page of WAL per history row, a large share of a chat turn's writes (docs/benchmarks.md).
DROP INDEX IF EXISTS history_node;

CREATE VIRTUAL TABLE IF NOT EXISTS nodes_fts USING fts5(
    log_text, memory_text, content='nodes', content_rowid='rowid', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS nodes_ai AFTER INSERT ON nodes WHEN new.text IS NOT NULL AND new.fts = 1 BEGIN
    INSERT INTO nodes_fts(rowid, log_text, memory_text) VALUES (new.rowid, new.log_text, new.memory_text);
END;
CREATE TRIGGER IF NOT EXISTS nodes_ad AFTER DELETE ON nodes WHEN old.text IS NOT NULL AND old.fts = 1 BEGIN
    INSERT INTO nodes_fts(nodes_fts, rowid, log_text, memory_text)
        VALUES ('delete', old.rowid, old.log_text, old.memory_text);
END;
CREATE TRIGGER IF NOT EXISTS nodes_au AFTER UPDATE OF text ON nodes WHEN old.fts = 1 BEGIN
    INSERT INTO nodes_fts(nodes_fts, rowid, log_text, memory_text)
        SELECT 'delete', old.rowid, old.log_text, old.memory_text WHERE old.text IS NOT NULL;
    INSERT INTO nodes_fts(rowid, log_text, memory_text)
        SELECT new.rowid, new.log_text, new.memory_text WHERE new.text IS NOT NULL;
END;
"""

# The columns of each table that every schema version holds, in order. ``nodes`` also has ``fts`` (version 4,
# default 1: indexed) and the generated ``log_text`` and ``memory_text``; ``pending_edges`` has the edges' columns.
NODE_COLUMNS = ("id", "kind", "scope", "session", "pos", "created", "updated", "text", "data", "vec", "rev")
EDGE_COLUMNS = ("src", "dst", "kind", "scope", "created", "data")
HISTORY_COLUMNS = ("seq", "at", "op", "node", "kind", "scope", "session", "dst", "payload")
# The record field of these kinds that lives in ``nodes.text`` instead of in ``nodes.data``.
TEXT_FIELD = {"turn": "text", "memory": "text"}


def foreign_application_id(conn: sqlite3.Connection) -> int | None:
    """The application id of a SQLite file that holds tables but is not a mindloop graph; None for a graph (or an
    empty file, which becomes one)."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    has_tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    return app_id if has_tables and app_id != APPLICATION_ID else None


def create(conn: sqlite3.Connection, *, version: int, has_tables: bool) -> None:
    """Bring a file to :data:`SCHEMA_VERSION` inside the caller's write transaction: migrate it from ``version``
    (its ``user_version``), create what is missing, and stamp the application id and the version."""
    migrate = has_tables and version == 1
    if migrate:
        for stmt in _split_sql(_MIGRATE_1_TO_2):
            conn.execute(stmt)
    if has_tables and version < 4:
        for stmt in _split_sql(_MIGRATE_TO_4):
            conn.execute(stmt)
    for stmt in _split_sql(_SCHEMA):
        conn.execute(stmt)
    if migrate:
        for stmt in FTS_REBUILD:
            conn.execute(stmt)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _split_sql(script: str) -> list[str]:
    """Split the schema into statements, keeping trigger bodies (which contain ';') whole."""
    out, buf = [], []
    for line in script.strip().splitlines():
        buf.append(line)
        joined = "\n".join(buf).strip()
        if joined.endswith(";") and (not joined.upper().startswith("CREATE TRIGGER") or joined.endswith("END;")):
            out.append(joined)
            buf = []
    return out
