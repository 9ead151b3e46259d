"""The cycle's read model and shared steps: what the front ends (CLI, UI, report, proxy) call instead of
re-deriving the same facts.

    mindloop status [--json]     # prints status(): in use, scheduler phase, patterns and queue, runs, verdicts, alerts

* :func:`readiness`: the one rule for when a pattern is ripe (the scheduler
  trains it; the UI and ``mindloop status`` show it), with ``[scheduler]``'s
  settings.
* :func:`status`: what ``mindloop status`` prints.
* :func:`training_job`: a pattern's training rows, probes and tags, for the
  scheduler's train step and ``mindloop train --pattern``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from mindloop.agents.cycle.gate import ObserveConfig
from mindloop.agents.cycle.plans import plan_for
from mindloop.agents.cycle.promotion import checkpoint_statuses, checkpoints_of
from mindloop.agents.cycle.watch import open_alerts, report
from mindloop.agents.signal.patterns import confirmed_flag_ids
from mindloop.graph import Example, MemoryGraph, Pattern

if TYPE_CHECKING:
    from mindloop.agents.cycle.scheduler import SchedulerConfig

__all__ = ["Readiness", "TrainingJob", "readiness", "readiness_json", "status", "training_job", "untrained_flags"]


def untrained_flags(graph: MemoryGraph, pattern: Pattern, statuses: dict[str, str]) -> list[str]:
    """The pattern's confirmed flags that no promoted (kept) checkpoint was trained for (its manifest's
    ``flags``), by id; ``statuses``: :func:`~mindloop.agents.cycle.promotion.checkpoint_statuses`."""
    covered: set[str] = set()
    for c in graph.nodes(kind="checkpoint", scope=pattern.scope):
        if statuses.get(c.id, c.status) == "promoted" and c.manifest.get("pattern") == pattern.id:  # type: ignore
            covered.update(c.manifest.get("flags") or [])  # type: ignore[attr-defined]
    return sorted(set(confirmed_flag_ids(graph, pattern.id)) - covered)


@dataclass
class Readiness:
    """One pattern's readiness: its flags (all, confirmed, confirmed and untrained), the cooldown left, whether
    it is ``ripe`` and else what it is ``waiting_for``, its next run's plan settings and their adjustments."""

    pattern: str
    name: str
    flags: int
    confirmed: int
    untrained: int
    cooldown_left_s: int
    ripe: bool
    waiting_for: list[str]
    plan: dict[str, Any]
    adjustments: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """The row as ``mindloop status --json`` prints it."""
        return asdict(self)


def readiness(graph: MemoryGraph, config: SchedulerConfig, *, scope: str | None = None,
              now: float | None = None) -> list[Readiness]:
    """Every open pattern with its confirmed and untrained flags, cooldown left and whether it is ripe; ripe first.

    A pattern is *ripe* when it has at least ``min_flags`` confirmed flags that
    no kept checkpoint has trained on, its last run is ``cooldown_s`` ago, the
    chat has been idle for ``idle_s`` and no alert is open.
    """
    now = now or time.time()
    latest = graph.nodes(kind="turn", scope=scope, limit=1, newest_first=True)
    idle_for = now - latest[0].created if latest else float("inf")
    alerts = open_alerts(graph, scope)
    statuses = checkpoint_statuses(checkpoints_of(graph))
    out = []
    for p in graph.nodes(kind="pattern", scope=scope):
        assert isinstance(p, Pattern)
        if p.status != "open":
            continue
        flags = graph.edges(p.id, kinds=["member_of"], direction="in")
        confirmed = confirmed_flag_ids(graph, p.id)
        untrained = untrained_flags(graph, p, statuses)
        last = p.meta.get("last_run_at")
        cooldown_left = max(0.0, last + config.cooldown_s - now) if last else 0.0
        why = []
        if len(untrained) < config.min_flags:
            why.append(f"{len(untrained)}/{config.min_flags} confirmed untrained flags")
        if cooldown_left > 0:
            why.append(f"cooldown {cooldown_left / 60:.0f} min left")
        if idle_for < config.idle_s:
            why.append(f"chat active {idle_for:.0f}s ago (needs {config.idle_s:.0f}s idle)")
        if alerts:
            why.append(f"{len(alerts)} open alert(s)")
        plan = plan_for(p, config.method, config.lr)
        out.append(Readiness(p.id, p.name, len(flags), len(confirmed), len(untrained), round(cooldown_left),
                             not why, why, plan.settings(), plan.history))
    return sorted(out, key=lambda r: (not r.ripe, -r.untrained))


def readiness_json(graph: MemoryGraph, config: SchedulerConfig, *, scope: str | None = None,
                   now: float | None = None) -> list[dict[str, Any]]:
    """:func:`readiness` as JSON rows (what ``mindloop status --json`` prints under ``patterns``)."""
    return [r.to_json() for r in readiness(graph, config, scope=scope, now=now)]


def status(graph: MemoryGraph, config: SchedulerConfig, observe: ObserveConfig, *,
           scope: str | None = None) -> dict[str, Any]:
    """What ``mindloop status --json`` prints: the checkpoint in use, the scheduler's phase, each pattern's
    readiness and the queue of ripe ones, the five newest runs, the watch's verdicts and the open alerts."""
    # the scheduler imports readiness from here: its class is imported when a status is asked for
    from mindloop.agents.cycle.scheduler import Scheduler

    store = checkpoints_of(graph)
    ready = readiness_json(graph, config, scope=scope)
    scheduler = Scheduler(graph, config, observe=observe, scope=scope)
    try:
        sched = scheduler.state()
    finally:
        scheduler.close()
    runs = [{"id": r.id, "status": r.status, "pattern": r.config.get("pattern"),  # type: ignore[attr-defined]
             "created": r.created, "checkpoint": next((e.dst for e in graph.edges(r.id, kinds=["produced"],
                                                                                  direction="out")), None)}
            for r in sorted(graph.nodes(kind="run", scope=scope), key=lambda r: -r.created)[:5]]
    rep = report(graph, store, observe, scope=scope)
    promoted = store.promoted()
    return {"in_use": promoted["checkpoint"] if promoted else None,
            "scheduler": {k: sched.get(k) for k in ("phase", "pattern", "run_id", "checkpoint", "note", "error",
                                                     "last", "resuming")},
            "patterns": ready, "queue": [r["pattern"] for r in ready if r["ripe"]],
            "runs": runs,
            "watch": [{"id": c.id, "verdict": c.verdict, "n_before": c.n_before, "n_after": c.n_after}
                      for c in rep.checkpoints],
            "alerts": [a.to_json() for a in rep.alerts if a.open]}


@dataclass
class TrainingJob:
    """A pattern's next run: its train-split ``examples``, the ``heldout`` ones (probes for the gate) and the
    confirmed ``flags`` it is for."""

    pattern: str
    examples: list[Example]
    heldout: list[Example]
    flags: list[str]

    @property
    def accept_examples(self) -> int:
        return sum(1 for e in self.examples if e.example_kind == "accept")

    @property
    def example_ids(self) -> list[str]:
        return [e.id for e in self.examples]

    def rows(self, objective: str) -> list[dict[str, Any]]:
        """The training rows for ``objective`` (sft | dpo | kto)."""
        from mindloop.trainer.data import rows_from_examples

        return rows_from_examples(self.examples, objective)

    def probes(self, base: list) -> list:
        """``base`` (the gate's probe sets) and the pattern's held-out examples as target probes."""
        from mindloop.trainer.evaluate import probes_from_examples

        return list(base) + probes_from_examples(self.heldout)

    def tags(self) -> dict[str, Any]:
        """What the run's config and the checkpoint's manifest record about the pattern."""
        return {"pattern": self.pattern, "accept_examples": self.accept_examples, "flags": self.flags}


def training_job(graph: MemoryGraph, pattern: Pattern, *, scope: str | None = None, include_trained: bool = False,
                 max_examples: int | None = None, flags: list[str] | None = None) -> TrainingJob:
    """A pattern's training examples: the train split not trained on yet (all of it with ``include_trained``),
    at most ``max_examples`` accept examples (the newest); ``flags`` (default: its confirmed flags now)."""
    examples = [e for e in graph.nodes(kind="example", scope=scope) if e.pattern == pattern.id]  # type: ignore
    train = [e for e in examples if e.split == "train" and (  # type: ignore[attr-defined]
        include_trained or not graph.edges(e.id, kinds=["trained_on"], direction="in"))]
    accept = [e for e in train if e.example_kind == "accept"]  # type: ignore[attr-defined]
    if max_examples and len(accept) > max_examples:
        drop = {e.id for e in sorted(accept, key=lambda e: -e.created)[max_examples:]}
        train = [e for e in train if e.id not in drop]
    if flags is None:
        flags = confirmed_flag_ids(graph, pattern.id)
    return TrainingJob(pattern.id, train, [e for e in examples if e.split == "heldout"], list(flags))  # type: ignore
