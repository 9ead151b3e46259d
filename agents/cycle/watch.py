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

The values are typed: a checkpoint's :class:`Assessment` holds its counting
windows (:class:`Window`), rate tests (:class:`RateTest`) and per-pattern rates
(:class:`PatternRate`); :func:`watch` returns a :class:`WatchResult`,
:func:`report` a :class:`WatchReport` (alerts as :class:`AlertSummary`,
rollbacks as :class:`RollbackEvent`). Their ``to_json()`` is what the CLI
prints, the UI serves and an Alert's details keep.
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

__all__ = ["AlertSummary", "Assessment", "PatternRate", "RateTest", "RollbackEvent", "WatchReport", "WatchResult",
           "Window", "open_alerts", "report", "watch"]


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


@dataclass
class Window:
    """One counting window of a checkpoint's service: its assistant turns, the flags by pattern, the turns that
    surfaced a correction memory, and the mean memory dependence (None when no turn measured one)."""

    start: float
    end: float
    turns: int
    flags: dict[str, int]
    surfaced_corrections: int
    dependence_mean: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RateTest:
    """One rise the watch tests: the share of turns with the event before and after a promotion, the one-sided
    Fisher p-value (None before both sides have ``min_turns``), the Bonferroni ``level`` and the verdict
    ("rose", "no rise" or "too few turns").

    >>> RateTest("flagged turns rose (any pattern)", "any_flag", 40, 40, 2, 9, 0.05, 0.225, 0.024, 0.025,
    ...          "rose").to_json()["verdict"]
    'rose'
    """

    what: str
    key: str
    n_before: int
    n_after: int
    events_before: int
    events_after: int
    before_rate: float | None
    after_rate: float | None
    p_value: float | None
    level: float
    verdict: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PatternRate:
    """One pattern's share of flagged turns before and after a promotion (described, not tested)."""

    pattern: str
    trained: bool
    events_before: int
    events_after: int
    before_rate: float | None
    after_rate: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Assessment:
    """A promoted checkpoint against its predecessor: its service period, its windows and the baseline's, the
    rate tests, the per-pattern rates and the verdict ("insufficient data", "watching", "keep" or "rollback")."""

    id: str
    parent: str | None
    promoted_at: float
    ended_at: float | None
    pattern: str | None
    status: str | None
    windows: list[Window]
    baseline_windows: list[Window]
    tests: list[RateTest]
    patterns: list[PatternRate]
    verdict: str
    n_before: int
    n_after: int

    def to_json(self) -> dict[str, Any]:
        """One entry of ``checkpoints`` in ``mindloop observe --json``."""
        return {"id": self.id, "parent": self.parent, "promoted_at": self.promoted_at, "ended_at": self.ended_at,
                "pattern": self.pattern, "status": self.status, "windows": [w.to_json() for w in self.windows],
                "baseline_windows": [w.to_json() for w in self.baseline_windows],
                "tests": [t.to_json() for t in self.tests], "patterns": [b.to_json() for b in self.patterns],
                "verdict": self.verdict, "n_before": self.n_before, "n_after": self.n_after}


@dataclass
class WatchResult:
    """What one :func:`watch` did: the ``assessment`` of the checkpoint in use (None, with the verdict "nothing to
    watch", when no promotion put it there), the ``alert`` it raised and whether it ``rolled_back``. ``id`` and
    ``verdict`` are the assessment's when there is one."""

    id: str | None
    verdict: str
    assessment: Assessment | None = None
    alert: str | None = None
    rolled_back: bool = False

    def to_json(self) -> dict[str, Any]:
        """What ``mindloop observe --watch --json`` prints: the assessment with ``alert`` and ``rolled_back``."""
        head = self.assessment.to_json() if self.assessment else {"id": self.id, "verdict": self.verdict}
        return {**head, "alert": self.alert, "rolled_back": self.rolled_back}


@dataclass
class AlertSummary:
    """An Alert node as the report lists it (``kind``: "gate" or "watch"; ``action``: what was done about it)."""

    id: str
    kind: str
    message: str
    checkpoint: str | None
    open: bool
    created_at: float
    action: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RollbackEvent:
    """A rollback in the checkpoints' history: from ``checkpoint`` back ``to`` its parent (None: the base model)."""

    checkpoint: str
    to: str | None
    at: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WatchReport:
    """What :func:`report` finds: the checkpoint in use, every promotion's :class:`Assessment`, the alerts (newest
    first), the rollbacks and the thresholds it used."""

    in_use: str | None
    checkpoints: list[Assessment]
    alerts: list[AlertSummary]
    rollbacks: list[RollbackEvent]
    config: ObserveConfig

    def to_json(self) -> dict[str, Any]:
        """What ``mindloop observe --json`` prints and the UI's ``/api/observer`` serves."""
        return {"in_use": self.in_use, "checkpoints": [c.to_json() for c in self.checkpoints],
                "alerts": [a.to_json() for a in self.alerts], "rollbacks": [r.to_json() for r in self.rollbacks],
                "config": asdict(self.config)}


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


def _windows(stats: Sequence[_TurnStat], start: float, size: float) -> list[Window]:
    buckets: dict[int, list[_TurnStat]] = defaultdict(list)
    for s in stats:
        buckets[math.floor((s.created - start) / size)].append(s)
    out = []
    for i in sorted(buckets):
        group = buckets[i]
        deps = [s.dependence for s in group if s.dependence is not None]
        flags = Counter(p for s in group for p in s.patterns)
        out.append(Window(start + i * size, start + (i + 1) * size, len(group), dict(sorted(flags.items())),
                          sum(1 for s in group if s.surfaced_corrections),
                          round(sum(deps) / len(deps), 4) if deps else None))
    return out


def _rate_tests(before: Sequence[_TurnStat], after: Sequence[_TurnStat], trained: str | None,
                config: ObserveConfig) -> tuple[list[RateTest], list[PatternRate]]:
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
        p_value, verdict = None, "too few turns"
        if nb >= config.min_turns and na >= config.min_turns:
            p = float(fisher_exact([[ka, na - ka], [kb, nb - kb]], alternative="greater").pvalue)
            p_value, verdict = round(p, 6), "rose" if p < level else "no rise"
        tests.append(RateTest(label, key, nb, na, kb, ka, round(kb / nb, 4) if nb else None,
                              round(ka / na, 4) if na else None, p_value, level, verdict))
    breakdown = []
    for p in sorted({p for s in [*before, *after] for p in s.patterns}):
        kb, ka = sum(p in s.patterns for s in before), sum(p in s.patterns for s in after)
        breakdown.append(PatternRate(p, p == trained, kb, ka, round(kb / nb, 4) if nb else None,
                                     round(ka / na, 4) if na else None))
    return tests, breakdown


def _assess(graph: MemoryGraph, store, period: dict[str, Any], stats: Sequence[_TurnStat],
            config: ObserveConfig, statuses: dict[str, str]) -> Assessment:
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
    elif any(t.verdict == "rose" for t in tests):
        verdict = "rollback"
    else:
        verdict = "keep"
    return Assessment(ck, prev, start, end, trained, status, _windows(after, start, config.window_s),
                      _windows(before, start - config.baseline_s, config.window_s), tests, breakdown, verdict,
                      len(before), len(after))


def watch(graph: MemoryGraph, store, config: ObserveConfig | None = None, *, scope: str | None = None,
          act: bool = True, method: str = "lora") -> WatchResult:
    """Assess the checkpoint in use against its predecessor; on a significant rise raise an Alert, roll back
    and shrink the pattern's next run (when ``act``). Returns the assessment with the alert and whether it rolled
    back."""
    config = config or ObserveConfig()
    current = in_use(store) if act else store.promoted()
    periods = _periods(store)
    statuses = checkpoint_statuses(store)
    if act:
        _finish_interrupted(graph, current, scope, statuses)
    if not periods or current is None or periods[-1]["checkpoint"] != current["checkpoint"]:
        return WatchResult(current["checkpoint"] if current else None, "nothing to watch")
    period = periods[-1]
    stats = _turn_stats(graph, scope, period["start"] - config.baseline_s, config.correction_kinds)
    a = _assess(graph, store, period, stats, config, statuses)
    if a.verdict != "rollback" or not act:
        return WatchResult(a.id, a.verdict, a)
    risen = [t for t in a.tests if t.verdict == "rose"]
    reason = "; ".join(f"{t.what} ({t.before_rate:.3f} -> {t.after_rate:.3f}, p={t.p_value:.4f})" for t in risen)
    rising = sorted((b for b in a.patterns if not b.trained and b.after_rate > b.before_rate),  # type: ignore[operator]
                    key=lambda b: b.before_rate - b.after_rate)[:3]  # type: ignore[operator]
    if rising and any(t.key == "other_patterns" for t in risen):
        reason += "; most of it in " + ", ".join(f"{b.pattern} ({b.before_rate:.3f} -> {b.after_rate:.3f})"
                                                 for b in rising)
    scope_name = graph.resolve_scope(scope)
    alert = Alert(scope=scope_name, checkpoint=a.id, reason=reason, status="open",
                  details={"kind": "watch", "tests": [t.to_json() for t in risen], "parent": a.parent})
    graph.add(alert)
    rollback(graph, store, reason=reason, alert=alert)
    adjusted = None
    if a.pattern:
        try:
            used = int((checkpoint_node(graph, a.id).manifest or {}).get("accept_examples") or 20)  # type: ignore
            adjusted = shrink_plan(graph, a.pattern, used_examples=used, method=method,
                                   why=f"rolled back {a.id}: {reason}")
        except NodeNotFound:
            pass
    alert.status = "resolved"
    alert.details = {**alert.details, "action": f"rolled back to {a.parent or 'the base model'}",
                     "plan": adjusted.settings() if adjusted else None}
    graph.update(alert)
    return WatchResult(a.id, a.verdict, a, alert=alert.id, rolled_back=True)


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
           scope: str | None = None) -> WatchReport:
    """Every promotion's windows, tests and verdict; alerts; rollbacks (``to_json()``: what ``mindloop observe
    --json`` prints)."""
    config = config or ObserveConfig()
    periods = _periods(store)
    current = store.promoted()
    since = min((p["start"] for p in periods), default=time.time()) - config.baseline_s
    stats = _turn_stats(graph, scope, since, config.correction_kinds)
    statuses = checkpoint_statuses(store)
    checkpoints = [_assess(graph, store, p, stats, config, statuses) for p in periods if p["checkpoint"] is not None]
    alerts = [AlertSummary(a.id, a.details.get("kind", "watch"), a.reason, a.checkpoint,  # type: ignore
                           a.status == "open", a.created, a.details.get("action"))  # type: ignore[attr-defined]
              for a in graph.nodes(kind="alert", scope=scope, newest_first=True)]
    rollbacks = [RollbackEvent(e["checkpoint"], e.get("to"), e["at"], e.get("reason", ""))
                 for e in store.history() if e["event"] == "rollback"]
    return WatchReport(current["checkpoint"] if current else None, checkpoints, alerts, rollbacks, config)


def open_alerts(graph: MemoryGraph, scope: str | None = None) -> list[Alert]:
    return [a for a in graph.nodes(kind="alert", scope=scope) if a.status == "open"]  # type: ignore[misc]
