"""Memory-dependence scores: how much a reply relied on the memories surfaced for it.

For an assistant turn that had memories surfaced, the score is the reply's
mean token log-probability with the surfaced block in the context minus
without it, under the model in use (a local backend). A high score is
behaviour the model shows only when reminded: a candidate to bake into the
weights, listed beside the flags (``mindloop flags list``).

The score is stored on the turn as ``meta["memory_dependence"]``
(``{"score", "with", "without", "checkpoint"}``).
"""

from __future__ import annotations

import logging
from typing import Any

from mindloop.agents.chat.surface import Surfaced, with_memories
from mindloop.graph import MemoryGraph, NodeNotFound, Turn

__all__ = ["candidates", "score_turns"]

log = logging.getLogger(__name__)


def _surfaced(graph: MemoryGraph, turn: Turn) -> list[Surfaced]:
    out = []
    for s in turn.meta.get("surfaced") or []:
        try:
            node = graph.get(s["id"])
        except NodeNotFound:  # forgotten since: score on what is left
            continue
        out.append(Surfaced(node.id, s.get("kind", "note"), node.text, 0.0, None))  # type: ignore[attr-defined]
    return out


def score_turns(graph: MemoryGraph, backend, *, scope: str | None = None, since: float | None = None,
                limit: int = 50, redo: bool = False) -> list[dict[str, Any]]:
    """Score up to ``limit`` recent assistant turns that had memories surfaced; returns what was scored."""
    if not hasattr(backend, "response_logprob"):
        raise TypeError("memory-dependence scores need a local model (log-probabilities); "
                        f"{type(backend).__name__} has none")
    done = []
    for turn in graph.nodes(kind="turn", scope=scope, since=since, newest_first=True):
        if len(done) >= limit:
            break
        if turn.role != "assistant" or not turn.meta.get("surfaced"):  # type: ignore[attr-defined]
            continue
        if "memory_dependence" in turn.meta and not redo:  # type: ignore[attr-defined]
            continue
        surfaced = _surfaced(graph, turn)  # type: ignore[arg-type]
        if not surfaced:
            continue
        turns = graph.session_turns(turn.session, turn.scope)  # type: ignore[arg-type]
        history = [{"role": t.role, "content": t.text} for t in turns if t.index < turn.index]  # type: ignore
        with_block = backend.response_logprob(with_memories(history, surfaced), turn.text)  # type: ignore
        without = backend.response_logprob(history, turn.text)  # type: ignore[attr-defined]
        result = {"score": round(with_block - without, 4), "with": round(with_block, 4),
                  "without": round(without, 4), "checkpoint": backend.checkpoint}
        turn.meta = {**turn.meta, "memory_dependence": result}  # type: ignore[attr-defined]
        graph.update(turn)
        done.append({"turn": turn.id, "session": turn.session, **result})
    return done


def candidates(graph: MemoryGraph, *, scope: str | None = None, min_score: float = 0.5,
               limit: int = 20) -> list[dict[str, Any]]:
    """Scored turns at or above ``min_score`` (nats per token), highest first."""
    out = []
    for t in graph.nodes(kind="turn", scope=scope):
        dep = t.meta.get("memory_dependence") if t.role == "assistant" else None  # type: ignore[attr-defined]
        if dep and dep["score"] >= min_score:
            out.append({"turn": t.id, "session": t.session, "text": t.text, **dep})  # type: ignore[attr-defined]
    return sorted(out, key=lambda d: -d["score"])[:limit]
