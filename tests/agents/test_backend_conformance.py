"""One conformance suite for every ChatBackend: the scripted fake, the local model, an OpenAI-compatible upstream.

The contract is in ChatBackend's docstring (agents/chat/backends.py): ``stream``
yields ``str`` pieces that join into what ``complete`` returns, lazily; the
messages are left as they were; ``max_tokens`` and ``temperature`` are accepted
by all and honoured by a generating model; a failure is a ``BackendError``
with a 5xx status and a message, raised while the pieces are read;
``model_id`` names the model and ``checkpoint`` is None for the base model;
``close`` may be called twice. LocalBackend runs on the tiny LM of
tests/conftest.py, OpenAIBackend against the proxy itself (over a scripted
model) on a real port.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest

from mindloop.agents.chat.backends import BackendError, ChatBackend, LocalBackend, OpenAIBackend, ScriptedBackend
from mindloop.agents.chat.loop import ChatLoop
from mindloop.agents.server import create_app

from .conftest import free_port

KINDS = ["scripted", "local", "openai"]
MESSAGES = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": "rename the function please"},
            {"role": "assistant", "content": "to what"},
            {"role": "user", "content": "to make it a class"}]


def _echo(messages) -> str:
    return f"echo: {messages[-1]['content']}"


@dataclass
class Case:
    backend: ChatBackend
    expected: str | None  # the reply to MESSAGES where the model is scripted; None for the tiny LM's
    tokenizer: object = None  # the generating model's, to count the tokens of a reply


@pytest.fixture(params=KINDS)
def case(request, tmp_path):
    """A working backend of each kind, closed at teardown."""
    if request.param == "scripted":
        backend = ScriptedBackend(_echo)
        yield Case(backend, _echo(MESSAGES))
    elif request.param == "local":
        backend = LocalBackend(str(request.getfixturevalue("tiny_lm")))
        yield Case(backend, None, backend.load()[1])
    else:
        graph, live_server = request.getfixturevalue("graph"), request.getfixturevalue("live_server")
        loop = ChatLoop(graph, ScriptedBackend(_echo, model_id="upstream-model"))
        backend = OpenAIBackend(live_server(create_app(loop)).url + "/v1", "upstream-model")
        yield Case(backend, _echo(MESSAGES))
        loop.close()
    backend.close()


@pytest.fixture(params=KINDS)
def broken(request, tmp_path):
    """A backend of each kind that cannot answer: a failing fake, a model that is not there, an upstream that is down."""
    if request.param == "scripted":
        backend = ScriptedBackend(fail=BackendError("the scripted model failed"))
    elif request.param == "local":
        backend = LocalBackend(str(tmp_path / "no-such-model"))
    else:
        backend = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "m", timeout_s=5)
    yield backend
    backend.close()


def test_stream_pieces_join_into_the_complete_reply(case):
    pieces = list(case.backend.stream(MESSAGES, max_tokens=6))
    assert all(isinstance(p, str) for p in pieces)
    reply = case.backend.complete(MESSAGES, max_tokens=6)
    assert isinstance(reply, str) and "".join(pieces) == reply  # greedy and deterministic: the same reply twice
    if case.expected is not None:
        assert reply == case.expected and len(pieces) > 1  # streamed in pieces, not at once


def test_messages_are_left_as_they_were(case):
    messages = copy.deepcopy(MESSAGES)
    case.backend.complete(messages, max_tokens=4)
    assert messages == MESSAGES


def test_max_tokens_and_temperature_are_accepted_and_honoured(case):
    for temperature in (None, 0, 0.7):
        assert isinstance(case.backend.complete(MESSAGES, max_tokens=3, temperature=temperature), str)
    if case.tokenizer is not None:  # a generating model stops at the cap
        reply = case.backend.complete(MESSAGES, max_tokens=3)
        assert len(case.tokenizer(reply, add_special_tokens=False)["input_ids"]) <= 3


def test_a_failure_is_a_backend_error_raised_while_reading(broken):
    pieces = broken.stream(MESSAGES)  # lazy: nothing is asked of the model yet
    with pytest.raises(BackendError) as e:
        next(pieces)
    assert e.value.status in (500, 502, 504) and len(str(e.value)) > 10
    with pytest.raises(BackendError):
        broken.complete(MESSAGES)


def test_model_id_and_checkpoint(case):
    assert isinstance(case.backend.model_id, str) and case.backend.model_id
    assert case.backend.checkpoint is None  # the base model (or one served elsewhere)


def test_close_twice_and_as_a_context_manager(case):
    with case.backend as backend:
        assert backend is case.backend
    case.backend.close()
