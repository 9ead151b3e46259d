"""The background embedding worker: pending nodes in, vectors out, in batches.

Writes mark a node's vector pending (``vec = 0``) in the same transaction that
stores it, then wake this thread; the caller never waits for an embedding.
The worker embeds up to ``batch`` pending nodes at a time, upserts them into
the index by node id (so a retry after a crash is harmless), and marks them
current only if their text did not change meanwhile. It also polls every
``poll_s`` seconds for nodes that other processes wrote, and follows the
store's history for deletions (``node-``) made by any process since
``since_seq``, removing their vectors: a process without the index can
forget, and the owner's index follows. Vectors of nodes deleted while they
were being embedded are removed again at once.

Inside :meth:`EmbedWorker.deferred`, wakes wait for the block to end: a chat
turn writes its turns in its ``log`` step, and the worker's encode must not
take the CPU from the turn's last steps (its LangGraph checkpoint).

The worker also settles what ``MemoryGraph.log_turns`` queued
(``Store.settle``: a turn's ``next`` and ``surfaced`` edges, and its text
for the full-text index), index or not, so that it is in place soon after
the turn even when nothing reads it.

An embedding or index failure is logged and retried with back-off; it never
takes the caller down and never loses the node (it stays pending).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from mindloop.graph.embed import Embedder
from mindloop.graph.index import VectorIndex
from mindloop.graph.store import Store

__all__ = ["EmbedWorker"]

log = logging.getLogger(__name__)


class EmbedWorker:
    """Embeds pending nodes of ``store`` into the index that ``get_index()`` returns."""

    DELETIONS_PER_STEP = 10_000

    def __init__(self, store: Store, get_index: Callable[[], VectorIndex | None], embedder: Embedder, *,
                 batch: int = 128, poll_s: float = 1.0, max_chars: int = 4096, since_seq: int = 0,
                 nice: int = 0) -> None:
        self.store = store
        self.get_index = get_index
        self.embedder = embedder
        self.batch = batch
        self.poll_s = poll_s
        self.max_chars = max_chars
        self.nice = nice
        self._wake = threading.Event()
        self._defer_lock = threading.Lock()
        self._deferring = 0  # open deferred() blocks, over all threads
        self._owed = False  # a wake came while deferring
        self._idle = threading.Condition()
        self._busy = False
        self._stop = False
        self._failures = 0
        self.last_error: str | None = None
        self.embedded = 0
        self._deleted_seq = since_seq  # history already applied to the index, for deletions
        self._thread = threading.Thread(target=self._run, name="mindloop-embed", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """Wake the worker: new nodes are pending. Inside :meth:`deferred` the wake waits for the block's end."""
        with self._defer_lock:
            if self._deferring:
                self._owed = True
                return
        self._wake.set()

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold the worker's wakes until this block, and every other open one, has ended; then wake it once if
        anything was written meanwhile. Its poll still runs, and :meth:`flush` still wakes it."""
        with self._defer_lock:
            self._deferring += 1
        try:
            yield
        finally:
            with self._defer_lock:
                self._deferring -= 1
                wake = self._deferring == 0 and self._owed
                if wake:
                    self._owed = False
            if wake:
                self._wake.set()

    def _lower_priority(self) -> None:
        """Run this thread ``nice`` steps below its process, so that the caller's commits and searches get
        the CPUs first. Linux schedules threads one by one, and the threads torch starts from here inherit
        it; elsewhere (or without permission) this does nothing."""
        if self.nice <= 0 or not sys.platform.startswith("linux"):  # elsewhere a thread id is no process id
            return
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))
        except OSError as e:
            log.info("embedding worker keeps its priority: %s", e)

    def _run(self) -> None:
        self._lower_priority()
        while not self._stop:
            self._wake.wait(timeout=self.poll_s if self.poll_s > 0 else None)
            self._wake.clear()
            if self._stop:
                break
            with self._idle:
                self._busy = True
            try:
                while not self._stop and self._step():
                    pass
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()

    def _follow_deletions(self, index: VectorIndex) -> None:
        top = self.store.last_seq()  # scanned up to here, deletions or not: the next scan starts after it
        rows = self.store.deletions_since(self._deleted_seq, upto=top, limit=self.DELETIONS_PER_STEP)
        if not rows:
            self._deleted_seq = top
            return
        back = self.store.existing([node for _, node, _ in rows])  # forgotten, then imported again: keep
        by_scope: dict[str, list[str]] = {}
        for _, node, scope in rows:
            if node not in back:
                by_scope.setdefault(scope, []).append(node)
        for scope, ids in by_scope.items():
            index.delete(scope, ids)
        self._deleted_seq = rows[-1][0] if len(rows) == self.DELETIONS_PER_STEP else top

    def _step(self) -> bool:
        """Settle queued edges, apply deletions, then embed one batch; True if there may be more to do."""
        try:
            index = self.get_index()
            if index is None:
                self.store.settle()  # what the turn just logged queued: its edges and its text
                return False
            self._follow_deletions(index)
            rows = self.store.pending(self.batch)
            # After reading the batch: the edges and text a turn in it queued (same commit) are settled by now,
            # so a flush() that saw the turns embedded also sees their edges and full-text entries in place.
            self.store.settle()
            if not rows:
                return False
            texts = [r[5][: self.max_chars] for r in rows]
            vectors = self.embedder.embed(texts)
            by_scope: dict[str, list[int]] = {}
            for i, r in enumerate(rows):
                by_scope.setdefault(r[1], []).append(i)
            for scope, idx in by_scope.items():
                index.upsert(
                    scope,
                    [rows[i][0] for i in idx],
                    vectors[idx],
                    [{"kind": rows[i][2], "session": rows[i][3] or "", "created": float(rows[i][4])} for i in idx],
                )
            self.store.mark_indexed([(r[0], r[6]) for r in rows])
            gone = set(r[0] for r in rows) - self.store.existing([r[0] for r in rows])
            for scope, idx in by_scope.items():
                stale = [rows[i][0] for i in idx if rows[i][0] in gone]
                if stale:
                    index.delete(scope, stale)
            self.embedded += len(rows)
            self._failures = 0
            self.last_error = None
            return len(rows) == self.batch
        except Exception as e:  # a model or index failure must not kill the worker
            self._failures += 1
            self.last_error = f"{type(e).__name__}: {e}"
            delay = min(30.0, 0.1 * 2 ** min(self._failures, 9))
            log.warning("embedding batch failed (%s); retrying in %.1fs", self.last_error, delay)
            time.sleep(delay)
            return not self._stop

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until no node is pending (or ``timeout`` seconds pass). True if all are embedded.

        Returns False at once when this process has no index to write to
        (another process owns embedded Chroma and will embed the nodes).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.get_index() is None:
                return False
            if self.store.pending_count() == 0 and self._deleted_seq >= self.store.last_seq():
                with self._idle:
                    if not self._busy:
                        return True
            self._wake.set()  # not notify(): a flush inside deferred() must not wait for the block's end
            with self._idle:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(timeout=0.05 if remaining is None else min(0.05, remaining))

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=30)
