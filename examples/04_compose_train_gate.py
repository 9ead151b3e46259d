"""One corrective update by hand: compose a pattern's examples, train, evaluate before and after, gate, promote.

    .venv/bin/python examples/04_compose_train_gate.py                                  # the bundled SmolLM2-135M
    .venv/bin/python examples/04_compose_train_gate.py --fast --model tiny --max-steps 2   # test doubles (CI)

Expected runtime: about 5 CPU-minutes, so about 4 minutes on 2 idle cores
(6.5 minutes measured while other jobs shared the 2 cores): the reader
reads the 93 follow-ups, and the built-in probes are evaluated before and
after a LoRA run of one epoch (6 steps). About 45 s with ``--fast --model
tiny --max-steps 2``, whose scores mean nothing. ``--generate`` lets the model write the general replay
(a minute more). Offline; writes only to a temporary directory (or ``--home
DIR``, emptied first).

What it shows (the steps ``mindloop daemon`` runs on its own, see
``05_daemon.py``):

1. the scripted conversations are logged and the corrections detected; the
   training-signal agent confirms the confident flags itself
   (``signal.auto_confirm_above = 0.9``) where ``03_detect_and_review.py``
   has a reviewer do it; the flags group into patterns;
2. ``mindloop compose``: the largest pattern's balanced examples: accept
   (the reply the user accepted after correcting), push-back (wrong
   direction: say so) and about 25% general replay, a share of each held
   out;
3. ``mindloop train``: SFT with a LoRA adapter and the context-frozen
   gradient (the prompt runs without gradient on a KV cache, only the
   response backpropagates), evaluated before and after on the built-in
   probes and the pattern's held-out examples;
4. ``mindloop observe --gate C --promote``: the candidate is compared with its
   parent (the base model) and promoted only when the held-out target
   improved and nothing regressed; otherwise it stays on disk, rejected,
   with the reasons.
"""

from __future__ import annotations

import sys
import time

from _common import (
    arguments,
    console,
    data_dir,
    goodbye,
    model_source,
    open_graph,
    prepare_pattern,
    section,
)
from rich.table import Table


def compose_examples(graph, agent, pattern, backend) -> None:
    from mindloop.agents.signal.compose import compose

    t = time.perf_counter()
    made = compose(graph, pattern, embedder=graph.embedder, backend=backend, detector=agent.detector)
    counts = made.counts()
    console.print(f"mindloop compose --pattern {pattern.id}   ({time.perf_counter() - t:.0f}s)")
    table = Table()
    for col in ("kind", "train", "held out"):
        table.add_column(col)
    for kind, n in counts["kinds"].items():
        table.add_row(kind, str(n["train"]), str(n["heldout"]))
    console.print(table)
    console.print(f"{counts['total']} examples ({counts['preference_pairs']} with a rejected reply); sources: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(counts["sources"].items())))


def train_pattern(graph, pattern, args, source: str):
    from mindloop.trainer.data import rows_from_examples
    from mindloop.trainer.evaluate import builtin_probes, probes_from_examples
    from mindloop.trainer.run import TrainConfig, record_run, train

    examples = [e for e in graph.nodes(kind="example") if e.pattern == pattern.id]
    train_split = [e for e in examples if e.split == "train"]
    probes = builtin_probes() + probes_from_examples([e for e in examples if e.split == "heldout"])
    cfg = TrainConfig(objective="sft", method="lora", context_frozen=True, model=source, lr=args.lr,
                      max_steps=args.max_steps)
    console.print(f"mindloop train --pattern {pattern.id} --objective sft --method lora --lr {cfg.learning_rate:g}"
                  + (f" --max-steps {cfg.max_steps}" if cfg.max_steps > 0 else "")
                  + f"   ({len(train_split)} examples, {len(probes)} probes, model {source})")
    t = time.perf_counter()
    result = train(cfg, rows_from_examples(train_split, "sft"), home=graph.config.home, probes=probes,
                   progress=False, tags={"pattern": pattern.id})
    record_run(graph, result, example_ids=[e.id for e in train_split])
    losses = [s["loss"] for s in result.steps if "loss" in s]
    console.print(f"run {result.run_id}: {len(result.steps)} steps in {time.perf_counter() - t:.0f}s "
                  f"(with both evaluations); context-frozen {result.config['context_frozen']}; loss "
                  + " -> ".join(f"{x:.3f}" for x in (losses[:1] + losses[-1:])) + f"; checkpoint {result.checkpoint}")
    return result


def gate_and_promote(graph, checkpoint: str) -> None:
    from mindloop.agents.cycle import ObserveConfig, gate_checkpoint, promote
    from mindloop.trainer.checkpoints import Checkpoints

    store = Checkpoints(graph.config.home / "checkpoints")
    verdict = gate_checkpoint(graph, store, checkpoint, ObserveConfig())
    for c in verdict.checks:
        console.print(f"  {'ok  ' if c.ok else 'FAIL'} {c.detail}", markup=False)
    if verdict.promote:
        promote(graph, store, checkpoint, reason="gate passed (examples/04_compose_train_gate.py)")
        console.print(f"gate: PASS -> promoted {checkpoint}; the chat model serves it from its next reply")
    else:
        console.print(f"gate: REJECT -> {checkpoint} stays on disk, rejected; the parent "
                      f"({verdict.parent or 'the base model'}) stays in use")
    in_use = store.promoted()
    console.print(f"in use now: {in_use['checkpoint'] if in_use else 'the base model'}; checkpoint {checkpoint} "
                  f"is {graph.get(checkpoint).status}")


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, training=True)
    parser.add_argument("--lr", type=float, help="learning rate (default: the trainer's, 1e-4 for LoRA)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with data_dir(args.home, fast=args.fast) as home, open_graph(home, fast=args.fast) as graph:
        section("detect and group the corrections (auto-confirmed above 0.9)")
        console.print(f"data dir: {home}")
        agent, backend, pattern = prepare_pattern(graph, fast=args.fast, generate=args.generate)
        if pattern is None:
            return 1
        source = model_source(args.model, home)

        section("compose the pattern's balanced examples")
        compose_examples(graph, agent, pattern, backend if args.generate else None)
        if backend is not None:
            backend.close()

        section("train: SFT, LoRA, context-frozen gradient")
        result = train_pattern(graph, pattern, args, source)

        section("evaluate: the parent (base model) and the candidate on the same probes")
        from mindloop.trainer.evaluate import format_comparison

        console.print(format_comparison(result.before, result.after), markup=False)

        section("gate: promote only if the target improved and nothing regressed")
        gate_and_promote(graph, result.checkpoint)
        goodbye(started, home, bool(args.home), ["checkpoints list", "observe",
                                                 "ui   # a run's page: its loss curve and before/after table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
