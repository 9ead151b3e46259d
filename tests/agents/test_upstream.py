"""OpenAIBackend against real OpenAI-compatible servers on 127.0.0.1: a second mindloop, and broken ones."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from mindloop.agents.chat.backends import BackendError, OpenAIBackend, ScriptedBackend
from mindloop.agents.chat.loop import ChatLoop
from mindloop.agents.server import create_app
from mindloop.graph import GraphConfig, HashingEmbedder, MemoryGraph

from .conftest import free_port


@pytest.fixture
def upstream(tmp_path, live_server):
    """A second mindloop instance (its own data dir) serving a scripted model."""
    g = MemoryGraph.open(GraphConfig(home=tmp_path / "upstream", embedder="hashing"), embedder=HashingEmbedder())
    loop = ChatLoop(g, ScriptedBackend(lambda m: f"upstream says: {m[-1]['content']}", model_id="up-model"))
    srv = live_server(create_app(loop))
    yield srv.url + "/v1", g
    loop.close()
    g.close()


def test_chat_through_an_upstream_mindloop(graph, upstream):
    url, upstream_graph = upstream
    backend = OpenAIBackend(url, "up-model")
    loop = ChatLoop(graph, backend)
    try:
        items = list(loop.stream("s", "rename it"))
        assert "".join(items[:-1]) == "upstream says: rename it" and len(items) > 2  # streamed in pieces
        assert items[-1].reply == "upstream says: rename it"
        assert backend.models() == ["up-model"]
        turns = graph.session_turns("s")
        assert turns[1].model == "up-model" and turns[1].text == "upstream says: rename it"
        assert len(upstream_graph.nodes(kind="turn")) == 2  # the upstream logged it too
    finally:
        loop.close()
        backend.close()


def test_api_key_is_sent(upstream, live_server, tmp_path):
    from mindloop.agents.server import ServeConfig

    g = MemoryGraph.open(GraphConfig(home=tmp_path / "locked", embedder="hashing"), embedder=HashingEmbedder())
    loop = ChatLoop(g, ScriptedBackend(["ok"]))
    try:
        srv = live_server(create_app(loop, ServeConfig(api_token="k3y")))
        with OpenAIBackend(srv.url + "/v1", "m", api_key="k3y") as good:
            assert good.complete([{"role": "user", "content": "x"}]) == "ok"
        with OpenAIBackend(srv.url + "/v1", "m", api_key="wrong") as bad, pytest.raises(BackendError, match="401"):
            bad.complete([{"role": "user", "content": "x"}])
    finally:
        loop.close()
        g.close()


def test_the_key_goes_only_where_it_is_configured(live_server, monkeypatch):
    """No key: no Authorization header at all (not $OPENAI_API_KEY behind the configured variable's back)."""
    monkeypatch.setenv("OPENAI_API_KEY", "not-for-this-upstream")
    seen = []
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(request: Request):
        seen.append(request.headers.get("authorization"))
        chunk = '{"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", ' \
                '"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": null}]}'
        return StreamingResponse(iter([f"data: {chunk}\n\n", "data: [DONE]\n\n"]), media_type="text/event-stream")

    srv = live_server(app)
    for key in (None, "k3y"):
        with OpenAIBackend(srv.url + "/v1", "m", api_key=key) as backend:
            assert backend.complete([{"role": "user", "content": "x"}]) == "ok"
    assert seen == [None, "Bearer k3y"]


def broken_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/garbage/chat/completions")
    def garbage():
        return StreamingResponse(iter(["data: {this is not json\n\n"]), media_type="text/event-stream")

    @app.post("/v1/error/chat/completions")
    def error():
        return PlainTextResponse("model overloaded", status_code=503)

    @app.post("/v1/slow/chat/completions")
    async def slow():
        async def trickle():
            await asyncio.sleep(3)  # the upstream being slow is what is tested, with a 0.3 s client timeout
            yield "data: [DONE]\n\n"

        return StreamingResponse(trickle(), media_type="text/event-stream")

    return app


@pytest.mark.parametrize("path, status, message", [
    ("/v1/garbage", 502, "malformed stream chunk"),
    ("/v1/error", 502, "answered 503: model overloaded"),
    ("/v1/slow", 504, "timed out"),
])
def test_broken_upstreams_are_clear_errors(live_server, path, status, message):
    srv = live_server(broken_app())
    with OpenAIBackend(srv.url + path, "m", timeout_s=0.3) as backend:
        with pytest.raises(BackendError, match=message) as e:
            backend.complete([{"role": "user", "content": "x"}])
    assert e.value.status == status


def test_down_upstream_is_502():
    with OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "m") as backend:
        with pytest.raises(BackendError, match="unreachable") as e:
            backend.complete([{"role": "user", "content": "x"}])
    assert e.value.status == 502


@pytest.mark.slow
def test_mindloop_serve_with_the_bundled_model_as_an_upstream(tmp_path):
    """`mindloop serve` in its own process with the real SmolLM2, used as the upstream of another loop."""
    port = free_port()
    env = {**os.environ, "MINDLOOP_HOME": str(tmp_path / "served"), "MINDLOOP_GRAPH_EMBEDDER": "hashing"}
    proc = subprocess.Popen([sys.executable, "-m", "mindloop.agents.cli", "serve", "--port", str(port), "--max-tokens", "12"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "mindloop serve did not come up"
            time.sleep(0.2)
        backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "SmolLM2-135M-Instruct", timeout_s=300)
        pieces = list(backend.stream([{"role": "user", "content": "What is the capital of France?"}], max_tokens=12))
        reply = "".join(pieces)
        assert len(pieces) > 1 and "Paris" in reply
        backend.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=60)  # also closes the stderr pipe
    with MemoryGraph.open(GraphConfig(home=tmp_path / "served", embedder="hashing"), embedder=HashingEmbedder()) as g:
        turns = g.nodes(kind="turn")
        assert [t.role for t in sorted(turns, key=lambda t: t.index)] == ["user", "assistant"]
        assert turns[0].model == "SmolLM2-135M-Instruct"
