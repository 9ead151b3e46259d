"""The OpenAI-compatible proxy, served by uvicorn on 127.0.0.1 and called by the official openai client."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from mindloop.agents.chat.backends import BackendError, ScriptedBackend
from mindloop.agents.chat.loop import ChatLoop
from mindloop.agents.server import ServeConfig, check_bind, create_app
from mindloop.graph import ConfigError, Memory


@pytest.fixture
def backend():
    return ScriptedBackend(lambda messages: f"echo: {messages[-1]['content']}")


@pytest.fixture
def loop(graph, backend):
    lp = ChatLoop(graph, backend)
    yield lp
    lp.close()


@pytest.fixture
def server(loop, live_server):
    return live_server(create_app(loop, ServeConfig(max_body_bytes=64 * 1024)))


@pytest.fixture
def client(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    yield c
    c.close()


def test_openai_client_non_streaming(client, graph):
    reply = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "rename foo"}],
                                           user="session-a")
    assert reply.choices[0].message.content == "echo: rename foo"
    assert reply.choices[0].finish_reason == "stop"
    assert [(t.role, t.text) for t in graph.session_turns("session-a")] == [("user", "rename foo"),
                                                                            ("assistant", "echo: rename foo")]


def test_openai_client_streaming(client, graph):
    stream = client.chat.completions.create(model="any", stream=True,
                                            messages=[{"role": "system", "content": "be brief"},
                                                      {"role": "user", "content": "say three words"}],
                                            extra_headers={"X-Session-Id": "s-stream", "X-Scope": "alice"})
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == "echo: say three words" and len([p for p in pieces if p]) == 4
    turns = graph.session_turns("s-stream", scope="alice")
    assert [t.text for t in turns] == ["say three words", "echo: say three words"]


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list()] == ["scripted"]
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    assert "/v1/chat/completions" in httpx.get(server.url + "/openapi.json").json()["paths"]


def test_history_is_passed_and_only_the_new_turn_logged(client, backend, graph):
    messages = [{"role": "user", "content": "first"}]
    r1 = client.chat.completions.create(model="m", messages=messages)
    messages += [{"role": "assistant", "content": r1.choices[0].message.content},
                 {"role": "user", "content": "second"}]
    client.chat.completions.create(model="m", messages=messages)
    assert [m["content"] for m in backend.calls[-1]] == ["first", "echo: first", "second"]
    sessions = {t.session for t in graph.nodes(kind="turn")}
    assert len(sessions) == 1 and next(iter(sessions)).startswith("anon-")  # one conversation, one session
    assert len(graph.nodes(kind="turn")) == 4


def test_memories_are_surfaced_through_the_proxy(client, backend, graph):
    graph.add(Memory(text="Alice wants renames done exactly as asked", memory_kind="preference"))
    assert graph.flush()
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "rename as asked please"}])
    assert "Alice wants renames" in backend.calls[-1][0]["content"]


BAD = [
    (b"{not json", 400, "not valid JSON"),
    (b'{"messages": []}', 400, "'messages' must be a non-empty list"),
    (b'{"model": "m"}', 400, "'messages' must be a non-empty list"),
    (b'{"messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0].role 'wizard'"),
    (b'{"messages": [{"role": "user", "content": 7}]}', 400, "messages[0].content must be a string"),
    (b'{"messages": [{"role": "assistant", "content": "x"}]}', 400, "last message must be the user's"),
    (b'{"messages": [{"role": "user", "content": "  "}]}', 400, "last user message is empty"),
    (b'{"messages": [{"role": "user", "content": "x"}], "n": 3}', 400, "unsupported parameter(s): n"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}', 400, "tools"),
    (b'{"messages": [{"role": "user", "content": "x"}], "colour": 1}', 400, "unknown parameter(s): colour"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', 400, "max_tokens must be a positive"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 1.5}', 400, "max_tokens must be a positive"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', 400, "temperature must be"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "'stream' must be true or false"),
    (b'{"messages": [{"role": "user", "content": "x"}], "user": 5}', 400, "'user' must be a non-empty string"),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "lone surrogate"),
    (b"[1]", 400, "must be a JSON object"),
]


@pytest.mark.parametrize("body, status, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_requests_get_openai_errors_and_log_nothing(server, graph, backend, body, status, message):
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    assert graph.nodes(kind="turn") == [] and backend.calls == []


def test_the_openapi_schema_is_the_request_model(server):
    from mindloop.agents.chat.openai_schema import REFUSED, ChatCompletionRequest

    doc = httpx.get(server.url + "/openapi.json").json()
    post = doc["paths"]["/v1/chat/completions"]["post"]
    schemas = doc["components"]["schemas"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"}
    request = schemas["ChatCompletionRequest"]
    assert set(request["properties"]) == set(ChatCompletionRequest.model_fields) and request["required"] == ["messages"]
    assert not set(request["properties"]) & REFUSED  # refused parameters are not documented as accepted
    assert request["properties"]["messages"]["items"] == {"$ref": "#/components/schemas/ChatMessage"}
    assert schemas["ChatMessage"]["properties"]["role"]["enum"] == ["system", "developer", "user", "assistant"]
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletion"}
    assert post["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"}


def test_body_over_the_limit_is_413(server, graph):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 70_000}]})
    r = httpx.post(server.url + "/v1/chat/completions", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(80):
            yield b"y" * 1000
        yield b'"}]}'

    r = httpx.post(server.url + "/v1/chat/completions", content=chunks())
    assert r.status_code == 413
    assert graph.nodes(kind="turn") == []


@pytest.mark.parametrize("status", [502, 504])
def test_upstream_failure_is_502_or_504_and_the_user_turn_is_kept(graph, live_server, status):
    loop = ChatLoop(graph, ScriptedBackend(fail=BackendError("upstream http://x is down", status=status)))
    try:
        srv = live_server(create_app(loop))
        for stream in (False, True):
            r = httpx.post(srv.url + "/v1/chat/completions", headers={"X-Session-Id": f"s{stream}"},
                           json={"messages": [{"role": "user", "content": "hello"}], "stream": stream})
            assert r.status_code == status and "is down" in r.json()["error"]["message"]
            [turn] = graph.session_turns(f"s{stream}")
            assert turn.text == "hello" and "is down" in turn.meta["error"]
    finally:
        loop.close()


def test_token_is_required_when_configured(loop, live_server):
    srv = live_server(create_app(loop, ServeConfig(api_token="s3cret")))
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(srv.url + "/v1/chat/completions", json=body).status_code == 401
    assert httpx.post(srv.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.post(srv.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert httpx.get(srv.url + "/healthz").status_code == 200  # health stays open for probes


def test_non_loopback_bind_needs_a_token():
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0 without a token"):
        check_bind(ServeConfig(host="0.0.0.0"))
    check_bind(ServeConfig(host="0.0.0.0", api_token="t"))
    check_bind(ServeConfig(host="127.0.0.1"))
    check_bind(ServeConfig(host="::1"))


def test_concurrent_clients_every_turn_logged_once_in_order(server, graph):
    """16 clients x 50 turns each, through the proxy: nothing lost, nothing doubled, order kept per session."""
    errors = []

    def client_run(c: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for i in range(50):
                r = http.post("/v1/chat/completions", headers={"X-Session-Id": f"c{c}"},
                              json={"messages": [{"role": "user", "content": f"client {c} turn {i}"}]})
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=client_run, args=(c,)) for c in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for c in range(16):
        turns = graph.session_turns(f"c{c}")
        assert [t.text for t in turns if t.role == "user"] == [f"client {c} turn {i}" for i in range(50)]
        assert [t.index for t in turns] == list(range(100))
    assert len(graph.nodes(kind="turn")) == 16 * 100
