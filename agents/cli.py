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


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return n


def _non_negative(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return n


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

    restore = sub.add_parser("import", help="load a file written by `mindloop export`", parents=[common])
    restore.add_argument("file", help="the export file ('-' for standard input)")
    restore.add_argument("--scope", help="load into this scope instead of the exported one")
    return parser


def _open_graph(args: argparse.Namespace):
    from graph import GraphConfig, MemoryGraph, load_config

    config = load_config(GraphConfig, "graph", file=args.config, overrides={"home": args.home})
    return MemoryGraph.open(config)


def _print(args: argparse.Namespace, data: Any, human: str) -> None:
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=None))
    else:
        print(human)


def _read_lines(path: str) -> list[str]:
    """The lines of a UTF-8 file ('-' = stdin); invalid UTF-8 is an error naming the line."""
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        from graph import InvalidRecord

        line = 1 + data[: e.start].count(b"\n")
        raise InvalidRecord(f"{path}: line {line}: not valid UTF-8 (byte {data[e.start]:#x})") from None


def _cmd_log_import(args) -> int:
    from graph.conversations import import_conversations

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


def _open_loop(args, g):
    from agents.backends import ModelConfig, make_backend
    from agents.loop import ChatLoop
    from agents.surface import SurfaceConfig, Surfacer
    from graph import load_config

    model_cfg = load_config(ModelConfig, "model", file=args.config,
                            overrides={"model": args.model, "upstream": args.upstream, "max_tokens": args.max_tokens})
    surface_cfg = load_config(SurfaceConfig, "surface", file=args.config)
    backend = make_backend(model_cfg, checkpoints=g.config.home / "checkpoints")
    return ChatLoop(g, backend, surfacer=Surfacer(g, surface_cfg))


def _cmd_chat(args) -> int:
    from agents.chat import run_chat

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

    from agents.server import ServeConfig, check_bind, create_app
    from graph import load_config

    cfg = load_config(ServeConfig, "serve", file=args.config, overrides={"host": args.host, "port": args.port})
    check_bind(cfg)
    with _open_graph(args) as g:
        if args.scope:
            g.config.scope = args.scope
        loop = _open_loop(args, g)
        try:
            print(f"mindloop proxy on http://{cfg.host}:{cfg.port}/v1 (model {loop.backend.model_id}); Ctrl-C stops",
                  file=sys.stderr)
            uvicorn.run(create_app(loop, cfg), host=cfg.host, port=cfg.port, log_level="warning")
        finally:
            loop.close()
            loop.backend.close()
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
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    action = getattr(args, "log_command", None) or getattr(args, "graph_command", None)
    handler = _COMMANDS[(args.command, action)]
    from graph import GraphError

    try:
        return handler(args)
    except GraphError as e:
        print(f"mindloop: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"mindloop: error: {e.filename}: no such file", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
