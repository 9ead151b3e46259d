"""Benchmark of what the agent loop adds to a chat turn (not a test).

The chat model is the scripted fake, so the model's own time is excluded;
what is left is the loop: surfacing (hybrid search over the memories),
LangGraph's orchestration and checkpoint, and logging both turns. Measured on
the real MiniLM embedder, with 10k memories (and 100k in full mode):

- ``surface_p99_ms``: the ``surface`` step (search + packing the block);
- ``log_p99_ms``: the ``log`` step (both turns, with their ``next`` and
  ``surfaced`` edges and their text for the full-text index queued, one
  transaction; the queues are settled after the turn). Target: <= 2 ms. The step commits without waiting for the
  disk; the store's sync thread fsyncs the WAL beside the turn's last steps,
  and the turn waits for that before it answers. ``sync_wait_p99_ms`` is that
  wait, and the turn figures below include it;
- ``overhead_ratio``: p99 of a whole turn through the loop (``ChatLoop.run``)
  divided by p99 of the raw work it cannot avoid, done directly: MiniLM
  ``encode`` of the user turn (sentence-transformers' own call, float32) +
  ``collection.query(n_results=k)`` on a Chroma collection with the same
  vectors. The loop's MiniLM runs its batches in ``graph.embed_dtype`` (``--embed-dtype``; by default
  bfloat16 weights on a CPU with native bfloat16) and the search's query on ``graph.embed_query_runtime``
  (``--query-runtime``; by default the float32 ONNX export on ONNX Runtime, exported once per machine
  before the timing starts). Ours and raw alternate which runs first. Target: <= 1.25.

Every figure is measured twice. First with the index caught up before each
measurement (``graph.flush()``, untimed): that is a chat's timeline, where
the model and the user take seconds between turns, so the background worker
has embedded the last turn pair before the next turn comes. Then with turns
back to back (the ``*_back_to_back`` keys): the worker embedding each turn
pair then competes with the next turn (ours or raw) for the CPU, which
measures the loop under sustained load rather than a turn's latency.

Commands (from the repository root):

    .venv/bin/python bench/loop.py --quick          # 1-2 min on 2 CPU cores: 10k memories
    .venv/bin/python bench/loop.py                  # 4-8 min on 2 CPU cores: 10k and 100k memories
    .venv/bin/python bench/loop.py --quick --json   # one JSON object on stdout

Figures and machine: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np


from mindloop.agents.chat.backends import ScriptedBackend  # noqa: E402
from mindloop.agents.chat.loop import ChatLoop  # noqa: E402
from mindloop.graph import Embedder, GraphConfig, Memory, MemoryGraph, MiniLMEmbedder  # noqa: E402
from mindloop.graph.embed import EMBED_DTYPES, QUERY_RUNTIMES  # noqa: E402
from mindloop.trainer.export import onnx_export  # noqa: E402

TOPICS = ("the deploy pipeline", "invoice exports", "the onboarding email", "unit tests", "the sales dashboard",
          "SQL migrations", "the mobile app", "API rate limits", "the quarterly report", "the team offsite",
          "Python type hints", "the data warehouse", "error messages", "the release notes", "code review",
          "the budget sheet", "the search feature", "dark mode", "the CI cache", "customer tickets")
RULES = ("when asked to {v} {t}, just {v} it; do not suggest alternatives",
         "prefers {a} answers about {t}", "always {v} {t} in small steps and say what changed",
         "never {v} {t} without running the checks first", "uses {a} wording in anything about {t}",
         "was corrected for suggesting a rewrite of {t} instead of a {a} fix",
         "wants {t} explained with one {a} example", "asked not to touch {t} when fixing something else")
VERBS = ("rename", "refactor", "fix", "update", "review", "migrate", "document", "test", "shorten", "format")
ADJS = ("short", "formal", "plain", "concrete", "friendly", "terse", "careful", "visual", "British", "metric")
ASKS = ("can you {v} {t} for me", "please {v} {t} now", "{v} {t} but keep it {a}", "how should I {v} {t}?",
        "I need you to {v} {t} today", "quick one: {v} {t}")


def memories(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rule = rng.choice(RULES).format(v=rng.choice(VERBS), t=rng.choice(TOPICS), a=rng.choice(ADJS))
        out.append(f"{rule} (note {i})")
    return out


def user_turns(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(ASKS).format(v=rng.choice(VERBS), t=rng.choice(TOPICS), a=rng.choice(ADJS))
            for _ in range(n)]


class Precomputed(Embedder):
    """Vectors for the corpus computed once; anything else (the user turns) goes to the real MiniLM."""

    def __init__(self, real: MiniLMEmbedder, table: dict[str, np.ndarray]) -> None:
        self.real, self.table, self.dim, self.name = real, table, real.dim, real.name

    def embed(self, texts):
        if all(t in self.table for t in texts):
            return np.stack([self.table[t] for t in texts])
        return self.real.embed(texts)

    def embed_query(self, text):
        return self.table[text] if text in self.table else self.real.embed_query(text)


class TimedLoop(ChatLoop):
    """The loop with its surface and log steps timed."""

    def __init__(self, *a, **kw) -> None:
        self.surface_ms: list[float] = []
        self.log_ms: list[float] = []
        super().__init__(*a, **kw)

    def _surface(self, state):
        t = time.perf_counter()
        out = super()._surface(state)
        self.surface_ms.append((time.perf_counter() - t) * 1000)
        return out

    def _log(self, state):
        t = time.perf_counter()
        out = super()._log(state)
        self.log_ms.append((time.perf_counter() - t) * 1000)
        return out


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_size(emb: MiniLMEmbedder, raw_model, n: int, n_turns: int, tmp: Path, seed: int) -> dict:
    import chromadb

    texts = memories(n, seed)
    say(f"[{n}] embedding {n} memories once ...")
    t = time.perf_counter()
    vecs = np.concatenate([emb.embed(texts[i:i + 2048]) for i in range(0, n, 2048)])
    say(f"[{n}] embedded in {time.perf_counter() - t:.0f}s")
    table = dict(zip(texts, vecs))

    graph = MemoryGraph.open(GraphConfig(home=tmp / f"graph-{n}"), embedder=Precomputed(emb, table))
    with graph.transaction():
        for text in texts:
            graph.add(Memory(text=text, memory_kind="lesson"))
    assert graph.flush(timeout=3600)
    raw_client = chromadb.PersistentClient(path=str(tmp / f"raw-{n}"),
                                           settings=chromadb.Settings(anonymized_telemetry=False))
    coll = raw_client.get_or_create_collection("raw", embedding_function=None,
                                               configuration={"hnsw": {"space": "cosine"}})
    for i in range(0, n, 5000):
        coll.add(ids=[str(j) for j in range(i, min(n, i + 5000))], embeddings=vecs[i:i + 5000])

    loop = TimedLoop(graph, ScriptedBackend(["Done."]))
    sync_ms: list[float] = []
    graph_sync = graph.sync

    def timed_sync(timeout=None):  # how long the turn waits, after its steps, for the log step's fsync
        t0 = time.perf_counter()
        out = graph_sync(timeout)
        sync_ms.append((time.perf_counter() - t0) * 1000)
        return out

    graph.sync = timed_sync
    k = loop.surfacer.config.k
    turns = user_turns(n_turns + 20, seed + 1)

    def ours(i: int, text: str) -> float:
        t0 = time.perf_counter()
        loop.run(f"bench-{i // 10}", text)
        return (time.perf_counter() - t0) * 1000

    def raw(text: str) -> float:  # the library's own calls, in float32 as it loads
        t0 = time.perf_counter()
        q = raw_model.encode([text], normalize_embeddings=True, convert_to_numpy=True)
        coll.query(query_embeddings=q, n_results=k)
        return (time.perf_counter() - t0) * 1000

    for i, text in enumerate(turns[:20]):  # warm up both
        ours(10_000 + i, text), raw(text)

    def measure(drain: bool, offset: int) -> dict:
        """Ours and raw alternating who goes first. With ``drain``, the index catches up with the last turn
        (``graph.flush()``, untimed) before the next measurement, as in a chat, where the model and the user
        take seconds between turns; without it, the turns come back to back and the worker embedding each
        turn pair competes with the next turn for the CPU."""
        loop.surface_ms.clear()
        loop.log_ms.clear()
        sync_ms.clear()
        ours_ms, raw_ms = [], []
        for i, text in enumerate(turns[20:]):
            if i % 2:
                ours_ms.append(ours(offset + i, text))
                if drain:
                    graph.flush(timeout=60)
                raw_ms.append(raw(text))
            else:
                raw_ms.append(raw(text))
                ours_ms.append(ours(offset + i, text))
                if drain:
                    graph.flush(timeout=60)
        return {
            "surface_p50_ms": round(pct(loop.surface_ms, 50), 2),
            "surface_p99_ms": round(pct(loop.surface_ms, 99), 2),
            "log_p50_ms": round(pct(loop.log_ms, 50), 3),
            "log_p99_ms": round(pct(loop.log_ms, 99), 3),
            "sync_wait_p50_ms": round(pct(sync_ms, 50), 3),
            "sync_wait_p99_ms": round(pct(sync_ms, 99), 3),
            "turn_p50_ms": round(pct(ours_ms, 50), 2),
            "turn_p99_ms": round(pct(ours_ms, 99), 2),
            "raw_p50_ms": round(pct(raw_ms, 50), 2),
            "raw_p99_ms": round(pct(raw_ms, 99), 2),
            "overhead_ratio": round(pct(ours_ms, 99) / pct(raw_ms, 99), 3),
            "overhead_ratio_p50": round(pct(ours_ms, 50) / pct(raw_ms, 50), 3),
        }

    chat = measure(drain=True, offset=0)
    back_to_back = measure(drain=False, offset=len(turns))
    surfaced = sum(len(t.meta.get("surfaced", [])) for t in graph.nodes(kind="turn", limit=200)) / 200
    loop.close()
    graph.close()
    raw_client.close()
    return {"memories": n, "turns": len(turns) - 20, **chat,
            **{f"{k}_back_to_back": v for k, v in back_to_back.items()},
            "memories_surfaced_per_turn": round(surfaced, 2)}


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu": cpu}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="What the agent loop adds to a turn (fake model, real MiniLM).")
    parser.add_argument("--quick", action="store_true", help="10k memories only, 300 turns")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--embed-dtype", choices=EMBED_DTYPES, default="auto",
                        help="precision of the loop's MiniLM (graph.embed_dtype); raw always runs float32 encode()")
    parser.add_argument("--query-runtime", choices=QUERY_RUNTIMES, default="auto",
                        help="what embeds the loop's search query (graph.embed_query_runtime)")
    args = parser.parse_args(argv)
    sizes = [10_000] if args.quick else [10_000, 100_000]
    n_turns = 300 if args.quick else 500
    emb = MiniLMEmbedder(dtype=args.embed_dtype, query_runtime=args.query_runtime, onnx_exporter=onnx_export)
    emb.embed(["warm up"])
    emb.embed_query("warm up")  # exports MiniLM to ONNX on a machine that has no export cached yet
    # raw is the library as it loads by default (float32); with --embed-dtype model both sides share one model
    raw_model = emb.model if emb.dtype_used == "float32" else MiniLMEmbedder(dtype="model").model
    tmp = Path(tempfile.mkdtemp(prefix="mindloop-bench-loop-"))
    try:
        runs = {f"{n // 1000}k": bench_size(emb, raw_model, n, n_turns, tmp, args.seed) for n in sizes}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    main_run = runs["10k"]
    result = {
        "surface_p99_ms": main_run["surface_p99_ms"],
        "log_p99_ms": main_run["log_p99_ms"],
        "sync_wait_p99_ms": main_run["sync_wait_p99_ms"],
        "overhead_ratio": main_run["overhead_ratio"],
        "overhead_ratio_100k": runs.get("100k", {}).get("overhead_ratio"),
        "overhead_ratio_back_to_back": main_run["overhead_ratio_back_to_back"],
        "log_p99_ms_back_to_back": main_run["log_p99_ms_back_to_back"],
        "runs": runs,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": machine(),
        "embed_dtype": args.embed_dtype,
        "embed_dtype_used": emb.dtype_used,
        "query_runtime": args.query_runtime,
        "query_runtime_used": emb.query_runtime_used,
        "command": "python bench/loop.py" + " ".join(["", *(argv if argv is not None else sys.argv[1:])]).rstrip(),
        "quick": args.quick,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'memories':>9} {'turns':>13} {'surface p99':>12} {'log p99':>8} {'sync wait p99':>14} {'turn p99':>9} "
          f"{'raw p99':>8} {'ratio':>6} (target)")
    for name, r in runs.items():
        for label, sfx in (("index caught up", ""), ("back to back", "_back_to_back")):
            print(f"{name:>9} {label:>15} {r['surface_p99_ms' + sfx]:>10.2f}ms {r['log_p99_ms' + sfx]:>6.2f}ms "
                  f"{r['sync_wait_p99_ms' + sfx]:>12.2f}ms {r['turn_p99_ms' + sfx]:>7.2f}ms {r['raw_p99_ms' + sfx]:>6.2f}ms "
                  f"{r['overhead_ratio' + sfx]:>6.2f} (<= 1.25; log <= 2 ms)")
    print(f"peak RSS {result['peak_rss_mb']} MB; the loop's MiniLM ran batches in {emb.dtype_used}, "
          f"queries on {emb.query_runtime_used}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
