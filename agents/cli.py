"""The ``mindloop`` command.

Every subcommand prints human output by default and one JSON document with
``--json``. Errors go to stderr as ``mindloop: error: ...`` with exit status 2;
nothing partial is written. Heavy libraries load only inside the subcommand
that needs them, so ``mindloop --help`` stays fast.

    mindloop log import examples/data/conversations.jsonl
    mindloop search "rename the function" --k 5
    mindloop graph stats --json
    mindloop export --scope default --out default.jsonl
    mindloop forget --session s1
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

__all__ = ["build_parser", "main"]


def _since(value: str) -> float:
    """``--since``: an ISO date/time, or a duration ago such as 90s, 30m, 12h, 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value and value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(value[:-1]) * units[value[-1]]
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {value!r}: give an ISO date/time (2026-11-01T09:00) or a duration ago (90s, 30m, 12h, 7d)"
        ) from None


def _number(value: str, cast: type, test, needs: str):
    """Parse ``value`` with ``cast``; ``test(x)`` must hold, else argparse reports ``value needs``."""
    try:
        x = cast(value)
    except ValueError:
        kind = "whole number" if cast is int else "number"
        raise argparse.ArgumentTypeError(f"{value!r} is not a {kind}") from None
    if not test(x):
        raise argparse.ArgumentTypeError(f"{value} {needs}")
    return x


def _positive(value: str) -> int:
    return _number(value, int, lambda n: n >= 1, "must be at least 1")


def _non_negative(value: str) -> int:
    return _number(value, int, lambda n: n >= 0, "must be 0 or more")


def _positive_float(value: str) -> float:
    return _number(value, float, lambda x: x > 0, "must be more than 0")


def _non_negative_float(value: str) -> float:
    return _number(value, float, lambda x: x >= 0, "must be 0 or more")


def _fraction(value: str) -> float:
    """A number strictly between 0 and 1."""
    return _number(value, float, lambda x: 0.0 < x < 1.0, "must be between 0 and 1")


def _ratio(value: str) -> float:
    """A number in [0, 1)."""
    return _number(value, float, lambda x: 0.0 <= x < 1.0, "must be at least 0 and below 1")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="data directory (default: $MINDLOOP_HOME, else the per-user data dir)")
    common.add_argument("--config", help="TOML config file (default: HOME/config.toml when present)")
    common.add_argument("--json", action="store_true", help="print one JSON document instead of text")

    parser = argparse.ArgumentParser(
        prog="mindloop",
        description="Make a chat model learn from the people who use it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    log = sub.add_parser("log", help="conversation logs")
    log_sub = log.add_subparsers(dest="log_command", metavar="ACTION", required=True)
    imp = log_sub.add_parser(
        "import", parents=[common],
        help="import conversations: JSONL, one {'messages': [...], 'session': ..., 'scope': ...} per line",
    )
    imp.add_argument("file", help="JSONL file ('-' for standard input)")
    imp.add_argument("--scope", help="scope for lines that name none (default: the configured scope)")
    imp.add_argument("--skip-bad", action="store_true",
                     help="import the good lines and report the bad ones (default: reject the whole file)")

    search = sub.add_parser("search", help="hybrid search of the memory graph", parents=[common])
    search.add_argument("text", help="what to look for")
    search.add_argument("--k", type=_positive, default=10, help="number of hits (default 10)")
    search.add_argument("--kind", action="append", dest="kinds", metavar="KIND",
                        help="only nodes of this kind (repeatable; default: every kind)")
    search.add_argument("--scope", help="scope to search (default: the configured scope); search never crosses scopes")
    search.add_argument("--since", type=_since, help="only nodes created since: ISO time or 90s/30m/12h/7d ago")
    search.add_argument("--hops", type=_non_negative,
                        help="graph expansion hops (default: config, 1); 0 = off")

    graph_cmd = sub.add_parser("graph", help="the memory graph itself")
    graph_sub = graph_cmd.add_subparsers(dest="graph_command", metavar="ACTION", required=True)
    stats = graph_sub.add_parser("stats", help="counts of nodes, edges, sessions and vectors", parents=[common])
    stats.add_argument("--scope", help="only this scope (default: all)")

    forget = sub.add_parser("forget", help="remove a session or a whole scope from every store", parents=[common])
    forget.add_argument("--session", help="the session to forget")
    forget.add_argument("--scope", help="the scope to forget (with --session: the session's scope)")

    export = sub.add_parser("export", help="write a scope as JSONL", parents=[common])
    export.add_argument("--scope", required=True, help="the scope to export")
    export.add_argument("--out", help="file to write (default: standard output); written whole or not at all")

    model_opts = argparse.ArgumentParser(add_help=False)
    model_opts.add_argument("--model", help="'bundled' (default: SmolLM2-135M-Instruct), a transformers model id or "
                                            "path, or the model name at --upstream")
    model_opts.add_argument("--upstream", help="OpenAI-compatible base URL (http://host:port/v1); "
                                               "default: run the model locally")
    model_opts.add_argument("--scope", help="scope of memories and logs (default: the configured scope)")
    model_opts.add_argument("--max-tokens", type=_positive, help="cap on tokens per reply (default 256)")

    chat = sub.add_parser("chat", help="terminal chat through the loop (surfacing and logging every turn)",
                          parents=[common, model_opts])
    chat.add_argument("--session", default="chat", help="session to start or resume (default 'chat')")

    serve = sub.add_parser("serve", help="OpenAI-compatible proxy: POST /v1/chat/completions, GET /v1/models",
                           parents=[common, model_opts])
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; others need MINDLOOP_API_TOKEN)")
    serve.add_argument("--port", type=_positive, help="TCP port (default 8000)")
    serve.add_argument("--daemon", action="store_true",
                       help="also run the scheduler (`mindloop daemon`) in a background thread")

    restore = sub.add_parser("import", help="load a file written by `mindloop export`", parents=[common])
    restore.add_argument("file", help="the export file ('-' for standard input)")
    restore.add_argument("--scope", help="load into this scope instead of the exported one")

    detect = sub.add_parser("detect", parents=[common, model_opts],
                            help="find corrections: --all over stored logs, --eval FILE to measure, --train to rebuild")
    mode = detect.add_mutually_exclusive_group(required=True)
    mode.add_argument("--all", action="store_true",
                      help="flag every stored (reply, next user turn) pair not yet flagged, then update patterns")
    mode.add_argument("--eval", metavar="FILE",
                      help="measure the detector on a labelled JSONL file: {context, response, followup, label}")
    mode.add_argument("--train", action="store_true",
                      help="refit the classifier on the shipped seed set's train split and save its weights")
    mode.add_argument("--dependence", action="store_true",
                      help="score memory dependence of recent replies that had memories surfaced (local model)")
    detect.add_argument("--threshold", type=_fraction,
                        help="confidence from which a follow-up is a correction (default: the trained threshold)")
    detect.add_argument("--judge", choices=["off", "model"], help="LLM judge as a third opinion (default off)")
    detect.add_argument("--reader", choices=["bundled", "off"],
                        help="model reading each follow-up in context (default bundled; off = rules, tf-idf, MiniLM)")
    detect.add_argument("--split", choices=["train", "heldout"],
                        help="with --eval: only lines whose 'split' is this (the seed set has both; default: all)")
    detect.add_argument("--skip-bad", action="store_true",
                        help="with --eval: skip malformed lines and report them (default: reject the file)")
    detect.add_argument("--since", type=_since, help="with --all/--dependence: only turns since this time")
    detect.add_argument("--out", help="with --train: where to write the weights (default: the shipped file)")

    flags = sub.add_parser("flags", help="review flagged replies: list, show, confirm, reject, edit")
    flags_sub = flags.add_subparsers(dest="flags_command", metavar="ACTION", required=True)
    flist = flags_sub.add_parser("list", parents=[common], help="flags, newest first")
    flist.add_argument("--pattern", help="only flags of this pattern (id or name)")
    flist.add_argument("--status", choices=["new", "confirmed", "rejected"], help="only flags of this status")
    flist.add_argument("--scope", help="scope (default: the configured scope)")
    for action, text in (("show", "the conversation window, the flagged reply, the correction, evidence, similar "
                                   "flags"), ("confirm", "mark a flag as a real correction (it will train)"),
                         ("reject", "mark a flag as a false alarm (it never trains)"),
                         ("edit", "supply the response the assistant should have given (also confirms)")):
        p = flags_sub.add_parser(action, parents=[common], help=text)
        p.add_argument("id", help="the flag id")
        p.add_argument("--scope", help="scope (default: the configured scope)")
        if action == "edit":
            src = p.add_mutually_exclusive_group(required=True)
            src.add_argument("--response", help="the better response, as text")
            src.add_argument("--file", help="read the better response from this UTF-8 file ('-' = stdin)")

    patterns = sub.add_parser("patterns", parents=[common], help="patterns of flags, with counts over time")
    patterns.add_argument("--rebuild", action="store_true", help="recompute similarity edges and communities first")
    patterns.add_argument("--scope", help="scope (default: the configured scope)")

    compose = sub.add_parser("compose", parents=[common, model_opts],
                             help="build a pattern's balanced training examples (accept, push-back, general)")
    compose.add_argument("--pattern", required=True, help="the pattern (id or name)")
    compose.add_argument("--out", help="write TRL JSONL here (and .pairs/.kto/.heldout beside it); "
                                       "default: store in the graph only")
    compose.add_argument("--general-ratio", type=_ratio, help="share of general replay in the set (default 0.25)")
    compose.add_argument("--pushback-ratio", type=_non_negative_float,
                         help="push-back examples per accept example (default 0.33; 0 = none)")
    compose.add_argument("--heldout-ratio", type=_ratio, help="share of each kind held out (default 0.2)")
    compose.add_argument("--no-model", action="store_true",
                         help="do not run the chat model: no generated replies; general replay uses reference answers")
    compose.add_argument("--include-trained", action="store_true", help="reuse examples a run already trained on")
    trainp = sub.add_parser("train", parents=[common],
                            help="train the chat model on a pattern's examples or a dataset; writes a checkpoint")
    src = trainp.add_mutually_exclusive_group(required=True)
    src.add_argument("--pattern", help="the pattern (id or name): its composed train-split examples from the graph")
    src.add_argument("--dataset", help="a JSONL file in TRL's format (what `mindloop compose --out` writes)")
    trainp.add_argument("--objective", choices=["sft", "dpo", "kto"], help="training objective (default sft)")
    trainp.add_argument("--method", choices=["lora", "full"], help="LoRA adapter or all weights (default lora)")
    trainp.add_argument("--optimizer", choices=["adamw", "apollo"],
                        help="default adamw; apollo needs the [apollo] extra (CC-BY-NC licence)")
    trainp.add_argument("--lr", type=_fraction, help="learning rate (default 1e-4 for lora, 1e-5 for full)")
    trainp.add_argument("--epochs", type=_positive_float, help="passes over the data (default 1)")
    trainp.add_argument("--no-context-frozen", dest="context_frozen", action="store_false", default=None,
                        help="sft: backpropagate through the whole conversation (default: the response only)")
    trainp.add_argument("--context-dtype", choices=["auto", "model", "bfloat16"],
                        help="dtype of the context-frozen prompt pass (default auto: bfloat16 on a CPU with native "
                             "bfloat16 when the model is float32; 'model' is exact)")
    trainp.add_argument("--step-in-backward", dest="step_in_backward", action="store_true", default=None,
                        help="full weights: step each weight's AdamW inside backward and free its gradient at once "
                             "(one copy of the weights less memory; no clipping, no accumulation, one process)")
    trainp.add_argument("--model", help="'bundled' (default), a transformers model id or path")
    trainp.add_argument("--batch-size", type=_positive, help="examples per step (default 4)")
    trainp.add_argument("--max-steps", type=_positive, help="stop after this many steps (default: the epochs)")
    trainp.add_argument("--max-length", type=_positive, help="longest example in tokens (default 1024)")
    trainp.add_argument("--no-eval", dest="evaluate", action="store_false", default=None,
                        help="skip the before/after evaluation")
    trainp.add_argument("--include-trained", action="store_true",
                        help="with --pattern: also examples an earlier run trained on")
    trainp.add_argument("--scope", help="scope of the pattern and of the run's records (default: configured)")

    evalp = sub.add_parser("eval", parents=[common], help="evaluate the model or a checkpoint on probe sets")
    evalp.add_argument("--checkpoint", help="checkpoint id (default: the promoted one; 'base' = no checkpoint)")
    evalp.add_argument("--probes", action="append", metavar="FILE",
                       help="probe JSONL file (repeatable; default: the built-in target, pushback, capability sets)")
    evalp.add_argument("--text", help="UTF-8 text file for perplexity (default: pydoc_data.topics prose)")
    evalp.add_argument("--model", help="base model: 'bundled' (default), an id or a path")

    ckpts = sub.add_parser("checkpoints", help="checkpoints: list, show, promote, rollback")
    ck_sub = ckpts.add_subparsers(dest="checkpoints_command", metavar="ACTION", required=True)
    ck_sub.add_parser("list", parents=[common], help="every checkpoint, oldest first, and which is promoted")
    for action, text in (("show", "a checkpoint's manifest and metrics"),
                         ("promote", "serve this checkpoint (atomic; the chat model follows)")):
        cp = ck_sub.add_parser(action, parents=[common], help=text)
        cp.add_argument("id", help="checkpoint id")
    rb = ck_sub.add_parser("rollback", parents=[common],
                           help="go back to the promoted checkpoint's parent (the base model when it has none)")
    rb.add_argument("--reason", default="manual rollback", help="recorded with the rollback")

    obs = sub.add_parser("observe", parents=[common],
                         help="surface-observe: per checkpoint the windows, rate tests and verdicts; alerts; rollbacks")
    obs.add_argument("--scope", help="scope of the turns and flags (default: the configured scope)")
    act = obs.add_mutually_exclusive_group()
    act.add_argument("--gate", metavar="CHECKPOINT", help="run the gate on a candidate checkpoint")
    act.add_argument("--watch", action="store_true",
                     help="assess the checkpoint in use now; on a significant rise raise an alert and roll back")
    act.add_argument("--resolve", metavar="ALERT", help="close an open alert (the scheduler waits while one is open)")
    obs.add_argument("--promote", action="store_true", help="with --gate: promote the candidate when it passes")

    daemon = sub.add_parser("daemon", parents=[common, model_opts],
                            help="the scheduler: when a pattern is ripe, compose, train, gate, promote and watch")
    _scheduler_options(daemon)
    daemon.add_argument("--once", action="store_true", help="one tick (a whole cycle when a pattern is ripe), then exit")

    status = sub.add_parser("status", parents=[common],
                            help="patterns and their readiness, the queue, the checkpoint in use, runs, verdicts, alerts")
    status.add_argument("--scope", help="scope (default: the configured scope)")

    rep = sub.add_parser("report", parents=[common],
                         help="write an HTML report: runs before/after with plots, gate checks, the watch, alerts")
    rep.add_argument("--out", help="where to write it (default: <home>/report.html)")
    rep.add_argument("--scope", help="scope (default: the configured scope)")

    doctor = sub.add_parser("doctor", parents=[common],
                            help="check the data directory (graph.db, vectors, checkpoints, loop.db); exit 1 on problems")
    doctor.add_argument("--repair", action="store_true",
                        help="repair what can be repaired without losing anything: damaged files are backed up "
                             "beside themselves first, corrupt checkpoints quarantined (default: only report)")

    ui = sub.add_parser("ui", parents=[common],
                        help="the inspection web UI: review flags, patterns, the memory graph, runs, the observer")
    ui.add_argument("--host", help="address to bind (default 127.0.0.1; any other needs a token)")
    ui.add_argument("--port", type=_positive, help="TCP port (default 8765)")
    ui.add_argument("--token", help="access token (default: $MINDLOOP_UI_TOKEN; unset = none, loopback only)")
    ui.add_argument("--scope", help="scope shown (default: the configured scope)")
    return parser


def _scheduler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=_positive_float, help="seconds between ticks (default 60)")
    p.add_argument("--min-flags", type=_positive, help="confirmed untrained flags that make a pattern ripe (default 20)")
    p.add_argument("--cooldown", type=_non_negative_float, help="seconds between runs of one pattern (default 21600)")
    p.add_argument("--idle", type=_non_negative_float, help="seconds without a chat turn before training (default 600)")
    p.add_argument("--method", choices=["lora", "full"], help="what to train (default lora)")
    p.add_argument("--objective", choices=["dpo", "sft", "kto"],
                   help="default dpo: the accepted reply over the flagged one (docs/observer.md)")
    p.add_argument("--max-steps", type=_positive, help="cap on training steps per run (default: one epoch)")
    p.add_argument("--no-generate", dest="generate", action="store_false", default=None,
                   help="compose without the model: references for general replay")


def _open_graph(args: argparse.Namespace):
    from mindloop.graph import GraphConfig, load_config
    from mindloop.trainer.export import open_graph

    config = load_config(GraphConfig, "graph", file=args.config, overrides={"home": args.home})
    return open_graph(config)


def _print(args: argparse.Namespace, data: Any, human: str) -> None:
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=None))
    else:
        print(human)


def _read_lines(path: str) -> list[str]:
    """The lines of a UTF-8 file ('-' = stdin); invalid UTF-8 is an error naming the line."""
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        return data.decode("utf-8").split("\n")  # not splitlines(): JSON strings may hold U+2028, NEL, \x1c...
    except UnicodeDecodeError as e:
        from mindloop.graph import InvalidRecord

        line = 1 + data[: e.start].count(b"\n")
        raise InvalidRecord(f"{path}: line {line}: not valid UTF-8 (byte {data[e.start]:#x})") from None


def _cmd_log_import(args) -> int:
    from mindloop.graph.conversations import import_conversations

    lines = _read_lines(args.file)
    with _open_graph(args) as g:
        report = import_conversations(g, lines, scope=args.scope, skip_bad=args.skip_bad)
        human = (f"imported {report.conversations} conversation(s): {report.turns_added} turn(s) added, "
                 f"{report.turns_present} already present")
        if report.errors:
            human += f"\nskipped {len(report.errors)} bad line(s):\n  " + "\n  ".join(report.errors)
        g.flush(timeout=600)
        _print(args, report.to_json(), human)
    return 0


def _cmd_search(args) -> int:
    with _open_graph(args) as g:
        g.flush(timeout=600)
        hits = g.search(args.text, args.k, kinds=args.kinds, scope=args.scope, since=args.since, hops=args.hops)
        if args.json:
            _print(args, {"hits": [h.to_json() for h in hits], "index_note": g.index_note}, "")
            return 0
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{len(hits)} hit(s) for {args.text!r}", show_lines=False)
        for col in ("#", "score", "kind", "signals", "text"):
            table.add_column(col, overflow="fold")
        for i, h in enumerate(hits, 1):
            text = h.node.embed_text() or ""
            text = " ".join(text.split())
            table.add_row(str(i), f"{h.score:.4f}", h.node.kind, ",".join(h.signals),
                          (text[:117] + "...") if len(text) > 120 else text)
        console = Console(highlight=False)
        console.print(table)
        if g.index_note:
            console.print(f"[yellow]note:[/] vectors unavailable: {g.index_note}", markup=True)
    return 0


def _cmd_graph_stats(args) -> int:
    with _open_graph(args) as g:
        s = g.stats(args.scope)
    lines = [f"home        {s['home']}", f"scopes      {', '.join(s['scopes']) or '-'}",
             f"sessions    {s['sessions']}",
             "nodes       " + (", ".join(f"{k} {v}" for k, v in sorted(s["nodes"].items())) or "0"),
             "edges       " + (", ".join(f"{k} {v}" for k, v in sorted(s["edges"].items())) or "0"),
             f"vectors     {s['vectors_indexed']} indexed, {s['vectors_pending']} pending; "
             f"index holds {s['vectors_in_index']} ({s['index']})",
             f"embedder    {s['embedder']}", f"graph.db    {s['db_bytes']} bytes"]
    if s["index_note"]:
        lines.append(f"note        {s['index_note']}")
    _print(args, s, "\n".join(lines))
    return 0


def _cmd_forget(args) -> int:
    if not args.session and not args.scope:
        raise SystemExit("mindloop forget: error: give --session S or --scope S")
    with _open_graph(args) as g:
        n = g.forget(scope=args.scope, session=args.session)
    what = f"session {args.session!r}" if args.session else f"scope {args.scope!r}"
    _print(args, {"forgotten": n}, f"forgot {what}: {n} node(s) removed from graph.db, vectors and view")
    return 0


def _cmd_export(args) -> int:
    import io
    import os
    import tempfile

    with _open_graph(args) as g:
        buf = io.StringIO()
        counts = g.export(args.scope, buf)
    if args.out:
        # write to a temporary file and rename: the export is whole or absent
        directory = os.path.dirname(os.path.abspath(args.out))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".export-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(buf.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, args.out)
        except BaseException:
            os.unlink(tmp)
            raise
        _print(args, counts, f"exported scope {args.scope!r}: {counts['nodes']} node(s), "
                             f"{counts['edges']} edge(s) to {args.out}")
    else:
        sys.stdout.write(buf.getvalue())
    return 0


def _cmd_import(args) -> int:
    lines = _read_lines(args.file)
    with _open_graph(args) as g:
        counts = g.import_(lines, scope=args.scope)
        g.flush(timeout=600)
    _print(args, counts, f"imported {counts['nodes']} node(s) and {counts['edges']} edge(s)")
    return 0


def _open_backend(args, g):
    from mindloop.agents.chat.backends import ModelConfig, make_backend
    from mindloop.graph import load_config

    model_cfg = load_config(ModelConfig, "model", file=args.config,
                            overrides={"model": getattr(args, "model", None), "upstream": getattr(args, "upstream", None),
                                       "max_tokens": getattr(args, "max_tokens", None)})
    return make_backend(model_cfg, checkpoints=g.config.home / "checkpoints")


def _signal_config(args):
    from mindloop.agents.signal.agent import SignalConfig
    from mindloop.graph import load_config

    return load_config(SignalConfig, "signal", file=args.config,
                       overrides={"threshold": getattr(args, "threshold", None), "judge": getattr(args, "judge", None),
                                  "reader": getattr(args, "reader", None)})


def _reader(cfg, backend=None):
    """The detector's reader, sharing ``backend``'s weights when it is the bundled local model."""
    if cfg.reader == "off":
        return None
    from mindloop.agents.chat.backends import LocalBackend
    from mindloop.agents.signal.reader import Reader

    if isinstance(backend, LocalBackend) and backend.source == "bundled":
        return Reader(backend=backend)
    return Reader()


def _detector(args, embedder, backend=None):
    from mindloop.agents.signal.detect import Detector
    from mindloop.agents.signal.judge import LLMJudge

    cfg = _signal_config(args)
    judge = LLMJudge(backend) if cfg.judge == "model" and backend is not None else None
    return Detector.load(embedder, reader=_reader(cfg, backend), threshold=cfg.threshold, judge=judge), cfg


def _open_loop(args, g):
    from mindloop.agents.chat.loop import ChatLoop
    from mindloop.agents.signal.agent import SignalAgent
    from mindloop.agents.chat.surface import SurfaceConfig, Surfacer
    from mindloop.graph import load_config

    surface_cfg = load_config(SurfaceConfig, "surface", file=args.config)
    backend = _open_backend(args, g)
    detector, cfg = _detector(args, g.embedder, backend)
    agent = SignalAgent(g, detector, cfg)
    return ChatLoop(g, backend, surfacer=Surfacer(g, surface_cfg), on_pair=agent.on_pair)


def _cmd_chat(args) -> int:
    from mindloop.agents.terminal import run_chat

    with _open_graph(args) as g:
        loop = _open_loop(args, g)
        try:
            run_chat(loop, args.session, scope=args.scope)
        finally:
            loop.close()
            loop.backend.close()
    return 0


def _cmd_serve(args) -> int:
    import uvicorn

    from mindloop.agents.server import ServeConfig, check_bind, create_app
    from mindloop.graph import load_config

    cfg = load_config(ServeConfig, "serve", file=args.config, overrides={"host": args.host, "port": args.port})
    check_bind(cfg)
    _sigterm_closes()
    with _open_graph(args) as g:
        if args.scope:
            g.config.scope = args.scope
        loop = _open_loop(args, g)
        stop, worker = None, None
        if args.daemon:
            import threading

            scheduler = _scheduler(args, g)
            stop = threading.Event()
            worker = threading.Thread(target=scheduler.run_forever, args=(stop,), name="mindloop-scheduler",
                                      daemon=True)
            worker.start()
        try:
            print(f"mindloop proxy on http://{cfg.host}:{cfg.port}/v1 (model {loop.backend.model_id}"
                  f"{'; scheduler running' if worker else ''}); Ctrl-C stops", file=sys.stderr)
            uvicorn.run(create_app(loop, cfg), host=cfg.host, port=cfg.port, log_level="warning")
        finally:
            if worker is not None:
                stop.set()  # type: ignore[union-attr]
                worker.join()
            loop.close()
            loop.backend.close()
    return 0


def _scheduler(args, g, *, say=None):
    from mindloop.agents.cycle.gate import ObserveConfig
    from mindloop.agents.cycle.scheduler import Scheduler, SchedulerConfig
    from mindloop.graph import load_config

    cfg = load_config(SchedulerConfig, "scheduler", file=args.config, overrides={
        "interval_s": getattr(args, "interval", None), "min_flags": getattr(args, "min_flags", None),
        "cooldown_s": getattr(args, "cooldown", None), "idle_s": getattr(args, "idle", None),
        "method": getattr(args, "method", None), "max_steps": getattr(args, "max_steps", None),
        "objective": getattr(args, "objective", None),
        "generate": getattr(args, "generate", None), "model": getattr(args, "model", None)})
    observe = load_config(ObserveConfig, "observe", file=args.config)
    detector = None
    if cfg.generate:
        try:
            detector, _ = _detector(args, g.embedder)
        except Exception as e:  # noqa: BLE001 - compose checks generated replies with it when it loads
            print(f"mindloop: note: composing without the detector ({e})", file=sys.stderr)
    return Scheduler(g, cfg, observe=observe, scope=getattr(args, "scope", None),
                     backend_factory=lambda: _open_backend(args, g), detector=detector,
                     say=say or (lambda msg: print(f"[scheduler {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)))


def _cmd_daemon(args) -> int:
    _sigterm_closes()
    with _open_graph(args) as g:
        if args.scope:
            g.config.scope = args.scope
        scheduler = _scheduler(args, g)
        try:
            if args.once:
                state = scheduler.tick()
                out = {k: state.get(k) for k in ("phase", "pattern", "run_id", "checkpoint", "note", "error", "last")}
                _print(args, out, f"phase {out['phase'] or 'wait'}: {out['note'] or out['error'] or ''}")
            else:
                print(f"mindloop daemon: ticking every {scheduler.config.interval_s:g}s; Ctrl-C stops", file=sys.stderr)
                scheduler.run_forever()
        finally:
            scheduler.close()
    return 0


def _sigterm_closes() -> None:
    """SIGTERM unwinds like Ctrl-C, so the graph closes before the process ends.

    uvicorn re-raises SIGTERM after its graceful shutdown, and the default action would kill the process
    before the graph closes (embedded Chroma would then be rebuilt on the next open); a KeyboardInterrupt
    unwinds the ``with`` blocks instead. The daemon likewise finishes closing its checkpointer.
    """
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _cmd_observe(args) -> int:
    from mindloop.agents import cycle as ob
    from mindloop.trainer.checkpoints import Checkpoints

    from mindloop.graph import load_config

    cfg = load_config(ob.ObserveConfig, "observe", file=args.config)
    with _open_graph(args) as g:
        store = Checkpoints(Path(g.config.home) / "checkpoints")
        if args.gate:
            result = ob.gate_checkpoint(g, store, args.gate, cfg, scope=args.scope)
            lines = [f"gate for {args.gate} (parent {result.parent or 'base model'}): "
                     f"{'PASS' if result.promote else 'REJECT'}"]
            lines += [f"  {'ok  ' if c['ok'] else 'FAIL'} {c['detail']}" for c in result.checks]
            out = result.to_json()
            if result.promote and args.promote:
                ob.promote(g, store, args.gate, reason="gate passed (mindloop observe --gate --promote)")
                lines.append(f"promoted {args.gate}")
                out["promoted"] = True
            _print(args, out, "\n".join(lines))
            return 0 if result.promote else 1
        if args.resolve:
            from mindloop.graph import Alert

            alert = g.get(args.resolve, args.scope)
            if not isinstance(alert, Alert):
                print(f"mindloop: error: {args.resolve} is a {alert.KIND.value}, not an alert", file=sys.stderr)
                return 2
            alert.status = "resolved"
            g.update(alert)
            _print(args, {"resolved": alert.id}, f"resolved {alert.id}")
            return 0
        if args.watch:
            verdict = ob.watch(g, store, cfg, scope=args.scope)
            _print(args, verdict, _format_assessment(verdict) + (
                f"\nALERT {verdict['alert']}: rolled back {verdict['id']}" if verdict.get("rolled_back") else ""))
            return 0
        rep = ob.report(g, store, cfg, scope=args.scope)
    lines = [f"in use: {rep['in_use'] or 'the base model'}"]
    for c in rep["checkpoints"]:
        lines.append(_format_assessment(c))
    opened = [a for a in rep["alerts"] if a["open"]]
    lines.append(f"alerts: {len(rep['alerts'])} ({len(opened)} open)")
    for a in rep["alerts"][:10]:
        lines.append(f"  {'OPEN ' if a['open'] else '     '}{a['id']} [{a['kind']}] {a['message']}"
                     + (f" -> {a['action']}" if a.get("action") else ""))
    for r in rep["rollbacks"]:
        lines.append(f"rollback {time.strftime('%Y-%m-%d %H:%M', time.localtime(r['at']))}: {r['checkpoint']} -> "
                     f"{r['to'] or 'base model'} ({r['reason']})")
    _print(args, rep, "\n".join(lines))
    return 0


def _format_assessment(c: dict) -> str:
    if "tests" not in c:
        return f"{c.get('id') or 'base model'}: {c['verdict']}"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c["promoted_at"]))
    lines = [f"{c['id']} (promoted {when} after {c['parent'] or 'base model'}; pattern {c.get('pattern') or '-'}): "
             f"{c['verdict'].upper()}  turns before {c['n_before']}, after {c['n_after']}"]
    for t in c["tests"]:
        rates = f"{t['before_rate'] if t['before_rate'] is not None else '-'} -> " \
                f"{t['after_rate'] if t['after_rate'] is not None else '-'}"
        p = f"p={t['p_value']:.4f}" if t["p_value"] is not None else ""
        lines.append(f"    {t['what']:<48} {rates:<18} {p:<10} {t['verdict']}")
    return "\n".join(lines)


def _cmd_report(args) -> int:
    from mindloop.agents.cycle.gate import ObserveConfig
    from mindloop.agents.report import write_report
    from mindloop.graph import load_config
    from mindloop.trainer.checkpoints import Checkpoints

    with _open_graph(args) as g:
        out = Path(args.out) if args.out else g.config.home / "report.html"
        if out.is_dir():
            raise SystemExit(f"mindloop report: --out {out} is a directory; name a file")
        if not out.parent.is_dir():
            raise SystemExit(f"mindloop report: the folder of --out {out} does not exist")
        path = write_report(out, g, Checkpoints(g.config.home / "checkpoints"), scope=args.scope,
                            observe_config=load_config(ObserveConfig, "observe", file=args.config))
    _print(args, {"report": str(path)}, f"wrote {path}")
    return 0


def _cmd_status(args) -> int:
    from mindloop.agents import cycle as ob
    from mindloop.agents.cycle import Scheduler, SchedulerConfig
    from mindloop.agents.cycle.service import readiness_json as readiness
    from mindloop.trainer.checkpoints import Checkpoints

    from mindloop.graph import load_config

    cfg = load_config(SchedulerConfig, "scheduler", file=args.config)
    ocfg = load_config(ob.ObserveConfig, "observe", file=args.config)
    with _open_graph(args) as g:
        store = Checkpoints(Path(g.config.home) / "checkpoints")
        ready = readiness(g, cfg, scope=args.scope)
        scheduler = Scheduler(g, cfg, observe=ocfg, scope=args.scope)
        try:
            sched = scheduler.state()
        finally:
            scheduler.close()
        runs = [{"id": r.id, "status": r.status, "pattern": r.config.get("pattern"),  # type: ignore[attr-defined]
                 "created": r.created, "checkpoint": next((e.dst for e in g.edges(r.id, kinds=["produced"],
                                                                                  direction="out")), None)}
                for r in sorted(g.nodes(kind="run", scope=args.scope), key=lambda r: -r.created)[:5]]
        rep = ob.report(g, store, ocfg, scope=args.scope)
    promoted = store.promoted()
    out = {"in_use": promoted["checkpoint"] if promoted else None,
           "scheduler": {k: sched.get(k) for k in ("phase", "pattern", "run_id", "checkpoint", "note", "error",
                                                    "last", "resuming")},
           "patterns": ready, "queue": [r["pattern"] for r in ready if r["ripe"]],
           "runs": runs,
           "watch": [{k: c[k] for k in ("id", "verdict", "n_before", "n_after")} for c in rep["checkpoints"]],
           "alerts": [a for a in rep["alerts"] if a["open"]]}
    s = out["scheduler"]
    lines = [f"in use: {out['in_use'] or 'the base model'}",
             f"scheduler: phase {s['phase'] or 'wait'}"
             + (f", pattern {s['pattern']}, run {s['run_id']}" if s.get("run_id") else "")
             + (f" ({s['note']})" if s.get("note") else "")
             + (f"; resumes at {s['resuming'][0]}" if s.get("resuming") else "")]
    if s.get("last"):
        last = s["last"]
        lines.append(f"last cycle: {last.get('pattern')} run {last.get('run')} -> {last.get('verdict')}"
                     + (f" ({last['error']})" if last.get("error") else ""))
    lines.append(f"patterns ({len(ready)}; queue: {', '.join(out['queue']) or 'empty'}):")
    for r in ready:
        lines.append(f"  {'RIPE ' if r['ripe'] else '     '}{r['pattern']} {r['name'][:40]!r}: {r['confirmed']} "
                     f"confirmed, {r['untrained']} untrained; plan lr {r['plan']['lr']:g}, general "
                     f"{r['plan']['general_ratio']:.0%}, examples {r['plan']['max_examples'] or 'all'}"
                     + (f"; waiting for {'; '.join(r['waiting_for'])}" if r["waiting_for"] else ""))
        for adj in r["adjustments"][-2:]:
            lines.append(f"        adjusted: {adj['why']} -> {adj['to']}")
    lines.append("recent runs: " + (", ".join(f"{r['id']} ({r['status']})" for r in out["runs"]) or "none"))
    for w in out["watch"][-3:]:
        lines.append(f"watch {w['id']}: {w['verdict']} (turns before {w['n_before']}, after {w['n_after']})")
    lines.append(f"open alerts: {len(out['alerts'])}")
    for a in out["alerts"]:
        lines.append(f"  {a['id']}: {a['message']}")
    _print(args, out, "\n".join(lines))
    return 0


def _cmd_detect(args) -> int:
    if args.eval or args.train:
        return _detect_offline(args)
    with _open_graph(args) as g:
        g.flush(timeout=600)
        if args.dependence:
            from mindloop.agents.signal.dependence import score_turns

            backend = _open_backend(args, g)
            try:
                scored = score_turns(g, backend, scope=args.scope, since=args.since)
            finally:
                backend.close()
            human = "\n".join(f"{d['score']:+.3f}  {d['turn']}  ({d['session']})" for d in scored)
            _print(args, {"scored": scored}, f"scored {len(scored)} repl(ies) for memory dependence\n" + human)
            return 0
        from mindloop.agents.signal.patterns import describe, model_namer, update_patterns
        from mindloop.agents.signal.agent import SignalAgent

        backend = _open_backend(args, g) if (args.judge or _signal_config(args).judge) == "model" else None
        detector, cfg = _detector(args, g.embedder, backend)
        agent = SignalAgent(g, detector, cfg)
        found = agent.detect_all(scope=args.scope, since=args.since)
        namer = model_namer(backend) if backend is not None else None
        patterns = update_patterns(g, g.embedder, scope=args.scope, config=cfg, namer=namer)
        summary = [describe(g, p) for p in patterns]
    out = {"pairs": found["pairs"], "skipped": found["skipped"], "threshold": detector.threshold,
           "flags": [f.to_json() for f in found["flags"]], "patterns": summary}
    lines = [f"scored {found['pairs']} reply/follow-up pair(s) (threshold {detector.threshold:.2f}); "
             f"{len(found['flags'])} new flag(s); {found['skipped']} already flagged"]
    for f in found["flags"]:
        lines.append(f"  {f.id}  {f.type:<22} {f.confidence:.2f}  {_snippet(f.reason.split(' || ')[0], 60)}")
    lines.append(f"{len(summary)} pattern(s)")
    for p in summary:
        lines.append(f"  {p['id']}  {p['flags']} flag(s)  {p['name']}")
    _print(args, out, "\n".join(lines))
    return 0


def _snippet(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _detect_offline(args) -> int:
    from mindloop.agents.signal.detect import evaluate, read_pairs, seed_path, seed_pairs, shipped_weights_path, train
    from mindloop.graph import GraphConfig, load_config, make_embedder

    graph_cfg = load_config(GraphConfig, "graph", file=args.config)
    embedder = make_embedder(graph_cfg.embedder, graph_cfg.embed_dtype, graph_cfg.embed_query_runtime)
    if args.train:
        import hashlib

        reader = _reader(_signal_config(args))
        weights = train(seed_pairs("train"), embedder, reader=reader,
                        seed_sha256=hashlib.sha256(seed_path().read_bytes()).hexdigest())
        out = args.out or str(shipped_weights_path(reader is not None))
        weights.save(out)
        m = weights.meta
        _print(args, {"out": out, **m}, f"trained on {m['n']} seed pairs with {m['embedder']}, reader "
                                        f"{m['reader'] or 'off'}: threshold {m['threshold']:.2f} (cross-validated "
                                        f"precision {m['cv_precision']:.3f}, recall {m['cv_recall']:.3f}); "
                                        f"weights in {out}")
        return 0
    pairs, problems = read_pairs(args.eval, skip_bad=args.skip_bad)
    if args.split:
        pairs = [p for p in pairs if p.split == args.split]
        if not pairs:
            from mindloop.graph import InvalidRecord

            raise InvalidRecord(f"{args.eval}: no line has split {args.split!r}")
    detector, _ = _detector(args, embedder)
    m = evaluate(detector, pairs)
    m["reader"] = detector.reader.name if detector.reader is not None else None
    if problems:
        m["skipped_lines"] = problems
        if not args.json:
            print(f"skipped {len(problems)} bad line(s):\n  " + "\n  ".join(problems), file=sys.stderr)
    c = m["confusion"]
    human = (f"{args.eval}: {m['n']} pair(s); embedder {m['embedder']}, reader {m['reader'] or 'off'}, "
             f"threshold {m['threshold']:.2f}\n"
             f"precision {m['precision']:.3f}  recall {m['recall']:.3f}  F1 {m['f1']:.3f}"
             + (f"  (type accuracy {m['type_accuracy']:.3f})" if m["type_accuracy"] is not None else "") + "\n"
             f"                 predicted yes  predicted no\n"
             f"  correction     {c['tp']:>13}  {c['fn']:>12}\n"
             f"  not            {c['fp']:>13}  {c['tn']:>12}")
    _print(args, m, human)
    return 0


def _signal_agent(args, g):
    from mindloop.agents.signal.agent import SignalAgent

    detector, cfg = _detector(args, g.embedder)
    return SignalAgent(g, detector, cfg)


def _cmd_flags(args) -> int:
    from mindloop.agents.signal.dependence import candidates
    from mindloop.agents.signal.patterns import resolve_pattern

    with _open_graph(args) as g:
        agent = _signal_agent(args, g)
        action = args.flags_command
        if action == "list":
            pattern = resolve_pattern(g, args.pattern, args.scope).id if args.pattern else None
            flags = agent.flags(scope=args.scope, status=args.status, pattern=pattern)
            member = {f.id: [e.dst for e in g.edges(f.id, kinds=["member_of"], direction="out")] for f in flags}
            deps = candidates(g, scope=args.scope)
            data = {"flags": [{**f.to_json(), "patterns": member[f.id]} for f in flags], "memory_dependent": deps}
            lines = [f"{len(flags)} flag(s)"]
            for f in flags:
                lines.append(f"  {f.id}  {f.status:<9} {f.type:<22} {f.confidence:.2f}  "
                             f"{_snippet(f.reason.split(' || ')[0], 50)}")
            if deps:
                lines.append(f"{len(deps)} memory-dependent repl(ies) (candidates to train):")
                lines += [f"  {d['turn']}  {d['score']:+.2f}  {_snippet(d['text'], 50)}" for d in deps]
            _print(args, data, "\n".join(lines))
            return 0
        if action == "show":
            info = agent.show(args.id, scope=args.scope)
            f = info["flag"]
            lines = [f"flag {f['id']}  {f['status']}  {f['type']}  confidence {f['confidence']:.2f}",
                     "conversation before:"]
            lines += [f"  {t['role']:>9}: {_snippet(t['text'], 100)}" for t in info["window"]]
            lines += [f"flagged reply: {info['flagged']}", f"correction:    {info['correction']}"]
            if info["reply_after_correction"]:
                lines.append(f"reply after:   {info['reply_after_correction']}")
            if f.get("better_response"):
                lines.append(f"better response (edited): {f['better_response']}")
            lines.append("evidence:")
            lines += [f"  {e}" for e in f["evidence"]]
            if info["similar"]:
                lines.append("similar flags:")
                lines += [f"  {s['id']}  {s['score']:.2f}  {_snippet(s['correction'], 60)}" for s in info["similar"]]
            _print(args, info, "\n".join(lines))
            return 0
        if action == "edit":
            text = args.response if args.response is not None else "\n".join(_read_lines(args.file))
            flag = agent.edit(args.id, text, scope=args.scope)
        else:
            flag = (agent.confirm if action == "confirm" else agent.reject)(args.id, scope=args.scope)
    _print(args, flag.to_json(), f"flag {flag.id} is {flag.status}")
    return 0


def _cmd_patterns(args) -> int:
    from mindloop.agents.signal.patterns import describe, model_namer, update_patterns

    with _open_graph(args) as g:
        if args.rebuild:
            cfg = _signal_config(args)
            backend = _open_backend(args, g) if cfg.judge == "model" else None
            namer = model_namer(backend) if backend is not None else None
            update_patterns(g, g.embedder, scope=args.scope, config=cfg, namer=namer)
        patterns = [describe(g, p) for p in g.nodes(kind="pattern", scope=args.scope) if p.status != "empty"]
    patterns.sort(key=lambda p: -p["flags"])
    lines = [f"{len(patterns)} pattern(s)"]
    for p in patterns:
        status = ", ".join(f"{k} {v}" for k, v in sorted(p["by_status"].items()))
        weeks = " ".join(str(n) for n in p["per_week"])
        lines.append(f"  {p['id']}  {p['name']}\n      {p['flags']} flag(s) ({status}); per week, oldest first: {weeks}")
    _print(args, {"patterns": patterns}, "\n".join(lines))
    return 0


def _cmd_compose(args) -> int:
    from mindloop.agents.signal.compose import ComposeConfig, compose, write_jsonl
    from mindloop.agents.signal.patterns import resolve_pattern
    from mindloop.graph import load_config

    cfg = load_config(ComposeConfig, "compose", file=args.config,
                      overrides={"general_ratio": args.general_ratio, "pushback_ratio": args.pushback_ratio,
                                 "heldout_ratio": args.heldout_ratio,
                                 "include_trained": True if args.include_trained else None})
    with _open_graph(args) as g:
        pattern = resolve_pattern(g, args.pattern, args.scope)
        backend = None if args.no_model else _open_backend(args, g)
        try:
            detector, _ = _detector(args, g.embedder)
            made = compose(g, pattern, embedder=g.embedder, backend=backend, detector=detector, config=cfg)
        finally:
            if backend is not None:
                backend.close()
        files = write_jsonl(made.examples, args.out) if args.out else {}
    counts = {**made.counts(), "files": files}
    lines = [f"pattern {pattern.id} ({pattern.name}): {counts['total']} example(s)",
             "  kind       train  heldout"]
    for kind, n in counts["kinds"].items():
        lines.append(f"  {kind:<9} {n['train']:>6}  {n['heldout']:>7}")
    lines.append(f"  preference pairs {counts['preference_pairs']}; near-duplicates dropped "
                 f"{counts['dropped_duplicates']}; already trained {counts['skipped_trained']}; flags without a "
                 f"better response {counts['skipped_flags']}")
    lines.append("  sources: " + ", ".join(f"{k} {v}" for k, v in sorted(counts["sources"].items())))
    for k, v in files.items():
        lines.append(f"  wrote {k}: {v}")
    _print(args, counts, "\n".join(lines))
    return 0


def _main_process() -> bool:
    """False in the other processes of an ``accelerate launch`` / torchrun (they train, but record nothing)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _cmd_train(args) -> int:
    from mindloop.trainer.data import read_dataset, rows_from_examples
    from mindloop.trainer.evaluate import format_comparison
    from mindloop.trainer.evaluate import builtin_probes, probes_from_examples
    from mindloop.trainer.run import TrainConfig, record_run, recover_runs, train

    from mindloop.graph import load_config

    cfg = load_config(TrainConfig, "train", file=args.config, overrides={
        "objective": args.objective, "method": args.method, "optimizer": args.optimizer, "lr": args.lr,
        "epochs": args.epochs, "context_frozen": args.context_frozen, "context_dtype": args.context_dtype,
        "step_in_backward": args.step_in_backward, "model": args.model,
        "batch_size": args.batch_size, "max_steps": args.max_steps, "max_length": args.max_length,
        "evaluate": args.evaluate})
    main_process = _main_process()
    with _open_graph(args) as g:
        for r in recover_runs(g, g.config.home, scope=args.scope) if main_process else []:  # killed earlier
            print(f"note: run {r['run']}: {r['status']} (its process had been killed)", file=sys.stderr)
        probes = builtin_probes()
        example_ids: list[str] = []
        if args.pattern:
            from mindloop.agents.signal.patterns import resolve_pattern

            pattern = resolve_pattern(g, args.pattern, args.scope)
            examples = [e for e in g.nodes(kind="example", scope=args.scope) if e.pattern == pattern.id]
            train_ex = [e for e in examples if e.split == "train" and (
                args.include_trained or not g.edges(e.id, kinds=["trained_on"], direction="in"))]
            if not train_ex:
                from mindloop.trainer.errors import InvalidDataset

                raise InvalidDataset(f"pattern {pattern.id} has no untrained train-split examples: run "
                                     f"`mindloop compose --pattern {pattern.id}` first (or --include-trained)")
            rows = rows_from_examples(train_ex, cfg.objective)
            example_ids = [e.id for e in train_ex]
            probes = probes + probes_from_examples([e for e in examples if e.split == "heldout"])
        else:
            rows = read_dataset(args.dataset, cfg.objective)
        tags = None
        if args.pattern:
            from mindloop.agents.signal.patterns import confirmed_flag_ids as confirmed_flags

            tags = {"pattern": pattern.id, "accept_examples": sum(e.example_kind == "accept" for e in train_ex),
                    "flags": confirmed_flags(g, pattern.id)}
        result = train(cfg, rows, home=g.config.home, probes=probes, progress=not args.json, tags=tags)
        if not main_process:  # under `accelerate launch`: the main process records and reports the run, once
            return 0
        record_run(g, result, scope=args.scope, example_ids=example_ids)
    out = result.to_json()
    human = (f"run {result.run_id}: {len(rows)} example(s), {len(result.steps)} logged step(s), final loss "
             f"{out['final_loss']}\ncheckpoint {result.checkpoint} (parent {result.parent or 'base model'}) in "
             f"{result.checkpoint_dir}\nloss curve {result.run_dir / 'loss.png'}\n"
             + format_comparison(result.before, result.after)
             + f"\npromote it with: mindloop checkpoints promote {result.checkpoint}")
    _print(args, out, human)
    return 0


def _cmd_eval(args) -> int:
    from mindloop.trainer.checkpoints import Checkpoints
    from mindloop.trainer.evaluate import builtin_probes, evaluate, read_probes
    from mindloop.trainer.model import load_model

    from mindloop.graph import GraphConfig, load_config

    home = load_config(GraphConfig, "graph", file=args.config, overrides={"home": args.home}).home
    store = Checkpoints(Path(home) / "checkpoints")
    checkpoint = args.checkpoint
    if checkpoint is None:
        promoted = store.promoted()
        checkpoint = promoted["checkpoint"] if promoted else None
    elif checkpoint == "base":
        checkpoint = None
    manifest = store.get(checkpoint) if checkpoint else None
    probes = [p for f in args.probes for p in read_probes(f)] if args.probes else builtin_probes()
    text = Path(args.text).read_text(encoding="utf-8") if args.text else None
    model, tok = load_model(args.model or (manifest or {}).get("base_source", "bundled"),
                            checkpoint=store.root / checkpoint if checkpoint else None)
    report = evaluate(model, tok, probes, text=text, checkpoint=checkpoint)
    lines = [f"checkpoint {checkpoint or 'base model'}: {len(probes)} probe(s)"]
    for k, v in report["kinds"].items():
        lines.append(f"  {k:<11} mean margin {v['mean_margin']:+.3f}  win rate {v['win_rate']:.2f}  (n={v['n']})")
    lines.append(f"  perplexity {report['perplexity']:.3f}")
    if "steering" in report:
        st = report["steering"]
        lines.append(f"  steering (layer {st['layer']}): consistency {st['consistency']:.3f}, prompt projection "
                     f"{st['projection']:+.3f}; attention on the instruction {report.get('attention_mass', 0):.3f}")
    _print(args, report, "\n".join(lines))
    return 0


def _cmd_checkpoints(args) -> int:
    from mindloop.trainer.checkpoints import Checkpoints

    from mindloop.graph import GraphConfig, load_config

    home = load_config(GraphConfig, "graph", file=args.config, overrides={"home": args.home}).home
    store = Checkpoints(Path(home) / "checkpoints")
    action = args.checkpoints_command
    if action == "list":
        promoted = store.promoted()
        items = store.list()
        current = promoted["checkpoint"] if promoted else None
        lines = [f"{len(items)} checkpoint(s); promoted: {current or 'none (base model)'}"]
        for m in items:
            mark = "*" if m["id"] == current else " "
            if "error" in m:
                lines.append(f" {mark} {m['id']}  UNREADABLE: {m['error']}")
            else:
                lines.append(f" {mark} {m['id']}  {m['kind']:<4}  parent {m.get('parent') or 'base'}  run {m.get('run')}")
        _print(args, {"promoted": current, "checkpoints": items}, "\n".join(lines))
        return 0
    if action == "show":
        from mindloop.trainer.evaluate import format_comparison

        m = store.get(args.id)
        metrics = m.get("metrics", {})
        _print(args, m, f"{m['id']} ({m['kind']}, base {m.get('base_model')}, parent {m.get('parent') or 'base'}, "
                        f"run {m.get('run')})\n" + format_comparison(metrics.get("before"), metrics.get("after")))
        return 0
    from mindloop.agents.cycle.promotion import promote, rollback

    with _open_graph(args) as g:
        if action == "promote":
            pointer = promote(g, store, args.id, reason="manual")
            msg = f"promoted {args.id}: the chat model serves it from its next reply"
        else:
            before = store.promoted()
            pointer = rollback(g, store, reason=args.reason)
            msg = f"rolled back {before['checkpoint'] if before else '-'}; now serving " \
                  f"{pointer['checkpoint'] if pointer else 'the base model'}"
    _print(args, {"promoted": pointer}, msg)
    return 0


def _cmd_doctor(args) -> int:
    from mindloop.agents.doctor import doctor
    from mindloop.graph import GraphConfig, load_config

    config = load_config(GraphConfig, "graph", file=args.config, overrides={"home": args.home})
    report = doctor(config.home, repair=args.repair, config=config)
    _print(args, report.to_json(), report.format())
    return 0 if report.healthy else 1


def _cmd_ui(args) -> int:

    import uvicorn

    from mindloop.agents.ui import UIConfig, create_app
    from mindloop.graph import load_config

    cfg = load_config(UIConfig, "ui", file=args.config, overrides={"host": args.host, "port": args.port,
                                                                   "token": args.token, "scope": args.scope})
    cfg.check_bind()

    _sigterm_closes()
    with _open_graph(args) as g:
        app = create_app(g, cfg)
        print(f"mindloop UI on {cfg.url(with_token=True)} (data {g.config.home}); Ctrl-C stops", file=sys.stderr)
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    return 0


_COMMANDS = {
    ("log", "import"): _cmd_log_import,
    ("search", None): _cmd_search,
    ("graph", "stats"): _cmd_graph_stats,
    ("forget", None): _cmd_forget,
    ("export", None): _cmd_export,
    ("import", None): _cmd_import,
    ("chat", None): _cmd_chat,
    ("serve", None): _cmd_serve,
    ("detect", None): _cmd_detect,
    ("flags", "list"): _cmd_flags,
    ("flags", "show"): _cmd_flags,
    ("flags", "confirm"): _cmd_flags,
    ("flags", "reject"): _cmd_flags,
    ("flags", "edit"): _cmd_flags,
    ("patterns", None): _cmd_patterns,
    ("compose", None): _cmd_compose,
    ("train", None): _cmd_train,
    ("eval", None): _cmd_eval,
    ("checkpoints", "list"): _cmd_checkpoints,
    ("checkpoints", "show"): _cmd_checkpoints,
    ("checkpoints", "promote"): _cmd_checkpoints,
    ("checkpoints", "rollback"): _cmd_checkpoints,
    ("observe", None): _cmd_observe,
    ("daemon", None): _cmd_daemon,
    ("status", None): _cmd_status,
    ("ui", None): _cmd_ui,
    ("doctor", None): _cmd_doctor,
    ("report", None): _cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None and getattr(args, "home", None):
        candidate = Path(args.home).expanduser() / "config.toml"  # --home D reads D/config.toml, as $MINDLOOP_HOME does
        if candidate.is_file():
            args.config = str(candidate)
    action = (getattr(args, "log_command", None) or getattr(args, "graph_command", None)
              or getattr(args, "flags_command", None) or getattr(args, "checkpoints_command", None))
    handler = _COMMANDS[(args.command, action)]
    from mindloop.agents.chat.backends import BackendError
    from mindloop.graph import GraphError
    from mindloop.trainer.errors import TrainerError

    try:
        return handler(args)
    except (GraphError, BackendError, TrainerError) as e:
        print(f"mindloop: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"mindloop: error: {e.filename}: no such file", file=sys.stderr)
        return 2
    except sqlite3.IntegrityError as e:  # a constraint, not damage: say which, do not send the user to doctor
        print(f"mindloop: error: the write conflicts with what is stored ({e})", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as e:  # a damaged page met after opening (graph.db's quick_check passed)
        print(f"mindloop: error: a database in the data directory is damaged ({e}); run `mindloop doctor`",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
