"""Hybrid retrieval: vector top-k, lexical BM25 and graph expansion, fused by reciprocal rank.

Each signal ranks candidates on its own; a node's fused score is
``sum(1 / (rrf_k + rank))`` over the signals that found it (Cormack et al.,
2009), so no signal's raw scale has to be calibrated against another's. The
top fused candidates then seed a breadth-first expansion over the configured
edge kinds; neighbours the query did not find itself are ranked by (seed
rank, hops) and fused in the same way (a neighbour it did find keeps its own
score and gets the path as a reason: a third vote let the neighbours of an
exact match outrank it). Every :class:`Hit` says which signals returned it and, for the graph
signal, along which path. Nothing ever crosses the search's scope.

The lexical query runs on a second thread while the query is embedded
(:meth:`mindloop.graph.embed.Embedder.embed_query`, which leaves it a core), so the
vector and lexical signals cost about as much as the slower one.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from mindloop.graph.records import Node

if TYPE_CHECKING:
    from mindloop.graph.memory_graph import MemoryGraph

__all__ = ["Hit", "hybrid_search"]


@dataclass
class Hit:
    """One search result: the node, its fused score (higher is better) and why it was returned."""

    node: Node
    score: float
    reasons: list[dict[str, Any]] = field(default_factory=list)

    @property
    def signals(self) -> list[str]:
        return [r["signal"] for r in self.reasons]

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node.to_json(), "score": self.score, "reasons": self.reasons}


_pool: ThreadPoolExecutor | None = None


def _lexical_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mindloop-lexical")
    return _pool


def hybrid_search(graph: "MemoryGraph", text: str, *, k: int, scope: str, kinds: Sequence[str] | None,
                  since: float | None, hops: int) -> list[Hit]:
    cfg = graph.config
    n = max(cfg.search_candidates, k)
    lexical_f: Future = _lexical_pool().submit(
        lambda: graph.store.lexical(text, scope=scope, kinds=kinds, since=since, limit=n,
                                    budget=cfg.search_lexical_budget or None)
    )
    vector: list[tuple[str, float]] = []
    index = graph.index
    if index is not None:
        q = graph.embedder.embed_query(text[: cfg.embed_max_chars])
        vector = index.query(scope, q, n, kinds=kinds, since=since)
    lexical = lexical_f.result()

    scores: dict[str, float] = {}
    reasons: dict[str, list[dict[str, Any]]] = {}

    def add(node_id: str, rank: int, reason: dict[str, Any]) -> None:
        scores[node_id] = scores.get(node_id, 0.0) + 1.0 / (cfg.rrf_k + rank)
        reasons.setdefault(node_id, []).append({"rank": rank, **reason})

    for rank, (node_id, sim) in enumerate(vector, 1):
        add(node_id, rank, {"signal": "vector", "similarity": sim})
    for rank, (node_id, bm25) in enumerate(lexical, 1):
        add(node_id, rank, {"signal": "lexical", "bm25": round(-bm25, 6)})

    if hops > 0 and scores and cfg.search_expand_from > 0:
        seeds = sorted(scores, key=scores.get, reverse=True)[: cfg.search_expand_from]
        wanted = set(kinds) if kinds else None

        def keep(attrs: dict) -> bool:
            return (wanted is None or attrs.get("kind") in wanted) and (since is None or attrs.get("created", 0) >= since)

        expanded = graph.view.expand(seeds, scope=scope, hops=hops, edge_kinds=cfg.search_edge_kinds, keep=keep)
        direct = set(scores)
        rank = 0
        for node_id, seed, path, edge_kinds in expanded:
            reason = {"signal": "graph", "from": seed, "path": path, "edges": edge_kinds}
            if node_id in direct:
                # already found by the query itself: the path is recorded, but a neighbour of the best hit must
                # not outrank it by collecting a third vote (it did: an exact match fell out of the top 5)
                reasons[node_id].append({"rank": None, **reason})
                continue
            rank += 1
            add(node_id, rank, reason)

    top = sorted(scores, key=lambda i: (-scores[i], i))[: k * 2]
    nodes = graph.store.get_nodes(top, scope=scope)
    hits = [Hit(node=nodes[i], score=round(scores[i], 6), reasons=reasons[i]) for i in top if i in nodes]
    return hits[:k]
