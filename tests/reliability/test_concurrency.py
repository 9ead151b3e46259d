"""Concurrency: several processes log into one data directory at once, one session shared by all.

Four children open the same home (one of them gets embedded Chroma, the
others log to SQLite only and the owner's worker embeds their turns), wait at
a barrier, then each logs 500 turns: to two sessions of its own and to one
session that all four append to. Every acknowledged turn must be stored
once, at the position ``log_turn`` returned, and every session, the shared
one included, must be one gap-free chain. A second test forgets from a
process without the index while the owner runs, and checks that the forgotten
vectors leave the owner's index too. Run::

    .venv/bin/python -m pytest tests/reliability/test_concurrency.py -q
"""

from __future__ import annotations

import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from mindloop.graph import GraphConfig, MemoryGraph

PROCESSES = 4
TURNS = 500
SHARED = "shared"

CHILD = '''
import random, sys
from mindloop.graph import GraphConfig, MemoryGraph

home, name, seed, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
WORDS = "merge the branch after review fix flaky test retry budget cache miss 日本 ß".split()
g = MemoryGraph.open(GraphConfig(home=home, embedder="hashing", embed_poll_s=0.2))
print("ready", "owner" if g.index_note is None else "guest", flush=True)
assert sys.stdin.readline().strip() == "go"
for i in range(n):
    session = "shared" if rng.random() < 0.4 else f"{name}-{rng.choice('ab')}"
    words = rng.randint(1, 30) if rng.random() < 0.97 else rng.randint(1000, 2000)
    text = f"{name} {i} " + " ".join(rng.choice(WORDS) for _ in range(words))
    t = g.log_turn(session, rng.choice(["user", "assistant"]), text)
    print("ack", t.id, session, t.index, text_hash(text), flush=True)
g.close()
print("done", flush=True)
'''


def test_processes_logging_at_once_keep_every_session_a_chain(tmp_path, spawn, recovered, hash_text, figures):
    home = tmp_path / "home"
    env = os.environ.get("MINDLOOP_RELIABILITY_SEED")
    base = int(env) if env else random.SystemRandom().randrange(2**31)
    why = f"seed {base} (rerun with MINDLOOP_RELIABILITY_SEED={base})"
    names = [f"p{i}" for i in range(PROCESSES)]
    children = [spawn(CHILD, str(home), name, str(base + i), str(TURNS), stdin=True) for i, name in enumerate(names)]

    roles = []
    for child in children:
        line = child.readline(timeout=60)
        assert line and line.startswith("ready "), f"child said {line!r}; {why}\n{child.stderr()}"
        roles.append(line.split()[1])
    # All four are open at once, and embedded Chroma admits one writer.
    assert sorted(roles) == ["guest"] * (PROCESSES - 1) + ["owner"], roles
    for child in children:
        child.send("go")

    # Read all four at once, so that no child ever waits on a full pipe instead of on the database.
    with ThreadPoolExecutor(PROCESSES) as pool:
        outputs = list(pool.map(_read_until_done, children))
    acked: dict[str, tuple[str, str, int, str]] = {}  # id -> (process, session, position, text hash)
    by_process: dict[str, list[tuple[str, int]]] = {name: [] for name in names}
    for name, child, lines in zip(names, children, outputs):
        for line in lines:
            assert line.startswith("ack "), f"{name} said {line!r}; {why}\n{child.stderr()}"
            _, node_id, session, pos, h = line.split()
            assert node_id not in acked, f"id {node_id} acknowledged twice; {why}"
            acked[node_id] = (name, session, int(pos), h)
            by_process[name].append((session, int(pos)))
        assert child.proc.wait(timeout=60) == 0, f"{name} exited {child.proc.returncode}; {why}\n{child.stderr()}"
        assert len(by_process[name]) == TURNS, f"{name} acknowledged {len(by_process[name])} turns; {why}"

    rec = recovered(home, acked=acked, why=why)

    assert len(rec.turns) == PROCESSES * TURNS == len(acked), f"{len(rec.turns)} turns stored; {why}"
    for node_id, (name, session, pos, h) in acked.items():
        t = rec.turns[node_id]
        assert (t.scope, t.session, t.pos, hash_text(t.text)) == ("default", session, pos, h), (
            f"{name}'s turn {node_id} was acknowledged at {session}@{pos}, stored at {t.session}@{t.pos}; {why}")
    for name, seq in by_process.items():
        for session in {s for s, _ in seq}:
            mine = [p for s, p in seq if s == session]
            assert mine == sorted(set(mine)), f"{name}'s turns in {session} are out of its own order; {why}"
    sessions = Counter(t.session for t in rec.turns.values())
    assert sessions[SHARED] == sum(1 for a in acked.values() if a[1] == SHARED), why

    # The shared session must really have been contended, or the ordering check above proved little.
    shared = sorted((t.pos, acked[i][0]) for i, t in rec.turns.items() if t.session == SHARED)
    switches = sum(1 for (_, a), (_, b) in zip(shared, shared[1:]) if a != b)
    writers = {name for _, name in shared}
    assert len(writers) == PROCESSES and switches >= PROCESSES, (
        f"the shared session was not interleaved ({switches} switches, writers {sorted(writers)}); {why}")
    figures.record("processes x turns", f"{PROCESSES} x {TURNS}", f"shared session switched writer {switches} times")
    figures.record("lost or duplicated turns", 0)


def _read_until_done(child) -> list[str]:
    """The lines a child printed before ``done`` (all of them, if it died first)."""
    lines = []
    while (line := child.readline(timeout=120)) not in ("done", None):
        lines.append(line)
    return lines


# Owns embedded Chroma; logs to two sessions of scope "default" and one of
# scope "other", then on each line "<seconds>" of stdin waits up to that long
# for its index to match graph.db, and reports both.
OWNER = '''
import sys, time
from mindloop.graph import GraphConfig, MemoryGraph

g = MemoryGraph.open(GraphConfig(home=sys.argv[1], embedder="hashing", embed_poll_s=0.2))
for i in range(30):
    g.log_turn("secret", "user", f"my card number ends in {i:04d}")
    g.log_turn("keep", "user", f"please keep answers short, take {i}")
    g.log_turn("s", "user", f"the other scope, turn {i}", scope="other")
assert g.flush(timeout=60), g.worker.last_error
print("ready", flush=True)
for line in sys.stdin:
    deadline = time.monotonic() + float(line)
    while True:
        assert g.flush(timeout=60), g.worker.last_error
        state = {s: (len(g.index.ids(s)), len(g.store.embeddable_ids(s))) for s in ("default", "other")}
        if all(have == want for have, want in state.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # poll: the owner learns of the other process's forget only from graph.db
    print(*(f"{s}={have}/{want}" for s, (have, want) in state.items()), flush=True)
'''


@pytest.mark.parametrize("what", [{"session": "secret"}, {"scope": "other"}])
def test_forget_by_a_process_without_the_index_reaches_the_owners_index(tmp_path, spawn, what):
    """Forgetting must remove the vectors too, also when another process owns embedded Chroma.

    This process opens the graph second, so it logs and forgets without an
    index; the owner keeps running. Within 5 s (25 of its polls) the owner's
    index must hold exactly the embeddable nodes again.
    """
    home = tmp_path / "home"
    owner = spawn(OWNER, str(home), stdin=True)
    assert owner.readline(timeout=60) == "ready", owner.stderr()
    with MemoryGraph.open(GraphConfig(home=home, embedder="hashing")) as guest:
        assert guest.index_note is not None, "this process should not have got embedded Chroma"
        assert guest.forget(**what) == 31
    owner.send("0")
    before = owner.readline(timeout=60)
    owner.send("5")
    after = owner.readline(timeout=60)
    want = "default=30/30 other=30/30" if "session" in what else "default=60/60 other=0/0"
    assert after == want, f"owner's index/graph.db vectors after forget({what}): {after} (at once: {before})"
