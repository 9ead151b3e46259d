"""What the numbered examples share: the data dir, section headers, the models a flag picks, the scripted data.

Not an example itself (it has no number): ``02_proxy_openai.py`` to
``05_daemon.py`` import it. Each example runs on the bundled models by default
(MiniLM for the memory graph, SmolLM2-135M-Instruct for chatting, reading and
training) and on test doubles with ``--fast`` (the hashing embedder and the
detector without the reader) and ``--model tiny`` (the tiny randomly
initialised Llama the trainer tests build, written into the data dir). The
doubles exercise the same code in seconds; their replies and scores mean
nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT / "examples" / "data"
# the examples print their own progress; the libraries' progress bars would only interleave with it
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
console = Console(highlight=False)

# The scripted conversations in which the user really corrected the assistant: what a reviewer would confirm.
# Every other flagged session (a user agreeing with a push-back, a satisfied user) is a false flag.
CORRECTED_SESSIONS = {"rename-1", "sql-1", "email-1", "plot-1", "tabs-1", "json-1"} | {
    f"alt-{i:02d}" for i in range(1, 29)}


def section(title: str) -> None:
    console.rule(f"[bold]{title}")


def arguments(doc: str, *, training: bool = False) -> argparse.ArgumentParser:
    """The flags every example takes; with ``training``, also the model to train, its step cap and who writes the
    general replay."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--home", help="data dir to use (emptied first); default: a temporary dir removed at the end")
    parser.add_argument("--fast", action="store_true",
                        help="test doubles for the memory graph and the detector: the hashing embedder instead of "
                             "MiniLM, and no reader model (default: the bundled models)")
    if training:
        parser.add_argument("--model", choices=("bundled", "tiny"), default="bundled",
                            help="model to train: 'bundled' (SmolLM2-135M-Instruct, default) or 'tiny' (a random "
                                 "two-layer Llama built locally, as in the trainer tests; needs pytest installed)")
        parser.add_argument("--max-steps", type=int, default=-1,
                            help="cap on training steps; -1 = one epoch (default)")
        parser.add_argument("--generate", action="store_true",
                            help="the bundled model writes the general replay (default: the shipped reference answers)")
    return parser


@contextlib.contextmanager
def data_dir(home: str | None, *, fast: bool) -> Iterator[Path]:
    """A fresh data dir: ``home`` emptied first, or a temporary one removed afterwards.

    With ``fast``, its ``config.toml`` names the hashing embedder and no reader, so that the ``mindloop``
    commands an example suggests read the data the way the example wrote it.
    """
    with contextlib.ExitStack() as stack:
        if home:
            path = Path(home).resolve()
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
        else:
            path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mindloop-example-")))
        if fast:
            (path / "config.toml").write_text('[graph]\nembedder = "hashing"\n\n[signal]\nreader = "off"\n',
                                              encoding="utf-8")
        yield path


def open_graph(home: Path, *, fast: bool):
    from mindloop.graph import GraphConfig
    from mindloop.trainer.export import open_graph as open_with_exporter

    return open_with_exporter(GraphConfig(home=home, embedder="hashing" if fast else "minilm"))


def model_source(name: str, home: Path) -> str:
    """What ``TrainConfig.model`` takes for ``--model``: 'bundled', or the path of the tiny LM built in ``home``."""
    if name == "bundled":
        return "bundled"
    import importlib.util

    # the trainer tests' own builder (tests/conftest.py), so the example trains exactly what they train
    spec = importlib.util.spec_from_file_location("_mindloop_test_fixtures", ROOT / "tests" / "conftest.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)  # type: ignore[union-attr]
    return str(fixtures.build_tiny_lm(home / "tiny-lm"))


def signal_agent(graph, *, fast: bool, backend=None, auto_confirm_above: float | None = None):
    """The training-signal agent: its detector reads follow-ups with the bundled SmolLM2 unless ``fast``.

    ``backend`` (a loaded bundled :class:`mindloop.agents.chat.backends.LocalBackend`) lends the reader its weights.
    """
    from mindloop.agents.signal.detect import Detector
    from mindloop.agents.signal.agent import SignalAgent, SignalConfig

    reader = None
    if not fast:
        from mindloop.agents.signal.reader import Reader

        reader = Reader(backend=backend) if backend is not None else Reader()
    detector = Detector.load(graph.embedder, reader=reader)
    return SignalAgent(graph, detector, SignalConfig(reader="off" if fast else "bundled",
                                                     auto_confirm_above=auto_confirm_above))


def import_scripted(graph, names: tuple[str, ...] = ("conversations.jsonl", "corrections.jsonl")) -> None:
    """Log the scripted conversations of ``examples/data`` into ``graph``."""
    from mindloop.graph.conversations import import_conversations

    for name in names:
        report = import_conversations(graph, (DATA / name).read_text(encoding="utf-8").splitlines())
        console.print(f"mindloop log import examples/data/{name}: {report.conversations} conversations, "
                      f"{report.turns_added} turns")
    graph.flush(timeout=600)


def detect(agent) -> list:
    """``mindloop detect --all``: flag the corrections in the stored logs, print a summary; the new flags."""
    import time

    t = time.perf_counter()
    found = agent.detect_all()
    flags = found["flags"]
    console.print(f"mindloop detect --all: scored {found['pairs']} reply/follow-up pairs in "
                  f"{time.perf_counter() - t:.1f}s (threshold {agent.detector.threshold:.2f}, reader "
                  f"{agent.detector.reader.name if agent.detector.reader else 'off'}); {len(flags)} flags: "
                  + ", ".join(f"{k} {v}" for k, v in Counter(f.type for f in flags).most_common()))
    return flags


def show_patterns(graph, agent) -> list:
    """``mindloop patterns``: regroup the flags into patterns and print each; the patterns, largest first."""
    from mindloop.agents.signal.patterns import describe, update_patterns

    patterns = update_patterns(graph, agent.detector.embedder, config=agent.config)
    for p in patterns:
        d = describe(graph, p)
        console.print(f"pattern {p.id}  [bold]{p.name}[/]: {d['flags']} flags ("
                      + ", ".join(f"{k} {v}" for k, v in sorted(d["by_status"].items())) + ")")
    if not patterns:
        console.print("[red]no pattern found[/]")
    return patterns


def prepare_pattern(graph, *, fast: bool, generate: bool = False):
    """A data dir as use would leave it: the scripted logs imported, the corrections detected, the confident flags
    confirmed by the agent itself (``signal.auto_confirm_above = 0.9``), the flags grouped.

    Returns ``(agent, backend, pattern)``: the signal agent, the bundled model it reads with (None when ``fast``
    and not ``generate``; the caller closes it) and the largest pattern (None when there is none).
    """
    backend = None
    if generate or not fast:
        from mindloop.agents.chat.backends import LocalBackend

        backend = LocalBackend("bundled")  # the reader's weights, and the writer of the general replay
    agent = signal_agent(graph, fast=fast, backend=backend, auto_confirm_above=0.9)
    import_scripted(graph)
    detect(agent)
    patterns = show_patterns(graph, agent)
    return agent, backend, (patterns[0] if patterns else None)


def goodbye(started: float, home: Path, keep: bool, commands: list[str]) -> None:
    """How long the example took and, when its data dir stays (``--home``), commands to look around in it."""
    import time

    console.print(f"done in {time.perf_counter() - started:.0f}s")
    if keep:
        console.print("look around:")
        for command in commands:
            console.print(f"  MINDLOOP_HOME={home} .venv/bin/mindloop {command}", markup=False)
