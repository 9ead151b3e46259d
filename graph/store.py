"""The durable store: SQLite in WAL mode, the source of truth of the memory graph.

Beside it: the tables and migrations (graph/schema.py), the full-text queries
(graph/fulltext.py), the WAL checkpoint and sync threads (graph/wal.py), the
per-thread connections (graph/connections.py), SQLite's errors as ours
(graph/sqlite_errors.py).

Every public write runs in one ``BEGIN IMMEDIATE`` transaction and returns
after ``COMMIT``: a failed call leaves nothing behind. A write with
``sync=False`` (the agent loop's log step) returns before its commit is on
the disk; a :class:`~mindloop.graph.wal.WalSyncer` thread fsyncs the WAL
right away and :meth:`Store.sync` waits for it. A write that fails because
the disk is full, the file-size limit is reached or the device fails raises
:class:`mindloop.graph.errors.DiskFull` (after rolling back); once space
returns, the next write works. No commit checkpoints the WAL itself (SQLite's
automatic checkpoint would, inside whichever commit crosses 1,000 pages,
making that write one of the slowest): a
:class:`~mindloop.graph.wal.WalCheckpointer` thread does it after writes,
and the automatic checkpoint stays on, at ten times the size, as a backstop.

Opening runs SQLite's ``quick_check`` so that a damaged file is reported at
once, naming the file and the damage, instead of failing on whichever read
first meets a bad page; ``mindloop doctor --repair`` recovers what can be
read (graph/check.py).
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from mindloop.graph import schema
from mindloop.graph.connections import Connections
from mindloop.graph.errors import DiskFull, NodeNotFound, ScopeMismatch, StoreCorrupt
from mindloop.graph.fulltext import count_matches, count_terms, fts_terms, lexical_matches
from mindloop.graph.records import Edge, Node, record_from_json
from mindloop.graph.sqlite_errors import damaged_message, write_failure
from mindloop.graph.wal import WalCheckpointer, WalSyncer

__all__ = ["Store"]

log = logging.getLogger(__name__)

_NODE_COLUMNS = (*schema.NODE_COLUMNS, "fts")
_INSERT_NODE = f"INTO nodes ({', '.join(_NODE_COLUMNS)}) VALUES ({', '.join('?' * len(_NODE_COLUMNS))})"
_INSERT_HISTORY = (f"INSERT INTO history ({', '.join(schema.HISTORY_COLUMNS[1:])}) "
                   f"VALUES ({', '.join('?' * (len(schema.HISTORY_COLUMNS) - 1))})")
_INSERT_EDGE = (f"INTO edges ({', '.join(schema.EDGE_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(schema.EDGE_COLUMNS))})")


def _new_rev() -> int:
    return secrets.randbits(62)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # json.dumps builds one per call


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


class Store:
    """SQLite store of nodes, edges and their history (one file, WAL mode)."""

    def __init__(self, path: str | Path, *, durability: str = "full", busy_timeout_s: float = 30.0,
                 check: bool = True, checkpoint_delay_s: float = 0.5) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.durability = durability
        self.busy_timeout_s = busy_timeout_s
        self.check = check
        self._local = threading.local()
        self._connections = Connections(self.path, durability=durability, busy_timeout_s=busy_timeout_s)
        self.checkpointer = WalCheckpointer(self.path, delay_s=checkpoint_delay_s, busy_timeout_s=busy_timeout_s)
        self.syncer = WalSyncer(self.path)
        self._init_schema()

    # -- connections -------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use, closed when the thread ends)."""
        return self._connections.get()

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until every write committed with ``sync=False`` so far is on the disk (False on timeout)."""
        return self.syncer.wait(timeout=timeout)

    def close(self) -> None:
        self.syncer.close()
        self.checkpointer.close()
        self._connections.close()
        self._local = threading.local()

    def _init_schema(self) -> None:
        conn = self.conn
        try:
            foreign = schema.foreign_application_id(conn)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            has_tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if foreign is not None:
                raise StoreCorrupt(f"{self.path} is a SQLite file but not a mindloop graph (application_id {foreign:#x})")
            if version > schema.SCHEMA_VERSION:
                raise StoreCorrupt(f"{self.path} has schema version {version}; "
                                   f"this mindloop reads up to {schema.SCHEMA_VERSION}")
            if has_tables and self.check:
                problems = [" ".join(r[0].split()) for r in conn.execute("PRAGMA quick_check(3)")]
                if problems != ["ok"]:
                    raise StoreCorrupt(damaged_message(self.path, "SQLite's quick_check reports " + "; ".join(problems)))
            with self.write() as c:
                schema.create(c, version=version, has_tables=bool(has_tables))
        except sqlite3.DatabaseError as e:
            failure = write_failure(self.path, e)
            if isinstance(failure, DiskFull):
                raise failure from None
            raise StoreCorrupt(damaged_message(self.path, f"it is not a readable mindloop graph ({e})")) from None

    @contextmanager
    def write(self, *, sync: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed on success, rolled back on error.

        A full disk (or file-size limit) raises :class:`DiskFull`, a damaged
        file :class:`StoreCorrupt`, whether it is met by a statement or by the
        commit; the transaction is rolled back either way.

        ``sync=False`` commits without waiting for the disk (``synchronous=NORMAL``
        for this transaction) and hands the fsync to :attr:`syncer`'s thread;
        :meth:`sync` waits for it. Ignored inside an outer transaction, which
        decides, and with ``durability="normal"``, which never syncs a commit.
        """
        conn = self.conn
        if conn.in_transaction:  # nested use joins the outer transaction
            yield conn
            return
        self._local.after_commit = []
        self._local.history = []
        deferred = not sync and self.durability == "full"
        try:
            if deferred:
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            self._local.writing = True
            try:
                yield conn
                self._flush_history(conn)
                conn.execute("COMMIT")
            except BaseException:
                self._local.after_commit = []
                self._local.history = []
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:  # the connection is unusable: drop it, SQLite rolls back on reopen
                        self._connections.discard(conn)
                raise
        except sqlite3.DatabaseError as e:
            failure = write_failure(self.path, e)
            if failure is None:
                raise
            log.error("%s", failure)
            self._connections.discard(conn)  # after an I/O error SQLite may keep the connection in an error state
            raise failure from None
        finally:
            self._local.writing = False
            if deferred:
                try:
                    conn.execute("PRAGMA synchronous=FULL")
                except sqlite3.Error:  # discarded above: its successor opens at FULL
                    pass
        if deferred:
            self.syncer.ask()
        self.checkpointer.notify()
        callbacks, self._local.after_commit = self._local.after_commit, []
        for fn in callbacks:
            fn()

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once this thread's outermost write transaction has committed, or now outside one.

        A write nested in a caller's transaction (``graph.transaction()``) is
        not committed when it returns: what it wakes (the embedding worker)
        would find nothing new. A rolled-back transaction drops ``fn``; the
        same ``fn`` registered twice runs once.
        """
        pending = getattr(self._local, "after_commit", None)
        if not self.conn.in_transaction or pending is None:
            fn()
        elif fn not in pending:
            pending.append(fn)

    # -- nodes -------------------------------------------------------------------

    def insert_node(self, conn: sqlite3.Connection, node: Node, *, text: str | None, pos: int | None = None,
                    or_ignore: bool = False) -> bool:
        """Insert ``node`` inside the caller's transaction. Returns False if ignored as present."""
        row, payload = self._node_row(node, text, pos)
        verb = "INSERT OR IGNORE" if or_ignore else "INSERT"
        if conn.execute(f"{verb} {_INSERT_NODE}", row).rowcount == 0:
            return False
        self._history(conn, "node+", node.id, node.kind, node.scope, node.session, None, payload)
        return True

    def insert_nodes(self, conn: sqlite3.Connection, nodes: Sequence[tuple[Node, str | None, int | None]], *,
                     queue_text: bool = False) -> None:
        """Insert new nodes ``(node, text, pos)`` inside the caller's transaction, in one statement.

        ``queue_text`` leaves their text out of the full-text index until :meth:`settle` (``fts = 0``), so that a
        chat turn's log step does not wait for FTS5's insert. Every lexical read settles first.
        """
        rows = [self._node_row(node, text, pos, fts=not queue_text) for node, text, pos in nodes]
        conn.executemany(f"INSERT {_INSERT_NODE}", [r for r, _ in rows])
        self._history_many(conn, [("node+", n.id, n.kind, n.scope, n.session, None, payload)
                                  for (n, _, _), (_, payload) in zip(nodes, rows)])

    @staticmethod
    def _node_row(node: Node, text: str | None, pos: int | None, *, fts: bool = True) -> tuple[tuple, str]:
        """The ``nodes`` row of ``node`` and its history payload (the whole record, text included)."""
        data = node.to_json()
        payload = _dumps(data)
        field = schema.TEXT_FIELD.get(node.kind)
        if field:
            data.pop(field, None)
        row = (node.id, node.kind, node.scope, node.session, pos, node.created, time.time(), text, _dumps(data),
               None if text is None else 0, _new_rev(), int(fts or text is None))
        return row, payload

    def update_node(self, conn: sqlite3.Connection, node: Node, *, text: str | None) -> None:
        data = node.to_json()
        field = schema.TEXT_FIELD.get(node.kind)
        if field:
            data.pop(field, None)
        row = conn.execute("SELECT text, scope, kind FROM nodes WHERE id = ?", (node.id,)).fetchone()
        if row is None:
            raise NodeNotFound(f"no node with id {node.id!r}")
        if row[1] != node.scope or row[2] != node.kind:
            raise ScopeMismatch(f"node {node.id!r} is a {row[2]} in scope {row[1]!r}; kind and scope cannot change")
        if row[0] != text:
            conn.execute(
                "UPDATE nodes SET data = ?, text = ?, updated = ?, vec = ?, rev = ? WHERE id = ?",
                (_dumps(data), text, time.time(), None if text is None else 0, _new_rev(), node.id),
            )
        else:
            conn.execute("UPDATE nodes SET data = ?, updated = ? WHERE id = ?", (_dumps(data), time.time(), node.id))
        self._history(conn, "node~", node.id, node.kind, node.scope, node.session, None, _dumps(node.to_json()))

    def _row_to_node(self, row: sqlite3.Row | tuple) -> Node:
        kind, text, data = row
        record = json.loads(data)
        field = schema.TEXT_FIELD.get(kind)
        if field:
            record[field] = text
        return record_from_json(record)

    def get_nodes(self, ids: Sequence[str], scope: str | None = None) -> dict[str, Node]:
        """The nodes with these ids (missing ones are left out), keyed by id."""
        out: dict[str, Node] = {}
        for chunk in _chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT id, kind, text, data FROM nodes WHERE id IN ({marks})"
            params: list[Any] = list(chunk)
            if scope is not None:
                # unary + keeps the planner on the primary key: with the scope index it read the whole scope
                sql += " AND +scope = ?"
                params.append(scope)
            for row in self.conn.execute(sql, params):
                out[row[0]] = self._row_to_node(row[1:])
        return out

    def get_node(self, node_id: str, scope: str | None = None) -> Node:
        found = self.get_nodes([node_id], scope)
        if node_id not in found:
            where = f" in scope {scope!r}" if scope is not None else ""
            raise NodeNotFound(f"no node with id {node_id!r}{where}")
        return found[node_id]

    def list_nodes(self, *, scope: str | None = None, kind: str | None = None, session: str | None = None,
                   since: float | None = None, limit: int | None = None, newest_first: bool = False) -> list[Node]:
        sql = "SELECT kind, text, data FROM nodes WHERE 1=1"
        params: list[Any] = []
        for col, value in (("scope", scope), ("kind", kind), ("session", session)):
            if value is not None:
                sql += f" AND {col} = ?"
                params.append(value)
        if since is not None:
            sql += " AND created >= ?"
            params.append(since)
        sql += " ORDER BY created DESC, rowid DESC" if newest_first else " ORDER BY created, rowid"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [self._row_to_node(r) for r in self.conn.execute(sql, params)]

    def last_turn(self, conn: sqlite3.Connection, scope: str, session: str) -> tuple[str, int] | None:
        row = conn.execute(
            "SELECT id, pos FROM nodes WHERE scope = ? AND session = ? AND kind = 'turn' ORDER BY pos DESC LIMIT 1",
            (scope, session),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def exists(self, conn: sqlite3.Connection, node_id: str) -> bool:
        return conn.execute("SELECT 1 FROM nodes WHERE id = ?", (node_id,)).fetchone() is not None

    # -- edges -------------------------------------------------------------------

    def insert_edge(self, conn: sqlite3.Connection, edge: Edge) -> bool:
        """Insert ``edge`` inside the caller's transaction; both ends must exist in one scope."""
        return self.insert_edges(conn, [edge])[0]

    def insert_edges(self, conn: sqlite3.Connection, edges: Sequence[Edge]) -> list[bool]:
        """Insert ``edges`` inside the caller's transaction; each edge's ends must exist in one scope. Returns,
        per edge, False where it was already stored (or came earlier in ``edges``).

        The ends' scopes are read in one query; the edges and their history rows go in as one statement each.
        """
        if not edges:
            return []
        scopes = self._scopes_of(conn, [i for e in edges for i in (e.src, e.dst)])
        for e in edges:
            for end in (e.src, e.dst):
                if end not in scopes:
                    raise NodeNotFound(f"no node with id {end!r}")
            if scopes[e.src] != scopes[e.dst]:
                raise ScopeMismatch(
                    f"edge {e.kind} from {e.src!r} (scope {scopes[e.src]!r}) to {e.dst!r} "
                    f"(scope {scopes[e.dst]!r}): scopes never connect"
                )
            e.scope = scopes[e.src]
        rows = [(e.src, e.dst, e.kind, e.scope, e.created, _dumps(e.data)) for e in edges]
        before = conn.execute("SELECT coalesce(max(rowid), 0) FROM edges").fetchone()[0]
        stored = conn.executemany(f"INSERT OR IGNORE {_INSERT_EDGE}", rows).rowcount
        if stored == len(rows):
            added = [True] * len(rows)
        else:  # some were there already: the new rows are the ones past the old last rowid
            new = set(conn.execute("SELECT src, dst, kind FROM edges WHERE rowid > ?", (before,)).fetchall())
            added = []
            for r in rows:
                added.append(r[:3] in new)
                new.discard(r[:3])
        self._history_many(conn, [("edge+", r[0], r[2], r[3], None, r[1], r[5]) for r, a in zip(rows, added) if a])
        return added

    def queue_edges(self, conn: sqlite3.Connection, edges: Sequence[Edge], *, scope: str) -> None:
        """Queue ``edges`` between nodes of ``scope`` inside the caller's transaction, for
        :meth:`settle` to insert. Queuing appends to one unindexed table: ``MemoryGraph.log_turns``
        queues its ``next`` and ``surfaced`` edges so that a chat turn does not wait for their index pages."""
        if edges:
            conn.executemany(
                "INSERT INTO pending_edges (src, dst, kind, scope, created, data) VALUES (?, ?, ?, ?, ?, ?)",
                [(e.src, e.dst, e.kind, scope, e.created, _dumps(e.data)) for e in edges])

    def settle(self) -> int:
        """Do the work ``MemoryGraph.log_turns`` queued: insert the queued edges into ``edges`` and index the
        queued text (:meth:`queue_edges`, ``insert_nodes(queue_text=True)``). Returns how many edges were added
        and rows indexed.

        An edge whose ends are not both (or no longer) in its scope is dropped, not an error (a memory
        forgotten while the reply was generated must not cost the turn); one already stored is left as it
        is. The queues are emptied in the same transaction, so two threads or processes settling at once do
        the work once. Empty queues cost one read of two index root pages: every read of edges, of the
        history and of the full-text index calls this first.
        """
        conn = self.conn
        if conn.in_transaction:  # inside our write it settles there; a read snapshot (GraphView) cannot write
            return self._settle(conn) if getattr(self._local, "writing", False) else 0
        if not conn.execute("SELECT EXISTS (SELECT 1 FROM pending_edges) OR EXISTS (SELECT 1 FROM nodes "
                            "WHERE fts = 0)").fetchone()[0]:
            return 0
        # Not synced before it returns: the queues it empties are durable already, and a power cut that loses
        # this commit loses their emptying with it, so the work is done again. A read settling (a search's
        # lexical query or graph expansion, say) does not wait for a fsync.
        with self.write(sync=False) as conn:
            return self._settle(conn)

    def _settle(self, conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO nodes_fts(rowid, log_text, memory_text) SELECT rowid, log_text, memory_text "
                     "FROM nodes WHERE fts = 0 AND text IS NOT NULL")
        indexed = conn.execute("UPDATE nodes SET fts = 1 WHERE fts = 0").rowcount
        return indexed + self._settle_edges(conn)

    def _settle_edges(self, conn: sqlite3.Connection) -> int:
        top = conn.execute("SELECT max(rowid) FROM pending_edges").fetchone()[0]
        if top is None:
            return 0
        added = conn.execute(
            "INSERT OR IGNORE INTO edges (src, dst, kind, scope, created, data) "
            "SELECT p.src, p.dst, p.kind, p.scope, p.created, p.data FROM pending_edges AS p "
            "JOIN nodes AS s ON s.id = p.src AND s.scope = p.scope JOIN nodes AS d ON d.id = p.dst AND d.scope = p.scope "
            "WHERE p.rowid <= ? ORDER BY p.rowid RETURNING src, dst, kind, scope, data", (top,)).fetchall()
        conn.execute("DELETE FROM pending_edges WHERE rowid <= ?", (top,))
        self._history_many(conn, [("edge+", src, kind, scope, None, dst, data) for src, dst, kind, scope, data in added])
        return len(added)

    def _scopes_of(self, conn: sqlite3.Connection, ids: Iterable[str]) -> dict[str, str]:
        """The scope of each of these nodes that exists, by id."""
        scopes: dict[str, str] = {}
        for chunk in _chunks(list(set(ids)), 500):
            marks = ",".join("?" * len(chunk))
            scopes.update(conn.execute(f"SELECT id, scope FROM nodes WHERE id IN ({marks})", chunk).fetchall())
        return scopes

    def delete_edge(self, conn: sqlite3.Connection, src: str, dst: str, kind: str) -> bool:
        self._settle_edges(conn)  # a queued copy of the edge must not come back after it is deleted
        row = conn.execute("SELECT scope FROM edges WHERE src = ? AND dst = ? AND kind = ?", (src, dst, kind)).fetchone()
        if row is None:
            return False
        self.drop_edges(conn, [(src, dst, kind, row[0])])
        return True

    def drop_edges(self, conn: sqlite3.Connection, edges: Sequence[tuple[str, str, str, str]]) -> None:
        """Delete the stored edges ``(src, dst, kind, scope)`` inside the caller's transaction, each logged in the
        history; queued edges are left to :meth:`settle` (``mindloop doctor`` drops edges of missing nodes)."""
        conn.executemany("DELETE FROM edges WHERE src = ? AND dst = ? AND kind = ?", [e[:3] for e in edges])
        self._history_many(conn, [("edge-", src, kind, scope, None, dst, None) for src, dst, kind, scope in edges])

    def edges_of(self, node_id: str, *, kinds: Iterable[str] | None = None, direction: str = "both") -> list[Edge]:
        self.settle()
        clauses = {"out": "src = ?", "in": "dst = ?", "both": "(src = ? OR dst = ?)"}[direction]
        params: list[Any] = [node_id] * (2 if direction == "both" else 1)
        sql = f"SELECT src, dst, kind, scope, created, data FROM edges WHERE {clauses}"
        kinds = list(kinds or [])
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            params += kinds
        return [
            Edge(src=r[0], dst=r[1], kind=r[2], scope=r[3], created=r[4], data=json.loads(r[5]))
            for r in self.conn.execute(sql + " ORDER BY created, rowid", params)
        ]

    def list_edges(self, scope: str) -> list[Edge]:
        self.settle()
        return [
            Edge(src=r[0], dst=r[1], kind=r[2], scope=r[3], created=r[4], data=json.loads(r[5]))
            for r in self.conn.execute(
                "SELECT src, dst, kind, scope, created, data FROM edges WHERE scope = ? ORDER BY created, rowid",
                (scope,),
            )
        ]

    # -- deletion ----------------------------------------------------------------

    def delete_where(self, conn: sqlite3.Connection, *, scope: str, session: str | None = None) -> list[str]:
        """Delete the nodes of a scope (or of one session in it) with their edges; return their ids.

        The history rows of deleted nodes keep their ids (so views can replay
        the deletion) but lose their payloads, which held the text.
        """
        sql, params = "SELECT id, kind, session FROM nodes WHERE scope = ?", [scope]
        if session is not None:
            sql += " AND session = ?"
            params.append(session)
        rows = conn.execute(sql, params).fetchall()
        ids = [r[0] for r in rows]
        self._settle_edges(conn)  # queued edges of these nodes go with them, through the history as usual
        self._flush_history(conn)  # the payloads below are cleared in rows this transaction may have added
        for chunk in _chunks(rows, 500):
            marks = ",".join("?" * len(chunk))
            chunk_ids = [r[0] for r in chunk]
            conn.execute(f"DELETE FROM edges WHERE src IN ({marks}) OR dst IN ({marks})", chunk_ids + chunk_ids)
            conn.execute(f"DELETE FROM nodes WHERE id IN ({marks})", chunk_ids)
            conn.execute(f"UPDATE history SET payload = NULL WHERE node IN ({marks}) OR dst IN ({marks})",
                         chunk_ids + chunk_ids)
            for node_id, kind, sess in chunk:
                self._history(conn, "node-", node_id, kind, scope, sess, None, None)
        return ids

    # -- history -----------------------------------------------------------------

    def _history(self, conn: sqlite3.Connection, op: str, node: str, kind: str, scope: str, session: str | None,
                 dst: str | None, payload: str | None) -> None:
        self._history_many(conn, [(op, node, kind, scope, session, dst, payload)])

    def _history_many(self, conn: sqlite3.Connection, rows: Iterable[tuple]) -> None:
        """History rows ``(op, node, kind, scope, session, dst, payload)``, appended in order.

        Inside :meth:`write` they are held until the transaction is about to commit and then go in as one
        statement: a chat turn's writes (two turns, their edges) made five statements of one row or a few.
        """
        now = time.time()
        held = getattr(self._local, "history", None)
        if held is not None and conn.in_transaction:
            held.extend((now, *r) for r in rows)
            return
        conn.executemany(_INSERT_HISTORY, [(now, *r) for r in rows])

    def _flush_history(self, conn: sqlite3.Connection) -> None:
        """Write the history rows held for this transaction (before it commits, or before history is read)."""
        held = getattr(self._local, "history", None)
        if held:
            conn.executemany(_INSERT_HISTORY, held)
            held.clear()

    def history_since(self, seq: int, limit: int = 100_000) -> list[tuple]:
        """History rows after ``seq``: (seq, at, op, node, kind, scope, session, dst, payload). Queued edges are
        settled first, so that the history holds them as it holds every other edge."""
        self.settle()
        self._flush_history(self.conn)
        return self.conn.execute(
            "SELECT seq, at, op, node, kind, scope, session, dst, payload FROM history WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        ).fetchall()

    def deletions_since(self, seq: int, *, upto: int | None = None, limit: int = 10_000) -> list[tuple[int, str, str]]:
        """Node deletions logged after ``seq`` (and up to ``upto``): (seq, node id, scope), oldest first."""
        self._flush_history(self.conn)
        return self.conn.execute(
            "SELECT seq, node, scope FROM history WHERE seq > ? AND seq <= ? AND op = 'node-' ORDER BY seq LIMIT ?",
            (seq, upto if upto is not None else 2**62, limit),
        ).fetchall()

    def last_seq(self) -> int:
        self.settle()  # as history_since would see it
        self._flush_history(self.conn)
        return self.conn.execute("SELECT coalesce(max(seq), 0) FROM history").fetchone()[0]

    # -- vectors bookkeeping -----------------------------------------------------

    def pending(self, limit: int) -> list[tuple[str, str, str, str | None, float, str, int]]:
        """Nodes whose vector is due: (id, scope, kind, session, created, text, rev)."""
        return self.conn.execute(
            "SELECT id, scope, kind, session, created, text, rev FROM nodes WHERE vec = 0 LIMIT ?", (limit,)
        ).fetchall()

    def pending_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM nodes WHERE vec = 0").fetchone()[0]

    def mark_indexed(self, done: Sequence[tuple[str, int]]) -> None:
        """Mark vectors current, unless the text changed (``rev`` moved) since they were computed."""
        with self.write() as conn:
            conn.executemany("UPDATE nodes SET vec = 1 WHERE id = ? AND rev = ?", [(i, r) for i, r in done])

    def mark_pending(self, ids: Sequence[str]) -> None:
        with self.write() as conn:
            for chunk in _chunks(list(ids), 500):
                conn.execute(f"UPDATE nodes SET vec = 0 WHERE vec IS NOT NULL AND id IN ({','.join('?' * len(chunk))})",
                             chunk)

    def indexed_ids(self, scope: str) -> set[str]:
        """The nodes of ``scope`` whose vector is marked current in the index."""
        return {r[0] for r in self.conn.execute("SELECT id FROM nodes WHERE scope = ? AND vec = 1", (scope,))}

    def embeddable_ids(self, scope: str) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT id FROM nodes WHERE scope = ? AND vec IS NOT NULL", (scope,))}

    def existing(self, ids: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for chunk in _chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            out.update(r[0] for r in self.conn.execute(f"SELECT id FROM nodes WHERE id IN ({marks})", chunk))
        return out

    # -- reading -----------------------------------------------------------------

    def scopes(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT scope FROM nodes ORDER BY scope")]

    def lexical(self, text: str, *, scope: str, kinds: Sequence[str] | None, since: float | None,
                limit: int, budget: int | None = None) -> list[tuple[str, float]]:
        """BM25 matches of ``text`` in one scope: (id, bm25), best first (FTS5 scores are lower-is-better).

        Only the FTS5 column of the kinds asked for is read; ``budget`` bounds how many rows BM25 scores
        however common the words are (:func:`mindloop.graph.fulltext.lexical_matches`).
        """
        terms = fts_terms(text)
        if not terms:
            return []
        self.settle()  # text a chat turn queued is searchable as soon as it is committed
        return lexical_matches(self.conn, terms, scope=scope, kinds=kinds, since=since, limit=limit, budget=budget)

    def term_counts(self, terms: Sequence[str], *, cap: int, column: str | None = None) -> dict[str, int]:
        """How many rows of the lexical index (every scope) each term matches, counting at most ``cap`` each
        (:func:`mindloop.graph.fulltext.count_terms`); ``column`` counts in ``memory_text`` or ``log_text`` only."""
        self.settle()
        return count_terms(self.conn, terms, cap=cap, column=column)

    def match_counts(self, queries: Sequence[str], *, cap: int, column: str | None = None) -> list[int]:
        """How many rows of the lexical index (every scope) each FTS5 query matches, up to ``cap`` each, in one
        statement."""
        self.settle()
        return count_matches(self.conn, queries, cap=cap, column=column)

    def counts(self, scope: str | None = None) -> dict[str, Any]:
        self.settle()
        where, params = ("WHERE scope = ?", [scope]) if scope is not None else ("", [])
        nodes = dict(self.conn.execute(f"SELECT kind, count(*) FROM nodes {where} GROUP BY kind", params).fetchall())
        edges = dict(self.conn.execute(f"SELECT kind, count(*) FROM edges {where} GROUP BY kind", params).fetchall())
        vec = dict(self.conn.execute(
            f"SELECT coalesce(vec, -1), count(*) FROM nodes {where} GROUP BY coalesce(vec, -1)", params).fetchall())
        sessions = self.conn.execute(
            f"SELECT count(DISTINCT scope || char(0) || session) FROM nodes {where + (' AND' if where else 'WHERE')} "
            "session IS NOT NULL", params).fetchone()[0]
        return {
            "nodes": nodes,
            "edges": edges,
            "sessions": sessions,
            "vectors_pending": vec.get(0, 0),
            "vectors_indexed": vec.get(1, 0),
            "history": self.last_seq(),
        }


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
