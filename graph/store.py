"""The durable store: SQLite in WAL mode, the source of truth of the memory graph.

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

Every public write runs in one ``BEGIN IMMEDIATE`` transaction and returns
after ``COMMIT``: a failed call leaves nothing behind. A write with
``sync=False`` (the agent loop's log step) returns before its commit is on
the disk; a :class:`WalSyncer` thread fsyncs the WAL right away and
:meth:`Store.sync` waits for it. Each thread gets its own
connection. A write that fails because the disk is full, the file-size limit
is reached or the device fails raises :class:`mindloop.graph.errors.DiskFull` (after
rolling back); once space returns, the next write works.

No commit checkpoints the WAL itself: SQLite's automatic checkpoint copies
the WAL back into the database (and fsyncs both) inside whichever commit
crosses 1,000 pages, which made one log write in a hundred take 3-5 ms. A
:class:`WalCheckpointer` thread does it after writes instead; the automatic
checkpoint stays on, at ten times the size, as a backstop.

Opening runs SQLite's ``quick_check`` (about 0.1 s per 100 MB from the page
cache) so that a damaged file is reported at once, naming the file and the
damage, instead of failing on whichever read first meets a bad page;
``mindloop doctor --repair`` recovers what can be read.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from mindloop.graph.errors import DiskFull, GraphError, NodeNotFound, ScopeMismatch, StoreCorrupt
from mindloop.graph.records import Edge, Node, record_from_json

__all__ = ["Store", "WalCheckpointer", "WalSyncer", "damaged_message", "write_failure"]

log = logging.getLogger(__name__)

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
-- index took 12 random pages of WAL a chat turn (one per history row), as many as every other table together.
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

# Words too common to help a lexical match; dropping them keeps BM25 queries short.
_STOPWORDS = frozenset(
    """a an and are as at be but by can could did do does for from had has have how i if in into is it its
    me my no not of on or our please so that the their them then there these they this to was we were what
    when where which who why will with would you your""".split()
)

# Fields of these kinds that live in the ``text`` column instead of ``data``.
_TEXT_FIELD = {"turn": "text", "memory": "text"}


_INSERT_NODE = ("INTO nodes (id, kind, scope, session, pos, created, updated, text, data, vec, rev, fts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_HISTORY = "INSERT INTO history (at, op, node, kind, scope, session, dst, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


def _new_rev() -> int:
    return secrets.randbits(62)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # json.dumps builds one per call


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def fts_terms(text: str, max_terms: int = 16) -> list[str]:
    """The distinctive words of ``text`` (no stopwords, no single letters), in order, at most ``max_terms``."""
    seen: list[str] = []
    for word in re.findall(r"\w+", text.lower()):
        if len(word) > 1 and word not in _STOPWORDS and word not in seen:
            seen.append(word)
        if len(seen) == max_terms:
            break
    return seen


def _any_of(terms: Sequence[str]) -> str:
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in terms)


def fts_query(text: str, max_terms: int = 16) -> str | None:
    """An FTS5 query that ORs the distinctive words of ``text``; None if it has none."""
    terms = fts_terms(text, max_terms)
    return _any_of(terms) if terms else None


JOINT_TRIES = 4  # counts a lexical search may spend on narrowing its rarest words down (about 0.1 ms each)


def _all_of(terms: Sequence[str]) -> str:
    return " AND ".join('"' + w.replace('"', '""') + '"' for w in terms)


def bounded_query(terms: Sequence[str], counts: dict[str, int], budget: int, *,
                  count_all: Callable[[Sequence[str]], int] | None = None, least: int = 1) -> tuple[str, int] | None:
    """The FTS5 query for ``terms`` that ranks at most about ``budget`` rows, given each term's row count,
    and how many rows (counted up to ``budget + 1``) its picking part matches; None if no term matches.

    BM25 has to score every row an OR query matches: at 100k nodes a query of
    a few common words matched up to 35k rows and took 20 ms at p95. When the
    terms together match more than ``budget`` rows, the query becomes
    ``(rarest OR ...) AND (every term OR ...)``: the rarest terms whose counts
    fit the budget pick the rows (at least the rarest term), and every term
    still scores them, the rare ones counted twice. A term that matches
    nothing is left out. Within the budget it is the plain OR of the terms.

    When even the rarest term matches more than ``budget`` rows, the rows that
    hold the rarest terms together pick instead: ``count_all(terms)`` counts
    the rows holding all of them, and terms are added rarest first until that
    count fits the budget; a term is left out when fewer than ``least`` rows
    would hold them all. At most ``JOINT_TRIES`` terms are tried.
    Those rows are the ones BM25 ranks first anyway (each of the rarest terms
    adds to their score); without them the budget could only keep the newest
    rows of the rarest term.
    """
    present = [t for t in terms if counts.get(t, 0) > 0]
    if not present:
        return None
    everything = sum(counts[t] for t in present)
    if everything <= budget:
        return _any_of(present), everything
    by_rarity = sorted(present, key=lambda t: counts[t])
    rare: list[str] = []
    total = 0
    for t in by_rarity:
        if rare and total + counts[t] > budget:
            break
        rare.append(t)
        total += counts[t]
    pick, rows = _any_of(rare), total
    if counts[by_rarity[0]] > budget and count_all is not None:
        together = by_rarity[:1]
        for t in by_rarity[1 : 1 + JOINT_TRIES]:
            joint = count_all([*together, t])
            if joint < least:
                continue  # too few rows hold this one with the others: leave it out
            together.append(t)
            pick, rows = _all_of(together), joint
            if joint <= budget:
                break
    return f"({pick}) AND ({_any_of(present)})", rows


def _fts_column(kinds: Sequence[str] | None) -> str | None:
    """The one FTS5 column a search for ``kinds`` needs to read, or None when it needs both."""
    if not kinds:
        return None
    if all(k == "memory" for k in kinds):
        return "memory_text"
    return None if "memory" in kinds else "log_text"


_REPAIR_HINT = "run `mindloop doctor --repair` to back the file up and recover what can be read"


def damaged_message(path: Path, problem: str) -> str:
    """The message of :class:`StoreCorrupt` for a damaged SQLite file: the file, the damage, what to do."""
    return f"{path} is damaged: {problem}; {_REPAIR_HINT}"


def write_failure(path: Path, error: sqlite3.Error) -> GraphError | None:
    """The mindloop error for a failed SQLite write, or None when it is not about the disk or the file.

    SQLite reports ENOSPC as SQLITE_FULL and EFBIG (the file-size limit) as
    SQLITE_IOERR; the message says which of the two the process is up against.
    """
    code = getattr(error, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StoreCorrupt(damaged_message(path, str(error)))
    if primary not in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
        return None
    facts = []
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY:
            facts.append(f"the file-size limit (ulimit -f) is {soft} bytes")
    except (ImportError, OSError, ValueError):  # pragma: no cover - no resource module on this platform
        pass
    try:
        free = shutil.disk_usage(path.parent).free
        facts.append(f"{free / 2**20:.1f} MiB free on its disk")
    except OSError:  # pragma: no cover - the folder vanished
        pass
    what = "disk full or file too large" if primary == sqlite3.SQLITE_FULL else \
        "disk full, file too large, or a failing device (an I/O error)"
    return DiskFull(f"cannot write {path}: {what} (SQLite: {error}; {', '.join(facts) or 'no more facts'}); "
                    "the call was rolled back and nothing of it was written")


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
    under sustained load, so that the WAL stays bounded. A checkpoint took
    about 10 ms here and overlapped 1-3% of log steps, some of the slowest
    among them (up to 3.9 ms against 0.9 at p50).
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


class _Owned:
    """One thread's connection, in that thread's locals: when the thread ends, this goes, and a finalizer closes it."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


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
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self.checkpointer = WalCheckpointer(self.path, delay_s=checkpoint_delay_s, busy_timeout_s=busy_timeout_s)
        self.syncer = WalSyncer(self.path)
        self._init_schema()

    # -- connections -------------------------------------------------------------

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

    @property
    def conn(self) -> sqlite3.Connection:
        owned = getattr(self._local, "owned", None)
        if owned is None:
            owned = self._local.owned = _Owned(self._connect())
            # Closed when its thread ends: LangGraph runs each turn's nodes on fresh threads, and a connection
            # kept for every thread that ever wrote leaked two files per chat turn until open() failed.
            # Not at exit: the thread may still be using it then (MemoryGraph closes its graphs at exit, in order).
            weakref.finalize(owned, self._discard, owned.conn).atexit = False
        return owned.conn

    def _discard(self, conn: sqlite3.Connection) -> None:
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

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until every write committed with ``sync=False`` so far is on the disk (False on timeout)."""
        return self.syncer.wait(timeout=timeout)

    def close(self) -> None:
        self.syncer.close()
        self.checkpointer.close()
        with self._conns_lock:
            for conn in self._conns:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover - closing is best effort
                    pass
            self._conns.clear()
        self._local = threading.local()

    def _init_schema(self) -> None:
        conn = self.conn
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            has_tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if has_tables and app_id != APPLICATION_ID:
                raise StoreCorrupt(f"{self.path} is a SQLite file but not a mindloop graph (application_id {app_id:#x})")
            if version > SCHEMA_VERSION:
                raise StoreCorrupt(f"{self.path} has schema version {version}; this mindloop reads up to {SCHEMA_VERSION}")
            if has_tables and self.check:
                problems = [" ".join(r[0].split()) for r in conn.execute("PRAGMA quick_check(3)")]
                if problems != ["ok"]:
                    raise StoreCorrupt(damaged_message(self.path, "SQLite's quick_check reports " + "; ".join(problems)))
            with self.write() as c:
                migrate = has_tables and version == 1
                if migrate:
                    for stmt in _split_sql(_MIGRATE_1_TO_2):
                        c.execute(stmt)
                if has_tables and version < 4:
                    for stmt in _split_sql(_MIGRATE_TO_4):
                        c.execute(stmt)
                for stmt in _split_sql(_SCHEMA):
                    c.execute(stmt)
                if migrate:
                    for stmt in FTS_REBUILD:
                        c.execute(stmt)
                c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
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
                        self._discard(conn)
                raise
        except sqlite3.DatabaseError as e:
            failure = write_failure(self.path, e)
            if failure is None:
                raise
            log.error("%s", failure)
            self._discard(conn)  # after an I/O error SQLite may keep the connection in an error state
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

        ``queue_text`` leaves their text out of the full-text index until :meth:`settle` (``fts = 0``): the
        FTS5 insert was a third of a chat turn's log step. Every lexical read settles first.
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
        field = _TEXT_FIELD.get(node.kind)
        if field:
            data.pop(field, None)
        row = (node.id, node.kind, node.scope, node.session, pos, node.created, time.time(), text, _dumps(data),
               None if text is None else 0, _new_rev(), int(fts or text is None))
        return row, payload

    def update_node(self, conn: sqlite3.Connection, node: Node, *, text: str | None) -> None:
        data = node.to_json()
        field = _TEXT_FIELD.get(node.kind)
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
        field = _TEXT_FIELD.get(kind)
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
        stored = conn.executemany(
            "INSERT OR IGNORE INTO edges (src, dst, kind, scope, created, data) VALUES (?, ?, ?, ?, ?, ?)", rows
        ).rowcount
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
        conn.execute("DELETE FROM edges WHERE src = ? AND dst = ? AND kind = ?", (src, dst, kind))
        self._history(conn, "edge-", src, kind, row[0], None, dst, None)
        return True

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

        A search for memories only, or for no memories, reads only that FTS5 column, so its words are counted
        and ranked among the rows it can return. With ``budget``, a query whose words match more rows than
        that ranks the rows holding its rarest words (:func:`bounded_query`; each word's row count comes from
        FTS5, up to ``budget + 1``), or, when even the rarest word is over the budget, the rows holding the
        rarest words together; of those at most the ``budget`` newest: BM25 then scores a bounded number of
        rows however common the words are. When the rarest words are rare because other scopes hold
        them, the newest rows with any of the words fill the result up.
        """
        terms = fts_terms(text)
        if not terms:
            return []
        self.settle()  # text a chat turn queued is searchable as soon as it is committed
        column = _fts_column(kinds)
        if budget is None:
            return self._bm25(_any_of(terms), column, scope, kinds, since, limit, window=None)
        counts = self._term_counts(terms, budget + 1, column)  # settled above: the private counts skip it
        bounded = bounded_query(terms, counts, budget, least=limit,
                                count_all=lambda ts: self._match_counts([_all_of(ts)], budget + 1, column)[0])
        if bounded is None:
            return []
        query, picked = bounded
        out = self._bm25(query, column, scope, kinds, since, limit, window=budget)
        if " AND " in query and len(out) < min(limit, picked):  # the filters dropped rows the rarest words picked
            seen = {i for i, _ in out}
            wider = self._bm25(_any_of([t for t in terms if counts.get(t)]), column, scope, kinds, since, limit,
                               window=budget)
            out += [hit for hit in wider if hit[0] not in seen][: limit - len(out)]
        return out

    def _bm25(self, query: str, column: str | None, scope: str, kinds: Sequence[str] | None, since: float | None,
              limit: int, *, window: int | None) -> list[tuple[str, float]]:
        """The ``limit`` best of the rows matching ``query`` in ``scope`` (of the ``window`` newest, if given).

        FTS5 ranks first and only the best ``4 * limit`` rows are looked up in ``nodes`` for the filters; when
        too few of those pass (other scopes or kinds hold most of the matches), the filters run on every row.
        """
        match = f"{{{column}}}: ({query})" if column else query
        ranked = "SELECT rowid, bm25(nodes_fts) AS s FROM nodes_fts WHERE nodes_fts MATCH ?"
        params: list[Any] = [match]
        if window is not None:  # FTS5 walks its rows newest first and stops there; bm25 scores only those
            ranked = f"SELECT * FROM ({ranked} ORDER BY rowid DESC LIMIT ?)"
            params.append(window)
        filters, fparams = "n.scope = ?", [scope]
        if kinds:
            filters += f" AND n.kind IN ({','.join('?' * len(kinds))})"
            fparams += list(kinds)
        if since is not None:
            filters += " AND n.created >= ?"
            fparams.append(since)
        join = f"SELECT n.id, f.s FROM ({{}}) f JOIN nodes n ON n.rowid = f.rowid WHERE {filters} ORDER BY f.s, f.rowid"
        over = 4 * limit
        best = self.conn.execute(join.format(f"{ranked} ORDER BY s, rowid LIMIT ?"), [*params, over, *fparams])
        rows = best.fetchall()
        if len(rows) < limit and self.conn.execute(f"SELECT count(*) FROM ({ranked} LIMIT ?)",
                                                   [*params, over + 1]).fetchone()[0] > over:
            rows = self.conn.execute(join.format(ranked) + " LIMIT ?", [*params, *fparams, limit]).fetchall()
        return [(r[0], r[1]) for r in rows[:limit]]

    def term_counts(self, terms: Sequence[str], *, cap: int, column: str | None = None) -> dict[str, int]:
        """How many rows of the lexical index (every scope) each term matches, counting at most ``cap`` each.

        FTS5 counts through its own tokenizer (Porter stems), so a count is exactly what a query for the
        term would match; the cap keeps a common word's count cheap. ``column`` counts in one column only
        (``memory_text`` or ``log_text``).
        """
        self.settle()
        return self._term_counts(terms, cap, column)

    def _term_counts(self, terms: Sequence[str], cap: int, column: str | None) -> dict[str, int]:
        return dict(zip(terms, self._match_counts([_any_of([t]) for t in terms], cap, column)))

    def match_counts(self, queries: Sequence[str], *, cap: int, column: str | None = None) -> list[int]:
        """How many rows of the lexical index (every scope) each FTS5 query matches, up to ``cap`` each, in one
        statement."""
        self.settle()
        return self._match_counts(queries, cap, column)

    def _match_counts(self, queries: Sequence[str], cap: int, column: str | None) -> list[int]:
        one = f"(SELECT count(*) FROM (SELECT 1 FROM nodes_fts WHERE nodes_fts MATCH ? LIMIT {int(cap)}))"
        sql = " UNION ALL ".join(f"SELECT {i}, {one}" for i in range(len(queries)))
        prefix = f"{{{column}}}: " if column else ""
        rows = self.conn.execute(sql, [f"{prefix}({q})" for q in queries]).fetchall()
        out = [0] * len(queries)
        for i, n in rows:
            out[i] = n
        return out

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


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
