"""The terminal chat: streaming output and the slash commands."""

from __future__ import annotations

import io

import pytest

from mindloop.agents.chat.backends import BackendError, ScriptedBackend
from mindloop.agents.terminal import run_chat
from mindloop.agents.cli import main
from mindloop.agents.chat.loop import ChatLoop
from mindloop.graph import Memory


def scripted_input(lines):
    it = iter(lines)

    def read(prompt):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


def test_chat_streams_and_handles_commands(graph):
    mem = graph.add(Memory(text="Alice renames things exactly as she says", memory_kind="preference"))
    assert graph.flush()
    loop = ChatLoop(graph, ScriptedBackend(["Sure, renamed it.", "Done again."]))
    out = io.StringIO()
    try:
        n = run_chat(loop, "c1", read=scripted_input(
            ["/memories", "/flag", "rename things exactly", "/memories", "/flag too chatty", "/bogus", "",
             "second message", "/forget", "/memories", "/quit", "never read"]), out=out)
        assert loop.history("c1") == []
    finally:
        loop.close()
    text = out.getvalue()
    assert n == 2
    assert text.count("no memories were surfaced") == 2  # before the first turn, and after /forget
    assert "nothing to flag yet" in text
    assert "bot> Sure, renamed it.\n" in text
    assert f"[preference] Alice renames things exactly as she says  (id {mem.id}" in text
    assert "flagged the last reply" in text and "too chatty" in text
    assert "unknown command '/bogus'" in text
    assert "forgot this session: 6 node(s) removed" in text  # session, 4 turns, the flag
    assert graph.session_turns("c1") == [] and graph.nodes(kind="flag") == []


def test_flag_is_a_confirmed_flag_on_the_reply(graph):
    loop = ChatLoop(graph, ScriptedBackend(["Maybe use a class instead?"]))
    try:
        run_chat(loop, "c", read=scripted_input(["make it a function", "/flag ignored my direction"]),
                 out=io.StringIO())
    finally:
        loop.close()
    [flag] = graph.nodes(kind="flag")
    reply = graph.session_turns("c")[1]
    assert (flag.turn, flag.status, flag.reason, flag.confidence) == (reply.id, "confirmed", "ignored my direction", 1.0)
    assert [e.dst for e in graph.edges(flag.id, kinds=["flags"])] == [reply.id]


def test_model_errors_are_shown_and_the_chat_goes_on(graph):
    loop = ChatLoop(graph, ScriptedBackend(fail=BackendError("upstream down")))
    out = io.StringIO()
    try:
        assert run_chat(loop, "c", read=scripted_input(["hello", "again"]), out=out) == 0
    finally:
        loop.close()
    assert out.getvalue().count("[error] upstream down (your message was logged)") == 2
    assert [t.text for t in graph.session_turns("c")] == ["hello", "again"]


def test_serve_refuses_a_public_bind_without_token(home, capsys, monkeypatch):
    monkeypatch.delenv("MINDLOOP_API_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "8999"]) == 2
    assert "refusing to listen on 0.0.0.0 without a token" in capsys.readouterr().err


def test_chat_command_reads_stdin(home, monkeypatch, capsys):
    """`mindloop chat` end to end through the CLI, with a scripted model behind make_backend."""
    import mindloop.agents.chat.backends as backends

    monkeypatch.setattr(backends, "make_backend", lambda cfg, checkpoints=None: ScriptedBackend(["hi there"]))
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/quit\n"))
    assert main(["chat", "--session", "cli"]) == 0
    assert "bot> hi there" in capsys.readouterr().out


@pytest.mark.parametrize("words", [["chat", "--help"], ["serve", "--help"]])
def test_help_documents_defaults(words, capsys):
    with pytest.raises(SystemExit):
        main(words)
    out = capsys.readouterr().out
    assert "--upstream" in out and "default" in out
