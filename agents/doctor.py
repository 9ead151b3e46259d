"""``mindloop doctor``: check a data directory, and repair what can be repaired without losing anything.

    mindloop doctor                 # report every problem; exit 0 when healthy, 1 when problems remain
    mindloop doctor --repair        # repair, then report each problem with what was done
    mindloop doctor --repair --json

Checks, in order:

- ``graph.db``: missing or emptied beside the vectors of an earlier graph;
  SQLite's ``integrity_check``; the FTS5 index against the nodes; edges
  whose ends are missing (queued edges are not checked: settling drops
  those).
- ``chroma/`` (the vectors, derived from graph.db): torn HNSW segments; per
  scope, vectors of nodes that are gone and indexed nodes without a vector.
- ``checkpoints/``: each checkpoint's manifest and weight files (the
  safetensors header against the file's size); unfinished saves
  (``.tmp-*``); ``promoted.json`` and the checkpoint it names.
- ``loop.db`` (LangGraph's checkpointer), when present: ``integrity_check``.

Repairs never delete the only copy of anything:

- a damaged SQLite file (graph.db, loop.db) is copied to
  ``<name>.damaged-<time>`` (with its ``-wal``) next to it, every row SQLite
  can still read is copied into a fresh file, and that file replaces the
  damaged one; unreadable rows are counted, not guessed;
- FTS is rebuilt from the nodes; edges to missing nodes are removed;
- vectors are reconciled with graph.db and re-embedded (they are derived);
- a missing or emptied graph.db beside old vectors: ``chroma/`` is moved to
  ``chroma.orphaned-<time>`` and a new graph starts;
- a corrupt checkpoint is moved to ``checkpoints/.quarantine/<id>``; a
  promoted pointer that names a bad or missing checkpoint is moved back to
  the nearest whole ancestor, else the base model (recorded in the
  checkpoints' history); an unreadable ``promoted.json`` is kept as
  ``promoted.json.damaged-<time>``; unfinished saves are cleaned.

Run it while no other mindloop process (serve, daemon, ui) uses the data
directory: a repair that replaces graph.db refuses while embedded Chroma is
held by another process.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Problem", "Report", "doctor"]

log = logging.getLogger(__name__)

_GRAPH_TABLES = {
    "nodes": ("id", "kind", "scope", "session", "pos", "created", "updated", "text", "data", "vec", "rev"),
    "edges": ("src", "dst", "kind", "scope", "created", "data"),
    "history": ("seq", "at", "op", "node", "kind", "scope", "session", "dst", "payload"),
}
# The files a checkpoint of each kind must hold (as mindloop.trainer.checkpoints writes them).
_WEIGHTS = {"lora": ("adapter_model.safetensors", "adapter_config.json"), "full": ("model.safetensors", "config.json")}


@dataclass
class Problem:
    """One thing found wrong: where (``path``), what (``problem``), and what ``--repair`` did about it."""

    check: str
    path: str
    problem: str
    repair: str | None = None
    fixed: bool = False


@dataclass
class Report:
    """What :func:`doctor` found and did. ``healthy`` when every problem found was repaired (or none was)."""

    home: str
    repaired: bool
    checks: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    recovered: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(p.fixed for p in self.problems)

    def add(self, check: str, path: Path | str, problem: str) -> Problem:
        p = Problem(check, str(path), problem)
        self.problems.append(p)
        self.checks[check] = "problem"
        return p

    def ok(self, check: str) -> None:
        self.checks.setdefault(check, "ok")

    def states(self) -> dict[str, str]:
        """Each check's outcome: ``ok``, ``repaired`` (every problem it found was) or ``problem``."""
        out = {}
        for name in self.checks:
            found = [p for p in self.problems if p.check == name]
            out[name] = "ok" if not found else "repaired" if all(p.fixed for p in found) else "problem"
        return out

    def to_json(self) -> dict[str, Any]:
        return {"home": self.home, "healthy": self.healthy, "repaired": self.repaired, "checks": self.states(),
                "problems": [asdict(p) for p in self.problems], "recovered": self.recovered, "notes": self.notes}

    def format(self) -> str:
        remaining = [p for p in self.problems if not p.fixed]
        head = (f"{self.home}: healthy" if not self.problems else
                f"{self.home}: {len(self.problems)} problem(s), {len(self.problems) - len(remaining)} repaired, "
                f"{len(remaining)} remaining")
        lines = [head]
        for name, state in self.states().items():
            lines.append(f"  {name:<12} {state}")
        for p in self.problems:
            mark = "repaired" if p.fixed else "PROBLEM"
            lines.append(f"- {mark}: {p.path}: {p.problem}")
            if p.repair:
                lines.append(f"    done: {p.repair}")
        for table, counts in self.recovered.items():
            lines.append(f"  recovered {table}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        lines += [f"  note: {n}" for n in self.notes]
        if remaining and not self.repaired:
            lines.append("run `mindloop doctor --repair` to repair what can be repaired")
        return "\n".join(lines)


def doctor(home: str | os.PathLike, *, repair: bool = False, config=None, embedder=None,
           flush_timeout_s: float = 600.0) -> Report:
    """Check the data directory ``home`` (and repair it with ``repair=True``); see the module docstring.

    ``config`` is the :class:`graph.GraphConfig` to open the graph with
    (default: one for ``home``); ``embedder`` overrides the one it names.
    """
    from mindloop.graph import GraphConfig

    home = Path(home)
    config = config or GraphConfig(home=home)
    report = Report(home=str(home), repaired=repair)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    db_ok = _check_graph_db(config, report, repair, stamp)
    started_over = any(p.check == "graph.db" and p.fixed for p in report.problems)
    if db_ok and not config.db_path.exists() and not started_over:
        pass  # a new data directory: nothing to compare, and doctor creates nothing
    elif db_ok:
        _check_vectors(config, report, repair, embedder, flush_timeout_s)
    else:
        report.notes.append("vectors not checked: graph.db, which they are derived from, is damaged")
    _check_checkpoints(home / "checkpoints", report, repair, stamp)
    loop_db = home / "loop.db"
    if loop_db.exists():
        _check_sqlite_file(loop_db, "loop.db", report, repair, stamp, graph=False)
    return report


# -- graph.db ------------------------------------------------------------------


def _integrity(path: Path) -> list[str]:
    """SQLite's integrity_check of ``path`` (["ok"] when whole), or the error that stopped it."""
    try:
        conn = sqlite3.connect(path)
        try:
            return [" ".join(str(r[0]).split()) for r in conn.execute("PRAGMA integrity_check(20)")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        return [f"it cannot be read as a SQLite database ({e})"]


def _check_graph_db(config, report: Report, repair: bool, stamp: str) -> bool:
    """Check graph.db (repairing it if asked); True when it is whole afterwards."""
    from mindloop.graph.schema import APPLICATION_ID

    db, chroma = config.db_path, config.chroma_path
    if not db.exists() or db.stat().st_size == 0:
        wal = db.with_name(db.name + "-wal")
        old_vectors = (not config.chroma_url and (chroma / "chroma.sqlite3").exists()
                       and any(p.is_dir() for p in chroma.iterdir()))
        if old_vectors and not (wal.exists() and wal.stat().st_size):
            p = report.add("graph.db", db, f"{'empty (0 bytes)' if db.exists() else 'missing'}, but {chroma} holds "
                                           "the vectors of an earlier graph: graph.db was deleted or truncated")
            if repair:
                if _chroma_in_use(config):
                    p.repair = "not repaired: embedded Chroma is in use by another mindloop process; stop it first"
                    return False
                aside = chroma.with_name(f"chroma.orphaned-{stamp}")
                os.replace(chroma, aside)
                p.repair, p.fixed = f"moved {chroma.name}/ to {aside.name}/; a new, empty graph starts here", True
            else:
                return False
        else:
            report.notes.append(f"{db} does not exist yet: a new data directory")
            report.ok("graph.db")
            return True
        report.ok("graph.db")
        return True
    ok = _check_sqlite_file(db, "graph.db", report, repair, stamp, graph=True)
    if not ok:
        return False
    conn = sqlite3.connect(db)
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] and app_id != APPLICATION_ID:
            report.add("graph.db", db, f"a SQLite file, but not a mindloop graph (application_id {app_id:#x}); "
                                       "not touched")
            return False
        _check_fts(conn, db, report, repair)
        _check_edges(conn, db, report, repair)
    finally:
        conn.close()
    return True


def _check_fts(conn: sqlite3.Connection, db: Path, report: Report, repair: bool) -> None:
    """The FTS5 index: its own structure, and one entry per node with text (the triggers skip NULL text), but
    for the rows whose text still waits for it (``fts = 0``, schema 4: ``Store.settle`` indexes them).

    FTS5's stricter check against the content table (``rank`` 1) cannot be
    used: it expects an entry for every row, the text-less ones included.
    """
    from mindloop.graph.schema import FTS_REBUILD

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
            report.ok("fts")
            return
        what = f"{missing} node(s) with text are missing from it, {extra} entries have no node"
    except sqlite3.DatabaseError as e:
        what = f"it is damaged ({e})"
    p = report.add("fts", db, f"the full-text index disagrees with the nodes: {what}; lexical search misses "
                              "or invents hits")
    if repair:
        if "fts" not in columns:
            from mindloop.graph.store import Store

            Store(db, check=False).close()  # an older schema: migrated first (version 1's index is made anew)
        with conn:
            conn.execute("INSERT INTO nodes_fts(nodes_fts) VALUES ('delete-all')")
            for stmt in FTS_REBUILD:
                conn.execute(stmt)
        conn.execute("INSERT INTO nodes_fts(nodes_fts) VALUES ('integrity-check')")
        p.repair, p.fixed = "rebuilt the full-text index from the nodes", True


def _check_edges(conn: sqlite3.Connection, db: Path, report: Report, repair: bool) -> None:
    where = "src NOT IN (SELECT id FROM nodes) OR dst NOT IN (SELECT id FROM nodes)"
    dangling = conn.execute(f"SELECT src, dst, kind, scope FROM edges WHERE {where}").fetchall()
    if not dangling:
        report.ok("edges")
        return
    p = report.add("edges", db, f"{len(dangling)} edge(s) point at missing nodes "
                                f"(e.g. {dangling[0][2]} {dangling[0][0]} -> {dangling[0][1]})")
    if repair:
        now = time.time()
        with conn:
            conn.execute(f"DELETE FROM edges WHERE {where}")
            conn.executemany(
                "INSERT INTO history (at, op, node, kind, scope, session, dst, payload) "
                "VALUES (?, 'edge-', ?, ?, ?, NULL, ?, NULL)", [(now, s, k, sc, d) for s, d, k, sc in dangling])
        p.repair, p.fixed = f"removed the {len(dangling)} edge(s) (logged in the history)", True


def _check_sqlite_file(path: Path, name: str, report: Report, repair: bool, stamp: str, *, graph: bool) -> bool:
    problems = _integrity(path)
    if problems == ["ok"]:
        report.ok(name)
        return True
    p = report.add(name, path, "damaged: " + "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else ""))
    if not repair:
        return False
    if graph and _chroma_in_use_at(path.parent / "chroma"):
        p.repair = "not repaired: embedded Chroma is in use by another mindloop process; stop it first"
        return False
    backup, counts = _salvage(path, stamp, graph=graph)
    report.recovered[name] = counts
    after = _integrity(path)
    if after != ["ok"]:  # pragma: no cover - a fresh file that fails its check would be a bug of ours
        p.repair = f"backed up to {backup.name}; the recovered file still fails: {after[:2]}"
        return False
    total = sum(v for k, v in counts.items() if k.endswith("recovered"))
    lost = sum(v for k, v in counts.items() if k.endswith("unreadable"))
    p.repair = (f"copied the damaged file to {backup.name} (kept), recovered {total} row(s) SQLite could read "
                f"into a fresh {path.name}" + (f"; {lost} row(s) were unreadable" if lost else ""))
    p.fixed = True
    return True


def _salvage(path: Path, stamp: str, *, graph: bool) -> tuple[Path, dict[str, int]]:
    """Back ``path`` up beside itself, copy every readable row into a fresh file, swap it in.

    The damaged file and its ``-wal`` are copied to ``<name>.damaged-<stamp>``
    first and stay there; rows are read from a scratch copy (opening a WAL
    database writes to it); the fresh file is built beside the damaged one
    and renamed over it only when whole. A crash at any point leaves the
    damaged file or the fresh one in place, and the backup.
    """
    backup = path.with_name(f"{path.name}.damaged-{stamp}")
    scratch = path.with_name(f".{path.name}.scratch-{stamp}")
    fresh = path.with_name(f".{path.name}.recovered-{stamp}")
    wal, shm = path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")
    shutil.copy2(path, backup)
    shutil.copy2(path, scratch)
    if wal.exists():
        shutil.copy2(wal, backup.with_name(backup.name + "-wal"))
        shutil.copy2(wal, scratch.with_name(scratch.name + "-wal"))
    _fsync_dir(path.parent)
    for f in (fresh, fresh.with_name(fresh.name + "-wal"), fresh.with_name(fresh.name + "-shm")):
        f.unlink(missing_ok=True)  # ours, from an attempt that was interrupted
    counts: dict[str, int] = {}
    try:
        src = sqlite3.connect(scratch)
        # lets SQLite read a file shorter than its header says (a truncated copy) instead of refusing it whole;
        # the scratch copy is read only and thrown away
        src.execute("PRAGMA writable_schema = ON")
        try:
            if graph:
                _salvage_graph(src, fresh, counts)
            else:
                _salvage_generic(src, fresh, counts)
        finally:
            src.close()
        dst = sqlite3.connect(fresh)
        try:
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            dst.close()
        with open(fresh, "rb") as fh:
            os.fsync(fh.fileno())
    finally:
        for f in (scratch, scratch.with_name(scratch.name + "-wal"), scratch.with_name(scratch.name + "-shm")):
            f.unlink(missing_ok=True)
    # The damaged -wal must not be replayed onto the fresh file: it goes beside its backup (a copy is there).
    if wal.exists():
        os.replace(wal, backup.with_name(backup.name + "-wal"))
    shm.unlink(missing_ok=True)  # an index of the -wal that just moved; SQLite rebuilds it
    for f in (fresh.with_name(fresh.name + "-wal"), fresh.with_name(fresh.name + "-shm")):
        f.unlink(missing_ok=True)
    os.replace(fresh, path)
    _fsync_dir(path.parent)
    return backup, counts


def _salvage_graph(src: sqlite3.Connection, fresh: Path, counts: dict[str, int]) -> None:
    from mindloop.graph.records import record_from_json
    from mindloop.graph.store import Store

    Store(fresh, check=False).close()  # the schema: tables, FTS and its triggers
    dst = sqlite3.connect(fresh, isolation_level=None)
    try:
        dst.execute("BEGIN")
        cols = _GRAPH_TABLES["nodes"]
        ids: set[str] = set()
        got = bad = 0
        for row in _readable_rows(src, "nodes", cols, counts):
            rec = dict(zip(cols, row))
            try:
                data = json.loads(rec["data"])
                if rec["kind"] in ("turn", "memory"):
                    data["text"] = rec["text"]
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
        cols = _GRAPH_TABLES["edges"]
        try:
            tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError:  # a schema SQLite cannot read: try the tables every version has
            tables = {"edges"}
        # Queued edges (schema 3) stay queued in the fresh file: settling there checks their scopes as usual.
        for table, name in (("edges", "edges"), ("pending_edges", "queued edges")):
            got = dangling = 0
            rows = _readable_rows(src, table, cols, counts) if table in tables else ()
            for row in rows:
                if row[0] not in ids or row[1] not in ids:
                    dangling += 1
                    continue
                got += dst.execute(f"INSERT OR IGNORE INTO {table} ({','.join(cols)}) VALUES (?,?,?,?,?,?)",
                                   row).rowcount
            counts[f"{name} recovered"], counts[f"{name} to lost nodes"] = got, dangling
        cols = _GRAPH_TABLES["history"]
        got = 0
        for row in _readable_rows(src, "history", cols, counts):
            got += dst.execute(f"INSERT OR IGNORE INTO history ({','.join(cols)}) VALUES (?,?,?,?,?,?,?,?,?)",
                               row).rowcount
        counts["history recovered"] = got
        dst.execute("COMMIT")
    finally:
        dst.close()


def _salvage_generic(src: sqlite3.Connection, fresh: Path, counts: dict[str, int]) -> None:
    """Copy the tables of any SQLite file (loop.db): schema from its sqlite_master, then the readable rows."""
    try:
        schema = src.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                             "AND name NOT LIKE 'sqlite_%'").fetchall()
    except sqlite3.DatabaseError:
        schema = []  # the schema page itself is lost: nothing can be addressed
    dst = sqlite3.connect(fresh, isolation_level=None)
    try:
        dst.execute("PRAGMA journal_mode=WAL")
        dst.execute("BEGIN")
        tables = [(name, sql) for kind, name, sql in schema if kind == "table"]
        for name, sql in tables:
            dst.execute(sql)
        for name, _ in tables:
            cols = tuple(r[1] for r in src.execute(f'PRAGMA table_info("{name}")'))
            quoted = ",".join(f'"{c}"' for c in cols)
            got = 0
            for row in _readable_rows(src, name, cols, counts):
                got += dst.execute(f'INSERT OR IGNORE INTO "{name}" ({quoted}) VALUES ({",".join("?" * len(cols))})',
                                   row).rowcount
            counts[f"{name} recovered"] = got
        for kind, name, sql in schema:
            if kind in ("index", "trigger", "view"):
                try:
                    dst.execute(sql)
                except sqlite3.DatabaseError as e:
                    log.warning("could not recreate %s %s: %s", kind, name, e)
        dst.execute("COMMIT")
    finally:
        dst.close()


def _readable_rows(src: sqlite3.Connection, table: str, cols: tuple[str, ...], counts: dict[str, int]):
    """Yield every row of ``table`` that SQLite can read, in rowid order, stepping over damaged pages.

    A damaged page stops a scan; the scan resumes at the next rowid that
    can be reached (found by doubling steps, then bisecting back), and a row
    that itself cannot be read is skipped. ``counts[table + " unreadable"]``
    gets the number of rowids stepped over that the table's rowid range
    says existed (an estimate: rowids may have gaps).
    """
    quoted = ",".join(f'"{c}"' for c in cols)
    sql = f'SELECT rowid, {quoted} FROM "{table}" WHERE rowid >= ? ORDER BY rowid'
    try:
        top = src.execute(f'SELECT max(rowid) FROM "{table}"').fetchone()[0]
    except sqlite3.DatabaseError:
        top = None
    top = 2**62 if top is None else top
    start, skipped = -(2**62), 0
    while True:
        last = None
        try:
            for row in src.execute(sql, (start,)):
                last = row[0]
                yield row[1:]
            break
        except sqlite3.DatabaseError:
            pass
        resume_from = start if last is None else last + 1
        if last is None and resume_from == start and start > -(2**62):
            resume_from = start + 1  # the row at ``start`` itself cannot be read: step over it
        nxt = _next_reachable(src, table, resume_from, top)
        floor = max(resume_from, 1)  # rowids start at 1 unless given; the first seek starts far below
        if nxt is None:
            if top < 2**62 and floor <= top:
                skipped += top - floor + 1
            break
        skipped += max(0, nxt - floor)
        start = nxt
    if skipped:
        counts[f"{table} unreadable"] = counts.get(f"{table} unreadable", 0) + skipped


def _next_reachable(src: sqlite3.Connection, table: str, start: int, top: int) -> int | None:
    """The smallest rowid >= ``start`` that a seek can reach past damaged pages (None: none up to ``top``)."""

    def probe(at: int) -> int | None | bool:  # a rowid, None (nothing at or after it), False (damaged)
        try:
            row = src.execute(f'SELECT rowid FROM "{table}" WHERE rowid >= ? ORDER BY rowid LIMIT 1',
                              (at,)).fetchone()
        except sqlite3.DatabaseError:
            return False
        return None if row is None else row[0]

    first = probe(start)
    if first is not False:
        return first
    bad, step = start, 1
    while True:
        at = bad + step
        if at > top:
            return None
        found = probe(at)
        if found is None:
            return None
        if found is not False:
            break
        bad, step = at, step * 2
    good_at, good = at, found
    while good_at - bad > 1:  # bisect back towards the damage: rows just past it are worth having
        mid = (bad + good_at) // 2
        found = probe(mid)
        if found is False:
            bad = mid
        elif found is None:  # pragma: no cover - cannot happen below a reachable row
            break
        else:
            good_at, good = mid, found
    return good


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _chroma_in_use(config) -> bool:
    return not config.chroma_url and _chroma_in_use_at(config.chroma_path)


def _check_vectors(config, report: Report, repair: bool, embedder, flush_timeout_s: float) -> None:
    from mindloop.graph import IndexUnavailable, MemoryGraph, make_embedder
    from mindloop.graph.index import ChromaIndex, damaged_segments
    from mindloop.graph.store import Store

    root = config.chroma_path
    if not config.chroma_url:
        if _chroma_in_use(config):
            report.notes.append(f"vectors not checked: embedded Chroma at {root} is in use by another process")
            return
        lock = root.parent / f"{root.name}.lock"
        state = lock.read_text().strip() if lock.exists() else ""
        torn = damaged_segments(root) if root.exists() else []
        if root.exists() and any(root.iterdir()) and (torn or state != "closed"):
            why = f"torn HNSW files: {'; '.join(torn)}" if torn else \
                f"not closed cleanly ({state or 'no record'}): its files may be torn"
            p = report.add("vectors", root, why)
            if not repair:
                return
            p.repair, p.fixed = "deleted the derived index; every vector re-embedded from graph.db", True
    store = Store(config.db_path, durability=config.durability)
    try:
        try:
            index = ChromaIndex(url=config.chroma_url) if config.chroma_url else ChromaIndex(path=root)
        except IndexUnavailable as e:
            report.notes.append(f"vectors not checked: {e}")
            return
        rebuilt = getattr(index, "rebuilt", False)
        if rebuilt and "vectors" not in report.checks:
            p = report.add("vectors", root, "unreadable after a clean close")
            p.repair, p.fixed = "deleted the derived index; every vector re-embedded from graph.db", True
        extra = missing = 0
        scopes = [] if rebuilt else sorted(set(store.scopes()) | set(index.scopes()))
        for scope in scopes:
            have = index.ids(scope)
            indexed = {r[0] for r in store.conn.execute("SELECT id FROM nodes WHERE scope = ? AND vec = 1", (scope,))}
            want = store.embeddable_ids(scope)
            e, m = len(have - want), len(indexed - have)
            extra, missing = extra + e, missing + m
            if e or m:
                p = report.add("vectors", f"{root} (scope {scope!r})",
                               f"{e} vector(s) of nodes that are gone, {m} indexed node(s) without a vector")
                p.repair = "reconciled with graph.db" if repair else None
        pending = store.pending_count()
        if pending:
            report.notes.append(f"{pending} node(s) wait for their vectors (embedded by the next open graph)")
        if not repair:
            index.close()
            report.ok("vectors")
            return
        embedder = embedder or make_embedder(config.embedder, config.embed_dtype, config.embed_query_runtime)
        graph = MemoryGraph(store, index, embedder, config)  # reconciles
        try:
            done = graph.flush(timeout=flush_timeout_s)
            left = {s: (len(index.ids(s) ^ store.embeddable_ids(s))) for s in sorted(set(store.scopes()))}
        finally:
            graph.close()
        for p in report.problems:
            if p.check == "vectors" and p.repair == "reconciled with graph.db":
                p.fixed = done and not any(left.values())
                if not p.fixed:
                    p.repair += f", but {sum(left.values())} vector(s) still disagree ({graph.worker.last_error})"
        report.ok("vectors")
        if extra or missing:
            report.notes.append(f"vectors: {extra} removed, {missing} re-embedded")
    finally:
        store.close()


# -- checkpoints ---------------------------------------------------------------


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file, read without torch: header length, JSON, and data size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} is cut short ({size} bytes)"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"{path.name}: its header runs past the end of the file"
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        return f"{path.name} is not a readable safetensors file ({e})"
    if 8 + n + end != size:
        return f"{path.name} is {size} bytes, its header says {8 + n + end}"
    return None


def _checkpoint_problem(folder: Path) -> str | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "manifest.json is missing"
    except (OSError, ValueError) as e:
        return f"manifest.json is not valid JSON ({e})"
    if not isinstance(manifest, dict) or manifest.get("kind") not in _WEIGHTS:
        return "manifest.json does not name a kind ('lora' or 'full')"
    for name in _WEIGHTS[manifest["kind"]]:
        if not (folder / name).exists():
            return f"{name} is missing"
    return _safetensors_problem(folder / _WEIGHTS[manifest["kind"]][0])


def _parent_of(folder: Path) -> str | None:
    try:
        parent = json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("parent")
    except (OSError, ValueError, AttributeError):
        return None
    return parent if isinstance(parent, str) and parent and "/" not in parent and not parent.startswith(".") \
        else None


def _check_checkpoints(root: Path, report: Report, repair: bool, stamp: str) -> None:
    from mindloop.trainer.checkpoints import PROMOTED, Checkpoints
    from mindloop.trainer.errors import CheckpointError

    if not root.exists():
        report.ok("checkpoints")
        return
    store = Checkpoints(root)
    unfinished = sorted(d.name for d in root.glob(".tmp-*"))
    if unfinished:
        p = report.add("checkpoints", root, f"{len(unfinished)} unfinished save(s) of killed runs: "
                                            f"{', '.join(unfinished)}")
        if repair:
            store.clean()
            p.repair, p.fixed = "removed them (never listed or promoted; nothing whole was in them)", True
    bad: dict[str, str] = {}
    parents: dict[str, str | None] = {}
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        parents[d.name] = _parent_of(d)
        problem = _checkpoint_problem(d)
        if problem:
            bad[d.name] = problem
    pointer_path = root / PROMOTED
    pointer, pointer_problem = None, None
    if pointer_path.exists():
        try:
            pointer = json.loads(pointer_path.read_text(encoding="utf-8"))
            if not isinstance(pointer, dict) or not isinstance(pointer.get("checkpoint"), str):
                pointer_problem, pointer = "does not name a checkpoint", None
        except (OSError, ValueError) as e:
            pointer_problem = f"is not valid JSON ({e})"
    target = pointer["checkpoint"] if pointer else None
    if target is not None and target not in parents:
        pointer_problem = f"names checkpoint {target!r}, which does not exist"
    elif target is not None and target in bad:
        pointer_problem = f"names checkpoint {target!r}, which is corrupt ({bad[target]})"
    events = None
    try:
        events = store.history()
    except CheckpointError as e:
        report.add("checkpoints", root / "history.jsonl", f"unreadable: {e}").repair = (
            "not repaired: the history of promotions is kept as it is; edit out the bad line" if repair else None)
    if events and pointer_problem is None:
        last = events[-1]
        logged = last.get("checkpoint") if last.get("event") == "promote" else last.get("to")
        if logged != target:  # a kill between the history's commit and the pointer's rename
            p = report.add("promoted", pointer_path, f"names {target or 'the base model'}, but the last event in "
                                                     f"history.jsonl left {logged or 'the base model'} in use")
            if repair:
                pointer = store.recover()
                target = pointer["checkpoint"] if pointer else None
                p.repair, p.fixed = f"rolled the pointer forward to {target or 'the base model'}", True
                if target is not None and (target not in parents or target in bad):
                    pointer_problem = f"names checkpoint {target!r}, which is missing or corrupt"

    for ckpt, problem in bad.items():
        p = report.add("checkpoints", root / ckpt, f"corrupt: {problem}")
        if repair:
            quarantine = root / ".quarantine"
            quarantine.mkdir(exist_ok=True)
            dest = quarantine / ckpt
            if dest.exists():
                dest = quarantine / f"{ckpt}-{stamp}"
            os.replace(root / ckpt, dest)
            _fsync_dir(root)
            p.repair, p.fixed = f"moved to {dest.relative_to(root)} (kept, never listed or promoted)", True
    if pointer_problem:
        p = report.add("promoted", pointer_path, pointer_problem)
        if repair:
            fallback = parents.get(target) if target else None
            while fallback is not None and (fallback in bad or fallback not in parents):
                fallback = parents.get(fallback)
            if pointer is None:  # unreadable: keep it, and serve the base model until something is promoted
                aside = pointer_path.with_name(f"{PROMOTED}.damaged-{stamp}")
                os.replace(pointer_path, aside)
                _fsync_dir(root)
                p.repair = f"kept it as {aside.name}; the base model is served"
                if hasattr(store, "recover"):  # a history one step ahead of the pointer names what to serve
                    now = store.recover()
                    if now:
                        p.repair = f"kept it as {aside.name}; the history's last promotion, {now['checkpoint']}, " \
                                   "is served"
                p.fixed = True
            elif fallback:
                store.promote(fallback, reason=f"mindloop doctor: promoted.json {pointer_problem}")
                p.repair, p.fixed = f"promoted its nearest whole ancestor, {fallback}", True
            else:
                store.rollback(reason=f"mindloop doctor: promoted.json {pointer_problem}")
                p.repair, p.fixed = "rolled back to the base model (recorded in history.jsonl)", True
    if "checkpoints" not in report.checks:
        report.ok("checkpoints")
    if "promoted" not in report.checks:
        report.ok("promoted")
