"""OpenAI's chat-completions shapes, as the proxy (:mod:`mindloop.agents.server`) accepts and answers them.

It sits in ``chat`` beside the backends, under the front ends that serve the protocol (layering: chat <- ... <-
front ends).

The request model is the one statement of what ``POST /v1/chat/completions``
accepts: its fields are the parameters passed on (``max_tokens``,
``max_completion_tokens``, ``temperature``) or accepted and ignored
(``model``, ``top_p``, ...); :data:`REFUSED` names those refused because the
proxy cannot honour them; any other name is unknown, and refused too. The
proxy's OpenAPI schema is generated from it (:func:`request_schemas`).

:func:`parse_request` validates a decoded body and raises :class:`RequestError`,
whose message names the bad field the way the proxy's error bodies do:

    >>> parse_request({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}).generation()
    {'max_tokens': 8}
    >>> try:
    ...     parse_request({"messages": [{"role": "wizard", "content": "x"}]})
    ... except RequestError as e:
    ...     print(e.param, "-", e)
    messages[0].role - messages[0].role 'wizard' is not supported; use system, user or assistant

The response models (:class:`ChatCompletion`, :class:`ChatCompletionChunk`,
:class:`ErrorResponse`) dump to the JSON the proxy sends.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PlainValidator, ValidationError, WithJsonSchema, field_validator,
                      model_serializer, model_validator)

__all__ = [
    "MAX_TOKENS",
    "REFUSED",
    "AssistantMessage",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "ChunkChoice",
    "Delta",
    "ErrorDetail",
    "ErrorResponse",
    "RequestError",
    "TextPart",
    "TurnIds",
    "parse_request",
    "request_schemas",
]

MAX_TOKENS = 2**31 - 1  # larger counts mean nothing to a model, and LangGraph's checkpoint cannot store them

# Parameters refused by name because the proxy cannot honour them (unless they ask for the default: n=1, no tools).
REFUSED = frozenset({"n", "tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs",
                     "response_format", "logit_bias", "audio", "modalities", "prediction", "parallel_tool_calls"})
_DEFAULTS = (None, 1, False, [], {})


class RequestError(Exception):
    """A request the proxy refuses: the message, and OpenAI's ``param`` and ``code`` fields of the error body.

    Not a ``ValueError``, so that raised inside a validator it passes through pydantic as it is.
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


# -- the request ---------------------------------------------------------------------------------------------------


def _any_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


# Any str, lone surrogates included: pydantic's own str refuses those, but the proxy answers them in a request with
# a message that says so (mindloop.graph.records.check_text), after the request's shape is known to be right, and
# passes on whatever text a model or an upstream's error gives it.
_Text = Annotated[str, PlainValidator(_any_str, json_schema_input_type=str)]


class TextPart(BaseModel):
    """A text part of a message's content (the only kind of part the proxy takes)."""

    model_config = ConfigDict(strict=True)

    type: Literal["text"]
    text: _Text


class ChatMessage(BaseModel):
    """One message of the conversation; ``developer`` is read as ``system``."""

    model_config = ConfigDict(strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: _Text | list[TextPart]

    def to_message(self) -> dict[str, str]:
        """The message as the chat loop takes it: a role it knows, the text parts joined by newlines."""
        text = self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


_Ignored = Annotated[Any, Field(default=None, description="accepted and ignored")]


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``: the conversation, its last message the user's."""

    model_config = ConfigDict(strict=True)

    messages: list[ChatMessage] = Field(min_length=1, description="the conversation; the last is the user's")
    model: Annotated[Any, WithJsonSchema({"type": "string"})] = Field(
        default=None, description="ignored: the proxy serves its own model")
    stream: bool | None = None
    user: _Text | None = Field(default=None, min_length=1, description="the session, when no X-Session-Id")
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS,
                                              description="replaces max_tokens when given")
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: _Ignored
    stream_options: _Ignored
    seed: _Ignored
    stop: _Ignored
    presence_penalty: _Ignored
    frequency_penalty: _Ignored
    metadata: _Ignored
    store: _Ignored

    @model_validator(mode="before")
    @classmethod
    def _known_parameters(cls, body: Any) -> Any:
        if not isinstance(body, dict):
            return body  # pydantic refuses it: not an object
        refused = sorted(k for k in body if k in REFUSED and body[k] not in _DEFAULTS)
        if refused:
            raise RequestError(f"unsupported parameter(s): {', '.join(refused)}", param=refused[0],
                               code="unsupported_parameter")
        unknown = sorted(set(body) - set(cls.model_fields) - REFUSED)
        if unknown:
            raise RequestError(f"unknown parameter(s): {', '.join(unknown)}", param=unknown[0],
                               code="unknown_parameter")
        if "max_completion_tokens" in body:  # the newer name wins; the older one is then not read
            body = {k: v for k, v in body.items() if k != "max_tokens"}
        return body

    @field_validator("messages")
    @classmethod
    def _user_speaks_last(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        # raised as they are: no field is validated before 'messages', and the error names the message
        last = messages[-1].to_message()
        if last["role"] != "user":
            raise RequestError("the last message must be the user's", param=f"messages[{len(messages) - 1}].role")
        if not last["content"].strip():
            raise RequestError("the last user message is empty", param=f"messages[{len(messages) - 1}].content")
        return messages

    @field_validator("user")
    @classmethod
    def _user_not_blank(cls, user: str | None) -> str | None:
        if user is not None and not user.strip():
            raise ValueError("blank")  # a ValueError waits its turn behind the errors of earlier fields
        return user

    def history(self) -> list[dict[str, str]]:
        """The messages before the user's last one."""
        return [m.to_message() for m in self.messages[:-1]]

    def prompt(self) -> str:
        """The user's last message."""
        return self.messages[-1].to_message()["content"]

    def generation(self) -> dict[str, Any]:
        """The generation parameters passed on to the chat loop (``max_tokens``, ``temperature``)."""
        params: dict[str, Any] = {}
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        if self.temperature is not None:
            params["temperature"] = float(self.temperature)
        return params


def _field_error(error: dict[str, Any]) -> RequestError:
    """The first pydantic error about a request, worded as the proxy words it."""
    loc = error["loc"]
    if not loc:
        return RequestError("the request body must be a JSON object")
    name = loc[0]
    if name == "messages" and len(loc) >= 2:
        where = f"messages[{loc[1]}]"
        if len(loc) == 2:
            return RequestError(f"{where} must be an object", param=where)
        if loc[2] == "role":
            role = None if error["type"] == "missing" else error["input"]
            return RequestError(f"{where}.role {role!r} is not supported; use system, user or assistant",
                                param=f"{where}.role")
        return RequestError(f"{where}.content must be a string or a list of text parts", param=f"{where}.content")
    messages = {
        "messages": "'messages' must be a non-empty list",
        "stream": "'stream' must be true or false",
        "user": "'user' must be a non-empty string",
        "max_tokens": f"max_tokens must be a positive integer, at most {MAX_TOKENS}",
        "max_completion_tokens": f"max_tokens must be a positive integer, at most {MAX_TOKENS}",
        "temperature": "temperature must be a number from 0 to 2",
    }
    return RequestError(messages[name], param="max_tokens" if name == "max_completion_tokens" else name)


def parse_request(body: Any) -> ChatCompletionRequest:
    """Validate a decoded chat-completions body; a :class:`RequestError` names the first thing wrong."""
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        raise _field_error(e.errors(include_url=False)[0]) from None


def request_schemas() -> dict[str, dict[str, Any]]:
    """JSON schemas of the request and the models it uses, by name, for an OpenAPI document's components."""
    schema = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**schema.pop("$defs", {}), "ChatCompletionRequest": schema}


# -- the responses -------------------------------------------------------------------------------------------------


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: _Text


class Choice(BaseModel):
    index: int = 0
    finish_reason: Literal["stop"] = "stop"
    message: AssistantMessage


class TurnIds(BaseModel):
    """What mindloop adds to a reply: the session and the ids of the logged turns and the surfaced memories."""

    session: _Text
    user_turn: str
    assistant_turn: str
    surfaced: list[str]


class ChatCompletion(BaseModel):
    """A whole reply (``stream`` false)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: None = None
    mindloop: TurnIds


class Delta(BaseModel):
    """What a chunk adds to the reply; only the fields it sets are sent."""

    role: Literal["assistant"] | None = None
    content: _Text | None = None

    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop"] | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed reply (``stream`` true)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]


class ErrorDetail(BaseModel):
    message: _Text
    type: str
    param: _Text | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """An error body; in a stream that has begun, the event carries only ``message`` and ``type``."""

    error: ErrorDetail
