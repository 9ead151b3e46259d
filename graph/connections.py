"""One SQLite connection per thread to the store's file, opened with the store's pragmas and closed with its thread.

The :class:`~mindloop.graph.store.Store` reads and writes through
``Connections.get()``: each thread gets its own connection (SQLite
connections are not shared between threads here), in WAL mode, with the
store's ``synchronous`` level and the backstop automatic checkpoint of
graph/wal.py. A write that fails on an I/O error discards its thread's
connection, and the next call opens a fresh one.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from pathlib import Path

from mindloop.graph.errors import StoreCorrupt
from mindloop.graph.sqlite_errors import damaged_message
from mindloop.graph.wal import BACKSTOP_AUTOCHECKPOINT_PAGES

__all__ = ["Connections"]


class _Owned:
    """One thread's connection, in that thread's locals: when the thread ends, this goes, and a finalizer closes it."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


class Connections:
    """The connections of every thread to one SQLite file (``durability``: ``full`` or ``normal``)."""

    def __init__(self, path: Path, *, durability: str, busy_timeout_s: float) -> None:
        self.path = path
        self.durability = durability
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'full' else 'NORMAL'}")
            conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_AUTOCHECKPOINT_PAGES}")
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.execute("PRAGMA secure_delete=ON")  # forgotten text is overwritten, not left in free pages
        except sqlite3.DatabaseError as e:
            raise StoreCorrupt(damaged_message(self.path, f"it cannot be opened as a SQLite database ({e})")) from None
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        owned = getattr(self._local, "owned", None)
        if owned is None:
            owned = self._local.owned = _Owned(self._connect())
            # Closed when its thread ends: LangGraph runs each turn's nodes on fresh threads, and a connection
            # kept for every thread that ever wrote leaked two files per chat turn until open() failed.
            # Not at exit: the thread may still be using it then (MemoryGraph closes its graphs at exit, in order).
            weakref.finalize(owned, self.discard, owned.conn).atexit = False
        return owned.conn

    def discard(self, conn: sqlite3.Connection) -> None:
        """Close this thread's connection after a failed write; the next call opens a fresh one."""
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)
        try:
            conn.close()
        except sqlite3.Error:  # pragma: no cover - closing is best effort
            pass
        owned = getattr(self._local, "owned", None)
        if owned is not None and owned.conn is conn:
            self._local.owned = None

    def close(self) -> None:
        """Close every thread's connection."""
        with self._conns_lock:
            for conn in self._conns:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover - closing is best effort
                    pass
            self._conns.clear()
        self._local = threading.local()
