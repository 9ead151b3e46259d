"""A pattern's plan for its next run, grown by the gate and shrunk by the watch.

The plan (:class:`Plan`) sets how many accept examples the run uses, its
learning rate and the general replay's share. It is kept, with each
adjustment and its reason, on the pattern (``Pattern.meta["plan"]``) and shown
by ``mindloop observe`` and ``mindloop status``.

* The target moved too little at the gate: the next run *grows*
  (:func:`grow_plan`): more examples, up to 50; twice the learning rate, within
  :data:`mindloop.trainer.run.LR_RANGE`.
* A significant rise after promotion (the watch): the next run *shrinks*
  (:func:`shrink_plan`): general share 25% -> 40%, learning rate halved,
  fewer examples.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

from mindloop.graph import MemoryGraph, Pattern

__all__ = ["MAX_EXAMPLES", "Plan", "grow_plan", "plan_for", "shrink_plan"]

MAX_EXAMPLES = 50


@dataclass
class Plan:
    """A pattern's next run: ``max_examples`` (accept examples; None = all), ``lr``, ``general_ratio``,
    ``reuse`` (train again on examples of a rejected run) and ``history`` (each adjustment, with why).

    >>> Plan(max_examples=None, lr=1e-4, general_ratio=0.25).settings()
    {'max_examples': None, 'lr': 0.0001, 'general_ratio': 0.25}
    """

    max_examples: int | None
    lr: float
    general_ratio: float
    reuse: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def settings(self) -> dict[str, Any]:
        """The three settings an adjustment changes, as shown and stored in an adjustment's from/to."""
        return {"max_examples": self.max_examples, "lr": self.lr, "general_ratio": self.general_ratio}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan_for(pattern: Pattern, method: str = "lora", lr: float | None = None) -> Plan:
    """The pattern's plan for its next run: the stored one, else the defaults (``lr``, else the trainer's
    learning rate for ``method``; composing's general share)."""
    from mindloop.agents.signal.compose import ComposeConfig
    from mindloop.trainer.run import DEFAULT_LR

    stored = pattern.meta.get("plan") or {}
    known = {f.name for f in fields(Plan)}
    plan = {"max_examples": None, "lr": lr or DEFAULT_LR[method], "general_ratio": ComposeConfig().general_ratio,
            **{k: v for k, v in stored.items() if k in known}}
    return Plan(**plan)


def _adjust(graph: MemoryGraph, pattern_id: str, why: str, change: Callable[[Plan], None], method: str) -> Plan:
    pattern = graph.get(pattern_id)
    assert isinstance(pattern, Pattern)
    plan = plan_for(pattern, method)
    old = plan.settings()
    change(plan)
    plan.reuse = True  # the rejected or rolled-back run's examples are not in the model in use
    plan.history = [*plan.history, {"at": time.time(), "why": why, "from": old, "to": plan.settings()}]
    pattern.meta = {**pattern.meta, "plan": plan.to_json()}
    graph.update(pattern)
    return plan


def grow_plan(graph: MemoryGraph, pattern_id: str, *, used_examples: int, method: str = "lora",
              why: str = "the target moved too little") -> Plan:
    """As a practitioner would when a run changed too little: more examples (up to 50), twice the lr."""
    from mindloop.trainer.run import LR_RANGE

    hi = LR_RANGE[method][1]

    def change(plan: Plan) -> None:
        plan.max_examples = min(MAX_EXAMPLES, max(used_examples + 10, math.ceil(used_examples * 1.5)))
        plan.lr = min(hi, plan.lr * 2)
    return _adjust(graph, pattern_id, why, change, method)


def shrink_plan(graph: MemoryGraph, pattern_id: str, *, used_examples: int, method: str = "lora",
                why: str = "a regression after promotion") -> Plan:
    """As a practitioner would after a regression: general share 40%, half the lr, fewer examples."""
    from mindloop.trainer.run import LR_RANGE

    lo = LR_RANGE[method][0]

    def change(plan: Plan) -> None:
        plan.general_ratio = max(plan.general_ratio, 0.40)
        plan.lr = max(lo, plan.lr / 2)
        plan.max_examples = max(5, math.floor(used_examples * 0.7))
    return _adjust(graph, pattern_id, why, change, method)
