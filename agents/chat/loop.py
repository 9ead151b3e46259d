"""The agent loop every chat turn goes through: surface -> respond -> log -> signal (a LangGraph StateGraph).

- ``surface``: memories relevant to the new user turn, from the session's
  scope, bounded by a token budget (:mod:`mindloop.agents.chat.surface`);
- ``respond``: the chat model's reply, streamed out through LangGraph's
  custom stream as it is generated;
- ``log``: the user turn and the reply into the memory graph, in one
  transaction, with model, checkpoint, latency and ``surfaced`` edges; when
  the model failed, the user turn is logged with the failure in its meta.
  The embedding worker starts on them once the whole turn is done;
- ``signal``: hands the new turn pair to the training-signal agent (a no-op
  hook until that agent lands).

Loop state is checkpointed per session (thread id = scope + session) in
``loop.db`` with LangGraph's ``SqliteSaver``, or in Postgres when
``MINDLOOP_POSTGRES_URL`` is set, so a terminal chat resumes where it was.

    >>> import tempfile
    >>> from mindloop.graph import GraphConfig, HashingEmbedder, MemoryGraph
    >>> from mindloop.agents.chat.backends import ScriptedBackend
    >>> g = MemoryGraph.open(GraphConfig(home=tempfile.mkdtemp()), embedder=HashingEmbedder())
    >>> loop = ChatLoop(g, ScriptedBackend(["Renamed."]))
    >>> loop.run("s1", "rename foo to bar").reply
    'Renamed.'
    >>> [t.role for t in g.session_turns("s1")]
    ['user', 'assistant']
    >>> loop.close(); g.close()
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, TypedDict

from mindloop.agents.chat.backends import BackendError, ChatBackend
from mindloop.agents.chat.surface import Surfaced, Surfacer, with_memories
from mindloop.graph import MemoryGraph, Turn
from mindloop.graph.wal import BACKSTOP_AUTOCHECKPOINT_PAGES, WalCheckpointer

__all__ = ["ChatLoop", "TurnResult", "open_checkpointer"]

log = logging.getLogger(__name__)


class LoopState(TypedDict, total=False):
    session: str
    scope: str
    history: list[dict[str, str]]  # the conversation before the new user message
    user: str  # the new user message
    params: dict[str, Any]  # max_tokens, temperature
    received: float
    surfaced: list[dict[str, Any]]
    reply: str | None
    error: str | None
    error_status: int | None
    latency_ms: float | None
    user_turn: str | None
    assistant_turn: str | None


@dataclass
class TurnResult:
    """What one pass through the loop produced."""

    session: str
    scope: str
    reply: str | None
    user_turn: str | None
    assistant_turn: str | None
    surfaced: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: float | None = None
    error: str | None = None
    error_status: int | None = None

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> "TurnResult":
        return cls(session=s["session"], scope=s["scope"], reply=s.get("reply"), user_turn=s.get("user_turn"),
                   assistant_turn=s.get("assistant_turn"), surfaced=s.get("surfaced") or [],
                   latency_ms=s.get("latency_ms"), error=s.get("error"), error_status=s.get("error_status"))


def open_checkpointer(home: str | os.PathLike, postgres_url: str | None = None):
    """LangGraph's checkpointer: Postgres when a URL is given (or MINDLOOP_POSTGRES_URL), else ``home/loop.db``."""
    url = postgres_url or os.environ.get("MINDLOOP_POSTGRES_URL")
    if url:
        try:
            from langgraph.checkpoint.postgres import PostgresSaver
            from psycopg import Connection
        except ImportError:
            raise BackendError("MINDLOOP_POSTGRES_URL is set but langgraph-checkpoint-postgres is not installed: "
                               "pip install 'mindloop[postgres]'", status=500) from None
        conn = Connection.connect(url, autocommit=True, prepare_threshold=0)
        saver = PostgresSaver(conn)
        saver.setup()
        return saver
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(os.path.join(home, "loop.db"), check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    # No fsync per checkpoint: the turns are durable in graph.db already; a power cut can cost the resume
    # point of the last turn, never a logged turn. It takes one fsync (and its tail) off every chat turn.
    conn.execute("PRAGMA synchronous=NORMAL")
    # checkpointed by ChatLoop's WalCheckpointer between turns, not inside one turn in a hundred
    conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_AUTOCHECKPOINT_PAGES}")
    return SqliteSaver(conn)


def _wal_checkpointer(checkpointer) -> WalCheckpointer | None:
    """A background checkpointer for a SQLite-backed LangGraph checkpointer's file; None for any other."""
    conn = getattr(checkpointer, "conn", None)
    if not isinstance(conn, sqlite3.Connection):
        return None
    path = next((r[2] for r in conn.execute("PRAGMA database_list") if r[1] == "main"), "")
    return WalCheckpointer(path) if path else None  # "" is an in-memory database


class ChatLoop:
    """Runs turns through the LangGraph loop against ``backend``, logging into ``graph``.

    ``on_pair(user_turn, assistant_turn, state)`` is the ``signal`` hook; it
    runs after both turns are committed, and an exception in it is logged,
    never raised to the chatting user.
    """

    def __init__(self, graph: MemoryGraph, backend: ChatBackend, *, surfacer: Surfacer | None = None,
                 checkpointer=None, on_pair: Callable[[Turn, Turn, dict], None] | None = None,
                 durability: str = "exit") -> None:
        from langgraph.graph import END, START, StateGraph

        self.graph = graph
        self.backend = backend
        self.surfacer = surfacer or Surfacer(graph)
        self.on_pair = on_pair
        self.durability = durability  # "exit": one checkpoint write per turn, not one per step
        self.checkpointer = checkpointer if checkpointer is not None else open_checkpointer(graph.config.home)
        self._wal = _wal_checkpointer(self.checkpointer)
        builder = StateGraph(LoopState)
        builder.add_node("surface", self._surface)
        builder.add_node("respond", self._respond)
        builder.add_node("log", self._log)
        builder.add_node("signal", self._signal)
        builder.add_edge(START, "surface")
        builder.add_edge("surface", "respond")
        builder.add_edge("respond", "log")
        builder.add_edge("log", "signal")
        builder.add_edge("signal", END)
        self.app = builder.compile(checkpointer=self.checkpointer)

    # -- nodes -------------------------------------------------------------------

    def _surface(self, state: LoopState) -> dict:
        found: Sequence[Surfaced] = self.surfacer(state["user"], state["scope"])
        return {"surfaced": [s.to_json() for s in found]}

    def _respond(self, state: LoopState) -> dict:
        from langgraph.config import get_stream_writer

        write = get_stream_writer()
        surfaced = [Surfaced(**s) for s in state.get("surfaced") or []]
        messages = with_memories([*state.get("history", []), {"role": "user", "content": state["user"]}], surfaced)
        started = time.perf_counter()
        pieces: list[str] = []
        try:
            for piece in self.backend.stream(messages, **(state.get("params") or {})):
                pieces.append(piece)
                write({"delta": piece})
        except BackendError as e:
            return {"reply": None, "error": str(e), "error_status": e.status,
                    "latency_ms": (time.perf_counter() - started) * 1000}
        return {"reply": "".join(pieces), "error": None, "error_status": None,
                "latency_ms": (time.perf_counter() - started) * 1000}

    def _log(self, state: LoopState) -> dict:
        g = self.graph
        surfaced = state.get("surfaced") or []
        reply = state.get("reply")
        user_meta: dict[str, Any] = {"surfaced": [{"id": s["id"], "kind": s["kind"]} for s in surfaced]}
        if state.get("error"):
            user_meta["error"] = state["error"]
        turns = [dict(role="user", text=state["user"], created=state["received"], meta=user_meta,
                      model=self.backend.model_id, checkpoint=self.backend.checkpoint)]
        if reply is not None and reply.strip():
            turns.append(dict(role="assistant", text=reply, model=self.backend.model_id,
                              checkpoint=self.backend.checkpoint, latency_ms=state.get("latency_ms"),
                              meta={"surfaced": user_meta["surfaced"]}))
        elif reply is not None:
            user_meta["error"] = "the model returned an empty reply"
        # Both turns and the surfaced edges to the reply: one transaction, all or nothing.
        links = [(s["id"], 1, "surfaced", {"score": s["score"]}) for s in surfaced] if len(turns) == 2 else []
        # Committed, not yet fsynced: the store's sync thread does that beside the steps left, and the turn
        # waits for it before it answers (run and stream call graph.sync()).
        logged = g.log_turns(state["session"], turns, scope=state["scope"], links=links, sync=False)
        history = [*state.get("history", []), {"role": "user", "content": state["user"]}]
        if len(logged) == 2:
            history.append({"role": "assistant", "content": reply})
        return {"user_turn": logged[0].id, "assistant_turn": logged[1].id if len(logged) == 2 else None,
                "history": history}

    def _signal(self, state: LoopState) -> dict:
        if self.on_pair is not None and state.get("assistant_turn"):
            try:
                user = self.graph.get(state["user_turn"])
                reply = self.graph.get(state["assistant_turn"])
                self.on_pair(user, reply, dict(state))  # type: ignore[arg-type]
            except Exception:  # the signal agent must never break a chat
                log.exception("signal hook failed for turn %s", state.get("assistant_turn"))
        return {}

    # -- running -----------------------------------------------------------------

    def _input(self, session: str, user: str, scope: str | None, history: Sequence[dict] | None,
               params: dict[str, Any]) -> tuple[dict, dict]:
        from mindloop.graph.records import check_text

        scope = self.graph.resolve_scope(scope)
        check_text(user, max_bytes=self.graph.config.max_text_bytes, what="user message")
        state: dict[str, Any] = {"session": session, "scope": scope, "user": user, "params": params,
                                 "received": time.time(), "surfaced": [], "reply": None, "error": None,
                                 "error_status": None, "latency_ms": None, "user_turn": None,
                                 "assistant_turn": None}
        if history is not None:
            state["history"] = [dict(m) for m in history]
        config = {"configurable": {"thread_id": f"{scope}\x1f{session}"}}
        return state, config

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Background work waits while a turn runs: the embedding worker, and the WAL checkpoints of graph.db
        and loop.db (a checkpoint is slow, and the log steps it overlapped were among the slowest)."""
        with self.graph.defer_embedding(), (self._wal.held() if self._wal is not None else nullcontext()):
            yield

    def stream(self, session: str, user: str, *, scope: str | None = None, history: Sequence[dict] | None = None,
               **params) -> Iterator[str | TurnResult]:
        """Yield the reply's text pieces as they are generated, then the :class:`TurnResult`.

        ``history`` replaces the stored conversation (an OpenAI client sends it
        whole each time); without it the session's checkpointed history is used.
        """
        state, config = self._input(session, user, scope, history, {k: v for k, v in params.items() if v is not None})
        final: dict[str, Any] = {}
        with self._quiet():  # the new turns are embedded once the turn is done (see run)
            for mode, chunk in self.app.stream(state, config, stream_mode=["custom", "values"],
                                               durability=self.durability):
                if mode == "custom":
                    yield chunk["delta"]
                else:
                    final = chunk
            self.graph.sync()  # the logged turns are on the disk before the turn answers (see run)
        if self._wal is not None:
            self._wal.notify()
        yield TurnResult.from_state(final)

    def run(self, session: str, user: str, *, scope: str | None = None, history: Sequence[dict] | None = None,
            **params) -> TurnResult:
        """One turn, without streaming.

        Nothing reads the reply's pieces, so the graph runs without LangGraph's custom stream: with it, every
        step runs on a thread of its own beside a stream waiter, a cost on every turn (docs/benchmarks.md).

        The embedding worker starts on the new turns once the turn is done (``graph.defer_embedding``): woken by
        the log step's commit, its encode would take the CPU from the exit checkpoint, which then runs longer
        (docs/benchmarks.md).
        """
        state, config = self._input(session, user, scope, history, {k: v for k, v in params.items() if v is not None})
        with self._quiet():
            result = TurnResult.from_state(self.app.invoke(state, config, durability=self.durability))
            # The logged turns are on the disk before the turn answers, and before the worker starts: its
            # commits' fsyncs would queue ahead of this one and make the turn wait for them.
            self.graph.sync()
        if self._wal is not None:
            self._wal.notify()
        return result

    def history(self, session: str, scope: str | None = None) -> list[dict[str, str]]:
        """The checkpointed conversation of a session."""
        _, config = self._input(session, "x", scope, None, {})
        return list(self.app.get_state(config).values.get("history", []))

    def reset(self, session: str, scope: str | None = None) -> None:
        """Forget a session's checkpointed loop state (the memory graph is handled by ``graph.forget``)."""
        scope = self.graph.resolve_scope(scope)
        self.checkpointer.delete_thread(f"{scope}\x1f{session}")

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()
        conn = getattr(self.checkpointer, "conn", None)
        if conn is not None:
            conn.close()
