"""Subcommands that train and judge the chat model: ``train``, ``eval`` and ``checkpoints``.

    mindloop train --pattern P --objective dpo
    mindloop eval --checkpoint base
    mindloop checkpoints list
    mindloop checkpoints promote CKPT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mindloop.agents.cli import common
from mindloop.agents.cli.options import add_field, fraction, positive, positive_float

__all__ = ["declare_checkpoints", "declare_eval", "declare_train"]


def declare_train(p: argparse.ArgumentParser) -> None:
    from mindloop.trainer.run import TrainConfig

    common.add_common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pattern", help="the pattern (id or name): its composed train-split examples from the graph")
    src.add_argument("--dataset", help="a JSONL file in TRL's format (what `mindloop compose --out` writes)")
    add_field(p, TrainConfig, "objective")
    add_field(p, TrainConfig, "method")
    add_field(p, TrainConfig, "optimizer")
    add_field(p, TrainConfig, "lr", type=fraction)
    add_field(p, TrainConfig, "epochs", type=positive_float)
    add_field(p, TrainConfig, "context_frozen")
    add_field(p, TrainConfig, "context_dtype")
    add_field(p, TrainConfig, "step_in_backward")
    add_field(p, TrainConfig, "model")
    add_field(p, TrainConfig, "batch_size", type=positive)
    add_field(p, TrainConfig, "max_steps", type=positive)
    add_field(p, TrainConfig, "max_length", type=positive)
    add_field(p, TrainConfig, "evaluate", flag="--no-eval")
    p.add_argument("--include-trained", action="store_true",
                   help="with --pattern: also examples an earlier run trained on")
    p.add_argument("--scope", help="scope of the pattern and of the run's records (default: configured)")
    p.set_defaults(run=_cmd_train)


def declare_eval(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("--checkpoint", help="checkpoint id (default: the promoted one; 'base' = no checkpoint)")
    p.add_argument("--probes", action="append", metavar="FILE",
                   help="probe JSONL file (repeatable; default: the built-in target, pushback, capability sets)")
    p.add_argument("--text", help="UTF-8 text file for perplexity (default: pydoc_data.topics prose)")
    p.add_argument("--model", help="base model: 'bundled' (default), an id or a path")
    p.set_defaults(run=_cmd_eval)


def declare_checkpoints(p: argparse.ArgumentParser) -> None:
    ck_sub = p.add_subparsers(dest="checkpoints_command", metavar="ACTION", required=True)
    ck_sub.add_parser("list", declare=_declare_list, help="every checkpoint, oldest first, and which is promoted")
    ck_sub.add_parser("show", declare=_declare_one, help="a checkpoint's manifest and metrics")
    ck_sub.add_parser("promote", declare=_declare_one, help="serve this checkpoint (atomic; the chat model follows)")
    ck_sub.add_parser("rollback", declare=_declare_rollback,
                      help="go back to the promoted checkpoint's parent (the base model when it has none)")


def _declare_list(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.set_defaults(run=_cmd_checkpoints)


def _declare_one(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("id", help="checkpoint id")
    p.set_defaults(run=_cmd_checkpoints)


def _declare_rollback(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("--reason", default="manual rollback", help="recorded with the rollback")
    p.set_defaults(run=_cmd_checkpoints)


def _main_process() -> bool:
    """False in the other processes of an ``accelerate launch`` / torchrun (they train, but record nothing)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _cmd_train(args) -> int:
    from mindloop.trainer.data import read_dataset
    from mindloop.trainer.evaluate import format_comparison
    from mindloop.trainer.evaluate import builtin_probes
    from mindloop.trainer.run import TrainConfig, record_run, recover_runs, train

    from mindloop.graph import load_config

    cfg = load_config(TrainConfig, "train", file=args.config, overrides={
        "objective": args.objective, "method": args.method, "optimizer": args.optimizer, "lr": args.lr,
        "epochs": args.epochs, "context_frozen": args.context_frozen, "context_dtype": args.context_dtype,
        "step_in_backward": args.step_in_backward, "model": args.model,
        "batch_size": args.batch_size, "max_steps": args.max_steps, "max_length": args.max_length,
        "evaluate": args.evaluate})
    main_process = _main_process()
    with common.open_graph(args) as g:
        for r in recover_runs(g, g.config.home, scope=args.scope) if main_process else []:  # killed earlier
            print(f"note: run {r['run']}: {r['status']} (its process had been killed)", file=sys.stderr)
        probes = builtin_probes()
        example_ids: list[str] = []
        tags = None
        if args.pattern:
            from mindloop.agents.cycle.service import training_job
            from mindloop.agents.signal.patterns import resolve_pattern

            pattern = resolve_pattern(g, args.pattern, args.scope)
            job = training_job(g, pattern, scope=args.scope, include_trained=args.include_trained)
            if not job.examples:
                from mindloop.trainer.errors import InvalidDataset

                raise InvalidDataset(f"pattern {pattern.id} has no untrained train-split examples: run "
                                     f"`mindloop compose --pattern {pattern.id}` first (or --include-trained)")
            rows, example_ids, probes, tags = job.rows(cfg.objective), job.example_ids, job.probes(probes), job.tags()
        else:
            rows = read_dataset(args.dataset, cfg.objective)
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
    common.emit(args, out, human)
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
    common.emit(args, report, "\n".join(lines))
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
        common.emit(args, {"promoted": current, "checkpoints": items}, "\n".join(lines))
        return 0
    if action == "show":
        from mindloop.trainer.evaluate import format_comparison

        m = store.get(args.id)
        metrics = m.get("metrics", {})
        common.emit(args, m, f"{m['id']} ({m['kind']}, base {m.get('base_model')}, parent {m.get('parent') or 'base'}, "
                        f"run {m.get('run')})\n" + format_comparison(metrics.get("before"), metrics.get("after")))
        return 0
    from mindloop.agents.cycle.promotion import promote, rollback

    with common.open_graph(args) as g:
        if action == "promote":
            pointer = promote(g, store, args.id, reason="manual")
            msg = f"promoted {args.id}: the chat model serves it from its next reply"
        else:
            before = store.promoted()
            pointer = rollback(g, store, reason=args.reason)
            msg = f"rolled back {before['checkpoint'] if before else '-'}; now serving " \
                  f"{pointer['checkpoint'] if pointer else 'the base model'}"
    common.emit(args, {"promoted": pointer}, msg)
    return 0
