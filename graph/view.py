"""The networkx view of the store: neighbourhoods, paths and communities.

The view is a ``networkx.MultiDiGraph`` whose nodes carry ``kind``, ``scope``,
``session`` and ``created``, and whose edges are keyed by edge kind. It is
built once from ``graph.db`` and then kept current by replaying the store's
append-only history from the last sequence number it saw, so writes by this
process and by any other process sharing the data directory show up without
a rebuild. Replay happens before each read and costs one indexed query when
nothing changed.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from typing import Iterable, Sequence

import networkx as nx

from mindloop.graph.errors import NodeNotFound
from mindloop.graph.store import Store

__all__ = ["GraphView"]


class GraphView:
    """An incrementally maintained networkx view of a :class:`mindloop.graph.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._g = nx.MultiDiGraph()
        self._seq = 0
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        self.store.settle()
        conn = self.store.conn
        conn.execute("BEGIN")  # one read snapshot for the seq and the tables
        try:
            self._seq = self.store.last_seq()
            for node_id, kind, scope, session, created in conn.execute(
                "SELECT id, kind, scope, session, created FROM nodes"
            ):
                self._g.add_node(node_id, kind=kind, scope=scope, session=session, created=created)
            for src, dst, kind in conn.execute("SELECT src, dst, kind FROM edges"):
                self._g.add_edge(src, dst, key=kind, kind=kind)
        finally:
            conn.execute("COMMIT")

    def sync(self) -> nx.MultiDiGraph:
        """Apply history newer than the view and return the graph."""
        with self._lock:
            while True:
                rows = self.store.history_since(self._seq, limit=50_000)
                if not rows:
                    return self._g
                for seq, at, op, node, kind, scope, session, dst, payload in rows:
                    if op == "node+" or op == "node~":
                        created = at
                        if payload:
                            created = json.loads(payload).get("created", at)
                        if op == "node+" or node not in self._g:
                            self._g.add_node(node, kind=kind, scope=scope, session=session, created=created)
                    elif op == "node-":
                        if node in self._g:
                            self._g.remove_node(node)
                    elif op == "edge+":
                        if node in self._g and dst in self._g:
                            self._g.add_edge(node, dst, key=kind, kind=kind)
                    elif op == "edge-":
                        if self._g.has_edge(node, dst, key=kind):
                            self._g.remove_edge(node, dst, key=kind)
                    self._seq = seq

    @property
    def nx(self) -> nx.MultiDiGraph:
        """The current networkx graph (read-only by convention: change the graph through MemoryGraph)."""
        return self.sync()

    def expand(self, seeds: Sequence[str], *, scope: str, hops: int, edge_kinds: Iterable[str],
               keep=None) -> list[tuple[str, str, list[str], list[str]]]:
        """Breadth-first from each seed in turn along ``edge_kinds`` (either direction), up to ``hops``.

        Returns ``(node, seed, path, edge_kinds_on_path)``, each node once, in
        order of (seed order, distance). A seed can be reached from an earlier
        seed (being near another good candidate is evidence too), never from
        itself. Nodes outside ``scope`` are never entered; nodes failing
        ``keep(attrs)`` are walked through but not returned.
        """
        g = self.sync()
        allowed = set(edge_kinds)
        found: list[tuple[str, str, list[str], list[str]]] = []
        reported: set[str] = set()
        for seed in seeds:
            if seed not in g:
                continue
            seen = {seed}
            queue = deque([(seed, [seed], [])])
            while queue:
                node, path, kinds = queue.popleft()
                if len(path) - 1 >= hops:
                    continue
                neighbours = [(d, k) for _, d, k in g.out_edges(node, keys=True)]
                neighbours += [(s, k) for s, _, k in g.in_edges(node, keys=True)]
                for other, kind in neighbours:
                    if kind not in allowed or other in seen:
                        continue
                    attrs = g.nodes[other]
                    if attrs.get("scope") != scope:
                        continue
                    seen.add(other)
                    step_path, step_kinds = path + [other], kinds + [kind]
                    if other not in reported and (keep is None or keep(attrs)):
                        reported.add(other)
                        found.append((other, seed, step_path, step_kinds))
                    queue.append((other, step_path, step_kinds))
        return found

    def neighbourhood(self, node_id: str, hops: int = 1, edge_kinds: Iterable[str] | None = None) -> nx.MultiDiGraph:
        """The subgraph within ``hops`` of ``node_id`` (both directions), as a copy."""
        g = self.sync()
        if node_id not in g:
            raise NodeNotFound(f"no node with id {node_id!r}")
        scope = g.nodes[node_id]["scope"]
        kinds = set(edge_kinds) if edge_kinds is not None else {k for *_, k in g.edges(keys=True)}
        members = {node_id} | {n for n, *_ in self.expand([node_id], scope=scope, hops=hops, edge_kinds=kinds)}
        return g.subgraph(members).copy()

    def path(self, a: str, b: str) -> list[str]:
        """A shortest path between two nodes, ignoring edge direction; [] if none."""
        g = self.sync()
        for n in (a, b):
            if n not in g:
                raise NodeNotFound(f"no node with id {n!r}")
        try:
            return nx.shortest_path(g.to_undirected(as_view=True), a, b)
        except nx.NetworkXNoPath:
            return []

    def communities(self, scope: str, kinds: Iterable[str] | None = None, seed: int = 0,
                    resolution: float = 1.0) -> list[set[str]]:
        """Louvain communities of one scope's nodes (optionally of some kinds), largest first.

        ``resolution`` below 1 favours fewer, larger communities (networkx's Louvain parameter).
        """
        g = self.sync()
        wanted = set(kinds) if kinds is not None else None
        members = [n for n, a in g.nodes(data=True)
                   if a.get("scope") == scope and (wanted is None or a.get("kind") in wanted)]
        sub = nx.Graph(g.subgraph(members).to_undirected(as_view=True))
        if sub.number_of_nodes() == 0:
            return []
        found = nx.community.louvain_communities(sub, seed=seed, resolution=resolution)
        return sorted((set(c) for c in found), key=len, reverse=True)
