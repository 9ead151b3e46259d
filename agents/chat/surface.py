"""Surfacing: the first half of surface-observe. Relevant memories go into the model's context.

For a new user turn, :class:`Surfacer` searches the session's scope for
Memory nodes (lessons from past corrections, preferences, notes), keeps those
that are close enough, and packs them best-first into a block bounded by a
token budget. The block goes into the system message; the loop records a
``surfaced`` edge from each memory to the assistant turn it was shown for,
and the per-turn counts (which memories, of what kind, for which checkpoint)
that the observer reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from mindloop.graph import MemoryGraph

__all__ = ["SurfaceConfig", "Surfaced", "Surfacer", "with_memories"]

HEADER = "Notes from earlier conversations with this user. Follow them when they apply:"


@dataclass
class SurfaceConfig:
    """How memories are surfaced. Section ``[surface]`` of config.toml."""

    budget_tokens: int = field(default=256, metadata={"help": "token budget of the surfaced block; 0 = surfacing off"})
    k: int = field(default=8, metadata={"help": "memories considered per turn (before the budget)"})
    min_similarity: float = field(default=0.3, metadata={
        "help": "cosine similarity a memory needs, unless it also matched lexically; 0 = no floor"})
    kinds: tuple[str, ...] = field(default=("lesson", "preference", "note", "correction"), metadata={
        "help": "memory kinds that may be surfaced"})

    def __post_init__(self) -> None:
        from mindloop.graph import ConfigError

        if self.budget_tokens < 0 or self.k < 1:
            raise ConfigError("surface.budget_tokens must be >= 0 and surface.k >= 1")
        if not -1.0 <= self.min_similarity <= 1.0:
            raise ConfigError(f"surface.min_similarity must be in [-1, 1], got {self.min_similarity}")
        self.kinds = tuple(self.kinds)


@dataclass
class Surfaced:
    """One memory put into the context."""

    id: str
    kind: str  # the memory's kind: lesson, preference, note, correction
    text: str
    score: float
    similarity: float | None

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "text": self.text, "score": self.score,
                "similarity": self.similarity}


def _approx_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)  # ~4 characters per token for English BPE vocabularies


class Surfacer:
    """Finds the memories to surface for a user turn.

    ``count_tokens`` measures the block against the budget; the default is
    an estimate (4 characters a token), the loop passes the model's tokenizer
    when it has one.
    """

    def __init__(self, graph: MemoryGraph, config: SurfaceConfig | None = None,
                 count_tokens: Callable[[str], int] = _approx_tokens) -> None:
        self.graph = graph
        self.config = config or SurfaceConfig()
        self.count_tokens = count_tokens

    def __call__(self, text: str, scope: str) -> list[Surfaced]:
        cfg = self.config
        if cfg.budget_tokens == 0 or not text.strip():
            return []
        hits = self.graph.search(text, cfg.k, kinds=["memory"], scope=scope, hops=0)
        chosen: list[Surfaced] = []
        used = self.count_tokens(HEADER)
        for h in hits:
            kind = getattr(h.node, "memory_kind", "note")
            if kind not in cfg.kinds:
                continue
            sim = next((r["similarity"] for r in h.reasons if r["signal"] == "vector"), None)
            lexical = "lexical" in h.signals
            if not lexical and (sim is None or sim < cfg.min_similarity):
                continue
            line = f"- ({kind}) {h.node.text}"
            cost = self.count_tokens(line)
            if used + cost > cfg.budget_tokens:
                continue  # a shorter memory further down may still fit
            used += cost
            chosen.append(Surfaced(h.node.id, kind, h.node.text, h.score, sim))
        return chosen


def with_memories(messages: Sequence[dict[str, str]], surfaced: Sequence[Surfaced]) -> list[dict[str, str]]:
    """``messages`` with the surfaced block added to the system message (one is created if absent)."""
    out = [dict(m) for m in messages]
    if not surfaced:
        return out
    block = HEADER + "\n" + "\n".join(f"- ({s.kind}) {s.text}" for s in surfaced)
    if out and out[0]["role"] == "system":
        out[0]["content"] = out[0]["content"].rstrip() + "\n\n" + block
    else:
        out.insert(0, {"role": "system", "content": block})
    return out
