"""The agent loop: surface -> respond -> log -> signal, with a scripted model."""

from __future__ import annotations

import os
import threading

import pytest

from mindloop.agents.chat.backends import BackendError, ScriptedBackend
from mindloop.agents.chat.loop import ChatLoop, TurnResult
from mindloop.agents.chat.surface import HEADER, SurfaceConfig, Surfacer, with_memories
from mindloop.graph import InvalidText, Memory


@pytest.fixture
def loop(graph):
    lp = ChatLoop(graph, ScriptedBackend(["Renamed parse_cfg to load_config.", "Done."]))
    yield lp
    lp.close()


def test_turn_is_logged_with_model_latency_and_order(loop, graph):
    result = loop.run("s1", "Rename parse_cfg to load_config.", scope="alice")
    assert isinstance(result, TurnResult) and result.reply == "Renamed parse_cfg to load_config."
    turns = graph.session_turns("s1", scope="alice")
    assert [(t.role, t.text) for t in turns] == [("user", "Rename parse_cfg to load_config."),
                                                 ("assistant", "Renamed parse_cfg to load_config.")]
    assert [t.id for t in turns] == [result.user_turn, result.assistant_turn]
    assert turns[1].model == "scripted" and turns[1].latency_ms >= 0
    assert turns[0].created <= turns[1].created


def test_streaming_yields_pieces_then_the_result(loop):
    items = list(loop.stream("s", "go"))
    pieces, result = items[:-1], items[-1]
    assert "".join(pieces) == result.reply and len(pieces) > 1


def test_run_and_stream_give_the_same_turn_and_run_stays_on_the_callers_thread(graph):
    import threading

    threads = []

    def reply(messages):
        threads.append(threading.get_ident())
        return "Renamed it as asked."

    lp = ChatLoop(graph, ScriptedBackend(reply))
    try:
        ran = lp.run("a", "rename foo to bar")
        streamed = list(lp.stream("b", "rename foo to bar"))[-1]
        assert (ran.reply, len(ran.surfaced)) == (streamed.reply, len(streamed.surfaced))
        assert lp.history("a") == lp.history("b")  # both checkpointed the same conversation
        # run() needs no stream of pieces, so LangGraph runs its steps inline; stream() hands them to a thread
        assert threads[0] == threading.get_ident() and threads[1] != threading.get_ident()
    finally:
        lp.close()



@pytest.mark.parametrize("how", ["run", "stream"])
def test_the_worker_starts_on_a_turn_once_its_checkpoint_is_written(loop, graph, monkeypatch, how):
    """Woken by the log step's commit, the worker's encode took the CPU from the turn's exit checkpoint."""
    woken: list[list[dict]] = []  # the session's checkpointed history when the worker was woken
    monkeypatch.setattr(graph.worker._wake, "set", lambda: woken.append(loop.history("s")))
    if how == "run":
        loop.run("s", "rename foo to bar")
    else:
        list(loop.stream("s", "rename foo to bar"))
    assert [[m["role"] for m in h] for h in woken] == [["user", "assistant"]]  # once, after the checkpoint
    monkeypatch.undo()
    later = loop.run("s", "and baz too")
    assert graph.flush() and later.user_turn in graph.index.ids("default")


@pytest.mark.parametrize("how", ["run", "stream"])
def test_a_turn_answers_once_its_logged_turns_are_on_the_disk(loop, graph, monkeypatch, how):
    """The log step commits without its fsync, which the store's thread runs beside the turn's last steps."""
    entered, release = threading.Event(), threading.Event()

    def fdatasync(fd):
        entered.set()
        assert release.wait(30)

    monkeypatch.setattr(os, "fdatasync", fdatasync, raising=False)
    monkeypatch.setattr(os, "fsync", fdatasync)
    answered: list[TurnResult] = []
    turn = threading.Thread(target=lambda: answered.append(
        loop.run("s", "rename foo to bar") if how == "run" else list(loop.stream("s", "rename foo to bar"))[-1]))
    turn.start()
    try:
        assert entered.wait(30), "the logged turns were never synced"
        assert len(graph.session_turns("s")) == 2  # committed before the sync
        turn.join(0.2)
        assert turn.is_alive() and not answered, "the turn answered before its logged turns were on the disk"
    finally:
        release.set()
        turn.join(30)
    assert answered and answered[0].assistant_turn


@pytest.mark.parametrize("how", ["run", "stream"])
def test_the_worker_starts_on_a_turn_only_once_its_fsync_is_done(loop, graph, monkeypatch, how):
    """The worker's own commits' fsyncs queued ahead of the turn's: a tenth of the turns waited 12-17 ms."""
    order: list[str] = []
    woken = threading.Event()

    def fdatasync(fd):
        woken.wait(0.3)  # a worker woken before this sync is done would get here first
        order.append("synced")

    def wake():
        order.append("woken")
        woken.set()

    monkeypatch.setattr(os, "fdatasync", fdatasync, raising=False)
    monkeypatch.setattr(os, "fsync", fdatasync)
    monkeypatch.setattr(graph.worker._wake, "set", wake)
    if how == "run":
        loop.run("s", "rename foo to bar")
    else:
        list(loop.stream("s", "rename foo to bar"))
    assert order[:2] == ["synced", "woken"]  # the turn's sync, then the wake (the worker's own writes sync later)


def test_no_wal_checkpoint_runs_inside_a_turn(loop, graph, monkeypatch):
    """Due right after the log step's commit, graph.db's checkpoint waits until the turn has answered.

    Through ``run`` only: through ``stream`` this probe saw no checkpoint inside the turn even without the
    hold, so it could not fail there (``stream`` holds it the same way, in ``ChatLoop._quiet``)."""
    ck = graph.store.checkpointer
    monkeypatch.setattr(ck, "delay_s", 0.0)
    ran = ck.checkpoints
    inside: list[bool] = []
    sync = graph.sync

    def sync_last(timeout=None):  # the turn's last call before it answers
        inside.append(ck.wait(ran + 1, timeout=0.3))
        return sync(timeout)

    monkeypatch.setattr(graph, "sync", sync_last)
    loop.run("s", "rename foo to bar")
    assert inside == [False], "a checkpoint ran inside the turn"
    assert ck.wait(ran + 1, timeout=30)


def test_history_is_checkpointed_per_session(loop, graph):
    loop.run("s", "first")
    loop.run("s", "second")
    sent = loop.backend.calls[-1]
    assert [m["content"] for m in sent] == ["first", "Renamed parse_cfg to load_config.", "second"]
    assert loop.history("s")[-1] == {"role": "assistant", "content": "Done."}
    assert loop.history("other") == []
    # an explicit history (what an OpenAI client sends) replaces the stored one
    loop.run("s", "third", history=[{"role": "system", "content": "be brief"}])
    assert [m["role"] for m in loop.backend.calls[-1]] == ["system", "user"]


def test_relevant_memories_are_surfaced_and_recorded(graph):
    lesson = graph.add(Memory(text="When asked to rename, just rename; do not propose refactors.",
                              memory_kind="lesson"))
    graph.add(Memory(text="Prefers the metric system for recipes.", memory_kind="preference"))
    graph.add(Memory(text="rename rule for another user", memory_kind="lesson", scope="bob"))
    assert graph.flush()
    backend = ScriptedBackend(["Renamed."])
    loop = ChatLoop(graph, backend, surfacer=Surfacer(graph, SurfaceConfig(min_similarity=0.9)))
    try:
        result = loop.run("s", "please rename the module to utils")
        assert [s["id"] for s in result.surfaced] == [lesson.id]  # lexical match; the recipe note is not
        system = backend.calls[0][0]
        assert system["role"] == "system" and HEADER in system["content"] and "just rename" in system["content"]
        edges = graph.edges(lesson.id, kinds=["surfaced"], direction="out")
        assert [e.dst for e in edges] == [result.assistant_turn]
        reply = graph.get(result.assistant_turn)
        assert reply.meta["surfaced"] == [{"id": lesson.id, "kind": "lesson"}]
    finally:
        loop.close()


def test_a_memory_forgotten_while_the_model_replies_does_not_cost_the_turn(graph):
    """The surfaced edges go in with the turns; one to a memory deleted meanwhile used to fail the whole log."""
    graph.add(Memory(text="When asked to rename, just rename.", memory_kind="lesson", session="notes"))
    assert graph.flush()

    def reply(messages):
        graph.forget(session="notes")  # the user forgets the memory while the reply is generated
        return "Renamed."

    loop = ChatLoop(graph, ScriptedBackend(reply), surfacer=Surfacer(graph, SurfaceConfig(min_similarity=0.9)))
    try:
        result = loop.run("s", "please rename the module to utils")
        assert len(result.surfaced) == 1 and result.error is None
        assert [t.text for t in graph.session_turns("s")] == ["please rename the module to utils", "Renamed."]
        assert graph.edges(result.assistant_turn, kinds=["surfaced"]) == []
    finally:
        loop.close()


def test_surfacing_respects_the_token_budget(graph):
    for i in range(5):
        graph.add(Memory(text=f"rename rule number {i}: " + "always rename exactly " * 10, memory_kind="lesson"))
    assert graph.flush()
    # header ~21 tokens + ~63 per memory (4 characters a token): two fit in 160, three do not
    found = Surfacer(graph, SurfaceConfig(budget_tokens=160, min_similarity=0.0))("rename rule", "default")
    assert len(found) == 2
    block = with_memories([], found)[0]["content"]
    assert len(block) / 4 <= 160
    assert Surfacer(graph, SurfaceConfig(budget_tokens=0))("rename rule", "default") == []


def test_with_memories_merges_into_an_existing_system_message():
    from mindloop.agents.chat.surface import Surfaced

    s = [Surfaced("m1", "note", "uses tabs", 0.1, 0.8)]
    out = with_memories([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], s)
    assert out[0]["content"].startswith("be brief\n\n" + HEADER) and len(out) == 2
    assert with_memories([{"role": "user", "content": "hi"}], [])[0] == {"role": "user", "content": "hi"}


def test_model_failure_logs_the_user_turn_with_the_error(graph):
    loop = ChatLoop(graph, ScriptedBackend(fail=BackendError("upstream x timed out", status=504)))
    try:
        result = loop.run("s", "hello?")
        assert result.reply is None and result.error_status == 504 and "timed out" in result.error
        turns = graph.session_turns("s")
        assert [t.role for t in turns] == ["user"] and turns[0].meta["error"] == "upstream x timed out"
        assert result.assistant_turn is None
    finally:
        loop.close()


def test_signal_hook_gets_the_pair_and_cannot_break_the_chat(graph):
    seen = []

    def hook(user, reply, state):
        seen.append((user.text, reply.text))
        raise RuntimeError("signal agent bug")

    loop = ChatLoop(graph, ScriptedBackend(["ok"]), on_pair=hook)
    try:
        assert loop.run("s", "hi").reply == "ok"
        assert seen == [("hi", "ok")]
    finally:
        loop.close()


def test_bad_user_text_is_rejected_before_anything_runs(loop, graph):
    with pytest.raises(InvalidText):
        loop.run("s", "   ")
    assert loop.backend.calls == [] and graph.nodes(kind="turn") == []


def test_reset_forgets_loop_state(loop):
    loop.run("s", "first")
    loop.reset("s")
    assert loop.history("s") == []
