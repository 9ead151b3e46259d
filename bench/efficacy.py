"""Does one small update fix the pattern without breaking the rest? The bundled model, end to end.

    .venv/bin/python bench/efficacy.py [--json] [--epochs 1] [--lr 1e-4] [--method lora]

On 2 CPU cores: about 6 minutes (loading the models, composing, two full evaluations, training).

1. The shipped scripted conversations (``examples/data/conversations.jsonl``
   and ``corrections.jsonl``) are logged into a fresh memory graph; the
   training-signal agent flags the corrections, groups them, and the flags
   of the largest pattern ("suggests alternatives instead of doing what was
   asked") are confirmed (standing in for a reviewer).
2. ``compose`` builds the pattern's balanced set with the bundled model;
   up to 20 accept examples go to training with the push-back and general
   replay (25%) examples of the train split; the held-out split becomes
   probes.
3. The bundled SmolLM2-135M-Instruct is evaluated, trained for one epoch
   (SFT, LoRA, lr 1e-4, context-frozen gradient; the defaults), and
   evaluated again on the same probes.

Reported (``--json`` prints one object): ``target_margin_before`` /
``_after`` on the pattern's held-out probes; the built-in target set too;
``pushback_retention`` (after ÷ before mean push-back margin; when the base
model's push-back margin is not positive the ratio means little, and the
output says so and gives the win rates); ``ppl_drift`` (after ÷ before − 1,
perplexity on the prose of ``pydoc_data.topics``); capability win rates.
Targets: push-back retention ≥ 95% of the baseline margin, perplexity drift
≤ 2%.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _kind(report: dict, kind: str, key: str):
    return report["kinds"].get(kind, {}).get(key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--epochs", type=float, default=1.0, help="training epochs (default 1)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-4 LoRA, 1e-5 full)")
    parser.add_argument("--method", choices=["lora", "full"], default="lora", help="default lora")
    parser.add_argument("--accept", type=int, default=20, help="accept examples to train on (default 20)")
    parser.add_argument("--home", help="data directory (default: a fresh temporary one)")
    args = parser.parse_args(argv)
    say = (lambda *a: None) if args.json else print

    from mindloop.agents.chat.backends import LocalBackend
    from mindloop.agents.signal.compose import compose
    from mindloop.agents.signal.detect import Detector
    from mindloop.agents.signal.patterns import update_patterns
    from mindloop.agents.signal.reader import Reader
    from mindloop.agents.signal.agent import SignalAgent
    from mindloop.graph import GraphConfig
    from mindloop.graph.conversations import import_conversations
    from mindloop.trainer.checkpoints import Checkpoints
    from mindloop.trainer.data import rows_from_examples
    from mindloop.trainer.evaluate import builtin_probes, evaluate, probes_from_examples, steering_direction
    from mindloop.trainer.export import open_graph
    from mindloop.trainer.model import load_model
    from mindloop.trainer.run import TrainConfig, record_run, train

    started = time.perf_counter()
    home = Path(args.home or tempfile.mkdtemp(prefix="mindloop-efficacy-"))
    with open_graph(GraphConfig(home=home)) as graph:
        for name in ("conversations.jsonl", "corrections.jsonl"):
            import_conversations(graph, (ROOT / "examples" / "data" / name).read_text("utf-8").splitlines())
        backend = LocalBackend("bundled")
        backend.load()
        detector = Detector.load(graph.embedder, reader=Reader(backend=backend))
        agent = SignalAgent(graph, detector)
        found = agent.detect_all()
        pattern = update_patterns(graph, graph.embedder)[0]
        for f in agent.flags(pattern=pattern.id):
            agent.confirm(f.id)
        made = compose(graph, pattern, embedder=graph.embedder, backend=backend, detector=detector)
        backend.close()
        accept = [e for e in made.examples if e.example_kind == "accept" and e.split == "train"]
        extra_accept = accept[args.accept:]
        train_ex = accept[: args.accept] + [e for e in made.examples
                                            if e.example_kind != "accept" and e.split == "train"]
        held = [e for e in made.examples if e.split == "heldout"] + extra_accept
        held_probes = probes_from_examples(held)
        counts = {k: sum(e.example_kind == k for e in train_ex) for k in ("accept", "pushback", "general")}
        say(f"{len(found['flags'])} flags; pattern {pattern.name!r} ({len(agent.flags(pattern=pattern.id))} flags); "
            f"training on {counts}; {len(held_probes)} held-out probes")

        pattern_probes = [p for p in held_probes if p.kind == "target"]
        builtin = builtin_probes()
        model, tok = load_model("bundled")
        direction = steering_direction(model, tok, pattern_probes) if pattern_probes else None
        t = time.perf_counter()
        before = evaluate(model, tok, builtin, checkpoint=None, attention=False)
        before_pattern = evaluate(model, tok, pattern_probes, direction=direction, attention=True)
        eval_s = time.perf_counter() - t
        del model
        config = TrainConfig(method=args.method, lr=args.lr, epochs=args.epochs, evaluate=False)
        t = time.perf_counter()
        result = train(config, rows_from_examples(train_ex, "sft"), home=home, progress=not args.json)
        train_s = time.perf_counter() - t
        record_run(graph, result, example_ids=[e.id for e in train_ex])
        model, tok = load_model("bundled", checkpoint=Checkpoints(home / "checkpoints").root / result.checkpoint)
        after = evaluate(model, tok, builtin, checkpoint=result.checkpoint, attention=False)
        after_pattern = evaluate(model, tok, pattern_probes, direction=direction, attention=True)

    pb_before, pb_after = _kind(before, "pushback", "mean_margin"), _kind(after, "pushback", "mean_margin")
    out = {
        "target_margin_before": _kind(before_pattern, "target", "mean_margin"),
        "target_margin_after": _kind(after_pattern, "target", "mean_margin"),
        "target_win_rate_before": _kind(before_pattern, "target", "win_rate"),
        "target_win_rate_after": _kind(after_pattern, "target", "win_rate"),
        "target_heldout_n": _kind(before_pattern, "target", "n"),
        "builtin_target_margin_before": _kind(before, "target", "mean_margin"),
        "builtin_target_margin_after": _kind(after, "target", "mean_margin"),
        "pushback_margin_before": pb_before,
        "pushback_margin_after": pb_after,
        "pushback_retention": round(pb_after / pb_before, 4) if pb_before else None,
        "pushback_baseline_positive": bool(pb_before and pb_before > 0),
        "pushback_win_rate_before": _kind(before, "pushback", "win_rate"),
        "pushback_win_rate_after": _kind(after, "pushback", "win_rate"),
        "ppl_before": before["perplexity"],
        "ppl_after": after["perplexity"],
        "ppl_drift": round(after["perplexity"] / before["perplexity"] - 1, 5),
        "capability_win_rate_before": _kind(before, "capability", "win_rate"),
        "capability_win_rate_after": _kind(after, "capability", "win_rate"),
        "capability_margin_before": _kind(before, "capability", "mean_margin"),
        "capability_margin_after": _kind(after, "capability", "mean_margin"),
        "steering_projection_before": before_pattern.get("steering", {}).get("projection"),
        "steering_projection_after": after_pattern.get("steering", {}).get("projection"),
        "steering_consistency": before_pattern.get("steering", {}).get("consistency"),
        "attention_mass_before": before_pattern.get("attention_mass"),
        "attention_mass_after": after_pattern.get("attention_mass"),
        "train_examples": counts,
        "steps": len(result.steps),
        "loss_first": result.steps[0]["loss"] if result.steps else None,
        "loss_last": result.steps[-1]["loss"] if result.steps else None,
        "config": {"method": config.method, "lr": config.learning_rate, "epochs": config.epochs,
                   "context_frozen": config.frozen},
        "train_s": round(train_s, 1), "one_eval_s": round(eval_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"\n{'metric':<34}{'before':>10}{'after':>10}")
    for label, b, a in (
            ("pattern target margin (held out)", out["target_margin_before"], out["target_margin_after"]),
            ("pattern target win rate", out["target_win_rate_before"], out["target_win_rate_after"]),
            ("built-in target margin", out["builtin_target_margin_before"], out["builtin_target_margin_after"]),
            ("push-back margin", pb_before, pb_after),
            ("push-back win rate", out["pushback_win_rate_before"], out["pushback_win_rate_after"]),
            ("perplexity", out["ppl_before"], out["ppl_after"]),
            ("capability win rate", out["capability_win_rate_before"], out["capability_win_rate_after"]),
            ("capability margin", out["capability_margin_before"], out["capability_margin_after"]),
            ("steering projection", out["steering_projection_before"], out["steering_projection_after"]),
            ("attention on the instruction", out["attention_mass_before"], out["attention_mass_after"])):
        print(f"{label:<34}{b:>10.4f}{a:>10.4f}")
    print(f"\nperplexity drift {out['ppl_drift']:+.2%} (target <= 2%)")
    if out["pushback_baseline_positive"]:
        print(f"push-back retention {out['pushback_retention']:.1%} of the baseline margin (target >= 95%)")
    else:
        print(f"push-back: the base model's margin is not positive ({pb_before:+.3f}: it prefers complying), so a "
              f"retention ratio means little; win rate {out['pushback_win_rate_before']:.2f} -> "
              f"{out['pushback_win_rate_after']:.2f}, margin {pb_before:+.3f} -> {pb_after:+.3f}")
    print(f"{out['steps']} steps, loss {out['loss_first']:.3f} -> {out['loss_last']:.3f}; training {train_s:.0f}s; "
          f"total {out['total_s']:.0f}s on {out['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
