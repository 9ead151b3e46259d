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

Requests and replies are the pydantic models of :mod:`mindloop.agents.chat.openai_schema`, which the
OpenAPI schema (``GET /openapi.json``) is generated from. Errors are OpenAI-shaped
(``{"error": {"message", "type", "param", "code"}}``)
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
from mindloop.agents.chat.openai_schema import (AssistantMessage, ChatCompletion, ChatCompletionChunk, Choice,
                                                ChunkChoice, Delta, ErrorDetail, ErrorResponse, RequestError, TurnIds,
                                                parse_request, request_schemas)

__all__ = ["ServeConfig", "check_bind", "create_app"]

log = logging.getLogger(__name__)

# The request's headers as the OpenAPI schema documents them; its body is ChatCompletionRequest's schema (the
# handler reads the raw bytes itself, to bound their size and to answer every mistake OpenAI-style, so FastAPI does
# not validate against it).
_CHAT_REQUEST = {
    "parameters": [
        {"name": "X-Session-Id", "in": "header", "required": False, "schema": {"type": "string", "minLength": 1},
         "description": "the conversation's session (default: the 'user' field, else derived from the messages)"},
        {"name": "X-Scope", "in": "header", "required": False, "schema": {"type": "string", "minLength": 1},
         "description": "whose memory (default: the configured scope)"},
    ],
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}},
}
_CHAT_RESPONSES = {
    200: {"model": ChatCompletion, "description": "the reply; with stream=true, server-sent ChatCompletionChunk "
                                                  "events ending in 'data: [DONE]'",
          "content": {"text/event-stream": {}}},
    400: {"model": ErrorResponse, "description": "a bad request: the message names the bad field"},
    401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
    413: {"model": ErrorResponse, "description": "the body is over the limit"},
    502: {"model": ErrorResponse, "description": "the model failed, or the upstream is down or garbled"},
    504: {"model": ErrorResponse, "description": "the upstream is too slow"},
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


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str | None = None):
    kind = kind or ("invalid_request_error" if status < 500 else "upstream_error")
    # messages and params can quote the bad input, lone surrogates included, which UTF-8 cannot carry
    message, param = (v.encode("utf-8", "backslashreplace").decode("utf-8") if v else v for v in (message, param))
    body = ErrorResponse(error=ErrorDetail(message=message, type=kind, param=param, code=code))
    return JSONResponse(status_code=status, content=body.model_dump())


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

    @app.post("/v1/chat/completions", openapi_extra=_CHAT_REQUEST, responses=_CHAT_RESPONSES)
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
            chat = parse_request(body)
            history, user, params = chat.history(), chat.prompt(), chat.generation()
            check_text(user, what="the last user message")
        except RequestError as e:
            return _error(400, str(e), param=e.param, code=e.code)
        except ValueError as e:  # InvalidText: lone surrogates and the like
            return _error(400, str(e), param="messages")
        session = request.headers.get("x-session-id") or chat.user or _session_for(history, user)
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

        if not chat.stream:
            result: TurnResult = await run_in_threadpool(loop.run, session, user, scope=scope, history=history,
                                                         **params)
            if result.error:
                return _error(result.error_status or 502, result.error)
            return ChatCompletion(
                id=rid, created=created, model=model, choices=[Choice(message=AssistantMessage(content=result.reply))],
                mindloop=TurnIds(session=session, user_turn=result.user_turn, assistant_turn=result.assistant_turn,
                                 surfaced=[s["id"] for s in result.surfaced])).model_dump()

        events = iterate_in_threadpool(loop.stream(session, user, scope=scope, history=history, **params))
        first = await events.__anext__()
        if isinstance(first, TurnResult) and first.error:
            return _error(first.error_status or 502, first.error)

        def chunk(delta: Delta, finish: str | None = None) -> str:
            event = ChatCompletionChunk(id=rid, created=created, model=model,
                                        choices=[ChunkChoice(delta=delta, finish_reason=finish)])
            return "data: " + json.dumps(event.model_dump()) + "\n\n"

        async def sse():
            yield chunk(Delta(role="assistant", content=""))
            item = first
            while True:
                if isinstance(item, TurnResult):
                    if item.error:  # failed after the stream began: the status is already sent
                        error = ErrorResponse(error=ErrorDetail(message=item.error, type="upstream_error"))
                        yield "data: " + json.dumps(error.model_dump(exclude_none=True)) + "\n\n"
                    else:
                        yield chunk(Delta(), "stop")
                    break
                yield chunk(Delta(content=item))
                try:
                    item = await events.__anext__()
                except StopAsyncIteration:
                    break
            yield "data: [DONE]\n\n"

        headers = {"Cache-Control": "no-cache"}
        if session.isascii() and session.isprintable():  # a header carries Latin-1 at most; 'user' may be any text
            headers["X-Session-Id"] = session
        return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with the request models the chat handler validates by hand."""
        if app.openapi_schema is None:
            FastAPI.openapi(app)["components"]["schemas"].update(request_schemas())
        return app.openapi_schema

    app.openapi = openapi
    return app
