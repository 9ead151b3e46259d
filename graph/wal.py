"""Background threads for a WAL-mode SQLite file: the WAL checkpoint and the WAL sync, off the committing thread.

:class:`WalCheckpointer` copies the WAL back into the database after writes
instead of inside whichever commit crosses SQLite's automatic checkpoint
(which would make that one write wait for it); the automatic checkpoint stays
on, at :data:`BACKSTOP_AUTOCHECKPOINT_PAGES`, as a backstop.
:class:`WalSyncer` fsyncs the WAL for writes committed without waiting for
the disk (group commit). The store (``graph.db``) uses both; the agent loop
uses a checkpointer for LangGraph's ``loop.db``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mindloop.graph.errors import DiskFull

__all__ = ["BACKSTOP_AUTOCHECKPOINT_PAGES", "WalCheckpointer", "WalSyncer"]

log = logging.getLogger(__name__)

# A commit checkpoints the WAL itself only past this many pages (SQLite's default is 1,000): the background
# checkpointer keeps it far below, this bounds the WAL if that thread cannot keep up.
BACKSTOP_AUTOCHECKPOINT_PAGES = 10_000


class WalCheckpointer:
    """Checkpoints a WAL-mode SQLite file on a thread of its own, so that no commit waits for one.

    ``notify()`` after a commit (it only sets an event). Within ``delay_s`` the
    thread runs a ``PASSIVE`` checkpoint on its own connection: it copies what
    readers no longer need and blocks neither readers nor writers. Writes close
    together share one checkpoint. The thread starts on the first notify and
    stops on :meth:`close`, which checkpoints what is left.

    When the checkpoint copied the whole WAL, the thread also starts the WAL
    over itself, with a write that changes nothing. Otherwise the next commit
    would: the first frame written after a complete checkpoint rewrites the WAL
    header and SQLite fsyncs it apart from the commit, so that commit paid two
    fsyncs. In a chat, where each turn comes after the last one's checkpoint,
    that was every log step; under load, the slow tail of them.

    Inside :meth:`held` (the agent loop holds it for each turn), a checkpoint
    that falls due waits for every open block to end, or for ``max_hold_s``
    under sustained load, so that the WAL stays bounded: a checkpoint that
    overlapped a turn's log step made it one of the slowest
    (docs/benchmarks.md).
    """

    def __init__(self, path: str | Path, *, delay_s: float = 0.5, busy_timeout_s: float = 30.0,
                 max_hold_s: float = 2.0) -> None:
        self.path = str(path)
        self.delay_s = delay_s
        self.busy_timeout_s = busy_timeout_s
        self.max_hold_s = max_hold_s
        self.checkpoints = 0  # how many ran
        self._holds = 0  # open held() blocks, over all threads
        self._released = threading.Condition()
        self._ran = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def notify(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._run, name="mindloop-wal-checkpoint", daemon=True)
                    self._thread.start()
        self._wake.set()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold checkpoints while this block, and every other open one, runs (up to ``max_hold_s``)."""
        with self._released:
            self._holds += 1
        try:
            yield
        finally:
            with self._released:
                self._holds -= 1
                if not self._holds:
                    self._released.notify_all()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
        try:
            # Only this connection's own write (the restart below) goes unsynced: it changes nothing, and the
            # writers' commits sync the WAL with it. A checkpoint syncs as it does under FULL.
            conn.execute("PRAGMA synchronous=NORMAL")
            while not self._stop.is_set():
                self._wake.wait()
                self._stop.wait(self.delay_s)  # let the writes close together share one checkpoint
                with self._released:  # not inside a turn, unless turns never stop coming
                    self._released.wait_for(lambda: not self._holds or self._stop.is_set(), self.max_hold_s)
                self._wake.clear()
                self.checkpoint(conn, restart=not self._stop.is_set())
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection, *, restart: bool = False) -> None:
        try:
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if restart and not busy and frames > 0 and copied == frames:
                self._restart_wal(conn)
        except sqlite3.Error as e:  # a full disk or a damaged file: the writers report it; the backstop remains
            log.warning("background WAL checkpoint of %s failed: %s", self.path, e)
        with self._ran:
            self.checkpoints += 1
            self._ran.notify_all()

    @staticmethod
    def _restart_wal(conn: sqlite3.Connection) -> None:
        """Start the checkpointed WAL over with a write of nothing: ``user_version`` set to what it is."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def wait(self, count: int, timeout: float) -> bool:
        """Block until ``count`` checkpoints have run (True) or ``timeout`` seconds pass (False)."""
        with self._ran:
            return self._ran.wait_for(lambda: self.checkpoints >= count, timeout)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._released:
            self._released.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join()


class WalSyncer:
    """Fsyncs a WAL-mode SQLite file's WAL on a thread of its own: group commit for writes that need not wait.

    A write committed at ``synchronous=NORMAL`` is in the WAL, in the OS's
    cache, but not yet on the disk. :meth:`ask` after such a commit wakes the
    thread, which fdatasyncs the WAL, the sync that ``synchronous=FULL`` runs
    inside the commit. :meth:`wait` blocks until every write asked for so far
    is on the disk. Commits asked for while a sync runs share the next one.

    The WAL is opened anew for each sync, never kept open: SQLite deletes it
    when its last connection closes (after checkpointing it into the database
    file and syncing that), and a kept descriptor would then sync a deleted
    file. A WAL that is gone has nothing left to sync.
    """

    def __init__(self, path: str | Path) -> None:
        self.wal = f"{path}-wal"
        self.syncs = 0  # how many fdatasyncs ran
        self._cond = threading.Condition()
        self._asked = 0  # writes asked for
        self._synced = 0  # of those, how many are on the disk (or failed to get there)
        # The first failed sync: its first ticket, and the error. It stays: after a failed fsync Linux may drop
        # the pages it could not write and report the next fsync clean, so no later write counts as synced.
        self._failed: tuple[int, OSError] | None = None
        self._stop = False
        self._thread: threading.Thread | None = None

    def ask(self) -> None:
        """Sync the WAL soon, for a write just committed without syncing."""
        with self._cond:
            self._asked += 1
            ticket = self._asked
            if not self._stop:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="mindloop-wal-sync", daemon=True)
                    self._thread.start()
                self._cond.notify_all()
                return
        self._sync(ticket, ticket)  # a write that came after close (a straggler thread): synced here and now

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._asked > self._synced or self._stop)
                if self._asked == self._synced:  # stopping, nothing left
                    return
                lo, hi = self._synced + 1, self._asked
            self._sync(lo, hi)

    def _sync(self, lo: int, hi: int) -> None:
        """fdatasync the WAL for the writes with tickets ``lo`` to ``hi``."""
        error = None
        try:
            fd = os.open(self.wal, os.O_RDONLY)
        except FileNotFoundError:  # checkpointed into the database file, which SQLite synced, and deleted
            fd = None
        except OSError as e:
            fd, error = None, e
        if fd is not None:
            try:
                (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(fd)
            except OSError as e:
                error = e
            finally:
                os.close(fd)
        with self._cond:
            self.syncs += 1
            self._synced = max(self._synced, hi)
            if error is not None and (self._failed is None or lo < self._failed[0]):
                log.error("could not sync %s to the disk: %s", self.wal, error)
                self._failed = (lo, error)
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every write asked for so far is on the disk.

        False on timeout. Raises :class:`DiskFull` if a sync failed for one of them: the write is committed, but
        a power cut may lose it.
        """
        with self._cond:
            target = self._asked
            if not self._cond.wait_for(lambda: self._synced >= target, timeout):
                return False
            failed = self._failed
        if failed is not None and target >= failed[0]:
            raise DiskFull(f"{self.wal} could not be synced to the disk ({failed[1]}): what was written since may "
                           "not survive a power cut")
        return True

    def close(self) -> None:
        """Sync what was asked for, then stop the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

