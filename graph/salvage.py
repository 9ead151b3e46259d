"""Recovering a damaged SQLite file: back it up, copy every row SQLite can still read into a fresh file, swap it in.

:func:`salvage` does the file work, the same for any SQLite file (graph.db,
LangGraph's loop.db); what it copies is the ``copy`` function it is given:
:func:`copy_tables` copies every table a file's own schema names,
graph/check.py copies the graph's tables by their schema's columns. Both
read rows through :func:`readable_rows`, which steps over damaged pages.
Nothing is deleted: the damaged file (and its ``-wal``) stays beside the
fresh one as ``<name>.damaged-<time>``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["Copy", "copy_tables", "fsync_dir", "integrity", "readable_rows", "salvage"]

log = logging.getLogger(__name__)

# What salvage copies: rows of the damaged file (a connection to a scratch copy of it) into the fresh file (a path
# that does not exist yet), counting "<table> recovered" and "<table> unreadable" in the dict.
Copy = Callable[[sqlite3.Connection, Path, dict[str, int]], None]


def integrity(path: Path) -> list[str]:
    """SQLite's integrity_check of ``path`` (["ok"] when whole), or the error that stopped it."""
    try:
        conn = sqlite3.connect(path)
        try:
            return [" ".join(str(r[0]).split()) for r in conn.execute("PRAGMA integrity_check(20)")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        return [f"it cannot be read as a SQLite database ({e})"]


def salvage(path: Path, stamp: str, copy: Copy) -> tuple[Path, dict[str, int]]:
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
    fsync_dir(path.parent)
    for f in (fresh, fresh.with_name(fresh.name + "-wal"), fresh.with_name(fresh.name + "-shm")):
        f.unlink(missing_ok=True)  # ours, from an attempt that was interrupted
    counts: dict[str, int] = {}
    try:
        src = sqlite3.connect(scratch)
        # lets SQLite read a file shorter than its header says (a truncated copy) instead of refusing it whole;
        # the scratch copy is read only and thrown away
        src.execute("PRAGMA writable_schema = ON")
        try:
            copy(src, fresh, counts)
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
    fsync_dir(path.parent)
    return backup, counts


def copy_tables(src: sqlite3.Connection, fresh: Path, counts: dict[str, int]) -> None:
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
            for row in readable_rows(src, name, cols, counts):
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


def readable_rows(src: sqlite3.Connection, table: str, cols: tuple[str, ...],
                  counts: dict[str, int]) -> Iterator[tuple]:
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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
