"""MemoryGraph: the one object the rest of mindloop uses to write and read memory.

It ties together the durable store (SQLite, source of truth), the vector
index (Chroma; derived, reconciled on open), the background embedding worker
and the networkx view. Collaborators are injected, so tests pass fakes::

    >>> import tempfile
    >>> from mindloop.graph import GraphConfig, HashingEmbedder, MemoryGraph
    >>> g = MemoryGraph.open(GraphConfig(home=tempfile.mkdtemp()), embedder=HashingEmbedder())
    >>> t = g.log_turn("s1", "user", "please rename foo to bar", scope="alice")
    >>> g.flush()
    True
    >>> g.search("rename foo", scope="alice")[0].node.id == t.id
    True
    >>> g.close()
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

from mindloop.graph.config import GraphConfig
from mindloop.graph.embed import Embedder, make_embedder
from mindloop.graph.errors import (
    GraphError,
    IndexUnavailable,
    InvalidRecord,
    NodeNotFound,
    StoreCorrupt,
    UnknownKind,
)
from mindloop.graph.index import ChromaIndex, VectorIndex
from mindloop.graph.records import (
    NODE_CLASSES,
    ROLES,
    Edge,
    EdgeKind,
    Node,
    Session,
    Turn,
    check_text,
    edge_from_json,
    record_from_json,
)
from mindloop.graph.search import Hit, hybrid_search
from mindloop.graph.sqlite_errors import damaged_message
from mindloop.graph.store import Store
from mindloop.graph.view import GraphView
from mindloop.graph.worker import EmbedWorker

__all__ = ["MemoryGraph", "graph_lost", "session_id", "turn_id"]

log = logging.getLogger(__name__)

_open_graphs: "weakref.WeakSet[MemoryGraph]" = weakref.WeakSet()


@atexit.register
def _close_open_graphs() -> None:
    """Close the graphs a program left open when it exits. Its embedding worker was still running: the
    interpreter's teardown pulled the worker's SQLite connection from under it (a segfault), and embedded
    Chroma, not closed, was deleted and rebuilt from graph.db at the next open."""
    for graph in list(_open_graphs):
        try:
            graph.close()
        except Exception:  # exiting anyway: one graph's failure must not keep the others open
            log.exception("closing the graph in %s at exit failed", graph.config.home)

EXPORT_FORMAT = "mindloop-graph/1"


def graph_lost(config: GraphConfig) -> str | None:
    """How graph.db was lost beside the vectors of an earlier graph (``missing``, ``empty (0 bytes)``), or None.

    SQLite takes a missing or empty file for a new database; if ``chroma/``
    already holds vectors, graph.db was deleted or truncated, and opening
    would silently start over (and reconciliation would then drop the vectors).
    """
    db, chroma = config.db_path, config.chroma_path
    if config.chroma_url or (db.exists() and db.stat().st_size > 0):
        return None
    wal = db.with_name(db.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return None  # the pages are in the WAL, not yet checkpointed into the file
    if not (chroma / "chroma.sqlite3").exists() or not any(p.is_dir() for p in chroma.iterdir()):
        return None  # no vectors were ever persisted: nothing points at an earlier graph
    return "empty (0 bytes)" if db.exists() else "missing"


def _check_not_lost(config: GraphConfig) -> None:
    """Refuse to start a new, empty graph.db beside the vectors of an earlier one (:func:`graph_lost`)."""
    state = graph_lost(config)
    if state is None:
        return
    db, chroma = config.db_path, config.chroma_path
    raise StoreCorrupt(
        f"{db} is {state}, but {chroma} holds the vectors of an earlier graph: graph.db was deleted or truncated. "
        f"Restore graph.db from a backup, or run `mindloop doctor --repair` to start a new graph here "
        f"(it moves {chroma.name}/ aside, deleting nothing)")


def session_id(scope: str, session: str) -> str:
    """The node id of a session: stable, and distinct across scopes."""
    return "session_" + hashlib.sha256(f"{scope}\0{session}".encode()).hexdigest()[:24]


def turn_id(scope: str, session: str, position: int, role: str, text: str) -> str:
    """A content-derived turn id, used by imports so that importing a file twice adds nothing."""
    key = f"{scope}\0{session}\0{position}\0{role}\0{text}".encode("utf-8", "surrogatepass")
    return "turn_" + hashlib.sha256(key).hexdigest()[:32]


class MemoryGraph:
    """The memory graph: log, link, search, forget, export.

    Build one with :meth:`open` (it makes the store, index and embedder the
    config names), or pass collaborators directly: ``MemoryGraph(store,
    index, embedder, config)``. ``index`` may be None: the graph then logs
    and searches lexically and by graph only, and its nodes wait, pending,
    for a process that has an index.
    """

    def __init__(self, store: Store, index: VectorIndex | None, embedder: Embedder,
                 config: GraphConfig | None = None, *, reconcile: bool = True, open_index=None) -> None:
        self.config = config or GraphConfig(home=store.path.parent)
        self.store = store
        self.embedder = embedder
        self._index = index
        self._open_index = open_index
        self._index_note: str | None = None
        self._index_lock = threading.Lock()
        self._last_index_try = 0.0
        self.view = GraphView(store)
        seen = store.last_seq()  # deletions after this are followed by the worker; before it, by reconcile
        if index is not None and reconcile:
            self.reconcile()
        self.worker = EmbedWorker(store, lambda: self.index, embedder, batch=self.config.embed_batch,
                                  poll_s=self.config.embed_poll_s, max_chars=self.config.embed_max_chars,
                                  since_seq=seen, nice=self.config.embed_nice)
        self.worker.notify()
        self._closed = False
        _open_graphs.add(self)

    @classmethod
    def open(cls, config: GraphConfig | None = None, *, embedder: Embedder | None = None,
             index: VectorIndex | None = None) -> "MemoryGraph":
        """Open (creating if needed) the graph in ``config.home``."""
        config = config or GraphConfig()
        config.home.mkdir(parents=True, exist_ok=True)
        _check_not_lost(config)
        store = Store(config.db_path, durability=config.durability)

        def open_index() -> VectorIndex:
            if config.chroma_url:
                return ChromaIndex(url=config.chroma_url)
            return ChromaIndex(path=config.chroma_path)

        note = None
        if index is None:
            try:
                index = open_index()
            except IndexUnavailable as e:
                note = str(e)
                log.warning("vector index unavailable, searching lexically and by graph only: %s", e)
        try:
            embedder = embedder or make_embedder(config.embedder, config.embed_dtype, config.embed_query_runtime)
            graph = cls(store, index, embedder, config, open_index=open_index)
        except sqlite3.DatabaseError as e:  # a damaged page that quick_check did not reach (an index, say)
            if index is not None:
                index.close()
            store.close()
            raise StoreCorrupt(damaged_message(store.path, str(e))) from None
        except BaseException:
            if index is not None:
                index.close()
            store.close()
            raise
        graph._index_note = note
        return graph

    # -- the index, possibly owned by another process --------------------------

    @property
    def index(self) -> VectorIndex | None:
        """The vector index, or None while another process owns embedded Chroma (retried every 5 s)."""
        if self._index is not None or self._open_index is None:
            return self._index
        with self._index_lock:
            if self._index is None and time.monotonic() - self._last_index_try > 5.0:
                self._last_index_try = time.monotonic()
                try:
                    index = self._open_index()
                except IndexUnavailable as e:
                    self._index_note = str(e)
                else:
                    self._index = index
                    self._index_note = None
                    self.reconcile()
        return self._index

    @property
    def index_note(self) -> str | None:
        """Why the vector index is unavailable, or None when it is in use."""
        return self._index_note

    # -- writing -----------------------------------------------------------------

    def _text(self, text: Any, what: str = "text") -> str:
        return check_text(text, max_bytes=self.config.max_text_bytes, what=what)

    def resolve_scope(self, scope: str | None) -> str:
        """``scope``, or the configured default when None; an empty or non-string scope is an error."""
        scope = self.config.scope if scope is None else scope
        if not isinstance(scope, str) or not scope.strip():
            raise InvalidRecord(f"scope must be a non-empty string, got {scope!r}")
        return scope

    def _ensure_session(self, conn, scope: str, session: str) -> None:
        node = Session(scope=scope, session=session, id=session_id(scope, session), title=session)
        self.store.insert_node(conn, node, text=None, or_ignore=True)

    def _mark_truncated(self, node: Node, text: str | None) -> None:
        if text is not None and len(text) > self.config.embed_max_chars and hasattr(node, "meta"):
            node.meta = {**node.meta, "embed_truncated": True, "embedded_chars": self.config.embed_max_chars}

    def transaction(self):
        """A context manager grouping several writes into one transaction (all or nothing)::

            with graph.transaction():
                reply = graph.log_turns("s", turns)[-1]
                graph.link(memory_id, reply.id, "surfaced")
        """
        return self.store.write()

    def log_turn(self, session: str, role: str, text: str, *, scope: str | None = None, model: str | None = None,
                 checkpoint: str | None = None, latency_ms: float | None = None, meta: dict | None = None,
                 id: str | None = None, created: float | None = None) -> Turn:
        """Append a turn to ``session`` and return it once its transaction has committed.

        The turn is linked to the previous turn of the session by a ``next``
        edge (queued, as ``log_turns``' links are); its vector is computed
        later by the background worker. A turn whose text is longer than
        ``embed_max_chars`` is stored whole, embedded from its start, and
        marked with ``meta["embed_truncated"]``.
        """
        return self.log_turns(session, [dict(role=role, text=text, model=model, checkpoint=checkpoint,
                                              latency_ms=latency_ms, meta=meta, id=id, created=created)],
                              scope=scope)[0]

    def log_turns(self, session: str, turns: Sequence[dict[str, Any]], *, scope: str | None = None,
                  links: Iterable[tuple[str, int, str | EdgeKind, dict | None]] = (), sync: bool = True) -> list[Turn]:
        """Append several turns to one session in one transaction (all or nothing).

        Each dict has ``role`` and ``text`` and may have ``model``,
        ``checkpoint``, ``latency_ms``, ``meta``, ``id`` and ``created``. A
        turn whose ``id`` is already stored is skipped (imports use
        content-derived ids, so repeating an import adds nothing); the
        returned list then holds the stored turn.

        ``links`` are edges ``(src, i, kind, data)`` from a stored node to
        ``turns[i]``: the agent loop's ``surfaced`` edges. They, and the
        ``next`` edges between the turns, are queued in the same transaction,
        and so is the turns' text for the full-text index; both are settled
        when next read (edges, history, a lexical search), or by the embedding
        worker's thread after the turn (``Store.settle``): a turn does not
        wait for the edges' index pages or the FTS5 insert, and no reader sees
        them missing. A ``src`` that is not (or no longer)
        in the scope is skipped rather than failing the log: a memory
        forgotten while the reply was generated must not cost the turn.

        ``sync=False`` returns once the turns are committed, before they are on
        the disk: a thread of the store fsyncs the WAL right away, and
        :meth:`sync` waits for it. The agent loop logs a turn this way and
        calls ``sync()`` before it answers, so that the fsync runs beside the
        turn's last steps rather than before them.
        """
        scope = self.resolve_scope(scope)
        if not isinstance(session, str) or not session.strip():
            raise InvalidRecord(f"session must be a non-empty string, got {session!r}")
        prepared: list[Turn] = []
        for i, t in enumerate(turns):
            role = t.get("role")
            if role not in ROLES:
                raise InvalidRecord(f"turn {i}: role {role!r} is not one of {', '.join(ROLES)}")
            text = self._text(t.get("text"), what=f"turn {i} text")
            meta = t.get("meta") or {}
            if not isinstance(meta, dict):
                raise InvalidRecord(f"turn {i}: meta must be an object, got {type(meta).__name__}")
            turn = Turn(scope=scope, session=session, role=role, text=text, model=t.get("model"),
                        checkpoint=t.get("checkpoint"), latency_ms=t.get("latency_ms"), meta=dict(meta),
                        id=t.get("id") or "", created=t.get("created") or time.time())
            self._mark_truncated(turn, text)
            prepared.append(turn)
        wanted = [Edge(src=src, dst="", kind=kind.value if isinstance(kind, EdgeKind) else kind, data=data or {})
                  for src, _, kind, data in links]
        at = [i for _, i, _, _ in links]
        for i in at:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(prepared):
                raise InvalidRecord(f"a link's turn must be a position in turns (0 to {len(prepared) - 1}), got {i!r}")
        given = {t.get("id") for t in turns} - {None, ""}  # a new id of ours cannot be stored already
        out: list[Turn] = []
        with self.store.write(sync=sync) as conn:
            last = self.store.last_turn(conn, scope, session)
            if last is None:  # a session with turns has its node already: they are only ever deleted together
                self._ensure_session(conn, scope, session)
            chain: list[Edge] = []
            new: list[tuple[Node, str | None, int | None]] = []
            adding: dict[str, Turn] = {}
            for turn in prepared:
                if turn.id in given:
                    if turn.id in adding:  # the same id twice in this call
                        out.append(adding[turn.id])
                        continue
                    if self.store.exists(conn, turn.id):
                        out.append(self.store.get_node(turn.id))  # type: ignore[arg-type]
                        continue
                turn.index = 0 if last is None else last[1] + 1
                new.append((turn, turn.text, turn.index))
                adding[turn.id] = turn
                if last is not None:
                    chain.append(Edge(src=last[0], dst=turn.id, kind="next", scope=scope))
                last = (turn.id, turn.index)
                out.append(turn)
            self.store.insert_nodes(conn, new, queue_text=True)
            for e, i in zip(wanted, at):
                e.dst = out[i].id
            self.store.queue_edges(conn, chain + wanted, scope=scope)
        self.store.after_commit(self.worker.notify)
        return out

    def add(self, node: Node, edges: Iterable[Edge | tuple[str, str, str]] = ()) -> Node:
        """Store a new node (any kind) and, in the same transaction, edges to or from it."""
        text = node.embed_text()
        if text is not None:
            self._text(text, what=f"{node.kind} text")
        if isinstance(node, Turn):
            raise InvalidRecord("turns are stored with log_turn / log_turns, which keep session order")
        self._mark_truncated(node, text)
        with self.store.write() as conn:
            if node.session:
                self._ensure_session(conn, node.scope, node.session)
            self.store.insert_node(conn, node, text=text)
            for e in edges:
                self.store.insert_edge(conn, e if isinstance(e, Edge) else Edge(src=e[0], dst=e[1], kind=e[2]))
        if text is not None:
            self.store.after_commit(self.worker.notify)
        return node

    def update(self, node: Node) -> Node:
        """Replace a stored node's fields (its kind and scope stay). Changed text is re-embedded."""
        text = node.embed_text()
        if text is not None:
            self._text(text, what=f"{node.kind} text")
        with self.store.write() as conn:
            self.store.update_node(conn, node, text=text)
        if text is not None:
            self.store.after_commit(self.worker.notify)
        return node

    def link(self, src: str, dst: str, kind: str | EdgeKind, data: dict | None = None) -> Edge:
        """Add an edge (idempotent per src, dst, kind). Both ends must exist in the same scope."""
        return self.link_many([(src, dst, kind, data)])[0]

    def link_many(self, edges: Iterable[tuple[str, str, str | EdgeKind, dict | None]]) -> list[Edge]:
        """Add several edges ``(src, dst, kind, data)`` in one transaction, all or nothing (see :meth:`link`)."""
        out = [Edge(src=src, dst=dst, kind=kind.value if isinstance(kind, EdgeKind) else kind, data=data or {})
               for src, dst, kind, data in edges]
        with self.store.write() as conn:
            self.store.insert_edges(conn, out)
        return out

    def unlink(self, src: str, dst: str, kind: str | EdgeKind) -> bool:
        kind = Edge(src=src, dst=dst, kind=kind.value if isinstance(kind, EdgeKind) else kind).kind
        with self.store.write() as conn:
            return self.store.delete_edge(conn, src, dst, kind)

    # -- reading -----------------------------------------------------------------

    def get(self, node_id: str, scope: str | None = None) -> Node:
        """The node with this id (optionally only if it is in ``scope``); :class:`NodeNotFound` otherwise."""
        return self.store.get_node(node_id, scope)

    def nodes(self, *, kind: str | None = None, scope: str | None = None, session: str | None = None,
              since: float | None = None, limit: int | None = None, newest_first: bool = False) -> list[Node]:
        if kind is not None:
            if kind not in NODE_CLASSES:
                raise UnknownKind(f"unknown node kind {kind!r}; allowed: {', '.join(NODE_CLASSES)}")
        return self.store.list_nodes(scope=self.resolve_scope(scope), kind=kind, session=session, since=since, limit=limit,
                                     newest_first=newest_first)

    def session_turns(self, session: str, scope: str | None = None) -> list[Turn]:
        """The turns of a session, in order."""
        turns = self.store.list_nodes(scope=self.resolve_scope(scope), kind="turn", session=session)
        return sorted(turns, key=lambda t: t.index)  # type: ignore[attr-defined]

    def edges(self, node_id: str, *, kinds: Iterable[str] | None = None, direction: str = "both") -> list[Edge]:
        if direction not in ("in", "out", "both"):
            raise ValueError(f"direction must be 'in', 'out' or 'both', got {direction!r}")
        return self.store.edges_of(node_id, kinds=kinds, direction=direction)

    def search(self, text: str, k: int | None = None, *, kinds: Sequence[str] | None = None,
               scope: str | None = None, since: float | None = None, hops: int | None = None) -> list[Hit]:
        """Hybrid search within one scope; see :mod:`mindloop.graph.search`."""
        text = self._text(text, what="query")
        k = self.config.search_k if k is None else k
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if kinds:
            bad = [x for x in kinds if x not in NODE_CLASSES]
            if bad:
                raise UnknownKind(f"unknown node kinds {bad}; allowed: {', '.join(NODE_CLASSES)}")
        return hybrid_search(self, text, k=k, scope=self.resolve_scope(scope), kinds=list(kinds) if kinds else None,
                             since=since, hops=self.config.search_hops if hops is None else hops)

    # -- forgetting --------------------------------------------------------------

    def forget(self, *, scope: str | None = None, session: str | None = None) -> int:
        """Remove every node of a scope, or of one session in it, from SQLite, Chroma and the view.

        Returns how many nodes were removed. Their history rows lose their
        payloads. If the process dies between the SQLite commit and the
        Chroma delete, the next open's reconciliation removes the vectors.
        """
        if scope is None and session is None:
            raise ValueError("forget needs scope=..., session=... or both")
        scope = self.resolve_scope(scope)
        with self.store.write() as conn:
            ids = self.store.delete_where(conn, scope=scope, session=session)
        index = self.index
        if index is not None:
            if session is None:
                index.drop_scope(scope)
            else:
                index.delete(scope, ids)
        self.view.sync()
        return len(ids)

    # -- vectors -----------------------------------------------------------------

    @contextmanager
    def defer_embedding(self) -> Iterator[None]:
        """A context manager: the worker starts on what is written inside the block once it, and every other
        open one, has ended. The agent loop holds it for a whole turn, so that embedding the new turns does not
        compete for the CPU with the turn's own last steps::

            with graph.defer_embedding():
                graph.log_turns("s", turns)
                ...  # the rest of the request, which the user waits for

        The store's background WAL checkpoint waits for the block too (``WalCheckpointer.held``).
        """
        with self.worker.deferred(), self.store.checkpointer.held():
            yield

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until every write logged with ``sync=False`` so far is on the disk. False on timeout; raises
        :class:`DiskFull` if the fsync failed (the write is stored, but a power cut may lose it)."""
        return self.store.sync(timeout)

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until every pending vector is in the index. False on timeout or without an index."""
        return self.worker.flush(timeout)

    def reconcile(self) -> dict[str, int]:
        """Make the index hold exactly the embeddable nodes of ``graph.db``.

        Vectors whose node is gone are deleted; nodes whose vector is missing
        are marked pending, and the worker embeds them.
        """
        index = self._index
        if index is None:
            return {"deleted": 0, "pending": 0}
        deleted = pending = 0
        store_scopes = set(self.store.scopes())
        for scope in sorted(set(index.scopes()) | store_scopes):
            want = self.store.embeddable_ids(scope) if scope in store_scopes else set()
            if not want:
                if index.count(scope):
                    deleted += index.count(scope)
                    index.drop_scope(scope)
                continue
            have = index.ids(scope)
            extra = sorted(have - want)
            missing = sorted(want - have)
            if extra:
                index.delete(scope, extra)
            if missing:
                self.store.mark_pending(missing)
            deleted += len(extra)
            pending += len(missing)
        if deleted or pending:
            log.info("reconciled vectors: %d deleted, %d to embed", deleted, pending)
        return {"deleted": deleted, "pending": pending}

    # -- export / import ---------------------------------------------------------

    def export(self, scope: str, out: IO[str]) -> dict[str, int]:
        """Write a scope as JSONL: a header line, then one ``{"node": ...}`` or ``{"edge": ...}`` per line."""
        scope = self.resolve_scope(scope)
        self.store.settle()  # a read snapshot cannot settle the queue itself
        conn = self.store.conn
        conn.execute("BEGIN")  # one consistent snapshot
        try:
            nodes = self.store.list_nodes(scope=scope)
            edges = self.store.list_edges(scope)
        finally:
            conn.execute("COMMIT")
        out.write(json.dumps({"format": EXPORT_FORMAT, "scope": scope, "nodes": len(nodes), "edges": len(edges)},
                             ensure_ascii=False) + "\n")
        for node in nodes:
            out.write(json.dumps({"node": node.to_json()}, ensure_ascii=False) + "\n")
        for edge in edges:
            out.write(json.dumps({"edge": edge.to_json()}, ensure_ascii=False) + "\n")
        return {"nodes": len(nodes), "edges": len(edges)}

    def import_(self, lines: Iterable[str], *, scope: str | None = None) -> dict[str, int]:
        """Load an :meth:`export` file, all or nothing; nodes already present are skipped.

        ``scope`` moves the records into another scope than the one exported.
        Raises :class:`InvalidRecord` naming the first bad line; then nothing is written.
        """
        nodes: list[Node] = []
        edges: list[Edge] = []
        header = None
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidRecord(f"line {lineno}: not JSON ({e.msg})") from None
            try:
                if header is None:
                    if not isinstance(obj, dict) or obj.get("format") != EXPORT_FORMAT:
                        raise InvalidRecord(f"the first line must be a header with format {EXPORT_FORMAT!r}")
                    header = obj
                elif isinstance(obj, dict) and "node" in obj:
                    node = record_from_json(obj["node"])
                    if scope is not None:
                        node.scope = scope
                    text = node.embed_text()
                    if text is not None:
                        self._text(text, what=f"{node.kind} text")
                    nodes.append(node)
                elif isinstance(obj, dict) and "edge" in obj:
                    edge = edge_from_json(obj["edge"])
                    if scope is not None:
                        edge.scope = scope
                    edges.append(edge)
                else:
                    raise InvalidRecord('expected {"node": ...} or {"edge": ...}')
            except GraphError as e:
                raise InvalidRecord(f"line {lineno}: {e}") from None
        if header is None:
            raise InvalidRecord("the file is empty")
        added_nodes = added_edges = 0
        with self.store.write() as conn:
            for node in nodes:
                pos = node.index if isinstance(node, Turn) else None
                added_nodes += self.store.insert_node(conn, node, text=node.embed_text(), pos=pos, or_ignore=True)
            for edge in edges:
                try:
                    added_edges += self.store.insert_edge(conn, edge)
                except NodeNotFound as e:
                    raise InvalidRecord(f"edge {edge.kind} {edge.src} -> {edge.dst}: {e}") from None
        self.store.after_commit(self.worker.notify)
        return {"nodes": added_nodes, "edges": added_edges}

    # -- stats and lifecycle -----------------------------------------------------

    def stats(self, scope: str | None = None) -> dict[str, Any]:
        """Counts of nodes and edges by kind, sessions, vectors, and where things live."""
        out = self.store.counts(scope)
        index = self.index
        out["scopes"] = self.store.scopes() if scope is None else [scope]
        out["vectors_in_index"] = None if index is None else index.count(scope)
        out["index"] = None if index is None else getattr(index, "where", type(index).__name__)
        out["index_note"] = self._index_note
        out["embedder"] = self.embedder.name
        out["home"] = str(self.config.home)
        db = Path(self.store.path)
        out["db_bytes"] = sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())
        return out

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self.worker.stop()
        if self._index is not None:
            self._index.close()
        self.store.close()

    def __enter__(self) -> "MemoryGraph":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
