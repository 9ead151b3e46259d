"""The scheduler (what ``mindloop daemon`` runs) takes two ticks over a prepared data dir; ``mindloop status`` after.

    .venv/bin/python examples/05_daemon.py                                  # the bundled SmolLM2-135M
    .venv/bin/python examples/05_daemon.py --fast --model tiny --max-steps 2   # test doubles (CI)

Expected runtime: about 6 CPU-minutes, so about 4 to 5 minutes on 2 idle
cores (9 minutes measured while other jobs kept 8 processes busy on them):
the reader reads the 93 follow-ups, then one DPO run with LoRA is evaluated
before and after on the built-in probes. About 45 s with ``--fast --model
tiny --max-steps 2``, whose scores mean nothing. ``--generate`` lets the model write the general replay (a
minute more). Offline; writes only to a temporary directory (or ``--home
DIR``, emptied first).

What it shows:

1. a data dir is prepared as weeks of use would leave it: the scripted
   conversations are logged, the corrections detected and the confident ones
   confirmed (``signal.auto_confirm_above = 0.9``), the flags grouped into
   patterns; the scheduler's readiness says which pattern is ripe and what the
   others wait for;
2. tick 1 (``mindloop daemon --once``): the ripe pattern goes through the
   whole cycle, each step announced: compose, train (the scheduler's
   default: DPO on the pattern's preference pairs, LoRA), gate, and promote
   (then watch) or reject (the pattern's next run grows or shrinks);
3. tick 2, as the daemon runs a minute later: a promoted checkpoint is being
   watched (no verdict before 30 turns a side); after a rejection the
   pattern waits out its cooldown. Nothing is trained twice;
4. ``mindloop status`` over the same data dir, in a subprocess, reads it all
   back from ``graph.db``, ``checkpoints/`` and the scheduler's state in
   ``loop.db``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from _common import (
    ROOT,
    arguments,
    console,
    data_dir,
    goodbye,
    model_source,
    open_graph,
    prepare_pattern,
    section,
)


def show_readiness(graph, cfg) -> None:
    from mindloop.agents.cycle.service import readiness

    for r in readiness(graph, cfg):
        console.print(f"  {'RIPE' if r.ripe else 'wait'} {r.pattern} {r.name[:40]!r}: {r.confirmed} "
                      f"confirmed, {r.untrained} untrained" + (f"; waiting for {'; '.join(r.waiting_for)}"
                                                                  if r.waiting_for else ""), markup=False)


def scheduler_config(home, model: str, args):
    """The ``[scheduler]`` section, written to the data dir's config.toml so ``mindloop status`` and ``daemon``
    read the same settings, and loaded from there as the CLI loads it."""
    import json

    from mindloop.agents.cycle.scheduler import SchedulerConfig
    from mindloop.graph import load_config

    path = home / "config.toml"
    with open(path, "a", encoding="utf-8") as fh:
        # idle 0: the scripted logs were imported a moment ago, and an example cannot wait 10 idle minutes;
        # min_flags 15 (default 20): the scripted data holds one failure of about 20 to 30 flags
        fh.write(f"\n[scheduler]\nmin_flags = 15\nidle_s = 0\nmodel = {json.dumps(model)}\n"
                 f"max_steps = {args.max_steps}\ngenerate = {'true' if args.generate else 'false'}\n")
    console.print(f"{path}: " + " ".join(path.read_text(encoding="utf-8").split()), markup=False)
    return load_config(SchedulerConfig, "scheduler", file=path)


def tick(scheduler, n: int) -> dict:
    t = time.perf_counter()
    state = scheduler.tick()
    console.print(f"tick {n} took {time.perf_counter() - t:.0f}s; phase now '{state.get('phase') or 'wait'}'"
                  + (f": {state['note']}" if state.get("note") else ""), markup=False)
    return state


def status(home) -> str:
    """``mindloop status`` over ``home``, in its own process, as an operator would run it."""
    env = {**os.environ, "MINDLOOP_HOME": str(home), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "mindloop.agents.cli", "status"], check=False, capture_output=True, text=True, env=env,
                         timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"mindloop status failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, training=True)
    args = parser.parse_args(argv)
    from mindloop.agents.cycle.gate import ObserveConfig
    from mindloop.agents.cycle.scheduler import Scheduler

    started = time.perf_counter()
    with data_dir(args.home, fast=args.fast) as home:
        with open_graph(home, fast=args.fast) as graph:
            section("prepare a data dir: logs, flags (auto-confirmed above 0.9), patterns")
            console.print(f"data dir: {home}")
            agent, backend, pattern = prepare_pattern(graph, fast=args.fast, generate=args.generate)
            if pattern is None:
                return 1
            cfg = scheduler_config(home, model_source(args.model, home), args)
            console.print(f"readiness (min_flags {cfg.min_flags}, idle {cfg.idle_s:g}s, cooldown "
                          f"{cfg.cooldown_s / 3600:g}h):")
            show_readiness(graph, cfg)

            scheduler = Scheduler(graph, cfg, observe=ObserveConfig(), backend=backend if args.generate else None,
                                  detector=agent.detector, say=lambda m: console.print(f"  scheduler: {m}",
                                                                                       markup=False))
            try:
                section("tick 1: ripe -> compose -> train -> gate -> promote -> watch")
                state = tick(scheduler, 1)
                run = graph.get(state["last"]["run"] if state.get("last") else state["run_id"])
                from mindloop.trainer.evaluate import format_comparison

                console.print(f"run {run.id} ({run.objective}, {run.method}): {run.status}")
                console.print(format_comparison(run.metrics.get("before"), run.metrics.get("after")), markup=False)

                section("tick 2: a minute later")
                tick(scheduler, 2)
            finally:
                scheduler.close()
                if backend is not None:
                    backend.close()
            runs = len(list((home / "runs").iterdir()))
            console.print(f"runs/ holds {runs} run(s)")

        section("mindloop status")
        console.print(status(home), markup=False)
        goodbye(started, home, bool(args.home), ["observe", "daemon --once   # the next tick", "ui"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
