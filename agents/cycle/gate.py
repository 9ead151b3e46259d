"""The gate: a candidate checkpoint is promoted only if its target improved and nothing regressed.

    mindloop observe --gate C [--promote]   # the gate's checks for a candidate (and promote it if they pass)

A run measures its candidate and the parent it started from on the
same probes (:func:`mindloop.trainer.run.train`, ``metrics.before``/``after`` in the
manifest). :func:`gate` promotes only when the target margin rose by at least
``min_target_gain`` and nothing regressed past its threshold: perplexity +2%,
push-back mean margin -5% (relative), capability win rate -2 points. A
rejected candidate stays on disk; its checks go into the graph (an ``Eval``
with the checks, an ``Alert`` with the reasons) and the parent stays in use.
When the target moved too little the pattern's next run *grows*
(:func:`mindloop.agents.cycle.plans.grow_plan`).

:class:`ObserveConfig` holds the thresholds of the gate and of the watch
(:mod:`mindloop.agents.cycle.watch`): one ``[observe]`` section of config.toml.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mindloop.agents.cycle.promotion import checkpoint_node
from mindloop.graph import Alert, Eval, MemoryGraph

__all__ = ["GateCheck", "GateResult", "ObserveConfig", "gate", "gate_checkpoint"]


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
class GateCheck:
    """One check of the gate: the measure ``before`` (the parent) and ``after`` (the candidate), whether it
    passed, and the line that says so.

    >>> GateCheck("perplexity", 10.0, 10.1, True, "perplexity 10.000 -> 10.100").to_json()["ok"]
    True
    """

    name: str
    before: float | None
    after: float | None
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        """The check as the gate's ``Eval``, its ``Alert`` and ``mindloop observe --gate --json`` hold it."""
        return asdict(self)


@dataclass
class GateResult:
    """The gate's verdict on a candidate: promote it or not, whether the target moved too little, its checks."""

    checkpoint: str
    parent: str | None
    promote: bool
    too_small: bool
    checks: list[GateCheck]

    @property
    def reasons(self) -> list[str]:
        return [c.detail for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "parent": self.parent, "promote": self.promote,
                "too_small": self.too_small, "checks": [c.to_json() for c in self.checks], "reasons": self.reasons}


def _kind(metrics: dict | None, kind: str, key: str, where: str = "kinds") -> float | None:
    try:
        return float(metrics[where][kind][key])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None


def gate(before: dict | None, after: dict | None, config: ObserveConfig | None = None) -> list[GateCheck]:
    """The gate's checks of ``after`` (the candidate) against ``before`` (its parent, same probes)."""
    c = config or ObserveConfig()
    checks: list[GateCheck] = []

    def check(name: str, b: float | None, a: float | None, ok, detail) -> None:
        if b is None or a is None:
            checks.append(GateCheck(name, b, a, False, f"{name}: not measured before and after"))
        else:
            checks.append(GateCheck(name, b, a, bool(ok(b, a)), detail(b, a)))

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
        result = GateResult(checkpoint_id, None, False, False, [GateCheck("checkpoint", None, None, False, str(e))])
    else:
        metrics = manifest.get("metrics") or {}
        checks = gate(metrics.get("before"), metrics.get("after"), config)
        target = checks[0]
        too_small = target.before is not None and target.after is not None and not target.ok
        result = GateResult(checkpoint_id, manifest.get("parent"), all(c.ok for c in checks), too_small, checks)
    if record:
        _record_gate(graph, result, scope)
    return result


def _record_gate(graph: MemoryGraph, result: GateResult, scope: str | None) -> None:
    scope = graph.resolve_scope(scope)
    with graph.transaction():
        ev = Eval(scope=scope, checkpoint=result.checkpoint, probes="gate",
                  metrics={"gate": result.to_json()})
        graph.add(ev)
        node = checkpoint_node(graph, result.checkpoint)
        if node is not None:
            graph.link(ev.id, node.id, "evaluated")
            node.manifest = {**node.manifest, "gate": {"promote": result.promote, "reasons": result.reasons}}
            if not result.promote:
                node.status = "rejected"
            graph.update(node)
        if not result.promote:
            graph.add(Alert(scope=scope, checkpoint=result.checkpoint, status="resolved",
                            reason=f"gate rejected {result.checkpoint}: " + "; ".join(result.reasons),
                            details={"kind": "gate", "checks": [c.to_json() for c in result.checks],
                                     "parent": result.parent}))
