"""Subcommands on the training signal: ``detect`` corrections, review ``flags``, group ``patterns``, ``compose``
a pattern's training examples.

    mindloop detect --all
    mindloop detect --eval agents/signal/data/seed.jsonl --split heldout
    mindloop flags list --status new
    mindloop patterns --rebuild
    mindloop compose --pattern P --out p.jsonl
"""

from __future__ import annotations

import argparse
import sys

from mindloop.agents.cli import common
from mindloop.agents.cli.options import add_field, fraction, non_negative_float, ratio, since

__all__ = ["declare_compose", "declare_detect", "declare_flags", "declare_patterns"]


def declare_detect(p: argparse.ArgumentParser) -> None:
    from mindloop.agents.signal.agent import SignalConfig

    common.add_common(p)
    common.add_model_options(p)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--all", action="store_true",
                      help="flag every stored (reply, next user turn) pair not yet flagged, then update patterns")
    mode.add_argument("--eval", metavar="FILE",
                      help="measure the detector on a labelled JSONL file: {context, response, followup, label}")
    mode.add_argument("--train", action="store_true",
                      help="refit the classifier on the shipped seed set's train split and save its weights")
    mode.add_argument("--dependence", action="store_true",
                      help="score memory dependence of recent replies that had memories surfaced (local model)")
    add_field(p, SignalConfig, "threshold", type=fraction)
    add_field(p, SignalConfig, "judge")
    add_field(p, SignalConfig, "reader")
    p.add_argument("--split", choices=["train", "heldout"],
                   help="with --eval: only lines whose 'split' is this (the seed set has both; default: all)")
    p.add_argument("--skip-bad", action="store_true",
                   help="with --eval: skip malformed lines and report them (default: reject the file)")
    p.add_argument("--since", type=since, help="with --all/--dependence: only turns since this time")
    p.add_argument("--out", help="with --train: where to write the weights (default: the shipped file)")
    p.set_defaults(run=_cmd_detect)


_FLAG_ACTIONS = (
    ("show", "the conversation window, the flagged reply, the correction, evidence, similar flags"),
    ("confirm", "mark a flag as a real correction (it will train)"),
    ("reject", "mark a flag as a false alarm (it never trains)"),
    ("edit", "supply the response the assistant should have given (also confirms)"),
)


def declare_flags(p: argparse.ArgumentParser) -> None:
    flags_sub = p.add_subparsers(dest="flags_command", metavar="ACTION", required=True)
    flags_sub.add_parser("list", declare=_declare_flags_list, help="flags, newest first")
    for action, text in _FLAG_ACTIONS:
        flags_sub.add_parser(action, declare=_declare_flag_edit if action == "edit" else _declare_flag_action,
                             help=text)


def _declare_flags_list(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("--pattern", help="only flags of this pattern (id or name)")
    p.add_argument("--status", choices=["new", "confirmed", "rejected"], help="only flags of this status")
    p.add_argument("--scope", help="scope (default: the configured scope)")
    p.set_defaults(run=_cmd_flags)


def _declare_flag_action(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("id", help="the flag id")
    p.add_argument("--scope", help="scope (default: the configured scope)")
    p.set_defaults(run=_cmd_flags)


def _declare_flag_edit(p: argparse.ArgumentParser) -> None:
    _declare_flag_action(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--response", help="the better response, as text")
    src.add_argument("--file", help="read the better response from this UTF-8 file ('-' = stdin)")


def declare_patterns(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("--rebuild", action="store_true", help="recompute similarity edges and communities first")
    p.add_argument("--scope", help="scope (default: the configured scope)")
    p.set_defaults(run=_cmd_patterns)


def declare_compose(p: argparse.ArgumentParser) -> None:
    from mindloop.agents.signal.compose import ComposeConfig

    common.add_common(p)
    common.add_model_options(p)
    p.add_argument("--pattern", required=True, help="the pattern (id or name)")
    p.add_argument("--out", help="write TRL JSONL here (and .pairs/.kto/.heldout beside it); "
                                 "default: store in the graph only")
    add_field(p, ComposeConfig, "general_ratio", type=ratio)
    add_field(p, ComposeConfig, "pushback_ratio", type=non_negative_float)
    add_field(p, ComposeConfig, "heldout_ratio", type=ratio)
    p.add_argument("--no-model", action="store_true",
                   help="do not run the chat model: no generated replies; general replay uses reference answers")
    add_field(p, ComposeConfig, "include_trained")
    p.set_defaults(run=_cmd_compose)


def _cmd_detect(args) -> int:
    if args.eval or args.train:
        return _detect_offline(args)
    with common.open_graph(args) as g:
        g.flush(timeout=600)
        if args.dependence:
            from mindloop.agents.signal.dependence import score_turns

            backend = common.open_backend(args, g)
            try:
                scored = score_turns(g, backend, scope=args.scope, since=args.since)
            finally:
                backend.close()
            human = "\n".join(f"{d['score']:+.3f}  {d['turn']}  ({d['session']})" for d in scored)
            common.emit(args, {"scored": scored}, f"scored {len(scored)} repl(ies) for memory dependence\n" + human)
            return 0
        from mindloop.agents.signal.patterns import describe, model_namer, update_patterns
        from mindloop.agents.signal.agent import SignalAgent

        backend = common.open_backend(args, g) if (args.judge or common.signal_config(args).judge) == "model" else None
        detector, cfg = common.detector(args, g.embedder, backend)
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
        lines.append(f"  {f.id}  {f.type:<22} {f.confidence:.2f}  {common.snippet(f.reason.split(' || ')[0], 60)}")
    lines.append(f"{len(summary)} pattern(s)")
    for p in summary:
        lines.append(f"  {p['id']}  {p['flags']} flag(s)  {p['name']}")
    common.emit(args, out, "\n".join(lines))
    return 0


def _detect_offline(args) -> int:
    from mindloop.agents.signal.detect import evaluate, read_pairs, seed_path, seed_pairs, shipped_weights_path, train
    from mindloop.graph import GraphConfig, load_config, make_embedder

    graph_cfg = load_config(GraphConfig, "graph", file=args.config)
    embedder = make_embedder(graph_cfg.embedder, graph_cfg.embed_dtype, graph_cfg.embed_query_runtime)
    if args.train:
        import hashlib

        reader = common.reader(common.signal_config(args))
        weights = train(seed_pairs("train"), embedder, reader=reader,
                        seed_sha256=hashlib.sha256(seed_path().read_bytes()).hexdigest())
        out = args.out or str(shipped_weights_path(reader is not None))
        weights.save(out)
        m = weights.meta
        common.emit(args, {"out": out, **m}, f"trained on {m['n']} seed pairs with {m['embedder']}, reader "
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
    detector, _ = common.detector(args, embedder)
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
    common.emit(args, m, human)
    return 0


def _signal_agent(args, g):
    from mindloop.agents.signal.agent import SignalAgent

    detector, cfg = common.detector(args, g.embedder)
    return SignalAgent(g, detector, cfg)


def _cmd_flags(args) -> int:
    from mindloop.agents.signal.dependence import candidates
    from mindloop.agents.signal.patterns import resolve_pattern

    with common.open_graph(args) as g:
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
                             f"{common.snippet(f.reason.split(' || ')[0], 50)}")
            if deps:
                lines.append(f"{len(deps)} memory-dependent repl(ies) (candidates to train):")
                lines += [f"  {d['turn']}  {d['score']:+.2f}  {common.snippet(d['text'], 50)}" for d in deps]
            common.emit(args, data, "\n".join(lines))
            return 0
        if action == "show":
            info = agent.show(args.id, scope=args.scope)
            f = info["flag"]
            lines = [f"flag {f['id']}  {f['status']}  {f['type']}  confidence {f['confidence']:.2f}",
                     "conversation before:"]
            lines += [f"  {t['role']:>9}: {common.snippet(t['text'], 100)}" for t in info["window"]]
            lines += [f"flagged reply: {info['flagged']}", f"correction:    {info['correction']}"]
            if info["reply_after_correction"]:
                lines.append(f"reply after:   {info['reply_after_correction']}")
            if f.get("better_response"):
                lines.append(f"better response (edited): {f['better_response']}")
            lines.append("evidence:")
            lines += [f"  {e}" for e in f["evidence"]]
            if info["similar"]:
                lines.append("similar flags:")
                lines += [f"  {s['id']}  {s['score']:.2f}  {common.snippet(s['correction'], 60)}" for s in info["similar"]]
            common.emit(args, info, "\n".join(lines))
            return 0
        if action == "edit":
            text = args.response if args.response is not None else "\n".join(common.read_lines(args.file))
            flag = agent.edit(args.id, text, scope=args.scope)
        else:
            flag = (agent.confirm if action == "confirm" else agent.reject)(args.id, scope=args.scope)
    common.emit(args, flag.to_json(), f"flag {flag.id} is {flag.status}")
    return 0


def _cmd_patterns(args) -> int:
    from mindloop.agents.signal.patterns import describe, model_namer, update_patterns

    with common.open_graph(args) as g:
        if args.rebuild:
            cfg = common.signal_config(args)
            backend = common.open_backend(args, g) if cfg.judge == "model" else None
            namer = model_namer(backend) if backend is not None else None
            update_patterns(g, g.embedder, scope=args.scope, config=cfg, namer=namer)
        patterns = [describe(g, p) for p in g.nodes(kind="pattern", scope=args.scope) if p.status != "empty"]
    patterns.sort(key=lambda p: -p["flags"])
    lines = [f"{len(patterns)} pattern(s)"]
    for p in patterns:
        status = ", ".join(f"{k} {v}" for k, v in sorted(p["by_status"].items()))
        weeks = " ".join(str(n) for n in p["per_week"])
        lines.append(f"  {p['id']}  {p['name']}\n      {p['flags']} flag(s) ({status}); per week, oldest first: {weeks}")
    common.emit(args, {"patterns": patterns}, "\n".join(lines))
    return 0


def _cmd_compose(args) -> int:
    from mindloop.agents.signal.compose import ComposeConfig, compose, write_jsonl
    from mindloop.agents.signal.patterns import resolve_pattern
    from mindloop.graph import load_config

    cfg = load_config(ComposeConfig, "compose", file=args.config,
                      overrides={"general_ratio": args.general_ratio, "pushback_ratio": args.pushback_ratio,
                                 "heldout_ratio": args.heldout_ratio,
                                 "include_trained": True if args.include_trained else None})
    with common.open_graph(args) as g:
        pattern = resolve_pattern(g, args.pattern, args.scope)
        backend = None if args.no_model else common.open_backend(args, g)
        try:
            detector, _ = common.detector(args, g.embedder)
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
    common.emit(args, counts, "\n".join(lines))
    return 0
