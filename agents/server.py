"""The OpenAI-compatible proxy: point any OpenAI client at mindloop instead of the model.

    mindloop serve --port 8000                          # the bundled model, locally
    mindloop serve --upstream http://127.0.0.1:8080/v1  # vLLM, llama.cpp, Ollama, transformers serve

Endpoints: ``POST /v1/chat/completions`` (streaming SSE or not),
``GET /v1/models``, ``GET /healthz``. Each request's last message must be
the user's; the messages before it are the conversation so far. The session
comes from the ``X-Session-Id`` header or the ``user`` field (else it is
derived from the conversation's first messages, so one conversation keeps
one session), the scope from ``X-Scope`` or the config. Every turn goes
through :class:`mindloop.agents.chat.loop.ChatLoop`, so memories are surfaced and both
turns are logged.

Errors are OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``)
with a 4xx status naming the problem, 413 for bodies over the limit, and
502/504 when the upstream is down, garbled or too slow (the user turn is
still logged, with the failure). A non-loopback bind needs a bearer token
(``MINDLOOP_API_TOKEN``); the server refuses to start without one.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from mindloop.agents.chat.loop import ChatLoop, TurnResult

__all__ = ["ServeConfig", "check_bind", "create_app"]

log = logging.getLogger(__name__)

# Parameters we pass on, accept and ignore, or refuse (naming them) because we cannot honour them.
_PASSED = {"max_tokens", "max_completion_tokens", "temperature"}
_IGNORED = {"model", "stream", "user", "messages", "top_p", "stream_options", "seed", "stop", "presence_penalty",
            "frequency_penalty", "metadata", "store"}
_REFUSED = {"n", "tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs",
            "response_format", "logit_bias", "audio", "modalities", "prediction", "parallel_tool_calls"}
_MAX_TOKENS = 2**31 - 1  # larger counts mean nothing to a model, and LangGraph's checkpoint cannot store them

# The request as the OpenAPI schema documents it (what a client may send; the handler reads the raw bytes itself,
# to bound their size and to answer every mistake OpenAI-style, so FastAPI does not validate against it).
_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}
_CHAT_REQUEST = {
    "parameters": [
        {"name": "X-Session-Id", "in": "header", "required": False, "schema": {"type": "string", "minLength": 1},
         "description": "the conversation's session (default: the 'user' field, else derived from the messages)"},
        {"name": "X-Scope", "in": "header", "required": False, "schema": {"type": "string", "minLength": 1},
         "description": "whose memory (default: the configured scope)"},
    ],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["messages"],
        "properties": {
            "messages": {"type": "array", "minItems": 1, "description": "the conversation; the last is the user's",
                         "items": {"type": "object", "required": ["role", "content"], "properties": {
                             "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
                             "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]}}}},
            "model": {"type": "string", "description": "ignored: the proxy serves its own model"},
            "stream": {"type": "boolean"},
            "user": {"type": "string", "minLength": 1, "description": "the session, when no X-Session-Id"},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": _MAX_TOKENS},
            "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": _MAX_TOKENS},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        }}}}},
}


@dataclass
class ServeConfig:
    """The proxy's settings. Section ``[serve]`` of config.toml."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; non-loopback needs api_token"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    api_token: str | None = field(default=None, metadata={
        "help": "bearer token clients must send; unset = none (loopback only)", "env": "MINDLOOP_API_TOKEN"})
    max_body_bytes: int = field(default=4 * 1024 * 1024, metadata={"help": "largest request body; larger = 413"})

    def __post_init__(self) -> None:
        from mindloop.graph import ConfigError

        if not 0 < self.port < 65536:
            raise ConfigError(f"serve.port must be 1-65535, got {self.port}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"serve.max_body_bytes must be at least 1024, got {self.max_body_bytes}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(config: ServeConfig) -> None:
    """Refuse a non-loopback bind without a token."""
    from mindloop.graph import ConfigError

    if not _is_loopback(config.host) and not config.api_token:
        raise ConfigError(f"refusing to listen on {config.host} without a token: set MINDLOOP_API_TOKEN "
                          "(clients then send 'Authorization: Bearer <token>'), or bind to 127.0.0.1")


class _BadRequest(Exception):
    def __init__(self, message: str, *, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str | None = None):
    kind = kind or ("invalid_request_error" if status < 500 else "upstream_error")
    # messages and params can quote the bad input, lone surrogates included, which UTF-8 cannot carry
    message, param = (v.encode("utf-8", "backslashreplace").decode("utf-8") if v else v for v in (message, param))
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "\n".join(p["text"] for p in content)
    raise _BadRequest(f"{where}.content must be a string or a list of text parts", param=f"{where}.content")


def parse_request(body: dict[str, Any]) -> tuple[list[dict[str, str]], str, dict[str, Any]]:
    """Validate a chat-completions body: (history, user message, generation params)."""
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    refused = sorted(k for k in body if k in _REFUSED and body[k] not in (None, 1, False, [], {}))
    if refused:
        raise _BadRequest(f"unsupported parameter(s): {', '.join(refused)}", param=refused[0],
                          code="unsupported_parameter")
    unknown = sorted(set(body) - _PASSED - _IGNORED - _REFUSED)
    if unknown:
        raise _BadRequest(f"unknown parameter(s): {', '.join(unknown)}", param=unknown[0], code="unknown_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _BadRequest(f"{where} must be an object", param=where)
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise _BadRequest(f"{where}.role {role!r} is not supported; use system, user or assistant",
                              param=f"{where}.role")
        text = _text(m.get("content"), where)
        out.append({"role": role, "content": text})
    if out[-1]["role"] != "user":
        raise _BadRequest("the last message must be the user's", param=f"messages[{len(out) - 1}].role")
    if not out[-1]["content"].strip():
        raise _BadRequest("the last user message is empty", param=f"messages[{len(out) - 1}].content")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise _BadRequest("'stream' must be true or false", param="stream")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or not user.strip()):
        raise _BadRequest("'user' must be a non-empty string", param="user")
    params: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= _MAX_TOKENS:
            raise _BadRequest(f"max_tokens must be a positive integer, at most {_MAX_TOKENS}", param="max_tokens")
        params["max_tokens"] = max_tokens
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
            raise _BadRequest("temperature must be a number from 0 to 2", param="temperature")
        params["temperature"] = float(temperature)
    return out[:-1], out[-1]["content"], params


def _session_for(history: list[dict[str, str]], user: str) -> str:
    """A session id for clients that send none: the same conversation gives the same id."""
    first = [m for m in history if m["role"] != "assistant"][:2] or [{"role": "user", "content": user}]
    return "anon-" + hashlib.sha256(json.dumps(first, sort_keys=True).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def create_app(loop: ChatLoop, config: ServeConfig | None = None):
    """The FastAPI app serving ``loop``."""
    config = config or ServeConfig()
    app = FastAPI(title="mindloop proxy", version="0.1.0",
                  description="OpenAI-compatible chat completions with memory surfacing and logging.")
    started = time.time()

    def authorised(request: Request) -> bool:
        if not config.api_token:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {config.api_token}".encode())

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": loop.backend.model_id, "checkpoint": loop.backend.checkpoint,
                "uptime_s": round(time.time() - started, 1)}

    @app.get("/v1/models")
    def models(request: Request):
        if not authorised(request):
            return _error(401, "missing or wrong bearer token", kind="authentication_error")
        return {"object": "list", "data": [{"id": loop.backend.model_id, "object": "model", "created": int(started),
                                            "owned_by": "mindloop"}]}

    @app.post("/v1/chat/completions", openapi_extra=_CHAT_REQUEST)
    async def chat_completions(request: Request):
        from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

        if not authorised(request):
            return _error(401, "missing or wrong bearer token", kind="authentication_error")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            return _error(413, f"request body is {declared} bytes; the limit is {config.max_body_bytes}",
                          code="body_too_large")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > config.max_body_bytes:
                return _error(413, f"request body exceeds the limit of {config.max_body_bytes} bytes",
                              code="body_too_large")
        try:
            body = json.loads(raw.decode("utf-8"))
        except RecursionError:
            return _error(400, "the request body is not valid JSON: nested too deeply", code="invalid_json")
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
            return _error(400, f"the request body is not valid JSON: {e}", code="invalid_json")
        from mindloop.graph.records import check_text

        try:
            history, user, params = parse_request(body)
            check_text(user, what="the last user message")
        except _BadRequest as e:
            return _error(e.status, str(e), param=e.param, code=e.code)
        except ValueError as e:  # InvalidText: lone surrogates and the like
            return _error(400, str(e), param="messages")
        session = request.headers.get("x-session-id") or body.get("user") or _session_for(history, user)
        scope = request.headers.get("x-scope") or None  # an empty header is no header
        named_by = "X-Session-Id" if request.headers.get("x-session-id") else "user"
        for value, what, param in ((session, f"the session ({named_by})", named_by), (scope, "X-Scope", "X-Scope")):
            if value is not None:
                try:
                    check_text(value, what=what)
                except ValueError as e:  # whitespace only, or a lone surrogate in 'user'
                    return _error(400, str(e), param=param)
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        model = loop.backend.model_id

        if not body.get("stream"):
            result: TurnResult = await run_in_threadpool(loop.run, session, user, scope=scope, history=history,
                                                         **params)
            if result.error:
                return _error(result.error_status or 502, result.error)
            return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": result.reply}}],
                    "usage": None, "mindloop": {"session": session, "user_turn": result.user_turn,
                                                "assistant_turn": result.assistant_turn,
                                                "surfaced": [s["id"] for s in result.surfaced]}}

        events = iterate_in_threadpool(loop.stream(session, user, scope=scope, history=history, **params))
        first = await events.__anext__()
        if isinstance(first, TurnResult) and first.error:
            return _error(first.error_status or 502, first.error)

        def chunk(delta: dict, finish: str | None = None) -> str:
            return "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                          "model": model, "choices": [{"index": 0, "delta": delta,
                                                                       "finish_reason": finish}]}) + "\n\n"

        async def sse():
            yield chunk({"role": "assistant", "content": ""})
            item = first
            while True:
                if isinstance(item, TurnResult):
                    if item.error:  # failed after the stream began: the status is already sent
                        yield "data: " + json.dumps({"error": {"message": item.error, "type": "upstream_error"}}) + "\n\n"
                    else:
                        yield chunk({}, "stop")
                    break
                yield chunk({"content": item})
                try:
                    item = await events.__anext__()
                except StopAsyncIteration:
                    break
            yield "data: [DONE]\n\n"

        headers = {"Cache-Control": "no-cache"}
        if session.isascii() and session.isprintable():  # a header carries Latin-1 at most; 'user' may be any text
            headers["X-Session-Id"] = session
        return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)

    return app
