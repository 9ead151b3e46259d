"""The scheduler: runs the corrective cycle on its own, as a LangGraph workflow that survives being killed.

    mindloop daemon                      # tick every --interval seconds until stopped
    mindloop daemon --once               # one tick (a whole cycle when a pattern is ripe), then exit
    mindloop serve --daemon              # the proxy, with the scheduler in a background thread
    mindloop status [--json]             # readiness, queue, checkpoint in use, runs, verdicts, alerts

One tick walks the workflow from the phase it was left in::

    wait ──(a pattern is ripe)──► compose ─► train ─► gate ──(passes)──► promote ─► watch ──► wait
      ▲                                        │        │                            │
      └──────── failure recorded ◄─────────────┘        └─ rejected (grow the plan)   └─ still watching: stop here

A pattern is *ripe* (:func:`mindloop.agents.cycle.service.readiness`) when it
has at least ``min_flags`` confirmed flags (the signal agent's
``auto_confirm_above`` confirms confident ones on its own) that no kept
checkpoint has trained on, its last run is ``cooldown_s`` ago, the chat has
been idle for ``idle_s`` and no alert is open. Compose and train use the
pattern's plan (:func:`mindloop.agents.cycle.plans.plan_for`), which the gate
grows and the watch shrinks.

The state (phase, pattern, run id, checkpoint, last verdicts) lives in
LangGraph's checkpointer (``loop.db``, or Postgres), thread
``scheduler/<scope>``, written before every step (``durability="sync"``). A
SIGKILL at any point resumes at the step that was running, and every step is
idempotent: the run id is fixed before training, so a restarted ``train`` finds
the checkpoint that run wrote (and records it) or the run folder of a killed
run (and records the failure) and never starts a second run; ``promote``
renames a pointer atomically and promoting what is promoted changes nothing;
``watch`` rolls back only what is still in use.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypedDict

from mindloop.agents.cycle.gate import ObserveConfig, gate_checkpoint
from mindloop.agents.cycle.plans import grow_plan, plan_for, shrink_plan
from mindloop.agents.cycle.promotion import checkpoint_status, promote
from mindloop.agents.cycle.service import readiness, training_job
from mindloop.agents.cycle.watch import watch
from mindloop.graph import MemoryGraph, NodeNotFound, Pattern, Run

__all__ = ["SchedulerConfig", "Scheduler"]

log = logging.getLogger(__name__)

PHASES = ("wait", "compose", "train", "gate", "promote", "watch")


@dataclass
class SchedulerConfig:
    """When and how the scheduler trains. Section ``[scheduler]`` of config.toml; flags of ``mindloop daemon``."""

    min_flags: int = field(default=20, metadata={"help": "confirmed, untrained flags that make a pattern ripe"})
    cooldown_s: float = field(default=6 * 3600.0, metadata={"help": "seconds between two runs of one pattern"})
    idle_s: float = field(default=10 * 60.0, metadata={"help": "seconds without a chat turn before training"})
    interval_s: float = field(default=60.0, metadata={"help": "seconds between two ticks of the daemon"})
    backoff_s: float = field(default=60.0, metadata={
        "help": "first wait after the model backend failed; doubles up to an hour"})
    model: str = field(default="bundled", metadata={"help": "the model to train: 'bundled', an id or a path"})
    method: str = field(default="lora", metadata={"help": "lora | full", "choices": ("lora", "full")})
    lr: float | None = field(default=None, metadata={
        "help": "a new pattern's first learning rate; unset = the trainer's (mindloop.trainer.run.DEFAULT_LR: "
                "1e-4 for lora, 1e-5 for full)"})
    objective: str = field(default="dpo", metadata={
        "choices": ("sft", "dpo", "kto"),
        "help": "dpo (the accepted reply over the flagged one, on the pattern's preference pairs) | sft | kto; "
                "see docs/observer.md for why"})
    batch_size: int = field(default=4, metadata={"help": "examples per step"})
    max_steps: int = field(default=-1, metadata={"help": "cap on training steps; -1 = one epoch"})
    probes: str = field(default="", metadata={
        "help": "probe JSONL files for the gate, comma-separated (default: the built-in sets); the pattern's "
                "held-out examples are always added"})
    generate: bool = field(default=True, metadata={
        "help": "let the model write the general replay and missing better responses (else: references only)"})

    def __post_init__(self) -> None:
        from mindloop.graph.config import ConfigError

        if self.min_flags < 1:
            raise ConfigError(f"min_flags must be at least 1, got {self.min_flags}")
        if min(self.cooldown_s, self.idle_s) < 0 or self.interval_s <= 0 or self.backoff_s <= 0:
            raise ConfigError("cooldown and idle must be 0 or more; interval and backoff positive")
        if self.method not in ("lora", "full"):
            raise ConfigError(f"method must be 'lora' or 'full', got {self.method!r}")
        if self.objective not in ("sft", "dpo", "kto"):
            raise ConfigError(f"objective must be sft, dpo or kto, got {self.objective!r}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise ConfigError(f"lr must be between 0 and 1, got {self.lr}")


class State(TypedDict, total=False):
    phase: str
    tick: float
    pattern: str | None
    run_id: str | None
    checkpoint: str | None
    accept_examples: int | None
    flags: list[str]  # the confirmed flags the run is for
    stop: bool
    note: str
    last: dict[str, Any]  # the last finished cycle: pattern, run, checkpoint, gate, verdict
    error: str | None
    retry_at: float | None
    backoff_s: float | None


def _kill_point(point: str) -> None:
    """Fault injection for the kill tests: SIGKILL this process at ``point`` when MINDLOOP_KILL_AT names it."""
    if os.environ.get("MINDLOOP_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


class Scheduler:
    """The corrective cycle as a LangGraph workflow over one data directory and scope.

    ``backend_factory()`` returns the chat backend compose uses to write
    replies (or None for references only); it is called when needed and
    closed after. A ``backend`` given instead is shared and left open.
    """

    def __init__(self, graph: MemoryGraph, config: SchedulerConfig | None = None, *,
                 observe: ObserveConfig | None = None, scope: str | None = None,
                 backend_factory: Callable[[], Any] | None = None, backend=None, checkpointer=None, detector=None,
                 probes=None, progress: bool = False, say: Callable[[str], None] | None = None) -> None:
        from langgraph.graph import END, START, StateGraph

        from mindloop.agents.chat.loop import open_checkpointer
        from mindloop.trainer.checkpoints import Checkpoints

        self.graph = graph
        self.config = config or SchedulerConfig()
        self.observe = observe or ObserveConfig()
        self.scope = graph.resolve_scope(scope)
        self.home = Path(graph.config.home)
        self.store = Checkpoints(self.home / "checkpoints")
        self.backend_factory = backend_factory
        self.backend = backend
        self.detector = detector
        self.probes = probes
        self.progress = progress
        self.say = say or (lambda msg: log.info("%s", msg))
        self.checkpointer = checkpointer if checkpointer is not None else open_checkpointer(self.home)
        self.thread = {"configurable": {"thread_id": f"scheduler/{self.scope}"}}
        builder = StateGraph(State)
        for phase in PHASES:
            builder.add_node(phase, getattr(self, f"_{phase}"))
        builder.add_conditional_edges(START, self._route, {**{p: p for p in PHASES}, "end": END})
        for phase in PHASES:
            builder.add_conditional_edges(phase, self._route, {**{p: p for p in PHASES}, "end": END})
        self.app = builder.compile(checkpointer=self.checkpointer)

    # -- running -----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        snap = self.app.get_state(self.thread)
        return {**dict(snap.values), "resuming": list(snap.next)}

    def tick(self) -> dict[str, Any]:
        """Run the workflow from where it was left (the interrupted step, after a kill) until it stops."""
        snap = self.app.get_state(self.thread)
        if snap.next:
            self.say(f"resuming at '{snap.next[0]}' (the last tick stopped there)")
            values = self.app.invoke(None, self.thread, durability="sync")
        else:
            values = self.app.invoke({"tick": time.time(), "stop": False}, self.thread, durability="sync")
        return dict(values)

    def run_forever(self, stop: threading.Event | None = None, *, max_ticks: int | None = None) -> None:
        stop = stop or threading.Event()
        n = 0
        while not stop.is_set():
            state = self.tick()
            n += 1
            if max_ticks is not None and n >= max_ticks:
                return
            wait = self.config.interval_s
            if state.get("retry_at"):
                wait = max(wait, state["retry_at"] - time.time())
            stop.wait(wait)

    def close(self) -> None:
        conn = getattr(self.checkpointer, "conn", None)
        if conn is not None:
            conn.close()

    # -- the workflow ------------------------------------------------------------

    @staticmethod
    def _route(state: State) -> str:
        if state.get("stop"):
            return "end"
        return state.get("phase") or "wait"

    def _pattern(self, state: State) -> Pattern:
        node = self.graph.get(state["pattern"])  # type: ignore[arg-type]
        assert isinstance(node, Pattern)
        return node

    def _back_to_wait(self, state: State, error: str, *, backoff: bool = False) -> dict[str, Any]:
        self.say(f"cycle for {state.get('pattern')} stopped: {error}")
        out: dict[str, Any] = {"phase": "wait", "stop": True, "error": error, "run_id": None, "checkpoint": None,
                               "last": {"pattern": state.get("pattern"), "run": state.get("run_id"),
                                        "checkpoint": state.get("checkpoint"), "verdict": "failed", "error": error,
                                        "at": time.time()}}
        if backoff:
            wait = min(3600.0, (state.get("backoff_s") or self.config.backoff_s / 2) * 2)
            out.update(backoff_s=wait, retry_at=time.time() + wait)
            self.say(f"backing off {wait:.0f}s")
        return out

    def _wait(self, state: State) -> dict[str, Any]:
        if state.get("retry_at") and time.time() < state["retry_at"]:  # type: ignore[operator]
            return {"stop": True, "note": f"backing off until {time.ctime(state['retry_at'])}: {state.get('error')}"}
        watched = watch(self.graph, self.store, self.observe, scope=self.scope, method=self.config.method)
        if watched.rolled_back:
            self.say(f"watch: rolled back {watched.id} (alert {watched.alert})")
        ready = readiness(self.graph, self.config, scope=self.scope)
        ripe = [r for r in ready if r.ripe]
        if not ripe:
            note = "; ".join(f"{r.pattern}: {', '.join(r.waiting_for)}" for r in ready[:3]) or "no patterns"
            return {"stop": True, "note": f"nothing ripe ({note})", "retry_at": None}
        pick = ripe[0]
        run_id = f"run_{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:6]}"
        self.say(f"pattern {pick.pattern} ({pick.name}) is ripe: {pick.untrained} confirmed untrained "
                 f"flags; run {run_id}")
        _kill_point("wait")
        return {"phase": "compose", "pattern": pick.pattern, "run_id": run_id, "checkpoint": None,
                "error": None, "note": "ripe"}

    def _compose(self, state: State) -> dict[str, Any]:
        from mindloop.agents.chat.backends import BackendError
        from mindloop.agents.signal.compose import ComposeConfig, compose
        from mindloop.agents.signal.patterns import confirmed_flag_ids

        pattern = self._pattern(state)
        plan = plan_for(pattern, self.config.method, self.config.lr)
        cfg = ComposeConfig(general_ratio=plan.general_ratio, include_trained=plan.reuse)
        backend = None
        try:
            if self.config.generate and self.backend is None and self.backend_factory is not None:
                backend = self.backend_factory()
            made = compose(self.graph, pattern, embedder=self.graph.embedder,
                           backend=(self.backend or backend) if self.config.generate else None,
                           detector=self.detector, config=cfg)
        except BackendError as e:
            return self._back_to_wait(state, f"the model backend is unreachable: {e}", backoff=True)
        except Exception as e:  # noqa: BLE001 - a failed step returns the cycle to waiting, recorded
            return self._back_to_wait(state, f"compose failed: {type(e).__name__}: {e}")
        finally:
            if backend is not None and hasattr(backend, "close"):
                backend.close()
        counts = made.counts()
        n_accept = counts["kinds"]["accept"]["train"]
        self.say(f"composed {counts['total']} example(s) for {pattern.id}: " + ", ".join(
            f"{k} {v['train']}+{v['heldout']}" for k, v in counts["kinds"].items()) + " (train+heldout)")
        _kill_point("compose")
        return {"phase": "train", "accept_examples": n_accept, "flags": confirmed_flag_ids(self.graph, pattern.id),
                "backoff_s": None, "retry_at": None}

    def _train(self, state: State) -> dict[str, Any]:
        from mindloop.trainer.checkpoints import checkpoint_id_for
        from mindloop.trainer.errors import CheckpointError
        from mindloop.trainer.evaluate import builtin_probes, read_probes
        from mindloop.trainer.run import TrainConfig, TrainResult, record_run, train

        run_id = state["run_id"]
        checkpoint_id = checkpoint_id_for(run_id)  # type: ignore[arg-type]
        run_dir = self.home / "runs" / run_id  # type: ignore[operator]
        if (self.store.root / checkpoint_id).is_dir():  # killed after the run finished: record it, go on
            try:
                manifest = self.store.get(checkpoint_id)
            except CheckpointError as e:
                return self._back_to_wait(state, f"run {run_id} left a corrupt checkpoint: {e}")
            self._record_finished(run_dir, manifest, checkpoint_id)
            return {"phase": "gate", "checkpoint": checkpoint_id}
        if run_dir.exists():  # killed while training: a killed run is a failed run, never started twice
            self._record_failed(state, run_dir, "killed before it finished (no checkpoint was written)")
            return self._back_to_wait(state, f"run {run_id} was killed before it finished")
        pattern = self._pattern(state)
        plan = plan_for(pattern, self.config.method, self.config.lr)
        # the plan as used, so the gate's and the watch's adjustments start from it
        pattern.meta = {**pattern.meta, "last_run_at": time.time(), "last_run": run_id, "plan": plan.to_json()}
        self.graph.update(pattern)
        job = training_job(self.graph, pattern, scope=self.scope, include_trained=plan.reuse,
                           max_examples=plan.max_examples, flags=state.get("flags") or [])
        if not job.examples:
            return self._back_to_wait(state, f"pattern {pattern.id} has no train-split examples")
        cfg = TrainConfig(objective=self.config.objective, method=self.config.method, lr=plan.lr,
                          model=self.config.model, batch_size=self.config.batch_size, max_steps=self.config.max_steps)
        if self.probes is not None:
            probes = list(self.probes)
        elif self.config.probes:
            probes = [p for f in self.config.probes.split(",") for p in read_probes(f.strip())]
        else:
            probes = builtin_probes()
        self.say(f"training {run_id}: {len(job.examples)} example(s) ({job.accept_examples} accept), {cfg.method}, "
                 f"lr {cfg.learning_rate:g}, general share {plan.general_ratio:.0%}")
        _kill_point("train")
        try:
            result: TrainResult = train(cfg, job.rows(cfg.objective), home=self.home, probes=job.probes(probes),
                                        progress=self.progress, run_id=run_id, tags=job.tags())
        except Exception as e:  # noqa: BLE001 - a failed run returns the cycle to waiting, recorded
            self._record_failed(state, run_dir, f"{type(e).__name__}: {e}")
            return self._back_to_wait(state, f"run {run_id} failed: {type(e).__name__}: {e}")
        _kill_point("trained")
        record_run(self.graph, result, scope=self.scope, example_ids=job.example_ids)
        return {"phase": "gate", "checkpoint": result.checkpoint}

    def _record_finished(self, run_dir: Path, manifest: dict, checkpoint_id: str) -> None:
        """A run whose process was killed after its checkpoint was in place: write its graph records."""
        from mindloop.trainer.run import record_run, result_from_disk

        try:
            self.graph.get(manifest["run"])
            return  # already recorded
        except NodeNotFound:
            pass
        result = result_from_disk(self.home, checkpoint_id)
        pattern = manifest.get("pattern")
        ids = [e.id for e in self.graph.nodes(kind="example", scope=self.scope)
               if e.pattern == pattern and e.split == "train"] if pattern else []
        record_run(self.graph, result, scope=self.scope, example_ids=ids)

    def _record_failed(self, state: State, run_dir: Path, why: str) -> None:
        if run_dir.exists():
            (run_dir / "status").write_text(f"failed: {why}\n")
        try:
            self.graph.get(state["run_id"])  # type: ignore[arg-type]
        except NodeNotFound:
            self.graph.add(Run(scope=self.scope, id=state["run_id"], status="failed",  # type: ignore[arg-type]
                               objective=self.config.objective, method=self.config.method,
                               config={"pattern": state.get("pattern"), "error": why}, finished=time.time()))

    def _gate(self, state: State) -> dict[str, Any]:
        checkpoint = state["checkpoint"]
        result = gate_checkpoint(self.graph, self.store, checkpoint, self.observe, scope=self.scope)  # type: ignore
        for c in result.checks:
            self.say(f"gate {'ok  ' if c.ok else 'FAIL'} {c.detail}")
        _kill_point("gate")
        if result.promote:
            return {"phase": "promote"}
        used = state.get("accept_examples") or 20
        regressed = [c for c in result.checks[1:] if not c.ok]
        if regressed:  # too much: fewer examples, half the lr, more general replay
            plan = shrink_plan(self.graph, state["pattern"], used_examples=used, method=self.config.method,  # type: ignore
                               why="gate: " + "; ".join(c.detail for c in regressed))
            self.say(f"the candidate regressed; the next run for {state['pattern']} shrinks: "
                     f"{plan.max_examples} accept examples, lr {plan.lr:g}, general {plan.general_ratio:.0%}")
        elif result.too_small:  # too little: more examples (up to 50), twice the lr
            plan = grow_plan(self.graph, state["pattern"], used_examples=used, method=self.config.method,  # type: ignore
                             why=f"gate: {result.checks[0].detail}")
            self.say(f"the target moved too little; the next run for {state['pattern']} grows: up to "
                     f"{plan.max_examples} accept examples, lr {plan.lr:g}")
        else:  # an unreadable candidate: nothing to learn about the plan
            plan = None
        return {"phase": "wait", "stop": True, "run_id": None, "checkpoint": None,
                "note": f"the gate rejected {checkpoint}: " + "; ".join(result.reasons),
                "last": {"pattern": state.get("pattern"), "run": state.get("run_id"), "checkpoint": checkpoint,
                         "gate": result.to_json(), "verdict": "rejected", "at": time.time(),
                         "plan": plan.settings() if plan else None}}

    def _promote(self, state: State) -> dict[str, Any]:
        promote(self.graph, self.store, state["checkpoint"], reason=f"gate passed (scheduler, {state['run_id']})")  # type: ignore
        self.say(f"promoted {state['checkpoint']}; watching it")
        _kill_point("promote")
        return {"phase": "watch"}

    def _watch(self, state: State) -> dict[str, Any]:
        watched = watch(self.graph, self.store, self.observe, scope=self.scope, method=self.config.method)
        assessed = watched.assessment
        n_after = assessed.n_after if assessed else 0
        in_use = self.store.promoted()
        still_ours = bool(in_use and in_use["checkpoint"] == state.get("checkpoint"))
        if still_ours and n_after < self.observe.min_turns:
            return {"stop": True, "note": f"watching {state['checkpoint']}: {n_after} turn(s) "
                                          f"since promotion, needs {self.observe.min_turns}"}
        if watched.verdict in ("keep", "rollback"):
            final = watched.verdict
        elif watched.verdict == "insufficient data":  # enough turns after, too few before: nothing to compare
            final = "keep (no baseline)"
        else:  # rolled back (by this step before a restart, or by hand), or replaced by hand
            gone = checkpoint_status(self.graph, self.store, state.get("checkpoint"))
            final = "rollback" if gone == "rolled_back" else "superseded"
        if watched.rolled_back:
            final = "rollback"
        self.say(f"watch verdict for {state.get('checkpoint')}: {final}")
        _kill_point("watch")
        return {"phase": "wait", "stop": True, "run_id": None, "checkpoint": None,
                "last": {"pattern": state.get("pattern"), "run": state.get("run_id"),
                         "checkpoint": state.get("checkpoint"), "verdict": final, "alert": watched.alert,
                         "tests": [t.to_json() for t in assessed.tests] if assessed else None, "at": time.time()}}

