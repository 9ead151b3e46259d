"""What the inspection UI shows, as plain JSON-ready dicts: one method per page.

The HTML pages (:mod:`mindloop.agents.ui.pages`) and the JSON API (:mod:`mindloop.agents.ui.api`)
render the same dicts, so ``/api/...`` always says what a page shows. Reads go
to the memory graph, to :class:`mindloop.trainer.checkpoints.Checkpoints` and to the
files a run writes under ``runs/<id>/`` (:mod:`mindloop.trainer.run`); the one write,
flag review, goes through :class:`mindloop.agents.signal.agent.SignalAgent`, exactly as
``mindloop flags confirm|reject|edit`` does.

    >>> import tempfile
    >>> from mindloop.graph import GraphConfig, HashingEmbedder, MemoryGraph
    >>> g = MemoryGraph.open(GraphConfig(home=tempfile.mkdtemp()), embedder=HashingEmbedder())
    >>> ins = Inspector(g)
    >>> ins.flags()["total"], ins.runs()["runs"]
    (0, [])
    >>> g.close()
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote

from mindloop.agents.cycle.promotion import checkpoint_status, checkpoint_statuses
from mindloop.agents.cycle.scheduler import SchedulerConfig
from mindloop.agents.cycle.service import readiness
from mindloop.agents.signal.agent import SignalAgent, SignalConfig
from mindloop.agents.signal.patterns import describe, resolve_pattern
from mindloop.agents.ui.config import UIConfig
from mindloop.graph import Checkpoint, Example, Flag, MemoryGraph, Node, NodeNotFound, Pattern, Run, Turn
from mindloop.trainer.checkpoints import Checkpoints
from mindloop.trainer.errors import CheckpointError

__all__ = ["Inspector", "evaluation_rows", "fallback_report", "graph_href", "href", "label"]

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
# Node kinds with a page of their own; every other node opens on the graph page.
_PAGE = {"flag": "/flags/{id}", "run": "/runs/{id}"}


def _snippet(text: str | None, n: int = 80) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def label(node: Node) -> str:
    """A short, human label for a node (plain text: templates and the graph drawing escape it)."""
    if isinstance(node, Turn):
        return f"{node.role}: {_snippet(node.text, 48)}"
    if isinstance(node, Flag):
        return f"flag {node.type.replace('_', ' ')} {node.confidence:.2f} ({node.status})"
    if isinstance(node, Pattern):
        return f"pattern: {_snippet(node.name, 48)}"
    if isinstance(node, Example):
        return f"{node.example_kind} example: {_snippet(node.completion, 40)}"
    if isinstance(node, Checkpoint):
        return f"{node.id} ({node.status})"
    text = getattr(node, "text", None) or getattr(node, "reason", None) or getattr(node, "title", None)
    if text:
        return f"{node.kind}: {_snippet(text, 48)}"
    if node.kind == "eval":
        return f"eval {_snippet(getattr(node, 'probes', ''), 40)}"
    return node.id


def href(node_id: str, kind: str) -> str:
    """The page that shows a node best: flags and runs have their own, the rest the graph page.

    >>> href("flag_1", "flag"), href("turn 1", "turn")
    ('/flags/flag_1', '/graph?node=turn%201')
    """
    return _PAGE.get(kind, "/graph?node={id}").format(id=quote(node_id, safe=""))


def graph_href(node_id: str) -> str:
    """The node's neighbourhood on the graph page."""
    return "/graph?node=" + quote(node_id, safe="")


def fallback_report(graph: MemoryGraph, checkpoints: Checkpoints, *, scope: str | None = None) -> dict[str, Any]:
    """The observer report's shape (``mindloop observe --json``) from what exists without surface-observe.

    Checkpoints and their lineage, promotions and rollbacks come from
    ``checkpoints/`` and its history; alerts from the graph's Alert nodes.
    Windows and rate tests are empty: only the observer measures them.
    """
    history = checkpoints.history()
    promoted_at: dict[str, float] = {}
    for ev in history:
        if ev.get("event") == "promote":
            promoted_at[ev["checkpoint"]] = ev.get("at")
    pointer = checkpoints.promoted()
    in_use = pointer["checkpoint"] if pointer else None
    nodes = {n.id: n for n in graph.nodes(kind="checkpoint", scope=scope)}
    statuses = checkpoint_statuses(checkpoints)
    out = []
    for m in checkpoints.list():
        node = nodes.get(m["id"])
        status = "promoted" if m["id"] == in_use else statuses.get(m["id"], node.status if node is not None else
                                                                   ("corrupt" if "error" in m else "candidate"))
        out.append({"id": m["id"], "parent": m.get("parent") if "error" not in m else getattr(node, "parent", None),
                    "promoted_at": promoted_at.get(m["id"]), "status": status, "windows": [], "tests": [],
                    "verdict": "insufficient data"})
    alerts = [{"id": a.id, "kind": str(a.details.get("kind") or "regression"), "message": a.reason,  # type: ignore
               "checkpoint": a.checkpoint, "open": a.status == "open", "created_at": a.created}  # type: ignore
              for a in graph.nodes(kind="alert", scope=scope, newest_first=True)]
    rollbacks = [{"checkpoint": ev.get("checkpoint"), "to": ev.get("to"), "at": ev.get("at"),
                  "reason": ev.get("reason", "")} for ev in history if ev.get("event") == "rollback"]
    return {"in_use": in_use, "checkpoints": out, "alerts": alerts, "rollbacks": rollbacks}


def _default_observer() -> Callable[..., dict[str, Any]] | None:
    """surface-observe's ``report(graph, checkpoints)`` as JSON when it is installed, else None."""
    try:
        from mindloop.agents.cycle.watch import report
    except ImportError:
        return None
    return lambda graph, checkpoints, scope=None: report(graph, checkpoints, scope=scope).to_json()


def _bins(times: list[float], events: list[float]) -> tuple[float, float, float]:
    """(start, width, count) of time bins covering ``times`` and ``events``: hours, days or weeks, <= 40 bins."""
    every = times + events
    lo, hi = min(every), max(every)
    for width in (3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0, 28 * 86400.0):
        if (hi - lo) / width < 40:
            break
    start = math.floor(lo / width) * width
    count = int((hi - start) // width) + 1
    return start, width, count


class Inspector:
    """The UI's read model over one data directory (one scope); see the module docstring.

    Collaborators are injected so tests pass fakes: ``agent`` (flag review),
    ``checkpoints``, ``runs`` (the runs folder), ``observer`` (a
    ``report(graph, checkpoints, scope=) -> dict`` function; surface-observe's by
    default, the fallback report while it is absent) and ``scheduler`` (the
    :class:`~mindloop.agents.cycle.scheduler.SchedulerConfig` whose readiness,
    :func:`mindloop.agents.cycle.service.readiness`, the patterns page shows;
    default: the data directory's ``config.toml``).
    """

    def __init__(self, graph: MemoryGraph, *, agent: SignalAgent | None = None, checkpoints: Checkpoints | None = None,
                 runs: str | Path | None = None, observer: Callable[..., dict[str, Any]] | None = None,
                 scheduler: SchedulerConfig | None = None, config: UIConfig | None = None) -> None:
        self.graph = graph
        self.config = config or UIConfig()
        self.scope = graph.resolve_scope(self.config.scope)
        # Review never runs the detector (confirm, reject, edit and show only read and update flags), so the
        # UI does not load one: the bundled reader would cost seconds and hundreds of MB for nothing.
        self.agent = agent or SignalAgent(graph, None, SignalConfig())  # type: ignore[arg-type]
        self.checkpoints = checkpoints or Checkpoints(graph.config.home / "checkpoints")
        self.runs_root = Path(runs) if runs is not None else graph.config.home / "runs"
        self._observer = observer
        self._scheduler = scheduler

    # -- flags ---------------------------------------------------------------------

    def _pattern_names(self) -> dict[str, str]:
        return {p.id: p.name for p in self.graph.nodes(kind="pattern", scope=self.scope)}  # type: ignore[attr-defined]

    def flags(self, *, pattern: str | None = None, status: str | None = None, min_confidence: float | None = None,
              max_confidence: float | None = None, limit: int | None = None) -> dict[str, Any]:
        """The review queue, newest first: ``{"flags": [...], "total", "shown", "patterns": [...]}``."""
        for name, v in (("min_confidence", min_confidence), ("max_confidence", max_confidence)):
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {v}")
        pid = resolve_pattern(self.graph, pattern, self.scope).id if pattern else None
        found = self.agent.flags(scope=self.scope, status=status, pattern=pid)
        found = [f for f in found if (min_confidence is None or f.confidence >= min_confidence)
                 and (max_confidence is None or f.confidence <= max_confidence)]
        limit = self.config.queue_limit if limit is None else limit
        shown = found[:limit]
        turns = self.graph.store.get_nodes([t for f in shown for t in (f.turn, f.correction) if t])
        names = self._pattern_names()
        rows = []
        for f in shown:
            member = [e.dst for e in self.graph.edges(f.id, kinds=["member_of"], direction="out")]
            reply, correction = turns.get(f.turn), turns.get(f.correction or "")
            rows.append({"id": f.id, "status": f.status, "type": f.type, "confidence": f.confidence,
                         "created": f.created, "session": f.session,
                         "reply": getattr(reply, "text", None), "correction": getattr(correction, "text", None),
                         "edited": f.better_response is not None,
                         "patterns": [{"id": p, "name": names.get(p, p)} for p in member]})
        patterns = [{"id": pid_, "name": name} for pid_, name in sorted(names.items(), key=lambda kv: kv[1])]
        return {"flags": rows, "total": len(found), "shown": len(rows), "patterns": patterns,
                "filters": {"pattern": pid, "status": status, "min_confidence": min_confidence,
                            "max_confidence": max_confidence}}

    def flag(self, flag_id: str) -> dict[str, Any]:
        """One flag for review: :meth:`SignalAgent.show` plus the turns' ids and the patterns' names."""
        info = self.agent.show(flag_id, scope=self.scope)
        names = self._pattern_names()
        info["patterns"] = [{"id": p, "name": names.get(p, p)} for p in info["patterns"]]
        for s in info["similar"]:
            s["href"] = href(s["id"], "flag")
        return info

    def review(self, flag_id: str, action: str, response: str | None = None) -> dict[str, Any]:
        """Confirm, reject or edit a flag (written at once); returns the flag as stored."""
        if action == "confirm":
            flag = self.agent.confirm(flag_id, scope=self.scope)
        elif action == "reject":
            flag = self.agent.reject(flag_id, scope=self.scope)
        elif action == "edit":
            flag = self.agent.edit(flag_id, response, scope=self.scope)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown review action {action!r}; allowed: confirm, reject, edit")
        log.info("flag %s %s through the UI", flag.id, flag.status)
        return flag.to_json()

    # -- patterns ------------------------------------------------------------------

    def _runs_by_pattern(self) -> dict[str, list[Run]]:
        """Each pattern's runs: tagged with it, or trained on its examples."""
        examples = {e.id: e.pattern for e in self.graph.nodes(kind="example", scope=self.scope)}  # type: ignore
        out: dict[str, list[Run]] = {}
        for run in self.graph.nodes(kind="run", scope=self.scope):
            patterns = {run.config.get("pattern")} if run.config.get("pattern") else set()  # type: ignore
            patterns |= {examples.get(e.dst) for e in self.graph.edges(run.id, kinds=["trained_on"], direction="out")}
            for p in patterns - {None}:
                out.setdefault(p, []).append(run)  # type: ignore[arg-type]
        return out

    def patterns(self, *, now: float | None = None) -> dict[str, Any]:
        """Each pattern with its size, readiness and flags over time (promotions and rollbacks marked)."""
        now = now or time.time()
        history = self.checkpoints.history()
        runs = self._runs_by_pattern()
        examples = Counter()
        for e in self.graph.nodes(kind="example", scope=self.scope):
            if e.split == "train" and not self.graph.edges(e.id, kinds=["trained_on"], direction="in"):  # type: ignore
                examples[e.pattern] += 1  # type: ignore[attr-defined]
        scheduler = self.scheduler_config()
        rows = {r.pattern: r for r in readiness(self.graph, scheduler, scope=self.scope, now=now)}
        open_alerts = sum(1 for a in self.graph.nodes(kind="alert", scope=self.scope)
                          if a.status == "open")  # type: ignore[attr-defined]
        out = []
        for p in self.graph.nodes(kind="pattern", scope=self.scope):
            if p.status == "empty":  # type: ignore[attr-defined]
                continue
            d = describe(self.graph, p, now=now)  # type: ignore[arg-type]
            members = self.agent.flags(scope=self.scope, pattern=p.id)
            mine = runs.get(p.id, [])
            row = rows.get(p.id)
            d["readiness"] = {
                "ready": bool(row and row.ripe),
                "waiting_for": list(row.waiting_for) if row else [f"the pattern is {p.status}"],  # type: ignore
                "confirmed": row.confirmed if row else d["by_status"].get("confirmed", 0),
                "needed": scheduler.min_flags, "untrained_flags": row.untrained if row else None,
                "untrained_examples": examples[p.id], "last_run": max((r.created for r in mine), default=None),
                "cooldown_left_s": row.cooldown_left_s if row else 0.0, "open_alerts": open_alerts,
                "plan": row.plan if row else None, "source": "scheduler"}
            d["timeline"] = self._timeline(members, history, {r.id for r in mine})
            d["runs"] = [r.id for r in sorted(mine, key=lambda r: r.created)]
            out.append(d)
        out.sort(key=lambda d: -d["flags"])
        return {"patterns": out, "min_flags": scheduler.min_flags, "cooldown_s": scheduler.cooldown_s}

    def scheduler_config(self) -> SchedulerConfig:
        """The scheduler's settings, whose readiness the UI shows: the injected ones, else the data directory's
        ``config.toml`` (``[scheduler]``)."""
        if self._scheduler is not None:
            return self._scheduler
        from mindloop.graph import load_config

        file = self.graph.config.home / "config.toml"
        return load_config(SchedulerConfig, "scheduler", file=file if file.exists() else None)

    def _timeline(self, members: list[Flag], history: list[dict], runs: set[str]) -> dict[str, Any]:
        """Flags per time bin (all statuses but rejected) and the promotions and rollbacks in that span."""
        times = [f.created for f in members if f.status != "rejected"]
        ckpt_runs = {}
        for n in self.graph.nodes(kind="checkpoint", scope=self.scope):
            ckpt_runs[n.id] = n.manifest.get("run")  # type: ignore[attr-defined]
        events = []
        for ev in history:
            if ev.get("event") in ("promote", "rollback") and ev.get("at") is not None:
                if ev["event"] == "promote" and str(ev.get("reason", "")).startswith("rollback of"):
                    continue  # the promotion a rollback makes is shown as the rollback
                events.append({"at": ev["at"], "event": ev["event"], "checkpoint": ev.get("checkpoint"),
                               "to": ev.get("to"), "reason": ev.get("reason", ""),
                               "this_pattern": ckpt_runs.get(ev.get("checkpoint")) in runs})
        if not times:
            return {"bins": [], "width_s": None, "events": events}
        start, width, count = _bins(times, [e["at"] for e in events])
        counts = [0] * count
        for t in times:
            counts[min(int((t - start) // width), count - 1)] += 1
        return {"bins": [{"start": start + i * width, "flags": n} for i, n in enumerate(counts)],
                "width_s": width, "events": events}

    # -- the memory graph ----------------------------------------------------------

    def node(self, node_id: str, *, hops: int = 1) -> dict[str, Any]:
        """The neighbourhood of a node within ``hops`` (1-3): nodes with labels and links, and edges."""
        import networkx as nx

        if not 1 <= hops <= 3:
            raise ValueError(f"hops must be 1, 2 or 3, got {hops}")
        centre = self.graph.get(node_id)
        sub = self.graph.view.neighbourhood(node_id, hops=hops)
        depth = nx.single_source_shortest_path_length(sub.to_undirected(as_view=True), node_id)
        keep = sorted(depth, key=lambda n: (depth[n], sub.nodes[n].get("created", 0), n))
        truncated = max(0, len(keep) - self.config.graph_max_nodes)
        keep = keep[: self.config.graph_max_nodes]
        records = self.graph.store.get_nodes(keep)
        nodes = [{"id": n, "kind": records[n].kind, "label": label(records[n]), "depth": depth[n],
                  "href": href(n, records[n].kind)} for n in keep if n in records]
        kept = {n["id"] for n in nodes}
        edges = [{"source": s, "target": d, "kind": k} for s, d, k in sub.edges(keys=True) if s in kept and d in kept]
        record = centre.to_json()
        return {"node": {"id": centre.id, "kind": centre.kind, "label": label(centre),
                         "href": href(centre.id, centre.kind), "record": record},
                "hops": hops, "nodes": nodes, "edges": edges, "truncated": truncated}

    def search(self, text: str, *, k: int = 20, kinds: Iterable[str] | None = None) -> dict[str, Any]:
        """The graph's hybrid search, with a label and a link per hit."""
        if not 1 <= k <= 100:
            raise ValueError(f"k must be between 1 and 100, got {k}")
        hits = self.graph.search(text, k, kinds=list(kinds) if kinds else None, scope=self.scope)
        return {"query": text, "index_note": self.graph.index_note,
                "hits": [{"id": h.node.id, "kind": h.node.kind, "label": label(h.node), "score": h.score,
                          "signals": h.signals, "href": href(h.node.id, h.node.kind),
                          "graph_href": graph_href(h.node.id)} for h in hits]}

    # -- runs and checkpoints ------------------------------------------------------

    def _run_dir(self, run_id: str) -> Path | None:
        if not _RUN_ID.match(run_id):
            raise NodeNotFound(f"{run_id!r} is not a run id")
        d = self.runs_root / run_id
        return d if d.is_dir() else None

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    @staticmethod
    def _status(d: Path | None) -> str | None:
        try:
            return (d / "status").read_text(encoding="utf-8").strip() if d is not None else None
        except OSError:
            return None

    def _produced(self, run_id: str) -> str | None:
        return next((e.dst for e in self.graph.edges(run_id, kinds=["produced"], direction="out")), None)

    def runs(self) -> dict[str, Any]:
        """Every run, newest first: recorded in the graph, or only on disk (killed or failed runs)."""
        nodes = {r.id: r for r in self.graph.nodes(kind="run", scope=self.scope)}
        names = self._pattern_names()
        on_disk = sorted(p.name for p in self.runs_root.iterdir() if p.is_dir()) if self.runs_root.is_dir() else []
        out = []
        for run_id in set(nodes) | {n for n in on_disk if _RUN_ID.match(n)}:
            node, d = nodes.get(run_id), self._run_dir(run_id)
            config = node.config if node is not None else (self._read_json(d / "config.json") or {})  # type: ignore
            created = node.created if node is not None else d.stat().st_mtime  # type: ignore[union-attr]
            metrics = node.metrics if node is not None else {}  # type: ignore[union-attr]
            out.append({"id": run_id, "status": self._status(d) or (node.status if node else "unknown"),  # type: ignore
                        "created": created, "objective": config.get("objective"), "method": config.get("method"),
                        "pattern": config.get("pattern"), "pattern_name": names.get(config.get("pattern") or ""),
                        "final_loss": metrics.get("final_loss"),
                        "checkpoint": self._produced(run_id) if node is not None else None,
                        "in_graph": node is not None})
        out.sort(key=lambda r: -r["created"])
        return {"runs": out}

    def run(self, run_id: str) -> dict[str, Any]:
        """One run: config, status, loss per step, the before/after table, its examples, its checkpoint's lineage."""
        d = self._run_dir(run_id)
        try:
            node = self.graph.get(run_id, self.scope)
        except NodeNotFound:
            node = None
        if node is not None and not isinstance(node, Run):
            raise NodeNotFound(f"{run_id!r} is a {node.kind}, not a run")
        if node is None and d is None:
            raise NodeNotFound(f"no run {run_id!r} in the graph or under {self.runs_root}")
        config = (node.config if node is not None else None) or (self._read_json(d / "config.json") if d else {}) or {}
        steps = []
        if d is not None and (d / "steps.jsonl").exists():
            for line in (d / "steps.jsonl").read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a killed run
                if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                    steps.append({k: v for k, v in row.items() if isinstance(v, (int, float))})
        metrics = ((self._read_json(d / "metrics.json") if d else None)
                   or (node.metrics if node is not None else None) or {})
        before, after = metrics.get("before"), metrics.get("after")
        checkpoint = self._produced(run_id) if node is not None else None
        return {"id": run_id, "status": self._status(d) or (node.status if node is not None else "unknown"),
                "created": node.created if node is not None else None,
                "finished": node.finished if node is not None else None,
                "config": config, "steps": steps, "has_loss_png": bool(d and (d / "loss.png").is_file()),
                "evaluation": evaluation_rows(before, after), "before": before, "after": after,
                "examples": self._examples(run_id) if node is not None else [],
                "checkpoint": checkpoint, "lineage": self.lineage(checkpoint) if checkpoint else [],
                "in_graph": node is not None}

    def loss_png(self, run_id: str) -> Path:
        """The loss curve image the trainer drew (matplotlib), for the run page's link."""
        d = self._run_dir(run_id)
        if d is None or not (d / "loss.png").is_file():
            raise NodeNotFound(f"run {run_id!r} has no loss.png")
        return d / "loss.png"

    def _examples(self, run_id: str) -> list[dict[str, Any]]:
        ids = [e.dst for e in self.graph.edges(run_id, kinds=["trained_on"], direction="out")]
        examples = self.graph.store.get_nodes(ids)
        derived = {i: [e.dst for e in self.graph.edges(i, kinds=["derived_from"], direction="out")] for i in examples}
        sources = self.graph.store.get_nodes([s for v in derived.values() for s in v])
        out = []
        for i in ids:
            ex = examples.get(i)
            if not isinstance(ex, Example):
                continue
            user = next((m.get("content") for m in reversed(ex.prompt) if m.get("role") == "user"), None)
            out.append({"id": ex.id, "kind": ex.example_kind, "split": ex.split, "source": ex.source,
                        "pattern": ex.pattern, "prompt": user, "completion": ex.completion, "rejected": ex.rejected,
                        "derived_from": [{"id": s, "kind": sources[s].kind, "label": label(sources[s]),
                                          "href": href(s, sources[s].kind)} for s in derived[i] if s in sources]})
        order = {"accept": 0, "pushback": 1, "general": 2}
        return sorted(out, key=lambda e: (order.get(e["kind"], 3), e["split"] != "train"))

    def _checkpoint_info(self, checkpoint_id: str, statuses: dict[str, str]) -> dict[str, Any] | None:
        try:
            node = self.graph.get(checkpoint_id)
        except NodeNotFound:
            node = None
        if isinstance(node, Checkpoint):
            return {"id": node.id, "parent": node.parent, "run": node.manifest.get("run"), "created": node.created,
                    "status": checkpoint_status(self.graph, self.checkpoints, node.id, statuses=statuses)}
        try:
            m = self.checkpoints.get(checkpoint_id)
        except CheckpointError:
            return None
        return {"id": checkpoint_id, "parent": m.get("parent"), "status": "candidate", "run": m.get("run"),
                "created": m.get("created")}

    def lineage(self, checkpoint_id: str) -> list[dict[str, Any]]:
        """The checkpoint's ancestors (oldest first), itself, then its children; ``in_use`` marks the promoted one."""
        pointer = self.checkpoints.promoted()
        in_use = pointer["checkpoint"] if pointer else None
        statuses = checkpoint_statuses(self.checkpoints)
        chain, seen, at = [], set(), checkpoint_id
        while at and at not in seen and len(chain) < 100:
            seen.add(at)
            info = self._checkpoint_info(at, statuses)
            if info is None:
                chain.append({"id": at, "parent": None, "status": "missing", "run": None, "created": None})
                break
            chain.append(info)
            at = info["parent"]
        chain.reverse()
        children = [self._checkpoint_info(n.id, statuses) for n in self.graph.nodes(kind="checkpoint", scope=self.scope)
                    if n.parent == checkpoint_id]  # type: ignore[attr-defined]
        out = [{**c, "relation": "ancestor"} for c in chain[:-1]] + [{**chain[-1], "relation": "this"}]
        out += [{**c, "relation": "child"} for c in children if c is not None]
        for c in out:
            c["in_use"] = c["id"] == in_use
            c["status"] = "promoted" if c["in_use"] else c["status"]
        return out

    def checkpoint_list(self) -> dict[str, Any]:
        """Every checkpoint on disk (its graph status when recorded), which one is in use, and the history."""
        pointer = self.checkpoints.promoted()
        in_use = pointer["checkpoint"] if pointer else None
        nodes = {n.id: n for n in self.graph.nodes(kind="checkpoint", scope=self.scope)}
        statuses = checkpoint_statuses(self.checkpoints)
        items = []
        for m in self.checkpoints.list():
            node = nodes.get(m["id"])
            status = "promoted" if m["id"] == in_use else statuses.get(m["id"], getattr(node, "status", "candidate"))
            items.append({"id": m["id"], "parent": m.get("parent"), "run": m.get("run"), "kind": m.get("kind"),
                          "created": m.get("created"), "error": m.get("error"), "in_use": m["id"] == in_use,
                          "status": status})
        return {"in_use": in_use, "checkpoints": items, "history": self.checkpoints.history()}

    # -- the observer --------------------------------------------------------------

    def observer(self) -> dict[str, Any]:
        """surface-observe's report (``mindloop observe --json``), or :func:`fallback_report` until it exists."""
        report = self._observer or _default_observer()
        if report is None:
            return {**fallback_report(self.graph, self.checkpoints, scope=self.scope), "source": "fallback"}
        return {**report(self.graph, self.checkpoints, scope=self.scope), "source": "observer"}


# The before/after table of a run: (label, key path, which way is better).
_EVAL_ROWS = (
    ("target margin", ("kinds", "target", "mean_margin"), "higher"),
    ("target win rate", ("kinds", "target", "win_rate"), "higher"),
    ("push-back margin", ("kinds", "pushback", "mean_margin"), "higher"),
    ("push-back win rate", ("kinds", "pushback", "win_rate"), "higher"),
    ("capability win rate", ("kinds", "capability", "win_rate"), "higher"),
    ("capability margin", ("kinds", "capability", "mean_margin"), "higher"),
    ("perplexity", ("perplexity",), "lower"),
    ("attention on the instruction", ("attention_mass",), "higher"),
    ("steering projection", ("steering", "projection"), "higher"),
)


def _at(d: Any, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return float(d) if isinstance(d, (int, float)) and not isinstance(d, bool) else None


def evaluation_rows(before: dict | None, after: dict | None) -> list[dict[str, Any]]:
    """The rows of the before/after table: the trainer's metrics, push-back retention and perplexity drift.

    >>> rows = evaluation_rows({"kinds": {"pushback": {"mean_margin": 2.0}}, "perplexity": 10.0},
    ...                        {"kinds": {"pushback": {"mean_margin": 1.9}}, "perplexity": 10.1})
    >>> [(r["metric"], r["after"]) for r in rows if r["metric"] in ("push-back retention", "perplexity drift")]
    [('push-back retention', 0.95), ('perplexity drift', 0.01)]
    """
    rows = []
    for name, path, better in _EVAL_ROWS:
        b, a = _at(before, path), _at(after, path)
        if b is None and a is None:
            continue
        rows.append({"metric": name, "before": b, "after": a, "better": better,
                     "change": None if a is None or b is None else round(a - b, 6)})
        if name == "push-back margin" and a is not None and b is not None and b > 0:
            rows.append({"metric": "push-back retention", "before": None, "after": round(a / b, 4),
                         "better": "higher", "change": None, "note": "after ÷ before mean margin (target ≥ 0.95)"})
        if name == "perplexity" and a is not None and b:
            rows.append({"metric": "perplexity drift", "before": None, "after": round(a / b - 1, 4),
                         "better": "lower", "change": None, "note": "after ÷ before − 1 (target ≤ 0.02)"})
    known = {"target", "pushback", "capability"}
    for kind in sorted(set((before or {}).get("kinds", {}) or {}) | set((after or {}).get("kinds", {}) or {})):
        if kind in known:
            continue
        b, a = _at(before, ("kinds", kind, "mean_margin")), _at(after, ("kinds", kind, "mean_margin"))
        rows.append({"metric": f"{kind} margin", "before": b, "after": a, "better": "higher",
                     "change": None if a is None or b is None else round(a - b, 6)})
    return rows
