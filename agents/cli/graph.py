"""Subcommands on the memory graph: ``log import``, ``search``, ``graph stats``, ``forget``, ``export``, ``import``.

    mindloop log import examples/data/conversations.jsonl
    mindloop search "rename the function" --k 5
    mindloop graph stats --json
    mindloop export --scope default --out default.jsonl
    mindloop forget --session s1
"""

from __future__ import annotations

import argparse
import sys

from mindloop.agents.cli import common
from mindloop.agents.cli.options import add_field, non_negative, positive, since

__all__ = ["declare_export", "declare_forget", "declare_graph", "declare_import", "declare_log", "declare_search"]


def declare_log(p: argparse.ArgumentParser) -> None:
    log_sub = p.add_subparsers(dest="log_command", metavar="ACTION", required=True)
    log_sub.add_parser("import", declare=_declare_log_import,
                       help="import conversations: JSONL, one {'messages': [...], 'session': ..., 'scope': ...} per line")


def _declare_log_import(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("file", help="JSONL file ('-' for standard input)")
    p.add_argument("--scope", help="scope for lines that name none (default: the configured scope)")
    p.add_argument("--skip-bad", action="store_true",
                   help="import the good lines and report the bad ones (default: reject the whole file)")
    p.set_defaults(run=_cmd_log_import)


def declare_search(p: argparse.ArgumentParser) -> None:
    from mindloop.graph import GraphConfig

    common.add_common(p)
    p.add_argument("text", help="what to look for")
    add_field(p, GraphConfig, "search_k", flag="--k", type=positive)
    p.add_argument("--kind", action="append", dest="kinds", metavar="KIND",
                   help="only nodes of this kind (repeatable; default: every kind)")
    p.add_argument("--scope", help="scope to search (default: the configured scope); search never crosses scopes")
    p.add_argument("--since", type=since, help="only nodes created since: ISO time or 90s/30m/12h/7d ago")
    add_field(p, GraphConfig, "search_hops", flag="--hops", type=non_negative)
    p.set_defaults(run=_cmd_search)


def declare_graph(p: argparse.ArgumentParser) -> None:
    graph_sub = p.add_subparsers(dest="graph_command", metavar="ACTION", required=True)
    graph_sub.add_parser("stats", declare=_declare_stats, help="counts of nodes, edges, sessions and vectors")


def _declare_stats(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("--scope", help="only this scope (default: all)")
    p.set_defaults(run=_cmd_graph_stats)


def declare_forget(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("--session", help="the session to forget")
    p.add_argument("--scope", help="the scope to forget (with --session: the session's scope)")
    p.set_defaults(run=_cmd_forget)


def declare_export(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("--scope", required=True, help="the scope to export")
    p.add_argument("--out", help="file to write (default: standard output); written whole or not at all")
    p.set_defaults(run=_cmd_export)


def declare_import(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("file", help="the export file ('-' for standard input)")
    p.add_argument("--scope", help="load into this scope instead of the exported one")
    p.set_defaults(run=_cmd_import)


def _cmd_log_import(args) -> int:
    from mindloop.graph.conversations import import_conversations

    lines = common.read_lines(args.file)
    with common.open_graph(args) as g:
        report = import_conversations(g, lines, scope=args.scope, skip_bad=args.skip_bad)
        human = (f"imported {report.conversations} conversation(s): {report.turns_added} turn(s) added, "
                 f"{report.turns_present} already present")
        if report.errors:
            human += f"\nskipped {len(report.errors)} bad line(s):\n  " + "\n  ".join(report.errors)
        g.flush(timeout=600)
        common.emit(args, report.to_json(), human)
    return 0


def _cmd_search(args) -> int:
    with common.open_graph(args) as g:
        g.flush(timeout=600)
        hits = g.search(args.text, args.search_k, kinds=args.kinds, scope=args.scope, since=args.since,
                        hops=args.search_hops)
        if args.json:
            common.emit(args, {"hits": [h.to_json() for h in hits], "index_note": g.index_note}, "")
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
    with common.open_graph(args) as g:
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
    common.emit(args, s, "\n".join(lines))
    return 0


def _cmd_forget(args) -> int:
    if not args.session and not args.scope:
        raise SystemExit("mindloop forget: error: give --session S or --scope S")
    with common.open_graph(args) as g:
        n = g.forget(scope=args.scope, session=args.session)
    what = f"session {args.session!r}" if args.session else f"scope {args.scope!r}"
    common.emit(args, {"forgotten": n}, f"forgot {what}: {n} node(s) removed from graph.db, vectors and view")
    return 0


def _cmd_export(args) -> int:
    import io
    import os
    import tempfile

    with common.open_graph(args) as g:
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
        common.emit(args, counts, f"exported scope {args.scope!r}: {counts['nodes']} node(s), "
                             f"{counts['edges']} edge(s) to {args.out}")
    else:
        sys.stdout.write(buf.getvalue())
    return 0


def _cmd_import(args) -> int:
    lines = common.read_lines(args.file)
    with common.open_graph(args) as g:
        counts = g.import_(lines, scope=args.scope)
        g.flush(timeout=600)
    common.emit(args, counts, f"imported {counts['nodes']} node(s) and {counts['edges']} edge(s)")
    return 0
