"""surface-observe, second half: gate a candidate before promotion, watch the checkpoint in use after, roll back.

    mindloop observe [--json]            # per checkpoint: windows, rates, tests, verdicts; open alerts; rollbacks
    mindloop observe --gate C [--promote]   # the gate's checks for a candidate (and promote it if they pass)
    mindloop observe --watch             # run the watch now: raise alerts and roll back what got worse

**Gate.** A run measures its candidate and the parent it started from on the
same probes (:func:`mindloop.trainer.run.train`, ``metrics.before``/``after`` in the
manifest). :func:`gate` promotes only when the target margin rose by at least
``min_target_gain`` and nothing regressed past its threshold: perplexity +2%,
push-back mean margin -5% (relative), capability win rate -2 points. A
rejected candidate stays on disk; its checks go into the graph (an ``Eval``
with the checks, an ``Alert`` with the reasons) and the parent stays in use.
When the target moved too little the pattern's next run *grows* (more
examples, up to 50; twice the learning rate, within the documented range).

**Watch.** Every assistant turn the loop logs records the model and checkpoint
that wrote it (imported logs, which name no model, are not counted). For a
promoted checkpoint, :func:`watch` compares the turns it served with the turns
its predecessor served in the ``baseline_s`` before the promotion: the share of
turns flagged in the trained pattern, the share flagged outside it, and the
share that needed a correction memory surfaced. Each rise is a one-sided
Fisher exact test (Bonferroni over the three), and no verdict is given before both sides have
``min_turns`` turns. A significant rise raises an ``Alert``, rolls back to the
parent (an atomic rename, a ``rolled_back`` edge from the alert) and *shrinks*
the pattern's next run: general share 25% -> 40%, learning rate halved, fewer
examples. Each adjustment is kept, with its reason, on the pattern
(``Pattern.meta["plan"]``) and shown by ``mindloop observe`` and ``status``.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from mindloop.graph import Alert, Checkpoint, Eval, MemoryGraph, NodeNotFound, Pattern

__all__ = ["ObserveConfig", "GateResult", "gate", "gate_checkpoint", "promote", "rollback", "watch", "report",
           "plan_for", "grow_plan", "shrink_plan", "set_checkpoint_status", "open_alerts", "LR_RANGE"]

# The learning rates a run may grow to or shrink from (docs/trainer.md): LoRA needs about ten times full weights'.
LR_RANGE = {"lora": (1e-5, 1e-3), "full": (1e-6, 1e-4)}
DEFAULT_LR = {"lora": 1e-4, "full": 1e-5}
MAX_EXAMPLES = 50


@dataclass
class ObserveConfig:
    """Thresholds of the gate and the watch. Section ``[observe]`` of config.toml."""

    min_target_gain: float = field(default=0.02, metadata={
        "help": "gate: the target mean margin (nats per token) must rise at least this much"})
    max_ppl_increase: float = field(default=0.02, metadata={"help": "gate: largest relative perplexity rise"})
    max_pushback_drop: float = field(default=0.05, metadata={
        "help": "gate: largest relative fall of the push-back mean margin"})
    max_capability_drop: float = field(default=0.02, metadata={
        "help": "gate: largest fall of the capability win rate (0.02 = 2 points)"})
    min_turns: int = field(default=30, metadata={
        "help": "watch: assistant turns needed on each side before any verdict"})
    alpha: float = field(default=0.05, metadata={"help": "watch: family-wise significance of the rate tests"})
    window_s: float = field(default=3600.0, metadata={"help": "watch: length of one counting window, seconds"})
    baseline_s: float = field(default=7 * 86400.0, metadata={
        "help": "watch: how far before a promotion the parent's turns are counted, seconds"})
    correction_kinds: tuple[str, ...] = field(default=("correction", "lesson"), metadata={
        "help": "memory kinds that count as correction memories when surfaced"})

    def __post_init__(self) -> None:
        from mindloop.graph.config import ConfigError

        if self.min_turns < 1:
            raise ConfigError(f"min_turns must be at least 1, got {self.min_turns}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.window_s <= 0 or self.baseline_s <= 0:
            raise ConfigError("window_s and baseline_s must be positive")
        self.correction_kinds = tuple(self.correction_kinds)


# -- the gate ----------------------------------------------------------------------


@dataclass
class GateResult:
    checkpoint: str
    parent: str | None
    promote: bool
    too_small: bool
    checks: list[dict[str, Any]]

    @property
    def reasons(self) -> list[str]:
        return [c["detail"] for c in self.checks if not c["ok"]]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "reasons": self.reasons}


def _kind(metrics: dict | None, kind: str, key: str, where: str = "kinds") -> float | None:
    try:
        return float(metrics[where][kind][key])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None


def gate(before: dict | None, after: dict | None, config: ObserveConfig | None = None) -> list[dict[str, Any]]:
    """The gate's checks of ``after`` (the candidate) against ``before`` (its parent, same probes)."""
    c = config or ObserveConfig()
    checks: list[dict[str, Any]] = []

    def check(name: str, b: float | None, a: float | None, ok, detail) -> None:
        if b is None or a is None:
            checks.append({"name": name, "before": b, "after": a, "ok": False,
                           "detail": f"{name}: not measured before and after"})
        else:
            checks.append({"name": name, "before": b, "after": a, "ok": bool(ok(b, a)), "detail": detail(b, a)})

    # the target is the pattern's own held-out examples when the run had them, else the target probes
    held = _kind(before, "target", "mean_margin", "heldout") is not None
    where = "heldout" if held else "kinds"
    check("target", _kind(before, "target", "mean_margin", where), _kind(after, "target", "mean_margin", where),
          lambda b, a: a - b >= c.min_target_gain,
          lambda b, a: f"{'held-out ' if held else ''}target margin {b:+.3f} -> {a:+.3f} ({a - b:+.3f}; "
                       f"needs +{c.min_target_gain:g})")
    check("pushback", _kind(before, "pushback", "mean_margin"), _kind(after, "pushback", "mean_margin"),
          lambda b, a: (b - a) / max(abs(b), 1e-6) <= c.max_pushback_drop,
          lambda b, a: f"push-back margin {b:+.3f} -> {a:+.3f} ({(a - b) / max(abs(b), 1e-6):+.1%}; "
                       f"at most -{c.max_pushback_drop:.0%})")
    check("capability", _kind(before, "capability", "win_rate"), _kind(after, "capability", "win_rate"),
          lambda b, a: a - b >= -c.max_capability_drop - 1e-9,
          lambda b, a: f"capability win rate {b:.3f} -> {a:.3f} ({100 * (a - b):+.1f} points; at most "
                       f"-{100 * c.max_capability_drop:g})")
    pb, pa = (before or {}).get("perplexity"), (after or {}).get("perplexity")
    check("perplexity", pb, pa, lambda b, a: a / b - 1 <= c.max_ppl_increase,
          lambda b, a: f"perplexity {b:.3f} -> {a:.3f} ({a / b - 1:+.2%}; at most +{c.max_ppl_increase:.0%})")
    return checks


def gate_checkpoint(graph: MemoryGraph, store, checkpoint_id: str, config: ObserveConfig | None = None, *,
                    scope: str | None = None, record: bool = True) -> GateResult:
    """Gate a written checkpoint on the metrics its run measured; record the verdict in the graph."""
    from mindloop.trainer.errors import CheckpointError

    try:
        manifest = store.get(checkpoint_id)
    except CheckpointError as e:
        result = GateResult(checkpoint_id, None, False, False,
                            [{"name": "checkpoint", "before": None, "after": None, "ok": False, "detail": str(e)}])
    else:
        metrics = manifest.get("metrics") or {}
        checks = gate(metrics.get("before"), metrics.get("after"), config)
        target = checks[0]
        too_small = target["before"] is not None and target["after"] is not None and not target["ok"]
        result = GateResult(checkpoint_id, manifest.get("parent"), all(c["ok"] for c in checks), too_small, checks)
    if record:
        _record_gate(graph, result, scope)
    return result


def _record_gate(graph: MemoryGraph, result: GateResult, scope: str | None) -> None:
    scope = graph.resolve_scope(scope)
    with graph.transaction():
        ev = Eval(scope=scope, checkpoint=result.checkpoint, probes="gate",
                  metrics={"gate": result.to_json()})
        graph.add(ev)
        node = _checkpoint_node(graph, result.checkpoint)
        if node is not None:
            graph.link(ev.id, node.id, "evaluated")
            node.manifest = {**node.manifest, "gate": {"promote": result.promote, "reasons": result.reasons}}
            if not result.promote:
                node.status = "rejected"
            graph.update(node)
        if not result.promote:
            graph.add(Alert(scope=scope, checkpoint=result.checkpoint, status="resolved",
                            reason=f"gate rejected {result.checkpoint}: " + "; ".join(result.reasons),
                            details={"kind": "gate", "checks": result.checks, "parent": result.parent}))


def _checkpoint_node(graph: MemoryGraph, checkpoint_id: str | None) -> Checkpoint | None:
    if not checkpoint_id:
        return None
    try:
        node = graph.get(checkpoint_id)
    except NodeNotFound:
        return None  # trained outside this data directory's graph
    return node if isinstance(node, Checkpoint) else None


def set_checkpoint_status(graph: MemoryGraph, checkpoint_id: str, status: str) -> None:
    node = _checkpoint_node(graph, checkpoint_id)
    if node is not None and node.status != status:
        node.status = status
        graph.update(node)


def sync_statuses(graph: MemoryGraph, store) -> dict[str, Any] | None:
    """Make the graph agree with ``checkpoints/`` after a kill between the two; returns the pointer in use.

    The checkpoints' history is the record of promotions and rollbacks (the
    pointer is rolled forward to it first): a checkpoint whose last event was
    a promotion is ``promoted``, one whose last event was its rollback is
    ``rolled_back``. Statuses the history says nothing about (``rejected``,
    new candidates) are left alone.
    """
    current = store.recover()
    last: dict[str, str] = {}
    for ev in store.history():
        last[ev["checkpoint"]] = "promoted" if ev["event"] == "promote" else "rolled_back"
    for checkpoint_id, status in last.items():
        set_checkpoint_status(graph, checkpoint_id, status)
    return current


def promote(graph: MemoryGraph, store, checkpoint_id: str, *, reason: str = "") -> dict[str, Any]:
    """Serve ``checkpoint_id`` (idempotent: promoting what is already promoted changes nothing)."""
    current = sync_statuses(graph, store)
    if current and current["checkpoint"] == checkpoint_id:
        pointer = current
    else:
        pointer = store.promote(checkpoint_id, reason=reason)
    set_checkpoint_status(graph, checkpoint_id, "promoted")
    return pointer


def rollback(graph: MemoryGraph, store, *, reason: str, alert: Alert | None = None) -> dict[str, Any] | None:
    """Roll the promoted checkpoint back to its parent, and link the alert that caused it."""
    before = sync_statuses(graph, store)
    pointer = store.rollback(reason=reason)
    if before:
        set_checkpoint_status(graph, before["checkpoint"], "rolled_back")
        if alert is not None and _checkpoint_node(graph, before["checkpoint"]) is not None:
            graph.link(alert.id, before["checkpoint"], "rolled_back", {"reason": reason})
    return pointer


# -- the pattern's next run --------------------------------------------------------


def plan_for(pattern: Pattern, method: str = "lora", lr: float | None = None) -> dict[str, Any]:
    """The pattern's plan for its next run: ``max_examples`` (accept examples; None = all), ``lr``,
    ``general_ratio``, ``reuse`` (train again on examples of a rejected run) and ``history``."""
    plan = dict(pattern.meta.get("plan") or {})
    plan.setdefault("max_examples", None)
    plan.setdefault("lr", lr or DEFAULT_LR[method])
    plan.setdefault("general_ratio", 0.25)
    plan.setdefault("reuse", False)
    plan.setdefault("history", [])
    return plan


def _adjust(graph: MemoryGraph, pattern_id: str, why: str, change, method: str) -> dict[str, Any]:
    pattern = graph.get(pattern_id)
    assert isinstance(pattern, Pattern)
    plan = plan_for(pattern, method)
    old = {k: plan[k] for k in ("max_examples", "lr", "general_ratio")}
    change(plan)
    new = {k: plan[k] for k in ("max_examples", "lr", "general_ratio")}
    plan["reuse"] = True  # the rejected or rolled-back run's examples are not in the model in use
    plan["history"] = [*plan["history"], {"at": time.time(), "why": why, "from": old, "to": new}]
    pattern.meta = {**pattern.meta, "plan": plan}
    graph.update(pattern)
    return plan


def grow_plan(graph: MemoryGraph, pattern_id: str, *, used_examples: int, method: str = "lora",
              why: str = "the target moved too little") -> dict[str, Any]:
    """As a practitioner would when a run changed too little: more examples (up to 50), twice the lr."""
    hi = LR_RANGE[method][1]

    def change(plan):
        plan["max_examples"] = min(MAX_EXAMPLES, max(used_examples + 10, math.ceil(used_examples * 1.5)))
        plan["lr"] = min(hi, plan["lr"] * 2)
    return _adjust(graph, pattern_id, why, change, method)


def shrink_plan(graph: MemoryGraph, pattern_id: str, *, used_examples: int, method: str = "lora",
                why: str = "a regression after promotion") -> dict[str, Any]:
    """As a practitioner would after a regression: general share 40%, half the lr, fewer examples."""
    lo = LR_RANGE[method][0]

    def change(plan):
        plan["general_ratio"] = max(plan["general_ratio"], 0.40)
        plan["lr"] = max(lo, plan["lr"] / 2)
        plan["max_examples"] = max(5, math.floor(used_examples * 0.7))
    return _adjust(graph, pattern_id, why, change, method)


# -- the watch ---------------------------------------------------------------------


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
            config: ObserveConfig) -> dict[str, Any]:
    ck, start, end = period["checkpoint"], period["start"], period["end"]
    after = [s for s in stats if s.checkpoint == ck and s.created >= start and (end is None or s.created < end)]
    prev = period["previous"]
    before = [s for s in stats if s.checkpoint == prev and start - config.baseline_s <= s.created < start]
    trained = None
    node = _checkpoint_node(graph, ck)
    if node is not None:
        trained = node.manifest.get("pattern")
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
            "status": node.status if node is not None else None,
            "windows": _windows(after, start, config.window_s),
            "baseline_windows": _windows(before, start - config.baseline_s, config.window_s),
            "tests": tests, "patterns": breakdown, "verdict": verdict, "n_before": len(before),
            "n_after": len(after)}


def watch(graph: MemoryGraph, store, config: ObserveConfig | None = None, *, scope: str | None = None,
          act: bool = True, method: str = "lora") -> dict[str, Any]:
    """Assess the checkpoint in use against its predecessor; on a significant rise raise an Alert, roll back
    and shrink the pattern's next run (when ``act``). Returns the assessment with ``alert`` and ``rolled_back``."""
    config = config or ObserveConfig()
    current = sync_statuses(graph, store) if act else store.promoted()
    periods = _periods(store)
    if act:
        _finish_interrupted(graph, current, scope)
    if not periods or current is None or periods[-1]["checkpoint"] != current["checkpoint"]:
        return {"id": current["checkpoint"] if current else None, "verdict": "nothing to watch", "alert": None,
                "rolled_back": False}
    period = periods[-1]
    stats = _turn_stats(graph, scope, period["start"] - config.baseline_s, config.correction_kinds)
    out = _assess(graph, store, period, stats, config)
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
            used = int((_checkpoint_node(graph, out["id"]).manifest or {}).get("accept_examples") or 20)  # type: ignore
            adjusted = shrink_plan(graph, out["pattern"], used_examples=used, method=method,
                                   why=f"rolled back {out['id']}: {reason}")
        except NodeNotFound:
            pass
    alert.status = "resolved"
    alert.details = {**alert.details, "action": f"rolled back to {out['parent'] or 'the base model'}",
                     "plan": {k: adjusted[k] for k in ("max_examples", "lr", "general_ratio")} if adjusted else None}
    graph.update(alert)
    out["alert"], out["rolled_back"] = alert.id, True
    return out


def _finish_interrupted(graph: MemoryGraph, current: dict | None, scope: str | None) -> None:
    """A watch killed between its rollback and closing its alert left the alert open (the scheduler would
    wait on it for ever): close watch alerts whose checkpoint was rolled back and is no longer in use."""
    for alert in open_alerts(graph, scope):
        if alert.details.get("kind") != "watch" or (current and current["checkpoint"] == alert.checkpoint):
            continue
        node = _checkpoint_node(graph, alert.checkpoint)
        if node is not None and node.status == "rolled_back":
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
    checkpoints = [_assess(graph, store, p, stats, config) for p in periods if p["checkpoint"] is not None]
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
