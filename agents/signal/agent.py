"""The training-signal agent: flags corrected assistant turns, reviews them, feeds patterns and examples.

It runs in two places:

- in the chat loop, as the ``signal`` hook (:meth:`SignalAgent.on_pair`):
  each new user turn is checked against the assistant turn before it;
- in batch over stored logs (:meth:`SignalAgent.detect_all`, ``mindloop detect --all``).

A flag is a :class:`graph.Flag` node with a ``flags`` edge to the corrected
assistant turn and a ``corrects`` edge from the user's correction to it. Its id
is derived from the assistant turn, so detecting twice flags once. Review
(confirm, reject, edit) changes the flag's status; only confirmed flags feed
:mod:`mindloop.agents.signal.compose`.

    >>> import tempfile
    >>> from mindloop.graph import GraphConfig, HashingEmbedder, MemoryGraph
    >>> from mindloop.agents.signal.detect import Detector
    >>> g = MemoryGraph.open(GraphConfig(home=tempfile.mkdtemp()), embedder=HashingEmbedder())
    >>> _ = g.log_turns("s1", [{"role": "user", "text": "Format this as JSON: name Ada."},
    ...                        {"role": "assistant", "text": "You might prefer YAML instead."},
    ...                        {"role": "user", "text": "No, JSON please, exactly as I asked."}])
    >>> agent = SignalAgent(g, Detector.load(HashingEmbedder()))
    >>> [f.correction is not None for f in agent.detect_all()["flags"]]
    [True]
    >>> g.close()
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from mindloop.agents.signal.detect import Detection, Detector, Pair
from mindloop.graph import Flag, MemoryGraph, NodeNotFound, Turn
from mindloop.graph.records import check_text

__all__ = ["SignalAgent", "SignalConfig", "flag_id"]

log = logging.getLogger(__name__)


@dataclass
class SignalConfig:
    """Settings of the training-signal agent. Section ``[signal]`` of config.toml."""

    threshold: float | None = field(default=None, metadata={
        "help": "confidence from which a follow-up counts as a correction, in (0, 1); unset = the threshold "
                "chosen when the detector was trained"})
    reader: str = field(default="bundled", metadata={
        "choices": ("bundled", "off"),
        "help": "model that reads each follow-up in context for the detector: 'bundled' (SmolLM2-135M base) "
                "or 'off' (rules, tf-idf and MiniLM only: less memory, lower precision and recall)"})
    judge: str = field(default="off", metadata={
        "choices": ("off", "model"),
        "help": "LLM judge as a third opinion: 'off' or 'model' (the configured chat model)"})
    auto_confirm_above: float | None = field(default=None, metadata={
        "help": "flags at or above this confidence are confirmed without review; unset = off"})
    window: int = field(default=6, metadata={"help": "turns of conversation shown before a flagged reply"})
    similar_threshold: float = field(default=0.55, metadata={
        "help": "cosine similarity from which two flags get a similar_to edge"})
    join_threshold: float = field(default=0.5, metadata={
        "help": "cosine similarity to a pattern's centre from which a new flag joins that pattern"})
    min_pattern_size: int = field(default=2, metadata={"help": "flags a cluster needs to become a pattern"})
    pattern_resolution: float = field(default=0.5, metadata={
        "help": "Louvain resolution for grouping flags; below 1 gives fewer, larger patterns (at 1 one failure "
                "split in two on the demo data)"})

    def __post_init__(self) -> None:
        from mindloop.graph.config import ConfigError

        for name in ("threshold", "auto_confirm_above"):
            v = getattr(self, name)
            if v is not None and not 0.0 < float(v) <= 1.0:
                raise ConfigError(f"signal.{name} must be in (0, 1], got {v!r}")
        if self.reader not in ("bundled", "off"):
            raise ConfigError(f"signal.reader must be 'bundled' or 'off', got {self.reader!r}")
        if self.judge not in ("off", "model"):
            raise ConfigError(f"signal.judge must be 'off' or 'model', got {self.judge!r}")
        for name in ("similar_threshold", "join_threshold"):
            if not -1.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"signal.{name} must be a cosine similarity in [-1, 1]")
        if self.pattern_resolution <= 0:
            raise ConfigError(f"signal.pattern_resolution must be positive, got {self.pattern_resolution}")
        if self.min_pattern_size < 1 or self.window < 0:
            raise ConfigError("signal.min_pattern_size must be >= 1 and signal.window >= 0")


def flag_id(scope: str, assistant_turn: str) -> str:
    """The id of the flag on an assistant turn: one flag per turn."""
    return "flag_" + hashlib.sha256(f"{scope}\0{assistant_turn}".encode()).hexdigest()[:32]


def _context(turns: Sequence[Turn], upto: int) -> list[dict[str, str]]:
    return [{"role": t.role, "content": t.text} for t in turns[:upto]]


def correction_pairs(turns: Sequence[Turn]) -> list[tuple[Turn, Turn, Pair]]:
    """Every (assistant turn, the user turn right after it, the Pair to score) in one session's turns."""
    out = []
    for i in range(len(turns) - 1):
        reply, follow = turns[i], turns[i + 1]
        if reply.role == "assistant" and follow.role == "user":
            out.append((reply, follow, Pair(context=_context(turns, i), response=reply.text, followup=follow.text)))
    return out


class SignalAgent:
    """Detects corrections in a memory graph and manages the flags. See the module docstring."""

    def __init__(self, graph: MemoryGraph, detector: Detector, config: SignalConfig | None = None) -> None:
        self.graph = graph
        self.detector = detector
        self.config = config or SignalConfig()

    # -- detecting ---------------------------------------------------------------

    def _flag(self, reply: Turn, follow: Turn, d: Detection) -> Flag:
        scope = reply.scope
        fid = flag_id(scope, reply.id)
        try:
            return self.graph.get(fid)  # type: ignore[return-value]
        except NodeNotFound:
            pass
        status = "new"
        if self.config.auto_confirm_above is not None and d.confidence >= self.config.auto_confirm_above:
            status = "confirmed"
        flag = Flag(scope=scope, id=fid, session=reply.session, turn=reply.id, correction=follow.id, type=d.type,
                    confidence=round(d.confidence, 4), evidence=d.evidence, status=status,
                    reason=f"{follow.text} || {reply.text}")
        with self.graph.transaction():
            self.graph.add(flag, [(fid, reply.id, "flags")])
            self.graph.link(follow.id, reply.id, "corrects", {"confidence": round(d.confidence, 4)})
        return flag

    def check(self, reply: Turn, follow: Turn, context: list[dict[str, str]]) -> Flag | None:
        """Score one (assistant turn, user follow-up) pair; store and return the flag if it is a correction."""
        d = self.detector.detect(Pair(context=context, response=reply.text, followup=follow.text))
        return self._flag(reply, follow, d) if d.is_correction else None

    def on_pair(self, user_turn: Turn, assistant_turn: Turn, state: dict) -> None:
        """The chat loop's ``signal`` hook: does the new user turn correct the assistant turn before it?"""
        turns = self.graph.session_turns(user_turn.session, user_turn.scope)  # type: ignore[arg-type]
        at = next((i for i, t in enumerate(turns) if t.id == user_turn.id), None)
        if at is None or at == 0 or turns[at - 1].role != "assistant":
            return
        flag = self.check(turns[at - 1], user_turn, _context(turns, at - 1))
        if flag is not None:
            from mindloop.agents.signal.patterns import join_pattern

            log.info("flagged turn %s (%s, %.2f)", flag.turn, flag.type, flag.confidence)
            join_pattern(self.graph, self.detector.embedder, flag, self.config)

    def detect_all(self, *, scope: str | None = None, sessions: Iterable[str] | None = None,
                   since: float | None = None, batch: int = 256) -> dict[str, Any]:
        """Score every (assistant turn, next user turn) pair in ``scope`` that has no flag yet.

        Returns ``{"pairs": scored, "flags": [new Flag, ...], "skipped": already flagged}``.
        """
        scope = self.graph.resolve_scope(scope)
        by_session: dict[str, list[Turn]] = {}
        for t in self.graph.nodes(kind="turn", scope=scope):
            by_session.setdefault(t.session, []).append(t)  # type: ignore[arg-type]
        wanted = set(sessions) if sessions is not None else None
        todo: list[tuple[Turn, Turn, Pair]] = []
        skipped = 0
        for name, turns in sorted(by_session.items()):
            if wanted is not None and name not in wanted:
                continue
            turns.sort(key=lambda t: t.index)
            for reply, follow, pair in correction_pairs(turns):
                if since is not None and follow.created < since:
                    continue
                if self.graph.edges(reply.id, kinds=["flags"], direction="in"):
                    skipped += 1
                    continue
                todo.append((reply, follow, pair))
        flags: list[Flag] = []
        for start in range(0, len(todo), batch):
            chunk = todo[start: start + batch]
            for (reply, follow, _), d in zip(chunk, self.detector.score([p for *_, p in chunk])):
                if d.is_correction:
                    flags.append(self._flag(reply, follow, d))
        return {"pairs": len(todo), "flags": flags, "skipped": skipped}

    # -- review ------------------------------------------------------------------

    def get_flag(self, flag_id: str, scope: str | None = None) -> Flag:
        node = self.graph.get(flag_id, self.graph.resolve_scope(scope) if scope else None)
        if not isinstance(node, Flag):
            raise NodeNotFound(f"{flag_id!r} is a {node.kind}, not a flag")
        return node

    def flags(self, *, scope: str | None = None, status: str | None = None,
              pattern: str | None = None) -> list[Flag]:
        """Flags of a scope, newest first, optionally of one status or pattern."""
        if status is not None and status not in Flag.STATUSES:
            raise ValueError(f"unknown flag status {status!r}; allowed: {', '.join(Flag.STATUSES)}")
        out = [f for f in self.graph.nodes(kind="flag", scope=scope, newest_first=True)
               if status is None or f.status == status]  # type: ignore[attr-defined]
        if pattern is not None:
            members = {e.src for e in self.graph.edges(pattern, kinds=["member_of"], direction="in")}
            out = [f for f in out if f.id in members]
        return out  # type: ignore[return-value]

    def set_status(self, flag_id: str, status: str, *, scope: str | None = None) -> Flag:
        flag = self.get_flag(flag_id, scope)
        flag.status = status
        flag.__post_init__()  # validates the status
        return self.graph.update(flag)  # type: ignore[return-value]

    def confirm(self, flag_id: str, **kw) -> Flag:
        return self.set_status(flag_id, "confirmed", **kw)

    def reject(self, flag_id: str, **kw) -> Flag:
        return self.set_status(flag_id, "rejected", **kw)

    def edit(self, flag_id: str, better_response: str, *, scope: str | None = None) -> Flag:
        """Record the response the assistant should have given (it also confirms the flag)."""
        flag = self.get_flag(flag_id, scope)
        flag.better_response = check_text(better_response, max_bytes=self.graph.config.max_text_bytes,
                                          what="better response")
        flag.status = "confirmed"
        return self.graph.update(flag)  # type: ignore[return-value]

    def show(self, flag_id: str, *, scope: str | None = None, similar: int = 5) -> dict[str, Any]:
        """Everything a reviewer needs: the window, the flagged reply, the correction, evidence, similar flags."""
        flag = self.get_flag(flag_id, scope)
        turns = self.graph.session_turns(flag.session, flag.scope)  # type: ignore[arg-type]
        at = next((i for i, t in enumerate(turns) if t.id == flag.turn), len(turns))
        window = turns[max(0, at - self.config.window): at]
        correction = next((t for t in turns if t.id == flag.correction), None)
        after = turns[at + 2] if at + 2 < len(turns) and correction is not None else None
        patterns = [e.dst for e in self.graph.edges(flag.id, kinds=["member_of"], direction="out")]
        sims = sorted(self.graph.edges(flag.id, kinds=["similar_to"]), key=lambda e: -e.data.get("score", 0))
        similar_flags = []
        for e in sims[:similar]:
            other = e.dst if e.src == flag.id else e.src
            try:
                o = self.get_flag(other)
            except NodeNotFound:
                continue
            similar_flags.append({"id": o.id, "type": o.type, "status": o.status, "score": e.data.get("score"),
                                  "correction": o.reason.split(" || ")[0]})
        return {"flag": flag.to_json(), "patterns": patterns,
                "window": [{"role": t.role, "text": t.text} for t in window],
                "flagged": turns[at].text if at < len(turns) else None,
                "correction": correction.text if correction else None,
                "reply_after_correction": after.text if after is not None and after.role == "assistant" else None,
                "similar": similar_flags}
