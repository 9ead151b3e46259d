"""The mindloop demo: what `make demo` runs. It shows as much of the loop as exists today.

    make demo                       # or: .venv/bin/python examples/00_demo.py [--home DIR]

Expected runtime: about 13 minutes on 2 CPU cores (three passes of scripted traffic, 2-4 min each; two
training runs with their evaluations). It writes ``report.html`` into its data dir and prints how long each
part took.
Offline.

What it shows:

1. the scripted conversations in ``examples/data/conversations.jsonl`` are
   logged into a fresh memory graph with the bundled all-MiniLM-L6-v2
   embedder; the demo prints the graph's counts, runs hybrid searches that
   show why each hit came back (vector, lexical, graph path), shows that
   scopes never mix, and forgets a session;
2. a lesson memory is stored and a short scripted chat runs through the
   agent loop (surface -> respond -> log -> signal) with the bundled
   SmolLM2-135M-Instruct: each reply streams, and the demo shows what was
   surfaced into the context and what was logged; the loop's ``signal`` hook
   flags the scripted correction as it happens;
3. the training-signal agent runs over the scripted conversations in
   ``examples/data/corrections.jsonl`` (28 of them are one failure: the
   assistant suggests alternatives instead of doing what was clearly asked):
   it flags the corrections with their type, confidence and evidence, groups
   the flags into patterns, confirms the confident ones (standing in for a
   reviewer: ``signal.auto_confirm_above = 0.9``) and composes the pattern's
   balanced examples (accept, push-back, general replay answered by the
   bundled model), printing the counts by kind;
4. the scheduler (what ``mindloop daemon`` runs) finds the demo pattern ripe
   and runs the cycle: compose, train (DPO on the pattern's preference pairs,
   LoRA, lr 1e-4, one epoch),
   gate (held-out target up, nothing regressed), promote, watch. The scripted
   user of ``examples/replay.py`` sends the first 40 requests of
   ``examples/data/replay.jsonl`` through the loop before and after the
   promotion and corrects only the replies that fail; surface-observe
   compares the rates and gives its verdict;
5. an operator trains the same pattern far too hard (lr 5e-3, three epochs)
   and promotes it over the gate's objection; after the next traffic the
   watch raises an alert, rolls back to the parent and shrinks the pattern's
   next run.

Each run starts from a fresh data directory (``./demo-data`` unless
``--home`` is given; its old contents are removed), so re-running is safe.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]

from mindloop.graph import GraphConfig, Memory, MemoryGraph  # noqa: E402
from mindloop.graph.conversations import import_conversations  # noqa: E402
from mindloop.trainer.export import open_graph  # noqa: E402

if TYPE_CHECKING:
    from mindloop.agents.cycle.watch import WatchReport

DATA = ROOT / "examples" / "data" / "conversations.jsonl"
CORRECTIONS = ROOT / "examples" / "data" / "corrections.jsonl"
console = Console(highlight=False)


def show_hits(graph: MemoryGraph, query: str, **kw) -> None:
    hits = graph.search(query, k=5, **kw)
    table = Table(title=f"search {query!r}" + (f"  {kw}" if kw else ""), title_justify="left")
    for col in ("#", "score", "kind", "why", "text"):
        table.add_column(col, overflow="fold")
    for i, h in enumerate(hits, 1):
        why = []
        for r in h.reasons:
            if r["signal"] == "vector":
                why.append(f"vector #{r['rank']} sim {r['similarity']:.2f}")
            elif r["signal"] == "lexical":
                why.append(f"bm25 #{r['rank']}")
            else:
                where = f"graph #{r['rank']}" if r["rank"] else "graph, no vote"
                why.append(f"{where} ({'/'.join(r['edges'])} of a top hit)")
        text = " ".join((h.node.embed_text() or "").split())
        table.add_row(str(i), f"{h.score:.4f}", h.node.kind, "; ".join(why), text[:90] + ("…" if len(text) > 90 else ""))
    console.print(table)


SCRIPTED_CHAT = [
    "Rename the variable tmp to total in this line: tmp = a + b",
    "No, I asked you to just rename it. Don't suggest anything else.",
    "What is the capital of France?",
]


def chat_through_the_loop(graph: MemoryGraph, agent, backend) -> None:
    from mindloop.agents.chat.loop import ChatLoop, TurnResult

    lesson = graph.add(Memory(memory_kind="lesson", text="When the user asks to rename something, just rename it; "
                                                         "do not suggest alternatives."))
    graph.flush()
    console.print(f"stored a lesson memory ({lesson.id})")
    loop = ChatLoop(graph, backend, on_pair=agent.on_pair)
    try:
        for text in SCRIPTED_CHAT:
            console.print(f"[bold]user>[/] {text}")
            console.print("[bold]bot>[/] ", end="")
            result = None
            for item in loop.stream("demo-chat", text, max_tokens=48):
                if isinstance(item, TurnResult):
                    result = item
                else:
                    console.print(item, end="", markup=False)
            console.print()
            surfaced = ", ".join(f"({s['kind']}) {s['text'][:50]}…" for s in result.surfaced) or "nothing"
            console.print(f"  [dim]surfaced: {surfaced}; reply in {result.latency_ms:.0f} ms[/]")
            flagged = [e.src for e in graph.edges(result.user_turn, kinds=["corrects"], direction="out")]
            if flagged:
                flag = agent.flags()[0]
                console.print(f"  [yellow]signal: this turn corrects the previous reply -> flag {flag.id[:13]}… "
                              f"({flag.type}, confidence {flag.confidence:.2f})[/]")
        turns = graph.session_turns("demo-chat")
        console.print(f"logged {len(turns)} turns in session demo-chat: "
                      + ", ".join(f"{t.role}#{t.index}" for t in turns)
                      + f"; surfaced edges from the lesson: {len(graph.edges(lesson.id, kinds=['surfaced']))}")
    finally:
        loop.close()


def training_signal(graph: MemoryGraph, agent, backend):
    from collections import Counter

    from mindloop.agents.signal.compose import compose
    from mindloop.agents.signal.patterns import describe, update_patterns

    report = import_conversations(graph, CORRECTIONS.read_text(encoding="utf-8").splitlines())
    console.print(f"logged {report.conversations} more scripted conversations from {CORRECTIONS.name}")
    t = time.perf_counter()
    found = agent.detect_all()
    flags = agent.flags()
    console.print(f"detect --all: scored {found['pairs']} reply/follow-up pairs in {time.perf_counter() - t:.1f}s "
                  f"(threshold {agent.detector.threshold:.2f}); {len(flags)} flags: "
                  + ", ".join(f"{k} {v}" for k, v in Counter(f.type for f in flags).most_common()))
    table = Table(title="a few flags (mindloop flags list / flags show ID)", title_justify="left")
    for col in ("type", "conf", "status", "correction", "evidence"):
        table.add_column(col, overflow="fold")
    for f in flags[:5]:
        table.add_row(f.type, f"{f.confidence:.2f}", f.status, f.reason.split(" || ")[0][:60],
                      "; ".join(e for e in f.evidence[:2])[:70])
    console.print(table)
    patterns = update_patterns(graph, agent.detector.embedder, config=agent.config)
    for p in patterns:
        d = describe(graph, p)
        console.print(f"pattern {p.id[:16]}…  [bold]{p.name}[/]: {d['flags']} flags "
                      f"({', '.join(f'{k} {v}' for k, v in sorted(d['by_status'].items()))})")
    if not patterns:
        console.print("[red]no pattern found[/]")
        return None
    top = patterns[0]
    t = time.perf_counter()
    made = compose(graph, top, embedder=agent.detector.embedder, backend=backend, detector=agent.detector)
    counts = made.counts()
    table = Table(title=f"compose --pattern {top.id[:16]}… ({time.perf_counter() - t:.0f}s)", title_justify="left")
    for col in ("kind", "train", "held out"):
        table.add_column(col)
    for kind, n in counts["kinds"].items():
        table.add_row(kind, str(n["train"]), str(n["heldout"]))
    console.print(table)
    console.print(f"{counts['total']} examples, {counts['preference_pairs']} preference pairs; sources: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(counts["sources"].items()))
                  + f"; near-duplicates dropped {counts['dropped_duplicates']}")
    return top, made


def _rates(report: WatchReport, checkpoint: str) -> None:
    c = next((c for c in report.checkpoints if c.id == checkpoint), None)
    if c is None:
        return
    table = Table(title=f"surface-observe: {checkpoint} against {c.parent or 'the base model'} "
                        f"({c.n_before} turns before, {c.n_after} after): {c.verdict.upper()}",
                  title_justify="left")
    for col in ("rate of turns that ...", "before", "after", "p (one-sided)", "level", "verdict"):
        table.add_column(col)
    for t in c.tests:
        table.add_row(t.what[:60], f"{t.before_rate:.3f}" if t.before_rate is not None else "-",
                      f"{t.after_rate:.3f}" if t.after_rate is not None else "-",
                      f"{t.p_value:.4f}" if t.p_value is not None else "-", f"{t.level:.4f}", t.verdict)
    console.print(table)


SECTIONS: list[tuple[str, float]] = []  # (title, start): how long each part of the demo took


def section(title: str) -> None:
    console.rule(f"[bold]{title}")
    SECTIONS.append((title, time.perf_counter()))


TRAFFIC: dict[str, dict] = {}  # model -> the scripted user's corrections, for the HTML report
# the first 40 of the 48 scripted requests: three passes of all 48 took the demo past 15 minutes on 2 cores
REPLAY_REQUESTS = 40


def _replay(loop, tag: str) -> None:
    import replay

    t = time.perf_counter()
    out = replay.replay(loop, tag, limit=REPLAY_REQUESTS)
    model = loop.backend.checkpoint or "the base model"
    TRAFFIC[f"{tag}: {model}"] = out
    console.print(f"replayed {sum(out['total'].values())} scripted requests through the loop on "
                  f"{model} in {time.perf_counter() - t:.0f}s: the user had to "
                  f"correct " + ", ".join(f"{out['failed'].get(k, 0)}/{n} {k}" for k, n in out["total"].items())
                  + " replies")


def _demo_gate():
    from mindloop.agents.cycle.gate import ObserveConfig

    # min_turns 20 (default 30): the demo's traffic is 40 scripted requests per model
    return ObserveConfig(min_turns=20)


def scheduled_cycle(graph: MemoryGraph, agent, backend, pattern) -> None:
    """The scheduler finds the pattern ripe and runs the cycle; traffic before and after; the watch's verdict."""
    from mindloop.agents.chat.loop import ChatLoop
    from mindloop.agents.cycle.watch import report
    from mindloop.agents.cycle import Scheduler, SchedulerConfig, readiness
    from mindloop.trainer.checkpoints import Checkpoints

    store = Checkpoints(graph.config.home / "checkpoints")
    loop = ChatLoop(graph, backend, on_pair=agent.on_pair)
    observe = _demo_gate()
    console.print("the demo's watch needs at least 20 turns a side (default 30); the gate has its defaults")
    # the demo's settings: its pattern has about 20 flags and it cannot wait 6 hours or 10 idle minutes
    cfg = SchedulerConfig(min_flags=15, cooldown_s=0, idle_s=0)
    try:
        console.print("traffic on the base model first, so the watch has something to compare with:")
        _replay(loop, "base")
        for r in readiness(graph, cfg)[:3]:
            console.print(f"  {'RIPE' if r.ripe else 'wait'} {r.name[:40]!r}: {r.confirmed} confirmed, "
                          f"{r.untrained} untrained" + (f" ({'; '.join(r.waiting_for)})" if r.waiting_for else ""))
        console.print("[bold]scheduler tick[/] (what `mindloop daemon` does every minute):")
        scheduler = Scheduler(graph, cfg, observe=observe, backend=backend, detector=agent.detector,
                              say=lambda m: console.print(f"  [cyan]scheduler:[/] {m}"))
        try:
            t = time.perf_counter()
            state = scheduler.tick()
            console.print(f"  tick took {time.perf_counter() - t:.0f}s; phase now '{state['phase']}'"
                          + (f": {state['note']}" if state.get("note") else ""))
            run = graph.get(state["run_id"]) if state.get("run_id") else None
            if run is not None:
                from mindloop.trainer.evaluate import format_comparison

                console.print(format_comparison(run.metrics.get("before"), run.metrics.get("after")), markup=False)
            if store.promoted() is None:
                console.print("[yellow]the gate kept the base model; nothing to watch[/]")
                return
            console.print("traffic after the promotion (the chat model follows promoted.json):")
            _replay(loop, "promoted")
            state = scheduler.tick()
            console.print(f"  [cyan]scheduler:[/] phase now '{state['phase']}'; last cycle: "
                          f"{state.get('last', {}).get('verdict')}")
            _rates(report(graph, store, observe), state.get("last", {}).get("checkpoint") or "")
        finally:
            scheduler.close()
    finally:
        loop.close()


def over_trained(graph: MemoryGraph, agent, backend, pattern) -> None:
    """An operator trains far too hard and promotes by hand; the gate said no, the watch rolls it back."""
    from mindloop.agents.chat.loop import ChatLoop
    from mindloop.agents.cycle import gate_checkpoint, promote, report, watch
    from mindloop.trainer.checkpoints import Checkpoints
    from mindloop.trainer.data import rows_from_examples
    from mindloop.trainer.evaluate import builtin_probes, probes_from_examples
    from mindloop.trainer.run import TrainConfig, record_run, train

    store = Checkpoints(graph.config.home / "checkpoints")
    observe = _demo_gate()
    examples = [e for e in graph.nodes(kind="example") if e.pattern == pattern.id]
    rows = rows_from_examples([e for e in examples if e.split == "train"], "sft")
    cfg = TrainConfig(lr=5e-3, epochs=3)
    console.print(f"mindloop train --pattern {pattern.id[:16]}… --lr 5e-3 --epochs 3   (50x the default lr, "
                  f"three passes)")
    t = time.perf_counter()
    # the parent is the scheduler's checkpoint, evaluated on these same probes when it was trained: reused
    parent = (store.promoted() or {}).get("checkpoint")
    runs = [e.src for e in graph.edges(parent, kinds=["produced"], direction="in")] if parent else []
    known = graph.get(runs[0]).metrics.get("after") if runs else None
    result = train(cfg, rows, home=graph.config.home, probes=builtin_probes() + probes_from_examples(
        [e for e in examples if e.split == "heldout"]), progress=False, tags={"pattern": pattern.id}, before=known)
    record_run(graph, result, example_ids=[e.id for e in examples if e.split == "train"])
    console.print(f"run {result.run_id}: {len(result.steps)} steps in {time.perf_counter() - t:.0f}s")
    verdict = gate_checkpoint(graph, store, result.checkpoint, observe)
    console.print(f"gate: {'PASS' if verdict.promote else 'REJECT'}")
    for c in verdict.checks:
        console.print(f"  {'ok  ' if c.ok else 'FAIL'} {c.detail}", markup=False)
    console.print(f"[yellow]the operator promotes it anyway: mindloop checkpoints promote {result.checkpoint}[/]")
    promote(graph, store, result.checkpoint, reason="manual, over the gate's objection")
    loop = ChatLoop(graph, backend, on_pair=agent.on_pair)
    try:
        _replay(loop, "overtrained")
    finally:
        loop.close()
    outcome = watch(graph, store, observe)
    rep = report(graph, store, observe)
    _rates(rep, result.checkpoint)
    if outcome.rolled_back:
        alert = graph.get(outcome.alert)
        console.print(f"[red]ALERT {alert.id}[/]: {alert.reason}")
        console.print(f"rolled back: {alert.details.get('action')}; now serving "
                      f"{(store.promoted() or {}).get('checkpoint') or 'the base model'}; the pattern's next run "
                      f"shrinks to {alert.details.get('plan')}")
    else:
        console.print(f"watch verdict: {outcome.verdict} (no rollback)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(ROOT / "demo-data"), help="demo data dir (emptied first)")
    args = parser.parse_args(argv)
    home = Path(args.home)
    if home.exists():
        shutil.rmtree(home)
    started = time.perf_counter()

    section("mindloop demo: the memory graph")
    with open_graph(GraphConfig(home=home)) as graph:
        console.print(f"data dir: {home}  (SQLite WAL + embedded Chroma, embedder {graph.embedder.name})")
        report = import_conversations(graph, DATA.read_text(encoding="utf-8").splitlines())
        console.print(f"logged {report.conversations} conversations, {report.turns_added} turns "
                      f"(each turn acknowledged after its SQLite commit; vectors embedded in the background)")
        t = time.perf_counter()
        graph.flush(timeout=600)
        console.print(f"background worker embedded every turn in {time.perf_counter() - t:.1f}s")

        stats = graph.stats()
        console.print("nodes: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["nodes"].items()))
                      + " | edges: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["edges"].items()))
                      + f" | vectors {stats['vectors_in_index']} | scopes {', '.join(stats['scopes'])}")

        # A user correcting "suggested alternatives instead of doing what I asked", in other words:
        show_hits(graph, "stop offering other options, just do what I told you")
        # Only user turns; the graph signal brings in the assistant turns around them:
        show_hits(graph, "rename the function", kinds=["turn"], hops=1)
        show_hits(graph, "which database did we pick?")
        show_hits(graph, "which database did we pick?", scope="bob")

        removed = graph.forget(session="rename-1")
        left = [h for h in graph.search("parse_cfg load_config", k=5) if h.node.session == "rename-1"]
        console.print(f"forget --session rename-1: {removed} nodes removed; searching for it again finds "
                      f"{len(left)} of them")

        from mindloop.agents.chat.backends import LocalBackend
        from mindloop.agents.signal.detect import Detector
        from mindloop.agents.signal.reader import Reader
        from mindloop.agents.signal.agent import SignalAgent, SignalConfig

        section("the agent loop: surface -> respond -> log -> signal (bundled SmolLM2-135M)")
        t = time.perf_counter()
        backend = LocalBackend("bundled", checkpoints=graph.config.home / "checkpoints")
        backend.load()
        console.print(f"loaded {backend.model_id} in {time.perf_counter() - t:.1f}s; the correction detector "
                      f"reads follow-ups with the same weights")
        detector = Detector.load(graph.embedder, reader=Reader(backend=backend))
        agent = SignalAgent(graph, detector, SignalConfig(auto_confirm_above=0.9))
        chat_through_the_loop(graph, agent, backend)

        section("the training-signal agent: detect -> flag -> pattern -> compose")
        found = training_signal(graph, agent, backend)
        if found:
            section("the scheduler: ripe -> compose -> train -> gate -> promote -> watch")
            scheduled_cycle(graph, agent, backend, found[0])
            section("surface-observe: an over-trained checkpoint is caught and rolled back")
            over_trained(graph, agent, backend, found[0])
        backend.close()

        from mindloop.agents.report import write_report
        from mindloop.trainer.checkpoints import Checkpoints

        path = write_report(home / "report.html", graph, Checkpoints(home / "checkpoints"),
                            observe_config=_demo_gate(), traffic=TRAFFIC, title="mindloop demo")

    SECTIONS.append(("end", time.perf_counter()))
    console.rule()
    console.print("time per part: " + "; ".join(f"{title.split(':')[0]} {b - a:.0f}s"
                                                for (title, a), (_, b) in zip(SECTIONS, SECTIONS[1:])))
    console.print(f"HTML report with the plots (runs before/after, gate, watch, traffic): {path}")
    console.print(f"done in {time.perf_counter() - started:.1f}s. Try it yourself:")
    console.print(f"  MINDLOOP_HOME={home} .venv/bin/mindloop search 'just do the rename'")
    console.print(f"  MINDLOOP_HOME={home} .venv/bin/mindloop graph stats")
    console.print("  .venv/bin/mindloop chat --session mine        # terminal chat, same loop")
    console.print("  .venv/bin/mindloop serve --port 8000          # OpenAI-compatible proxy")
    console.print(f"  MINDLOOP_HOME={home} .venv/bin/mindloop flags list    # review: flags show|confirm|reject|edit")
    console.print(f"  MINDLOOP_HOME={home} .venv/bin/mindloop patterns")
    console.print("  .venv/bin/mindloop detect --eval agents/signal/data/seed.jsonl --split heldout")
    console.print(f"  MINDLOOP_HOME={home} .venv/bin/mindloop status      # readiness, runs, verdicts, alerts")
    console.print(f"  MINDLOOP_HOME={home} .venv/bin/mindloop observe     # rates per checkpoint, tests, rollbacks")
    console.print(f"the inspection UI over this demo's data: .venv/bin/mindloop ui --home {home}   "
                  f"(then open http://127.0.0.1:8765)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
