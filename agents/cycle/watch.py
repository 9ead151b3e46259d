"""The watch: the checkpoint in use against its predecessor, on the turns each served; alerts and rollback.

    mindloop observe [--json]            # per checkpoint: windows, rates, tests, verdicts; open alerts; rollbacks
    mindloop observe --watch             # run the watch now: raise alerts and roll back what got worse

Every assistant turn the loop logs records the model and checkpoint
that wrote it (imported logs, which name no model, are not counted). For a
promoted checkpoint, :func:`watch` compares the turns it served with the turns
its predecessor served in the ``baseline_s`` before the promotion: the share of
turns flagged in the trained pattern, the share flagged outside it, and the
share that needed a correction memory surfaced. Each rise is a one-sided
Fisher exact test (Bonferroni over the three), and no verdict is given before both sides have
``min_turns`` turns. A significant rise raises an ``Alert``, rolls back to the
parent (:func:`mindloop.agents.cycle.promotion.rollback`, a ``rolled_back`` edge
from the alert) and shrinks the pattern's next run
(:func:`mindloop.agents.cycle.plans.shrink_plan`). :func:`report` is what
``mindloop observe --json`` prints.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from mindloop.agents.cycle.gate import ObserveConfig
from mindloop.agents.cycle.plans import shrink_plan
from mindloop.agents.cycle.promotion import checkpoint_node, checkpoint_status, checkpoint_statuses, in_use, rollback
from mindloop.graph import Alert, MemoryGraph, NodeNotFound

__all__ = ["open_alerts", "report", "watch"]


@dataclass
class _TurnStat:
    created: float
    checkpoint: str | None
    patterns: frozenset[str]
    surfaced_corrections: int
    dependence: float | None


def _turn_stats(graph: MemoryGraph, scope: str | None, since: float, kinds: Sequence[str]) -> list[_TurnStat]:
    flagged: dict[str, set[str]] = defaultdict(set)
    for f in graph.nodes(kind="flag", scope=scope):
        if f.status == "rejected":  # type: ignore[attr-defined]
            continue
        pats = [e.dst for e in graph.edges(f.id, kinds=["member_of"], direction="out")]
        flagged[f.turn].update(pats or ["(no pattern)"])  # type: ignore[attr-defined]
    out = []
    for t in graph.nodes(kind="turn", scope=scope, since=since):
        # only what a model served through the loop: imported logs name no model and no checkpoint
        if t.role != "assistant" or not t.model:  # type: ignore[attr-defined]
            continue
        meta = t.meta  # type: ignore[attr-defined]
        dep = meta.get("memory_dependence")
        out.append(_TurnStat(t.created, t.checkpoint, frozenset(flagged.get(t.id, ())),  # type: ignore[attr-defined]
                             sum(1 for s in meta.get("surfaced", []) if s.get("kind") in kinds),
                             dep["score"] if isinstance(dep, dict) else None))
    return out


def _periods(store) -> list[dict[str, Any]]:
    """Service periods from the checkpoints' history: which checkpoint was promoted when, after what."""
    periods: list[dict[str, Any]] = []
    for ev in store.history():
        if ev["event"] == "promote":
            periods.append({"checkpoint": ev["checkpoint"], "previous": ev.get("previous"), "start": ev["at"],
                            "reason": ev.get("reason", "")})
        elif ev["event"] == "rollback":
            periods.append({"checkpoint": ev.get("to"), "previous": ev["checkpoint"], "start": ev["at"],
                            "reason": f"rollback of {ev['checkpoint']}"})
    for a, b in zip(periods, periods[1:]):
        a["end"] = b["start"]
    if periods:
        periods[-1]["end"] = None
    return periods


def _windows(stats: Sequence[_TurnStat], start: float, size: float) -> list[dict[str, Any]]:
    buckets: dict[int, list[_TurnStat]] = defaultdict(list)
    for s in stats:
        buckets[math.floor((s.created - start) / size)].append(s)
    out = []
    for i in sorted(buckets):
        group = buckets[i]
        deps = [s.dependence for s in group if s.dependence is not None]
        flags = Counter(p for s in group for p in s.patterns)
        out.append({"start": start + i * size, "end": start + (i + 1) * size, "turns": len(group),
                    "flags": dict(sorted(flags.items())), "surfaced_corrections": sum(1 for s in group
                                                                                      if s.surfaced_corrections),
                    "dependence_mean": round(sum(deps) / len(deps), 4) if deps else None})
    return out


def _rate_tests(before: Sequence[_TurnStat], after: Sequence[_TurnStat], trained: str | None,
                config: ObserveConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rises that raise an alert, tested, and the per-pattern rates, described.

    Three tests, Bonferroni over them: the trained pattern recurring; flags
    outside it rising (another pattern, or failures no pattern holds yet,
    pooled so that a checkpoint a little worse everywhere is seen); correction
    memories surfaced more often. One test per pattern would split the level
    over every small pattern and miss what the pooled rate catches.
    """
    from scipy.stats import fisher_exact

    nb, na = len(before), len(after)
    what: list[tuple[str, str, int, int]] = []
    if trained:
        what.append((f"trained pattern recurred: {trained}", trained, sum(trained in s.patterns for s in before),
                     sum(trained in s.patterns for s in after)))
        other = lambda s: bool(s.patterns - {trained})  # noqa: E731
        what.append(("other patterns rose (flags outside the trained pattern)", "other_patterns",
                     sum(map(other, before)), sum(map(other, after))))
    else:
        what.append(("flagged turns rose (any pattern)", "any_flag", sum(1 for s in before if s.patterns),
                     sum(1 for s in after if s.patterns)))
    what.append(("correction memories surfaced more often", "surfaced_corrections",
                 sum(1 for s in before if s.surfaced_corrections), sum(1 for s in after if s.surfaced_corrections)))
    level = config.alpha / len(what)
    tests = []
    for label, key, kb, ka in what:
        test = {"what": label, "key": key, "n_before": nb, "n_after": na, "events_before": kb, "events_after": ka,
                "before_rate": round(kb / nb, 4) if nb else None, "after_rate": round(ka / na, 4) if na else None,
                "p_value": None, "level": level}
        if nb >= config.min_turns and na >= config.min_turns:
            p = float(fisher_exact([[ka, na - ka], [kb, nb - kb]], alternative="greater").pvalue)
            test["p_value"] = round(p, 6)
            test["verdict"] = "rose" if p < level else "no rise"
        else:
            test["verdict"] = "too few turns"
        tests.append(test)
    breakdown = []
    for p in sorted({p for s in [*before, *after] for p in s.patterns}):
        kb, ka = sum(p in s.patterns for s in before), sum(p in s.patterns for s in after)
        breakdown.append({"pattern": p, "trained": p == trained, "events_before": kb, "events_after": ka,
                          "before_rate": round(kb / nb, 4) if nb else None,
                          "after_rate": round(ka / na, 4) if na else None})
    return tests, breakdown


def _assess(graph: MemoryGraph, store, period: dict[str, Any], stats: Sequence[_TurnStat],
            config: ObserveConfig, statuses: dict[str, str]) -> dict[str, Any]:
    ck, start, end = period["checkpoint"], period["start"], period["end"]
    after = [s for s in stats if s.checkpoint == ck and s.created >= start and (end is None or s.created < end)]
    prev = period["previous"]
    before = [s for s in stats if s.checkpoint == prev and start - config.baseline_s <= s.created < start]
    trained = None
    node = checkpoint_node(graph, ck)
    if node is not None:
        trained = node.manifest.get("pattern")
    status = checkpoint_status(graph, store, ck, statuses=statuses) if node is not None else None
    tests, breakdown = _rate_tests(before, after, trained, config)
    if len(before) < config.min_turns:
        verdict = "insufficient data"
    elif len(after) < config.min_turns:
        verdict = "watching"
    elif any(t["verdict"] == "rose" for t in tests):
        verdict = "rollback"
    else:
        verdict = "keep"
    return {"id": ck, "parent": prev, "promoted_at": start, "ended_at": end, "pattern": trained,
            "status": status,
            "windows": _windows(after, start, config.window_s),
            "baseline_windows": _windows(before, start - config.baseline_s, config.window_s),
            "tests": tests, "patterns": breakdown, "verdict": verdict, "n_before": len(before),
            "n_after": len(after)}


def watch(graph: MemoryGraph, store, config: ObserveConfig | None = None, *, scope: str | None = None,
          act: bool = True, method: str = "lora") -> dict[str, Any]:
    """Assess the checkpoint in use against its predecessor; on a significant rise raise an Alert, roll back
    and shrink the pattern's next run (when ``act``). Returns the assessment with ``alert`` and ``rolled_back``."""
    config = config or ObserveConfig()
    current = in_use(store) if act else store.promoted()
    periods = _periods(store)
    statuses = checkpoint_statuses(store)
    if act:
        _finish_interrupted(graph, current, scope, statuses)
    if not periods or current is None or periods[-1]["checkpoint"] != current["checkpoint"]:
        return {"id": current["checkpoint"] if current else None, "verdict": "nothing to watch", "alert": None,
                "rolled_back": False}
    period = periods[-1]
    stats = _turn_stats(graph, scope, period["start"] - config.baseline_s, config.correction_kinds)
    out = _assess(graph, store, period, stats, config, statuses)
    out["alert"], out["rolled_back"] = None, False
    if out["verdict"] != "rollback" or not act:
        return out
    risen = [t for t in out["tests"] if t["verdict"] == "rose"]
    reason = "; ".join(f"{t['what']} ({t['before_rate']:.3f} -> {t['after_rate']:.3f}, p={t['p_value']:.4f})"
                       for t in risen)
    rising = sorted((b for b in out["patterns"] if not b["trained"] and b["after_rate"] > b["before_rate"]),
                    key=lambda b: b["before_rate"] - b["after_rate"])[:3]
    if rising and any(t["key"] == "other_patterns" for t in risen):
        reason += "; most of it in " + ", ".join(f"{b['pattern']} ({b['before_rate']:.3f} -> {b['after_rate']:.3f})"
                                                 for b in rising)
    scope_name = graph.resolve_scope(scope)
    alert = Alert(scope=scope_name, checkpoint=out["id"], reason=reason, status="open",
                  details={"kind": "watch", "tests": risen, "parent": out["parent"]})
    graph.add(alert)
    rollback(graph, store, reason=reason, alert=alert)
    adjusted = None
    if out["pattern"]:
        try:
            used = int((checkpoint_node(graph, out["id"]).manifest or {}).get("accept_examples") or 20)  # type: ignore
            adjusted = shrink_plan(graph, out["pattern"], used_examples=used, method=method,
                                   why=f"rolled back {out['id']}: {reason}")
        except NodeNotFound:
            pass
    alert.status = "resolved"
    alert.details = {**alert.details, "action": f"rolled back to {out['parent'] or 'the base model'}",
                     "plan": adjusted.settings() if adjusted else None}
    graph.update(alert)
    out["alert"], out["rolled_back"] = alert.id, True
    return out


def _finish_interrupted(graph: MemoryGraph, current: dict | None, scope: str | None,
                        statuses: dict[str, str]) -> None:
    """A watch killed between its rollback and closing its alert left the alert open (the scheduler would
    wait on it for ever): close watch alerts whose checkpoint was rolled back and is no longer in use."""
    for alert in open_alerts(graph, scope):
        if alert.details.get("kind") != "watch" or (current and current["checkpoint"] == alert.checkpoint):
            continue
        node = checkpoint_node(graph, alert.checkpoint)
        if node is not None and statuses.get(node.id) == "rolled_back":
            if not any(e.dst == node.id for e in graph.edges(alert.id, kinds=["rolled_back"], direction="out")):
                graph.link(alert.id, node.id, "rolled_back", {"reason": alert.reason})
            alert.status = "resolved"
            alert.details = {**alert.details, "action": "rolled back (finished after an interruption)"}
            graph.update(alert)


def report(graph: MemoryGraph, store, config: ObserveConfig | None = None, *,
           scope: str | None = None) -> dict[str, Any]:
    """What ``mindloop observe --json`` prints: every promotion's windows, tests and verdict; alerts; rollbacks."""
    config = config or ObserveConfig()
    periods = _periods(store)
    current = store.promoted()
    since = min((p["start"] for p in periods), default=time.time()) - config.baseline_s
    stats = _turn_stats(graph, scope, since, config.correction_kinds)
    statuses = checkpoint_statuses(store)
    checkpoints = [_assess(graph, store, p, stats, config, statuses) for p in periods if p["checkpoint"] is not None]
    alerts = [{"id": a.id, "kind": a.details.get("kind", "watch"), "message": a.reason,  # type: ignore
               "checkpoint": a.checkpoint, "open": a.status == "open", "created_at": a.created,  # type: ignore
               "action": a.details.get("action")}  # type: ignore[attr-defined]
              for a in graph.nodes(kind="alert", scope=scope, newest_first=True)]
    rollbacks = [{"checkpoint": e["checkpoint"], "to": e.get("to"), "at": e["at"], "reason": e.get("reason", "")}
                 for e in store.history() if e["event"] == "rollback"]
    return {"in_use": current["checkpoint"] if current else None, "checkpoints": checkpoints, "alerts": alerts,
            "rollbacks": rollbacks, "config": asdict(config)}


def open_alerts(graph: MemoryGraph, scope: str | None = None) -> list[Alert]:
    return [a for a in graph.nodes(kind="alert", scope=scope) if a.status == "open"]  # type: ignore[misc]
