"""The graph's own integrity check and repair: ``graph.db`` and the vectors derived from it.

    >>> import tempfile
    >>> from mindloop.graph import GraphConfig
    >>> from mindloop.graph.check import check
    >>> check(GraphConfig(home=tempfile.mkdtemp())).problems  # a new data directory: nothing wrong, nothing made
    []

Checks, in order (``mindloop doctor`` runs them, then the other subsystems'):

- ``graph.db``: missing or emptied beside the vectors of an earlier graph;
  SQLite's ``integrity_check``; the FTS5 index against the nodes; edges
  whose ends are missing (queued edges are not checked: settling drops
  those).
- ``chroma/`` (the vectors, derived from graph.db): torn HNSW segments; per
  scope, vectors of nodes that are gone and indexed nodes without a vector.

:func:`repair` runs the same checks and repairs what each finds before the
next one runs, never deleting the only copy of anything: a damaged file is
backed up and what SQLite can read is recovered into a fresh one
(graph/salvage.py); the FTS index is rebuilt from the nodes; edges to missing
nodes are removed through the store, logged in the history; vectors are
reconciled and re-embedded; old vectors beside a lost graph.db are moved to
``chroma.orphaned-<time>``. What was found and done is a :class:`Findings`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mindloop.graph import schema
from mindloop.graph.config import GraphConfig
from mindloop.graph.embed import Embedder, make_embedder
from mindloop.graph.errors import IndexUnavailable
from mindloop.graph.index import ChromaIndex, damaged_segments
from mindloop.graph.memory_graph import MemoryGraph, graph_lost
from mindloop.graph.records import record_from_json
from mindloop.graph.salvage import Copy, copy_tables, integrity, readable_rows, salvage
from mindloop.graph.store import Store

__all__ = ["Findings", "Problem", "check", "check_sqlite_file", "repair"]

_CHROMA_BUSY = "not repaired: embedded Chroma is in use by another mindloop process; stop it first"
_REEMBEDDED = "deleted the derived index; every vector re-embedded from graph.db"


@dataclass
class Problem:
    """One thing found wrong: where (``path``), what (``problem``), and what ``--repair`` did about it."""

    check: str
    path: str
    problem: str
    repair: str | None = None
    fixed: bool = False


@dataclass
class Findings:
    """What a subsystem's check found and its repair did: each check's outcome, the problems, the rows a recovery
    copied (per file), and notes."""

    checks: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    recovered: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, check: str, path: Path | str, problem: str) -> Problem:
        p = Problem(check, str(path), problem)
        self.problems.append(p)
        self.checks[check] = "problem"
        return p

    def ok(self, check: str) -> None:
        self.checks.setdefault(check, "ok")


def check(config: GraphConfig, findings: Findings | None = None, *, embedder: Embedder | None = None) -> Findings:
    """Check graph.db and its vectors; nothing is repaired (opening the store may migrate an older schema)."""
    return _run(config, Findings() if findings is None else findings, repair=False, stamp="", embedder=embedder, flush_timeout_s=0.0)


def repair(config: GraphConfig, findings: Findings | None = None, *, stamp: str | None = None,
           embedder: Embedder | None = None, flush_timeout_s: float = 600.0) -> Findings:
    """Check graph.db and its vectors, repairing what each check finds; ``stamp`` names the backups (default:
    now); the re-embedding may take ``flush_timeout_s``."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    return _run(config, Findings() if findings is None else findings, repair=True, stamp=stamp, embedder=embedder,
                flush_timeout_s=flush_timeout_s)


def _run(config: GraphConfig, findings: Findings, *, repair: bool, stamp: str, embedder: Embedder | None,
         flush_timeout_s: float) -> Findings:
    db_ok = _check_graph_db(config, findings, repair, stamp)
    started_over = any(p.check == "graph.db" and p.fixed for p in findings.problems)
    if db_ok and not config.db_path.exists() and not started_over:
        pass  # a new data directory: nothing to compare, and the check creates nothing
    elif db_ok:
        _check_vectors(config, findings, repair, embedder, flush_timeout_s)
    else:
        findings.notes.append("vectors not checked: graph.db, which they are derived from, is damaged")
    return findings


# -- graph.db ------------------------------------------------------------------


def _check_graph_db(config: GraphConfig, findings: Findings, repair: bool, stamp: str) -> bool:
    """Check graph.db (repairing it if asked); True when it is whole afterwards."""
    db, chroma = config.db_path, config.chroma_path
    if not db.exists() or db.stat().st_size == 0:
        lost = graph_lost(config)
        if lost is None:
            findings.notes.append(f"{db} does not exist yet: a new data directory")
            findings.ok("graph.db")
            return True
        p = findings.add("graph.db", db, f"{lost}, but {chroma} holds the vectors of an earlier graph: graph.db was "
                                         "deleted or truncated")
        if not repair:
            return False
        if _chroma_in_use(config):
            p.repair = _CHROMA_BUSY
            return False
        aside = chroma.with_name(f"chroma.orphaned-{stamp}")
        os.replace(chroma, aside)
        p.repair, p.fixed = f"moved {chroma.name}/ to {aside.name}/; a new, empty graph starts here", True
        findings.ok("graph.db")
        return True
    busy = (lambda: _chroma_in_use_at(db.parent / "chroma"))
    if not check_sqlite_file(db, "graph.db", findings, repair=repair, stamp=stamp, copy=_copy_graph, busy=busy):
        return False
    conn = sqlite3.connect(db)
    try:
        foreign = schema.foreign_application_id(conn)
        if foreign is not None:
            findings.add("graph.db", db, f"a SQLite file, but not a mindloop graph (application_id {foreign:#x}); "
                                         "not touched")
            return False
        _check_fts(conn, db, findings, repair)
        _check_edges(conn, db, findings, repair)
    finally:
        conn.close()
    return True


def _check_fts(conn: sqlite3.Connection, db: Path, findings: Findings, repair: bool) -> None:
    """The FTS5 index: its own structure, and one entry per node with text (the triggers skip NULL text), but
    for the rows whose text still waits for it (``fts = 0``, schema 4: ``Store.settle`` indexes them).

    FTS5's stricter check against the content table (``rank`` 1) cannot be
    used: it expects an entry for every row, the text-less ones included.
    """
    missing = extra = 0
    columns = {r[1] for r in conn.execute("PRAGMA table_xinfo(nodes)")}
    indexed = "text IS NOT NULL" + (" AND fts = 1" if "fts" in columns else "")
    try:
        conn.execute("INSERT INTO nodes_fts(nodes_fts) VALUES ('integrity-check')")
        missing = conn.execute(f"SELECT count(*) FROM nodes WHERE {indexed} "
                               "AND rowid NOT IN (SELECT id FROM nodes_fts_docsize)").fetchone()[0]
        extra = conn.execute("SELECT count(*) FROM nodes_fts_docsize WHERE id NOT IN "
                             f"(SELECT rowid FROM nodes WHERE {indexed})").fetchone()[0]
        if not missing and not extra:
            findings.ok("fts")
            return
        what = f"{missing} node(s) with text are missing from it, {extra} entries have no node"
    except sqlite3.DatabaseError as e:
        what = f"it is damaged ({e})"
    p = findings.add("fts", db, f"the full-text index disagrees with the nodes: {what}; lexical search misses "
                                "or invents hits")
    if repair:
        if "fts" not in columns:
            Store(db, check=False).close()  # an older schema: migrated first (version 1's index is made anew)
        with conn:
            conn.execute("INSERT INTO nodes_fts(nodes_fts) VALUES ('delete-all')")
            for stmt in schema.FTS_REBUILD:
                conn.execute(stmt)
        conn.execute("INSERT INTO nodes_fts(nodes_fts) VALUES ('integrity-check')")
        p.repair, p.fixed = "rebuilt the full-text index from the nodes", True


def _check_edges(conn: sqlite3.Connection, db: Path, findings: Findings, repair: bool) -> None:
    dangling = conn.execute("SELECT src, dst, kind, scope FROM edges WHERE src NOT IN (SELECT id FROM nodes) "
                            "OR dst NOT IN (SELECT id FROM nodes)").fetchall()
    if not dangling:
        findings.ok("edges")
        return
    p = findings.add("edges", db, f"{len(dangling)} edge(s) point at missing nodes "
                                  f"(e.g. {dangling[0][2]} {dangling[0][0]} -> {dangling[0][1]})")
    if repair:
        conn.commit()  # the FTS check's statements may have opened a transaction: the store writes next
        store = Store(db, check=False)
        try:
            with store.write() as w:
                store.drop_edges(w, dangling)
        finally:
            store.close()
        p.repair, p.fixed = f"removed the {len(dangling)} edge(s) (logged in the history)", True


def check_sqlite_file(path: Path, name: str, findings: Findings, *, repair: bool, stamp: str,
                      copy: Copy = copy_tables, busy: Callable[[], bool] | None = None) -> bool:
    """SQLite's ``integrity_check`` of ``path`` (reported as check ``name``); with ``repair``, a damaged file is
    backed up and what SQLite can read is copied into a fresh one by ``copy`` (graph/salvage.py), unless
    ``busy()`` says another process holds it. True when the file is whole afterwards."""
    problems = integrity(path)
    if problems == ["ok"]:
        findings.ok(name)
        return True
    p = findings.add(name, path, "damaged: " + "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else ""))
    if not repair:
        return False
    if busy is not None and busy():
        p.repair = _CHROMA_BUSY
        return False
    backup, counts = salvage(path, stamp, copy)
    findings.recovered[name] = counts
    after = integrity(path)
    if after != ["ok"]:  # pragma: no cover - a fresh file that fails its check would be a bug of ours
        p.repair = f"backed up to {backup.name}; the recovered file still fails: {after[:2]}"
        return False
    total = sum(v for k, v in counts.items() if k.endswith("recovered"))
    lost = sum(v for k, v in counts.items() if k.endswith("unreadable"))
    p.repair = (f"copied the damaged file to {backup.name} (kept), recovered {total} row(s) SQLite could read "
                f"into a fresh {path.name}" + (f"; {lost} row(s) were unreadable" if lost else ""))
    p.fixed = True
    return True


def _copy_graph(src: sqlite3.Connection, fresh: Path, counts: dict[str, int]) -> None:
    """Copy the readable nodes, edges, queued edges and history of a damaged graph.db into a fresh one; a node
    that does not read back as a record, and an edge to a node not copied, are counted, not copied."""
    Store(fresh, check=False).close()  # the schema: tables, FTS and its triggers
    dst = sqlite3.connect(fresh, isolation_level=None)
    try:
        dst.execute("BEGIN")
        cols = schema.NODE_COLUMNS
        ids: set[str] = set()
        got = bad = 0
        for row in readable_rows(src, "nodes", cols, counts):
            rec = dict(zip(cols, row))
            try:
                data = json.loads(rec["data"])
                if rec["kind"] in schema.TEXT_FIELD:
                    data[schema.TEXT_FIELD[rec["kind"]]] = rec["text"]
                record_from_json(data)
                if not isinstance(rec["id"], str) or not isinstance(rec["scope"], str):
                    raise TypeError("id and scope must be text")
            except Exception:  # noqa: BLE001 - a row damaged past reading is counted, not guessed at
                bad += 1
                continue
            cur = dst.execute(f"INSERT OR IGNORE INTO nodes ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                              row)
            got += cur.rowcount
            ids.add(rec["id"])
        counts["nodes recovered"], counts["nodes unreadable"] = got, counts.pop("nodes unreadable", 0) + bad
        cols = schema.EDGE_COLUMNS
        try:
            tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError:  # a schema SQLite cannot read: try the tables every version has
            tables = {"edges"}
        # Queued edges (schema 3) stay queued in the fresh file: settling there checks their scopes as usual.
        for table, name in (("edges", "edges"), ("pending_edges", "queued edges")):
            got = dangling = 0
            rows = readable_rows(src, table, cols, counts) if table in tables else ()
            for row in rows:
                if row[0] not in ids or row[1] not in ids:
                    dangling += 1
                    continue
                got += dst.execute(f"INSERT OR IGNORE INTO {table} ({','.join(cols)}) "
                                   f"VALUES ({','.join('?' * len(cols))})", row).rowcount
            counts[f"{name} recovered"], counts[f"{name} to lost nodes"] = got, dangling
        cols = schema.HISTORY_COLUMNS
        got = 0
        for row in readable_rows(src, "history", cols, counts):
            got += dst.execute(f"INSERT OR IGNORE INTO history ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                               row).rowcount
        counts["history recovered"] = got
        dst.execute("COMMIT")
    finally:
        dst.close()


# -- vectors -------------------------------------------------------------------


def _chroma_in_use_at(chroma: Path) -> bool:
    """Whether another process holds embedded Chroma's writer lock (``chroma.lock``)."""
    import fcntl

    lock = chroma.parent / f"{chroma.name}.lock"
    if not lock.exists():
        return False
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _chroma_in_use(config: GraphConfig) -> bool:
    return not config.chroma_url and _chroma_in_use_at(config.chroma_path)


def _check_vectors(config: GraphConfig, findings: Findings, repair: bool, embedder: Embedder | None,
                   flush_timeout_s: float) -> None:
    root = config.chroma_path
    if not config.chroma_url:
        if _chroma_in_use(config):
            findings.notes.append(f"vectors not checked: embedded Chroma at {root} is in use by another process")
            return
        lock = root.parent / f"{root.name}.lock"
        state = lock.read_text().strip() if lock.exists() else ""
        torn = damaged_segments(root) if root.exists() else []
        if root.exists() and any(root.iterdir()) and (torn or state != "closed"):
            why = f"torn HNSW files: {'; '.join(torn)}" if torn else \
                f"not closed cleanly ({state or 'no record'}): its files may be torn"
            p = findings.add("vectors", root, why)
            if not repair:
                return
            p.repair, p.fixed = _REEMBEDDED, True
    store = Store(config.db_path, durability=config.durability)
    try:
        try:
            index = ChromaIndex(url=config.chroma_url) if config.chroma_url else ChromaIndex(path=root)
        except IndexUnavailable as e:
            findings.notes.append(f"vectors not checked: {e}")
            return
        rebuilt = getattr(index, "rebuilt", False)
        if rebuilt and "vectors" not in findings.checks:
            p = findings.add("vectors", root, "unreadable after a clean close")
            p.repair, p.fixed = _REEMBEDDED, True
        extra = missing = 0
        scopes = [] if rebuilt else sorted(set(store.scopes()) | set(index.scopes()))
        for scope in scopes:
            have = index.ids(scope)
            e, m = len(have - store.embeddable_ids(scope)), len(store.indexed_ids(scope) - have)
            extra, missing = extra + e, missing + m
            if e or m:
                p = findings.add("vectors", f"{root} (scope {scope!r})",
                                 f"{e} vector(s) of nodes that are gone, {m} indexed node(s) without a vector")
                p.repair = "reconciled with graph.db" if repair else None
        pending = store.pending_count()
        if pending:
            findings.notes.append(f"{pending} node(s) wait for their vectors (embedded by the next open graph)")
        if not repair:
            index.close()
            findings.ok("vectors")
            return
        embedder = embedder or make_embedder(config.embedder, config.embed_dtype, config.embed_query_runtime)
        graph = MemoryGraph(store, index, embedder, config)  # reconciles
        try:
            done = graph.flush(timeout=flush_timeout_s)
            left = {s: (len(index.ids(s) ^ store.embeddable_ids(s))) for s in sorted(set(store.scopes()))}
        finally:
            graph.close()
        for p in findings.problems:
            if p.check == "vectors" and p.repair == "reconciled with graph.db":
                p.fixed = done and not any(left.values())
                if not p.fixed:
                    p.repair += f", but {sum(left.values())} vector(s) still disagree ({graph.worker.last_error})"
        findings.ok("vectors")
        if extra or missing:
            findings.notes.append(f"vectors: {extra} removed, {missing} re-embedded")
    finally:
        store.close()
