"""Load: 16 concurrent sessions x 1,000 turns through the proxy, then every session checked turn by turn.

A real uvicorn server on 127.0.0.1 (in a thread of this process) serves the
proxy over a real data directory (graph.db with fsync per commit, embedded
Chroma, the hashing embedder, LangGraph's checkpointer in loop.db) and the
scripted fake model. Sixteen client threads, one httpx client and one
session each, send their turns one after another (every fourth one
streamed), so sixteen requests are in flight at once. Afterwards every
session must be one gap-free chain in graph.db holding exactly the turns
sent, in order, each user turn followed by its reply; no turn lost, none
twice; the vectors caught up.

Overhead: the time a client waits for a request, minus the time the fake
model spent producing that reply (measured inside the backend, in the same
run); the fake model answers at once, so this is nearly the whole latency:
surfacing, LangGraph, logging (a committed transaction) and HTTP. Run::

    .venv/bin/python -m pytest tests/reliability/test_load.py -q                 # ~5 min on 2 cores
    MINDLOOP_LOAD_TURNS=100 .venv/bin/python -m pytest tests/reliability/test_load.py -q
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

SESSIONS = 16
TURNS = int(os.environ.get("MINDLOOP_LOAD_TURNS", "1000"))


class TimedBackend:
    """The scripted fake model, timed: ``seconds[text]`` is how long its reply to user message ``text`` took."""

    def __init__(self) -> None:
        from mindloop.agents.chat.backends import ScriptedBackend

        self.inner = ScriptedBackend(lambda messages: f"ack: {messages[-1]['content']}")
        self.model_id, self.checkpoint = self.inner.model_id, None
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def stream(self, messages, **params):
        spent = 0.0
        it = iter(self.inner.stream(messages, **params))
        while True:
            start = time.perf_counter()
            try:
                piece = next(it)
            except StopIteration:
                spent += time.perf_counter() - start
                break
            spent += time.perf_counter() - start
            yield piece
        with self._lock:
            self.seconds[messages[-1]["content"]] = spent
            self.inner.calls.clear()  # 16,000 calls need not be kept

    def complete(self, messages, **params) -> str:
        return "".join(self.stream(messages, **params))

    def close(self) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn on 127.0.0.1 in a thread (as ``mindloop serve`` runs it)."""

    def __init__(self, app) -> None:
        import uvicorn

        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="off", timeout_graceful_shutdown=30))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def _text(session: int, turn: int) -> str:
    return f"session {session} turn {turn}: please rename tmp_{turn % 37} to retry_count, no alternatives"


def _client(url: str, session: int, backend: TimedBackend, out: list) -> None:
    """Send TURNS turns of one session, one after another; ``out`` gets (latency, model time) per turn."""
    with httpx.Client(base_url=url, timeout=120) as client:
        for turn in range(TURNS):
            text = _text(session, turn)
            body = {"messages": [{"role": "user", "content": text}], "stream": turn % 4 == 3}
            start = time.perf_counter()
            if body["stream"]:
                with client.stream("POST", "/v1/chat/completions", json=body,
                                   headers={"X-Session-Id": f"load-{session}"}) as r:
                    data = r.read().decode()
                elapsed = time.perf_counter() - start
                assert r.status_code == 200 and data.rstrip().endswith("data: [DONE]"), (r.status_code, data[-300:])
                assert '"error"' not in data, data[-300:]
            else:
                r = client.post("/v1/chat/completions", json=body, headers={"X-Session-Id": f"load-{session}"})
                elapsed = time.perf_counter() - start
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"] == f"ack: {text}", r.text
            out.append((elapsed, backend.seconds[text]))


@pytest.mark.slow
def test_sixteen_sessions_through_the_proxy(tmp_path, recovered, figures):
    from mindloop.agents.chat.loop import ChatLoop
    from mindloop.agents.server import ServeConfig, create_app
    from mindloop.graph import GraphConfig, MemoryGraph

    home = tmp_path / "home"
    graph = MemoryGraph.open(GraphConfig(home=home, embedder="hashing"))
    backend = TimedBackend()
    loop = ChatLoop(graph, backend)
    results: list[list[tuple[float, float]]] = [[] for _ in range(SESSIONS)]
    try:
        with Server(create_app(loop, ServeConfig())) as server:
            start = time.perf_counter()
            with ThreadPoolExecutor(SESSIONS) as pool:
                futures = [pool.submit(_client, server.url, i, backend, results[i]) for i in range(SESSIONS)]
                for f in futures:
                    f.result()  # a failed request fails the test here, with its assertion
            wall = time.perf_counter() - start
    finally:
        loop.close()
        graph.close()

    rec = recovered(home, why=f"{SESSIONS} sessions x {TURNS} turns")  # chains, edges, vectors: see conftest
    lost = duplicated = 0
    for i in range(SESSIONS):
        stored = sorted((t.pos, t.text) for t in rec.turns.values() if t.session == f"load-{i}")
        want = [x for turn in range(TURNS) for x in (_text(i, turn), f"ack: {_text(i, turn)}")]
        texts = [text for _, text in stored]
        lost += len(set(want) - set(texts))
        duplicated += len(texts) - len(set(texts))
        assert texts == want, (f"session load-{i}: {len(texts)} turns stored, {len(want)} sent; first difference at "
                               f"{next((k for k, (a, b) in enumerate(zip(texts, want)) if a != b), min(len(texts), len(want)))}")
    assert len(rec.turns) == SESSIONS * TURNS * 2

    latency = sorted(e for r in results for e, _ in r)
    overhead = sorted(e - m for r in results for e, m in r)
    model = [m for r in results for _, m in r]
    q = statistics.quantiles(overhead, n=100)
    figures.record("sessions x turns", f"{SESSIONS} x {TURNS}", "concurrent clients, one session each; every 4th "
                                                                 "turn streamed")
    figures.record("lost turns", lost, "every session a gap-free chain holding exactly the turns sent, in order")
    figures.record("duplicated turns", duplicated)
    figures.record("proxy overhead p50 (ms)", round(q[49] * 1000, 2),
                   "client latency minus the fake model's own time (measured in the backend, same run)")
    figures.record("proxy overhead p99 (ms)", round(q[98] * 1000, 2))
    figures.record("latency p50 / p99 (ms)", f"{statistics.median(latency) * 1000:.1f} / "
                                             f"{statistics.quantiles(latency, n=100)[98] * 1000:.1f}",
                   f"with {SESSIONS} requests in flight; the fake model's mean time {statistics.mean(model) * 1e6:.0f} us")
    figures.record("throughput (turns/s)", round(SESSIONS * TURNS / wall, 1),
                   f"{SESSIONS * TURNS} requests in {wall:.0f} s, each logging a user turn and a reply")
