"""Bad input at every door: property-based fuzzing of the proxy, the inspection UI and the file readers.

Doors, and what each must do with any input:

- the proxy (``mindloop.agents.server``): schemathesis against its OpenAPI schema
  (positive and negative cases), then hypothesis strategies for the chat body
  (malformed JSON bytes, wrong types, unknown roles, odd unicode, lone
  surrogates, missing fields, huge numbers, deep nesting, bodies around and
  over the size limit, chunked uploads, streaming on and off, odd session and
  scope headers);
- the UI (``mindloop.agents.ui``): schemathesis against its JSON API (ids of real
  flags, nodes and runs mixed in, so the fuzzing reaches past the 404s), then
  hypothesis for its HTML pages and forms;
- ``mindloop log import FILE`` and ``mindloop detect --eval FILE``, through
  ``mindloop.agents.cli.main``: random bytes, and JSONL mixing good lines with lines of
  every wrong shape.

Every answer must be a 2xx, or a 4xx whose message names the problem; never a
5xx, an exception or a logged traceback. A refused request or file leaves the
graph exactly as it was (no turn, no session node, no edge); an accepted chat
turn adds exactly its two turns. The fake chat model and the ``hashing``
embedder stand in for weights.

The runs are derandomized (the same inputs each time), sized to about a
minute on 2 cores. For a deeper or a different run::

    .venv/bin/python -m pytest tests/reliability/test_fuzz.py -q
    MINDLOOP_FUZZ_SCALE=10 MINDLOOP_FUZZ_SEED=1234 .venv/bin/python -m pytest tests/reliability/test_fuzz.py -q
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

SCALE = float(os.environ.get("MINDLOOP_FUZZ_SCALE", "1"))
SEED = os.environ.get("MINDLOOP_FUZZ_SEED")
LIMIT = 64 * 1024  # the proxy's body limit in these tests (the default is 4 MiB; the logic is the same)
CSRF = "fuzz-csrf-token-" + "x" * 16


def fuzz(n: int):
    """Hypothesis settings for a door: ``n`` inputs (times MINDLOOP_FUZZ_SCALE), derandomized unless a seed is set."""
    config = settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                      derandomize=SEED is None, suppress_health_check=list(HealthCheck), print_blob=True)

    def wrap(f):
        f = config(f)
        return seed(int(SEED))(f) if SEED is not None else f
    return wrap


def why() -> str:
    return f"seed {SEED}" if SEED is not None else "derandomized (set MINDLOOP_FUZZ_SEED for another run)"


class Tally:
    """Inputs tried at one door and how they were answered."""

    def __init__(self) -> None:
        self.codes: Counter = Counter()

    def add(self, status: int) -> None:
        self.codes[status] += 1

    def record(self, figures, what: str) -> None:
        n = sum(self.codes.values())
        ok = sum(v for k, v in self.codes.items() if 200 <= k < 400)
        refused = sum(v for k, v in self.codes.items() if 400 <= k < 500)
        top = ", ".join(f"{k}: {v}" for k, v in sorted(self.codes.items()))
        figures.record("inputs tried", n, f"{what}; {why()}")
        figures.record("accepted (2xx/3xx, or exit 0)", ok, top)
        figures.record("refused with a message (4xx, or exit 2)", refused)
        figures.record("server errors, crashes, tracebacks, partial writes", n - ok - refused)


class ErrorLog(logging.Handler):
    """Collects every ERROR record (a logged traceback means an input crashed something, even behind a 4xx)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        out = [f"{r.name}: {r.getMessage()}" for r in self.records]
        self.records.clear()
        return out


@pytest.fixture(scope="module")
def error_log():
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


def counts(home: Path) -> dict[str, int]:
    """Nodes by kind and edges in graph.db (queued ones included), read on a connection of its own."""
    conn = sqlite3.connect(f"file:{home / 'graph.db'}?mode=ro", uri=True)
    try:
        out = dict(conn.execute("SELECT kind, count(*) FROM nodes GROUP BY kind").fetchall())
        out["edges"] = conn.execute("SELECT (SELECT count(*) FROM edges) + (SELECT count(*) FROM pending_edges)"
                                    ).fetchone()[0]
        return out
    finally:
        conn.close()


def added(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)
            if after.get(k, 0) != before.get(k, 0)}


# -- the proxy ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy(error_log):
    """(TestClient, graph home) of the proxy on the fake model, with a 64 KiB body limit."""
    from fastapi.testclient import TestClient

    from mindloop.agents.chat.backends import ScriptedBackend
    from mindloop.agents.chat.loop import ChatLoop
    from mindloop.agents.server import ServeConfig, create_app
    from mindloop.graph import GraphConfig, HashingEmbedder, MemoryGraph

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        g = MemoryGraph.open(GraphConfig(home=home, embedder="hashing"), embedder=HashingEmbedder())
        loop = ChatLoop(g, ScriptedBackend(lambda messages: f"noted, {len(messages)} message(s)"))
        app = create_app(loop, ServeConfig(max_body_bytes=LIMIT))
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            yield app, client, home
        loop.close()
        g.close()


def check_proxy_answer(response, before: dict[str, int], home: Path, error_log, *, stream: bool | None) -> None:
    """The invariants of any answer of POST /v1/chat/completions (see the module docstring)."""
    status, text = response.status_code, response.text
    logged = error_log.take()
    assert not logged, f"errors were logged: {logged}"
    assert status in (200, 400, 413), f"status {status}: {text[:500]}"
    assert "Traceback" not in text
    delta = added(before, counts(home))
    if status == 200:
        kind = response.headers.get("content-type")
        kind = kind[0] if isinstance(kind, list) else kind  # schemathesis keeps every value of a header
        if kind.startswith("text/event-stream"):
            events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
            assert events[-1] == "[DONE]", text[-300:]
            chunks = [json.loads(e) for e in events[:-1]]
            assert all("error" not in c for c in chunks), text[-300:]
            assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        else:
            assert stream is not True
            reply = response.json()
            assert isinstance(reply["choices"][0]["message"]["content"], str)
            assert reply["mindloop"]["user_turn"] and reply["mindloop"]["assistant_turn"]
        assert delta.get("turn") == 2, f"an accepted turn must log exactly 2 turns, logged {delta}"
        assert set(delta) <= {"turn", "session", "edges"}, delta
    else:
        err = response.json()["error"]
        assert isinstance(err["message"], str) and len(err["message"]) >= 10, err
        assert err["type"] == "invalid_request_error", err
        if err["param"]:  # the message names what was wrong: the parameter, or (for messages[i]) "message"
            top, message = err["param"].split("[")[0].split(".")[0].lower(), err["message"].lower()
            assert top in message or (top == "messages" and "message" in message), (
                f"the message does not name the parameter {err['param']!r}: {err['message']!r}")
        assert not delta, f"a refused request ({status}: {err['message']}) changed the graph: {delta}"


def test_proxy_openapi_schema(proxy, error_log, figures):
    """schemathesis: every operation of the proxy's schema, positive and negative cases."""
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    app, _, home = proxy
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    tally = Tally()
    operations = []
    for result in schema.get_all_operations():
        op = result.ok()
        operations.append(op.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @fuzz(60 if op.method == "post" else 10)
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                before = counts(home)
                response = case.call()
                tally.add(response.status_code)
                case.validate_response(response, checks=[not_a_server_error])
                if case.operation.method == "post":
                    check_proxy_answer(response, before, home, error_log, stream=None)
                else:
                    assert response.status_code == 200 or (400 <= response.status_code < 500), response.text
                    assert not added(before, counts(home))

            try:
                run()
            except Unsatisfiable:  # nothing can be wrong about a request with no parameters and no body
                assert mode is GenerationMode.NEGATIVE and op.method == "get", op.label
    assert "POST /v1/chat/completions" in operations, operations
    tally.record(figures, f"schemathesis over {len(operations)} operations of the proxy's OpenAPI schema")
    assert tally.codes[200] > 0 and sum(v for k, v in tally.codes.items() if k >= 400) > 0, tally.codes


# JSON values of any shape, odd strings included
_odd_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "\n\t", "\ud800", "a\udfffb", "\x00", "日本語 ß ﬁ", "\u2028\u2029\x85", "\ufeff",
                     "👩‍💻" * 5, "<script>x</script>", "%s%n{0}", "\\u0000"]),
)
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | _odd_text,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_odd_text, inner, max_size=3),
                     max_leaves=8)
_role = st.sampled_from(["user", "assistant", "system", "developer", "tool", "function", "User", "", None, 3])
_content = st.one_of(
    _odd_text,
    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _odd_text}), max_size=3),
    _json,
)
_message = st.one_of(
    st.fixed_dictionaries({"role": _role, "content": _content}),
    st.fixed_dictionaries({}, optional={"role": _role, "content": _content, "name": _odd_text}),
    _json,
)
_good_message = st.fixed_dictionaries({
    "role": st.sampled_from(["user", "assistant", "system", "developer"]),
    "content": st.text(min_size=1, max_size=40).filter(lambda s: s.strip()),
})
_good_last = st.fixed_dictionaries({"role": st.just("user"),
                                    "content": st.text(min_size=1, max_size=40).filter(lambda s: s.strip())})
_numbers = st.one_of(st.integers(), st.integers(min_value=2**63 - 2, max_value=2**70), st.floats(allow_nan=True),
                     st.sampled_from([0, 1, 2, -1, 2.5, True, "1", None]))
_options = {
    "model": _json, "stream": st.booleans() | _json, "user": _odd_text | _json,
    "max_tokens": _numbers, "max_completion_tokens": _numbers, "temperature": _numbers,
    "top_p": _numbers, "n": _numbers, "tools": _json, "stop": _json,
    "bogus": _json,
}
_good_options = {"stream": st.booleans(), "user": st.text(min_size=1, max_size=10).filter(str.strip),
                 "max_tokens": st.integers(1, 2**31 - 1), "temperature": st.floats(0, 2), "model": st.text()}
_body = st.one_of(
    # a well-formed chat (the history of any good messages, a user message last), good options
    st.builds(lambda history, last, opts: {"messages": [*history, last], **opts},
              st.lists(_good_message, max_size=3), _good_last, st.fixed_dictionaries({}, optional=_good_options)),
    # the same with options of any value
    st.builds(lambda history, last, opts: {"messages": [*history, last], **opts},
              st.lists(_good_message, max_size=3), _good_last,
              st.fixed_dictionaries({}, optional=_options)),
    # anything in the messages
    st.fixed_dictionaries({}, optional={"messages": st.lists(_message, max_size=4) | _json, **_options}),
    _json,
)
_header = st.none() | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                               max_size=12)


class Body(bytes):
    """Request bytes with a short repr (hypothesis prints the failing inputs, and some are 256 KiB)."""

    def __repr__(self) -> str:
        return f"Body({bytes(self[:200])!r}{f' + {len(self) - 200} bytes' if len(self) > 200 else ''})"


@st.composite
def _raw_body(draw) -> tuple[bytes, str]:
    """(bytes to send, how they were made)."""
    how = draw(st.sampled_from(["json"] * 6 + ["truncated", "bytes", "nested", "bigint", "not utf-8", "huge"]))
    body = draw(_body)
    encoded = json.dumps(body, ensure_ascii=draw(st.booleans()), allow_nan=True).encode("utf-8", "surrogatepass")
    if how == "truncated":
        encoded = encoded[: draw(st.integers(0, max(0, len(encoded) - 1)))]
    elif how == "bytes":
        encoded = draw(st.binary(max_size=200))
    elif how == "nested":
        depth = draw(st.sampled_from([10, 1000, 20_000]))
        encoded = b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
    elif how == "bigint":
        encoded = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}"
    elif how == "not utf-8":
        encoded = encoded[:5] + b"\xff\xfe" + encoded[5:]
    elif how == "huge":
        size = draw(st.sampled_from([LIMIT - 200, LIMIT + 1, 4 * LIMIT]))
        encoded = json.dumps({"messages": [{"role": "user", "content": "x" * size}]}).encode()
    return Body(encoded), how


def test_proxy_chat_body(proxy, error_log, figures):
    """Any bytes as the body of POST /v1/chat/completions (see the module docstring for the invariants)."""
    _, client, home = proxy
    tally = Tally()

    @fuzz(300)
    @given(raw=_raw_body(), stream=st.sampled_from([None, True, False]), chunked=st.booleans(), session=_header,
           scope=_header)
    @example(raw=(Body(b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}"), "bigint"),
             stream=None, chunked=False, session=None, scope=None)  # was a 500: int too long for json.loads
    @example(raw=(Body(b'{"messages": [{"role": "user", "content": "' + b"x" * (LIMIT + 1) + b'"}]}'), "huge"),
             stream=None, chunked=True, session=None, scope=None)  # a 413 every run, however few examples are drawn
    @example(raw=(Body(b'{"messages": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"), "nested"),
             stream=None, chunked=False, session=None, scope=None)  # was a 500: RecursionError in json.loads
    @example(raw=(Body(b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000000000000000000}'), "json"),
             stream=False, chunked=False, session=None, scope=None)  # was a 500 after both turns were logged
    @example(raw=(Body(b'{"messages": [{"role": "user", "content": "hi"}], "user": "\\ud800"}'), "json"),
             stream=True, chunked=False, session=None, scope=None)  # was a 500: lone surrogate as the session id
    @example(raw=(Body(b'{"messages": [{"role": "user", "content": "hi"}]}'), "json"),
             stream=False, chunked=False, session=" ", scope=None)  # was a 500: blank X-Session-Id
    @example(raw=(Body(b'{"messages": [{"role": "user", "content": "hi"}]}'), "json"),
             stream=True, chunked=False, session=" ", scope=None)  # was a 200 whose stream broke, nothing logged
    @example(raw=(Body(b'{"messages": [{"role": "user", "content": "hi"}]}'), "json"),
             stream=None, chunked=False, session=None, scope=" ")  # was a 500: blank X-Scope
    @example(raw=(Body('{"messages": [{"role": "user", "content": "hi"}], "user": "日本"}'.encode()), "json"),
             stream=True, chunked=False, session=None, scope=None)  # was a 500: the session echoed in a header
    @example(raw=(Body(b'{"messages": [{"role": "user", "content": "hi"}], "stream": "no"}'), "json"),
             stream=None, chunked=False, session=None, scope=None)  # was a stream: any truthy 'stream' streamed
    def run(raw, stream, chunked, session, scope):
        encoded, how = raw
        sent_stream = None  # what the body asks for, where the test set it
        if stream is not None and how in ("json", "huge"):
            try:
                body = json.loads(encoded)
            except ValueError:
                body = None
            if isinstance(body, dict):
                body["stream"] = sent_stream = stream
                encoded = json.dumps(body).encode("utf-8", "surrogatepass")
        headers = {"content-type": "application/json"}
        if session is not None:
            headers["x-session-id"] = session.encode("latin-1")  # what HTTP carries: bytes, not only ASCII
        if scope is not None:
            headers["x-scope"] = scope.encode("latin-1")
        before = counts(home)
        content = iter([encoded[i:i + 8192] for i in range(0, len(encoded), 8192)]) if chunked else encoded
        response = client.post("/v1/chat/completions", content=content, headers=headers)
        tally.add(response.status_code)
        check_proxy_answer(response, before, home, error_log, stream=sent_stream)
        if how in ("truncated", "bytes", "not utf-8") and response.status_code == 400:
            assert response.json()["error"]["code"] in ("invalid_json", None), response.text
        if how == "huge" and len(encoded) > LIMIT:
            assert response.status_code == 413 and "limit" in response.json()["error"]["message"], response.text

    run()
    tally.record(figures, "hypothesis: chat bodies (bytes, JSON of wrong shapes, huge, chunked, streaming on/off, "
                          "odd session and scope headers)")
    assert tally.codes[200] > 0 and tally.codes[400] > 0 and tally.codes[413] > 0, tally.codes


# -- the inspection UI -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ui(error_log):
    """(app, TestClient, home, ids) of the UI over a small graph: conversations, flags on every correction, patterns."""
    from fastapi.testclient import TestClient

    from mindloop.agents.signal.patterns import update_patterns
    from mindloop.agents.signal.agent import correction_pairs, flag_id
    from mindloop.agents.ui.app import create_app
    from mindloop.graph import Flag, GraphConfig, HashingEmbedder, MemoryGraph

    lines = (Path(__file__).resolve().parents[2] / "examples/data/corrections.jsonl").read_text().splitlines()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        embedder = HashingEmbedder()
        g = MemoryGraph.open(GraphConfig(home=home, embedder="hashing"), embedder=embedder)
        for line in lines[:12]:
            conv = json.loads(line)
            g.log_turns(conv["session"], [{"role": m["role"], "text": m["content"]} for m in conv["messages"]])
        for session in sorted({t.session for t in g.nodes(kind="turn")}):
            for reply, follow, _ in correction_pairs(g.session_turns(session)):
                flag = Flag(id=flag_id(reply.scope, reply.id), session=session, turn=reply.id, correction=follow.id,
                            type="unwanted_alternatives", confidence=0.8, evidence=["fuzz"],
                            reason=f"{follow.text} || {reply.text}")
                with g.transaction():
                    g.add(flag, [(flag.id, reply.id, "flags")])
                    g.link(follow.id, reply.id, "corrects", {"confidence": 0.8})
        update_patterns(g, embedder)
        g.flush()
        ids = {"flag_id": sorted(f.id for f in g.nodes(kind="flag")),
               "node_id": sorted(n.id for kind in ("turn", "flag", "pattern", "session") for n in g.nodes(kind=kind)),
               "run_id": ["run_20261101-090000_aaaaaa", "..", "../../etc/passwd"]}
        assert ids["flag_id"] and any(i.startswith("pattern") or "pattern" in i for i in ids["node_id"]), ids
        app = create_app(g, csrf_token=CSRF)
        with TestClient(app, base_url="http://127.0.0.1:8765") as client:
            yield app, client, home, ids
        g.close()


def check_ui_answer(status: int, text: str, content_type: str, before: dict[str, int], home: Path, error_log,
                    *, api: bool) -> None:
    logged = error_log.take()
    assert not logged, f"errors were logged: {logged}"
    assert status < 500, f"status {status}: {text[:500]}"
    assert "Traceback" not in text
    delta = added(before, counts(home))
    assert not {"turn", "session"} & set(delta), f"the UI changed the conversations: {delta}"
    if status >= 400:
        assert not delta, f"a refused request ({status}) changed the graph: {delta}"
        if api or content_type.startswith("application/json"):
            detail = json.loads(text)["detail"]
            assert detail and (isinstance(detail, list) or len(detail) >= 5), text[:300]
        else:
            assert str(status) in text and "<h1>" in text, text[:300]


def test_ui_api_openapi_schema(ui, error_log, figures):
    """schemathesis: every operation of the UI's JSON API, positive and negative, real ids mixed in."""
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    app, _, home, ids = ui
    host = {"Host": "127.0.0.1:8765"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=host)
    tally = Tally()
    operations = []
    for result in schema.get_all_operations():
        op = result.ok()
        operations.append(op.label)
        names = [p.name for p in op.path_parameters]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode)
            if names:  # the real ids (and some that climb out of folders), or anything
                strategy = st.one_of(strategy, st.sampled_from(ids[names[0]]).flatmap(
                    lambda value, op=op, mode=mode, name=names[0]: op.as_strategy(generation_mode=mode,
                                                                                  path_parameters={name: value})))

            @fuzz(25 if (names or op.query) else 3)
            @given(case=strategy, csrf=st.sampled_from([CSRF, CSRF, "", "wrong"]))
            def run(case, csrf):
                before = counts(home)
                response = case.call(headers={**host, "X-CSRF-Token": csrf})
                tally.add(response.status_code)
                case.validate_response(response, checks=[not_a_server_error, response_schema_conformance],
                                       headers=host)
                kind = (response.headers.get("content-type") or [""])[0]
                check_ui_answer(response.status_code, response.text, kind, before, home, error_log, api=True)
                if case.method == "POST" and csrf != CSRF:  # never a review without the CSRF token
                    assert response.status_code >= 400, response.text[:300]

            try:
                run()
            except Unsatisfiable:  # nothing can be wrong about a request without parameters or body
                assert mode is GenerationMode.NEGATIVE, op.label
    tally.record(figures, f"schemathesis over the {len(operations)} operations of the UI's JSON API (real flag, "
                          "node and run ids mixed in)")
    assert tally.codes[200] > 0 and tally.codes[404] > 0 and tally.codes[422] > 0, tally.codes


_segment = st.one_of(_odd_text, st.sampled_from(["..", ".", "%2e%2e", "run_x/../..", "a" * 5000]))


@st.composite
def _page_request(draw, ids):
    """(method, path, params, form or None, headers) for the UI's pages."""
    from urllib.parse import quote as _quote

    def quote(text: str, safe: str = "") -> str:  # lone surrogates go out as the bytes they stand for
        return _quote(text.encode("utf-8", "surrogatepass"), safe=safe)

    real = st.sampled_from(ids["flag_id"] + ids["node_id"])
    any_id = st.one_of(real, _segment)
    page = draw(st.sampled_from(["flags", "flag", "review", "graph", "runs", "run", "loss", "patterns", "observer",
                                 "login", "root", "anything"]))
    params, form, method = {}, None, "GET"
    q = st.one_of(st.none(), _odd_text, st.sampled_from(["0.5", "-1", "nan", "1e999", "", "2"]))
    if page == "flags":
        path = "/flags"
        params = {k: draw(q) for k in ("pattern", "status", "min_confidence", "max_confidence") if draw(st.booleans())}
    elif page in ("flag", "review"):
        path = f"/flags/{quote(draw(any_id), safe='')}"
        if page == "review":
            path += "/review"
            method = "POST"
            form = draw(st.fixed_dictionaries({}, optional={
                "csrf_token": st.sampled_from([CSRF, "wrong", ""]), "action": st.sampled_from(
                    ["confirm", "reject", "edit", "delete", ""]) | _odd_text, "response": _odd_text}))
    elif page == "graph":
        path = "/graph"
        params = {k: draw(v) for k, v in (("node", any_id), ("q", q), ("hops", q | st.integers(-5, 10**6).map(str)))
                  if draw(st.booleans())}
    elif page in ("run", "loss"):
        path = f"/runs/{quote(draw(st.one_of(st.sampled_from(ids['run_id']), _segment)), safe='')}"
        path += "/loss.png" if page == "loss" else ""
    elif page == "login":
        path, method = "/login", "POST"
        form = draw(st.fixed_dictionaries({}, optional={"token": _odd_text}))
    elif page == "root":
        path = "/"
    elif page == "anything":
        path = "/" + "/".join(quote(s, safe="") for s in draw(st.lists(_segment, min_size=1, max_size=3)))
    else:
        path = f"/{page}"
    params = {k: v for k, v in params.items() if v is not None}
    headers = {"accept": draw(st.sampled_from(["text/html", "application/json", "*/*"]))}
    if form is not None:
        headers["content-type"] = draw(st.sampled_from(["application/x-www-form-urlencoded"] * 3
                                                       + ["text/plain", "multipart/form-data", ""]))
    return method, path, params, form, headers


def test_ui_pages(ui, error_log, figures):
    """hypothesis: the HTML pages and forms (not in the OpenAPI schema): odd ids, queries, forms and headers."""
    from urllib.parse import urlencode

    _, client, home, ids = ui
    tally = Tally()

    @fuzz(200)
    @given(request=_page_request(ids))
    def run(request):
        method, path, params, form, headers = request
        before = counts(home)
        url = path + ("?" + urlencode(params, encoding="utf-8", errors="surrogatepass") if params else "")
        body = None if form is None else urlencode(form, encoding="utf-8", errors="surrogatepass").encode()
        response = client.request(method, url, content=body, headers=headers, follow_redirects=False)
        tally.add(response.status_code)
        check_ui_answer(response.status_code, response.text, response.headers.get("content-type", ""), before, home,
                        error_log, api=False)

    run()
    tally.record(figures, "hypothesis: the UI's pages and forms (odd ids, queries, form bodies, content types)")
    assert tally.codes[200] > 0 and tally.codes[404] > 0, tally.codes


# -- the file readers: mindloop log import, mindloop detect --eval ------------------------------------------------


def cli(*argv: str) -> tuple[int, str, str]:
    """``mindloop ARGV`` in this process: (exit code, stdout, stderr). stdout is strict UTF-8, as a terminal's is."""
    from mindloop.agents.cli import main

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))  # an exception here is a crash: the test fails with its traceback
    return code, out.buffer.getvalue().decode(), err.buffer.getvalue().decode()


_clean_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(str.strip)
_clean_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                                        "content": _clean_text | st.lists(st.fixed_dictionaries(
                                            {"type": st.just("text"), "text": _clean_text}), min_size=1, max_size=2)})
_not_json = st.one_of(st.text(min_size=1, max_size=30).filter(lambda s: s.strip() and not _parses(s)),
                      st.sampled_from(['{"messages": [', "{'messages': []}", "NaN NaN", "{}}", '"unterminated']))
_deep = st.integers(1000, 50_000).map(lambda n: "[" * n + "]" * n)
_bigint = st.integers(4301, 6000).map(lambda n: '{"messages": [{"role": "user", "content": "x"}], "n": ' + "7" * n
                                      + "}")


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except (ValueError, RecursionError):
        return False


def _dump(obj, ensure_ascii: bool) -> str:
    """One JSON line, raw UTF-8 or ASCII escapes (always escapes where it holds a lone surrogate: a file is UTF-8)."""
    line = json.dumps(obj, ensure_ascii=ensure_ascii)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(obj)
    return line


@st.composite
def _conversation_line(draw) -> tuple[str, bool | None]:
    """(a line of a conversations file, whether it is good: True, False, or None for a blank line)."""
    kind = draw(st.sampled_from(["good"] * 4 + ["blank", "not json", "not object", "no messages", "empty messages",
                                                 "bad role", "bad content", "blank content", "surrogate", "bad session",
                                                 "deep", "bigint"]))
    ascii_ = draw(st.booleans())
    conv = {"messages": draw(st.lists(_clean_message, min_size=1, max_size=3))}
    if draw(st.booleans()):
        conv["session"] = draw(_clean_text)
    if kind == "good":
        return _dump(conv, ascii_), True
    if kind == "blank":
        return draw(st.sampled_from(["", "   ", "\t"])), None
    if kind == "not json":
        return draw(_not_json), False
    if kind == "not object":
        return _dump(draw(st.one_of(st.lists(_json, max_size=2), st.integers(), _odd_text, st.booleans())), ascii_), False
    if kind == "no messages":
        return _dump({k: v for k, v in conv.items() if k != "messages"} | {"msgs": conv["messages"]}, ascii_), False
    if kind == "empty messages":
        return _dump({**conv, "messages": draw(st.sampled_from([[], None, "hi", {}]))}, ascii_), False
    i = draw(st.integers(0, len(conv["messages"]) - 1))
    if kind == "bad role":
        conv["messages"][i]["role"] = draw(st.sampled_from(["tool", "User", "", None, 7, ["user"], "\ud800"]))
    elif kind == "bad content":
        conv["messages"][i]["content"] = draw(st.sampled_from([None, 3, {"text": "x"}, [{"type": "image"}], ["x"]]))
    elif kind == "blank content":
        conv["messages"][i]["content"] = draw(st.sampled_from(["", " \n ", "\u3000"]))
    elif kind == "surrogate":
        conv["messages"][i]["content"] = draw(_clean_text) + "\ud800"
    elif kind == "bad session":
        conv["session"] = draw(st.sampled_from(["", " ", 5, None, ["s"]]))
    elif kind == "deep":
        return draw(_deep), False
    elif kind == "bigint":
        return draw(_bigint), False
    return _dump(conv, ascii_), False


def _bad_lines(message: str) -> set[int]:
    import re

    return {int(n) for n in re.findall(r"line (\d+)", message)}


def test_log_import_files(tmp_path, monkeypatch, error_log, figures):
    """hypothesis: `mindloop log import FILE [--skip-bad]` on random bytes and on JSONL mixing good and bad lines."""
    monkeypatch.setenv("MINDLOOP_GRAPH_EMBEDDER", "hashing")
    home = tmp_path / "home"
    path = tmp_path / "conversations.jsonl"
    assert cli("log", "import", "--home", str(home), "--json", os.devnull)[0] == 0  # creates graph.db
    tally = Tally()

    @fuzz(120)
    @given(lines=st.lists(_conversation_line(), min_size=1, max_size=8), raw=st.none() | st.binary(max_size=300),
           skip_bad=st.booleans())
    @example(lines=[('{"messages": [{"role": "user", "content": "x"}], "n": ' + "7" * 5000 + "}", False)],
             raw=None, skip_bad=False)  # was a traceback: int too long for json.loads
    @example(lines=[("[" * 50_000 + "]" * 50_000, False)], raw=None, skip_bad=True)  # was a RecursionError
    @example(lines=[(json.dumps({"messages": [{"role": "user", "content": "a\u2028b\x85c"}]}, ensure_ascii=False),
                     True)], raw=None, skip_bad=False)  # was split in three: str.splitlines breaks at U+2028 and NEL
    @example(lines=[(json.dumps({"messages": [{"role": "\ud800", "content": "x"}]}), False)], raw=None,
             skip_bad=True)  # the report quotes the bad role: a lone surrogate on stdout
    def run(lines, raw, skip_bad):
        data = raw if raw is not None else ("\n".join(line for line, _ in lines) + "\n").encode("utf-8")
        path.write_bytes(data)
        before = counts(home)
        code, out, err = cli("log", "import", "--home", str(home), "--json", *(["--skip-bad"] if skip_bad else []),
                             str(path))
        tally.add({0: 200, 2: 400}.get(code, 500))
        assert code in (0, 2), (code, out, err)
        assert "Traceback" not in out + err and not error_log.take()
        delta = added(before, counts(home))
        if code == 2:
            assert err.startswith("mindloop: error: ") and len(err) > 30 and not out, err
            assert not delta, f"a rejected file changed the graph: {delta}"
        else:
            report = json.loads(out)
            assert delta.get("turn", 0) == report["turns_added"], (delta, report)
            assert not report["errors"] or skip_bad, report
        if raw is not None:
            return
        good = [n for n, (_, ok) in enumerate(lines, 1) if ok is True]
        bad = {n for n, (_, ok) in enumerate(lines, 1) if ok is False}
        if bad and not skip_bad:
            assert code == 2 and min(bad) in _bad_lines(err) and _bad_lines(err) <= bad, (sorted(bad), err)
            assert f"{len(bad)} bad line(s); nothing was imported" in err, err
        else:
            assert code == 0, err
            assert report["conversations"] == len(good), (report, lines)
            assert _bad_lines(" ".join(report["errors"])) == bad, (sorted(bad), report["errors"])

    run()
    tally.record(figures, "hypothesis: conversation files (random bytes; JSONL of good, blank and 11 kinds of bad "
                          "lines), with and without --skip-bad; 400 = exit 2 with a message")
    assert tally.codes[200] > 0 and tally.codes[400] > 0, tally.codes


@st.composite
def _pair_line(draw) -> tuple[str, bool | None]:
    """(a line of a labelled detector file, whether it is good: True, False, or None for a blank line)."""
    kind = draw(st.sampled_from(["good"] * 4 + ["blank", "not json", "not object", "no response", "blank followup",
                                                 "bad label", "bad context", "deep", "bigint"]))
    text = _clean_text | st.sampled_from(["a\ud800", "\udfff!", "日本語", "\u2028x\x85"])  # read_pairs keeps surrogates
    pair = {"context": draw(st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                                                           "content": st.text(max_size=20)}), max_size=2)),
            "response": draw(text), "followup": draw(text), "label": draw(st.booleans())}
    pair.update(draw(st.fixed_dictionaries({}, optional={"type": _json, "id": _json, "split": _json})))
    ascii_ = draw(st.booleans())
    if kind == "good":
        return _dump(pair, ascii_), True
    if kind == "blank":
        return "  ", None
    if kind == "not json":
        return draw(_not_json), False
    if kind == "not object":
        return _dump(draw(st.one_of(st.lists(_json, max_size=2), st.integers(), _odd_text)), ascii_), False
    if kind == "no response":
        del pair["response"]
    elif kind == "blank followup":
        pair["followup"] = draw(st.sampled_from(["", "  ", 0, None]))
    elif kind == "bad label":
        pair["label"] = draw(st.sampled_from([None, "yes", 1, 0, [True]]))
    elif kind == "bad context":
        pair["context"] = draw(st.sampled_from(["hi", {"role": "user"}, [{"role": "bot", "content": "x"}],
                                                [{"role": "user", "content": 3}]]))
    elif kind == "deep":
        return draw(_deep), False
    elif kind == "bigint":
        return '{"response": "a", "followup": "b", "label": true, "x": ' + "1" * 5000 + "}", False
    return _dump(pair, ascii_), False


def test_detect_eval_files(tmp_path, monkeypatch, error_log, figures):
    """hypothesis: `mindloop detect --eval FILE [--skip-bad]` on random bytes and on JSONL mixing good and bad lines."""
    monkeypatch.setenv("MINDLOOP_GRAPH_EMBEDDER", "hashing")
    monkeypatch.setenv("MINDLOOP_SIGNAL_READER", "off")
    home = tmp_path / "home"
    path = tmp_path / "pairs.jsonl"
    tally = Tally()

    @fuzz(100)
    @given(lines=st.lists(_pair_line(), min_size=1, max_size=6), raw=st.none() | st.binary(max_size=300),
           skip_bad=st.booleans())
    @example(lines=[('{"response": "a", "followup": "b", "label": true, "x": ' + "1" * 5000 + "}", False)],
             raw=None, skip_bad=False)  # was a traceback: int too long for json.loads
    @example(lines=[("[" * 50_000 + "]" * 50_000, False)], raw=None, skip_bad=False)  # was a RecursionError
    @example(lines=[(json.dumps({"response": "a\u2028b", "followup": "no", "label": True}, ensure_ascii=False),
                     True)], raw=None, skip_bad=False)  # was split in two: str.splitlines breaks at U+2028
    def run(lines, raw, skip_bad):
        data = raw if raw is not None else ("\n".join(line for line, _ in lines) + "\n").encode("utf-8")
        path.write_bytes(data)
        code, out, err = cli("detect", "--eval", str(path), "--home", str(home), "--reader", "off", "--json",
                             *(["--skip-bad"] if skip_bad else []))
        tally.add({0: 200, 2: 400}.get(code, 500))
        assert code in (0, 2), (code, out, err)
        assert "Traceback" not in out + err and not error_log.take()
        assert not (home / "graph.db").exists(), "detect --eval must not write a graph"
        if code == 2:
            assert err.startswith("mindloop: error: ") and len(err) > 30 and not out, err
        if raw is not None:
            return
        good = sum(1 for _, ok in lines if ok is True)
        bad = {n for n, (_, ok) in enumerate(lines, 1) if ok is False}
        if bad and not skip_bad:
            assert code == 2 and min(bad) in _bad_lines(err) and _bad_lines(err) <= bad, (sorted(bad), err)
        elif not good:
            assert code == 2 and "no pairs to read" in err, err
        else:
            assert code == 0, err
            m = json.loads(out)
            assert m["n"] == good and _bad_lines(" ".join(m.get("skipped_lines", []))) == bad, (m, sorted(bad))

    run()
    tally.record(figures, "hypothesis: labelled pair files (random bytes; JSONL of good, blank and 8 kinds of bad "
                          "lines), with and without --skip-bad; 400 = exit 2 with a message")
    assert tally.codes[200] > 0 and tally.codes[400] > 0, tally.codes
