"""What several subcommands share: the common options, opening the graph, the chat model, the detector and the
scheduler from flags and config, and printing human or ``--json`` output."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mindloop.agents.cli.options import add_field, positive

__all__ = ["add_common", "add_model_options", "detector", "emit", "open_backend", "open_graph",
           "open_loop", "read_lines", "reader", "scheduler", "sigterm_closes", "signal_config", "snippet"]


def add_common(p: argparse.ArgumentParser) -> None:
    """``--home``, ``--config`` and ``--json``: every subcommand takes them."""
    from mindloop.graph import GraphConfig

    add_field(p, GraphConfig, "home")
    p.add_argument("--config", help="TOML config file (default: HOME/config.toml when present)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The chat model a subcommand talks to, and the scope of its memories and logs."""
    from mindloop.agents.chat.backends import ModelConfig

    add_field(p, ModelConfig, "model")
    add_field(p, ModelConfig, "upstream")
    p.add_argument("--scope", help="scope of memories and logs (default: the configured scope)")
    add_field(p, ModelConfig, "max_tokens", type=positive)


def open_graph(args: argparse.Namespace):
    from mindloop.graph import GraphConfig, load_config
    from mindloop.trainer.export import open_graph as open_configured

    config = load_config(GraphConfig, "graph", file=args.config, overrides={"home": args.home})
    return open_configured(config)


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    """Print ``data`` as one JSON document under ``--json``, else ``human``."""
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=None))
    else:
        print(human)


def read_lines(path: str) -> list[str]:
    """The lines of a UTF-8 file ('-' = stdin); invalid UTF-8 is an error naming the line."""
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        return data.decode("utf-8").split("\n")  # not splitlines(): JSON strings may hold U+2028, NEL, \x1c...
    except UnicodeDecodeError as e:
        from mindloop.graph import InvalidRecord

        line = 1 + data[: e.start].count(b"\n")
        raise InvalidRecord(f"{path}: line {line}: not valid UTF-8 (byte {data[e.start]:#x})") from None


def snippet(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def open_backend(args, g):
    from mindloop.agents.chat.backends import ModelConfig, make_backend
    from mindloop.graph import load_config

    model_cfg = load_config(ModelConfig, "model", file=args.config,
                            overrides={"model": getattr(args, "model", None), "upstream": getattr(args, "upstream", None),
                                       "max_tokens": getattr(args, "max_tokens", None)})
    return make_backend(model_cfg, checkpoints=g.config.home / "checkpoints")


def signal_config(args):
    from mindloop.agents.signal.agent import SignalConfig
    from mindloop.graph import load_config

    return load_config(SignalConfig, "signal", file=args.config,
                       overrides={"threshold": getattr(args, "threshold", None), "judge": getattr(args, "judge", None),
                                  "reader": getattr(args, "reader", None)})


def reader(cfg, backend=None):
    """The detector's reader, sharing ``backend``'s weights when it is the bundled local model."""
    if cfg.reader == "off":
        return None
    from mindloop.agents.chat.backends import LocalBackend
    from mindloop.agents.signal.reader import Reader

    if isinstance(backend, LocalBackend) and backend.source == "bundled":
        return Reader(backend=backend)
    return Reader()


def detector(args, embedder, backend=None):
    from mindloop.agents.signal.detect import Detector
    from mindloop.agents.signal.judge import LLMJudge

    cfg = signal_config(args)
    judge = LLMJudge(backend) if cfg.judge == "model" and backend is not None else None
    return Detector.load(embedder, reader=reader(cfg, backend), threshold=cfg.threshold, judge=judge), cfg


def open_loop(args, g):
    from mindloop.agents.chat.loop import ChatLoop
    from mindloop.agents.signal.agent import SignalAgent
    from mindloop.agents.chat.surface import SurfaceConfig, Surfacer
    from mindloop.graph import load_config

    surface_cfg = load_config(SurfaceConfig, "surface", file=args.config)
    backend = open_backend(args, g)
    found, cfg = detector(args, g.embedder, backend)
    agent = SignalAgent(g, found, cfg)
    return ChatLoop(g, backend, surfacer=Surfacer(g, surface_cfg), on_pair=agent.on_pair)


def scheduler(args, g, *, say=None):
    from mindloop.agents.cycle import ObserveConfig
    from mindloop.agents.cycle.scheduler import Scheduler, SchedulerConfig
    from mindloop.graph import load_config

    cfg = load_config(SchedulerConfig, "scheduler", file=args.config, overrides={
        "interval_s": getattr(args, "interval_s", None), "min_flags": getattr(args, "min_flags", None),
        "cooldown_s": getattr(args, "cooldown_s", None), "idle_s": getattr(args, "idle_s", None),
        "method": getattr(args, "method", None), "max_steps": getattr(args, "max_steps", None),
        "objective": getattr(args, "objective", None),
        "generate": getattr(args, "generate", None), "model": getattr(args, "model", None)})
    observe = load_config(ObserveConfig, "observe", file=args.config)
    found = None
    if cfg.generate:
        try:
            found, _ = detector(args, g.embedder)
        except Exception as e:  # noqa: BLE001 - compose checks generated replies with it when it loads
            print(f"mindloop: note: composing without the detector ({e})", file=sys.stderr)
    return Scheduler(g, cfg, observe=observe, scope=getattr(args, "scope", None),
                     backend_factory=lambda: open_backend(args, g), detector=found,
                     say=say or (lambda msg: print(f"[scheduler {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)))


def sigterm_closes() -> None:
    """SIGTERM unwinds like Ctrl-C, so the graph closes before the process ends.

    uvicorn re-raises SIGTERM after its graceful shutdown, and the default action would kill the process
    before the graph closes (embedded Chroma would then be rebuilt on the next open); a KeyboardInterrupt
    unwinds the ``with`` blocks instead. The daemon likewise finishes closing its checkpointer.
    """
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
