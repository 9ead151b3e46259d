"""Shared by the reliability tests: child processes that use the graph, and the recovery check.

A child is ``python -c CODE home ...`` with the repository on ``PYTHONPATH``;
it talks to the test one line at a time on stdout (and reads stdin where it
needs a start signal). :func:`recover` reopens a data directory the way a
user would and checks the invariants every graph must keep after any crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pytest

from mindloop.graph import GraphConfig, MemoryGraph

REPO = Path(__file__).resolve().parents[2]


def text_hash(text: str) -> str:
    """The fingerprint children print for each text they log (the test compares it with what was stored)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


# Children define the same helper; keep the two in step.
TEXT_HASH_SRC = '''
import hashlib
import json
def text_hash(text):
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
'''


class Child:
    """One child process, read line by line with deadlines (so a hung child fails the test, not the run)."""

    def __init__(self, code: str, *args: str, stdin: bool = False) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TEXT_HASH_SRC + code, *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=REPO,
        )
        self._buf = b""
        self._eof = False
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def readline(self, timeout: float) -> str | None:
        """The next complete line, or None at end of output. A torn last line counts as never written."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if self._eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"child printed nothing for {timeout}s; stderr:\n{self.stderr()}")
            if self._sel.select(remaining):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if chunk:
                    self._buf += chunk
                else:
                    self._eof = True
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stderr(self) -> str:
        """The end of what the child wrote to stderr (read without moving the offset the child writes at)."""
        fd = self._stderr.fileno()
        size = os.fstat(fd).st_size
        return os.pread(fd, 4000, max(0, size - 4000)).decode(errors="replace")

    def close(self) -> None:
        self.kill()
        self._sel.close()
        self.proc.stdout.close()
        if self.proc.stdin:
            self.proc.stdin.close()
        self._stderr.close()


@pytest.fixture
def spawn():
    """Start a :class:`Child`; every child still running at teardown is killed."""
    children: list[Child] = []

    def start(code: str, *args: str, stdin: bool = False) -> Child:
        child = Child(code, *args, stdin=stdin)
        children.append(child)
        return child

    yield start
    for child in children:
        child.close()


@dataclass
class StoredTurn:
    scope: str
    session: str
    pos: int
    text: str


@dataclass
class Recovered:
    """What a reopened graph holds, after its invariants were checked."""

    turns: dict[str, StoredTurn] = field(default_factory=dict)
    nodes_by_session: dict[tuple[str, str], set[str]] = field(default_factory=dict)


def recover(home: Path, *, acked: Iterable[str] = (), why: str = "") -> Recovered:
    """Reopen the graph in ``home``, check every invariant, flush vectors, compare them, close.

    Invariants: SQLite and FTS integrity; each id in ``acked`` is stored
    exactly once; turns have positions 0..n-1 per session with no
    duplicates; the ``next`` edges are exactly the chains of consecutive
    turns; every turn's session node exists; no vector is pending after
    ``flush``; the index holds exactly the embeddable ids of every scope.
    ``why`` (the seed, the trial) is added to every assertion message.
    """
    graph = MemoryGraph.open(GraphConfig(home=home, embedder="hashing"))
    try:
        conn = graph.store.conn
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], why
        conn.execute("INSERT INTO nodes_fts(nodes_fts) VALUES ('integrity-check')")  # raises if FTS disagrees

        for node_id in acked:
            n = conn.execute("SELECT count(*) FROM nodes WHERE id = ?", (node_id,)).fetchone()[0]
            assert n == 1, f"acknowledged node {node_id} is stored {n} times; {why}"
        out = Recovered()
        for node_id, kind, scope, session in conn.execute("SELECT id, kind, scope, session FROM nodes"):
            if session is not None:
                out.nodes_by_session.setdefault((scope, session), set()).add(node_id)
        rows = conn.execute(
            "SELECT id, scope, session, pos, text, json_extract(data, '$.index') FROM nodes WHERE kind = 'turn'"
        ).fetchall()
        chains: dict[tuple[str, str], list[tuple[int, str]]] = {}
        for node_id, scope, session, pos, text, data_index in rows:
            assert node_id not in out.turns, f"turn {node_id} stored twice; {why}"
            assert pos is not None and pos == data_index, f"turn {node_id}: pos {pos}, data.index {data_index}; {why}"
            out.turns[node_id] = StoredTurn(scope, session, pos, text)
            chains.setdefault((scope, session), []).append((pos, node_id))
        dupes = conn.execute(
            "SELECT scope, session, pos, count(*) FROM nodes WHERE kind = 'turn' "
            "GROUP BY scope, session, pos HAVING count(*) > 1"
        ).fetchall()
        assert not dupes, f"duplicate turn positions {dupes[:5]}; {why}"

        want_next: set[tuple[str, str]] = set()
        for (scope, session), chain in chains.items():
            chain.sort()
            positions = [p for p, _ in chain]
            assert positions == list(range(len(chain))), (
                f"session {scope}/{session}: positions {_gaps(positions)} are not 0..{len(chain) - 1}; {why}")
            want_next.update((a, b) for (_, a), (_, b) in zip(chain, chain[1:]))
            sid = conn.execute("SELECT count(*) FROM nodes WHERE kind = 'session' AND scope = ? AND session = ?",
                               (scope, session)).fetchone()[0]
            assert sid == 1, f"session {scope}/{session} has {sid} session nodes; {why}"
        have_next = set(conn.execute("SELECT src, dst FROM edges WHERE kind = 'next'").fetchall())
        assert have_next == want_next, (
            f"next edges: {len(have_next - want_next)} unexpected, {len(want_next - have_next)} missing; {why}")
        dangling = conn.execute(
            "SELECT count(*) FROM edges WHERE src NOT IN (SELECT id FROM nodes) OR dst NOT IN (SELECT id FROM nodes)"
        ).fetchone()[0]
        assert dangling == 0, f"{dangling} edges point at missing nodes; {why}"

        assert graph.index is not None, f"the index did not open: {graph.index_note}; {why}"
        assert graph.flush(timeout=60) is True, f"flush failed: {graph.worker.last_error}; {why}"
        assert graph.store.pending_count() == 0, why
        for scope in sorted(set(graph.store.scopes()) | set(graph.index.scopes())):
            have, want = graph.index.ids(scope), graph.store.embeddable_ids(scope)
            assert have == want, (
                f"scope {scope!r}: {len(have - want)} vectors of missing nodes, {len(want - have)} nodes "
                f"without a vector; {why}")
        return out
    finally:
        graph.close()


def _gaps(positions: list[int]) -> str:
    """A short description of what is wrong with a list of positions."""
    seen, dup = set(), set()
    for p in positions:
        (dup if p in seen else seen).add(p)
    missing = sorted(set(range(len(positions))) - seen)
    top = max(positions, default=None)
    return f"(n={len(positions)}, duplicated {sorted(dup)[:5]}, missing {missing[:5]}, max {top})"


@pytest.fixture
def recovered():
    """:func:`recover`, as a fixture (test modules cannot import each other under importlib mode)."""
    return recover


@pytest.fixture
def hash_text():
    return text_hash


class Figures:
    """What a reliability test measured (trials, faults survived, inputs tried, losses), for docs/reliability.md.

    ``record(name, value, note)`` appends one JSON line to the file named by
    ``MINDLOOP_RELIABILITY_FIGURES`` when that is set (``tests/reliability/report.py``
    sets it, runs the suite, and writes the page); otherwise it only keeps the
    figures in memory, so a plain ``make test`` writes nothing into ``docs/``.
    """

    def __init__(self, test: str) -> None:
        self.test = test
        self.rows: list[dict] = []
        self._path = os.environ.get("MINDLOOP_RELIABILITY_FIGURES")

    def record(self, name: str, value, note: str = "") -> None:
        row = {"test": self.test, "name": name, "value": value, "note": note}
        self.rows.append(row)
        if self._path:
            with open(self._path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


@pytest.fixture
def figures(request) -> Figures:
    """A :class:`Figures` for this test (named ``module::test``)."""
    return Figures(f"{Path(request.node.path).stem}::{request.node.name}")
