"""The ``mindloop`` parser, built lazily, and :func:`main`, which runs the chosen subcommand.

The top-level parser names every subcommand; a subcommand's options are declared the first time it parses or
prints help, so ``mindloop --help`` imports none of the config modules the options are generated from.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Callable, Sequence

from mindloop.agents.cli import chat, cycle, graph, inspection, signal, training

__all__ = ["Command", "build_parser", "main"]


class Command(argparse.ArgumentParser):
    """A subcommand's parser; ``declare(parser)`` adds its options on first use (parsing, help or usage)."""

    def __init__(self, *args, declare: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._declare = declare

    def _declared(self) -> None:
        declare, self._declare = self._declare, None
        if declare is not None:
            declare(self)

    def parse_known_args(self, args=None, namespace=None):
        self._declared()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._declared()
        return super().format_usage()

    def format_help(self) -> str:
        self._declared()
        return super().format_help()


# (name, help, declare): in the order `mindloop --help` lists them
COMMANDS = [
    ("log", "conversation logs", graph.declare_log),
    ("search", "hybrid search of the memory graph", graph.declare_search),
    ("graph", "the memory graph itself", graph.declare_graph),
    ("forget", "remove a session or a whole scope from every store", graph.declare_forget),
    ("export", "write a scope as JSONL", graph.declare_export),
    ("chat", "terminal chat through the loop (surfacing and logging every turn)", chat.declare_chat),
    ("serve", "OpenAI-compatible proxy: POST /v1/chat/completions, GET /v1/models", chat.declare_serve),
    ("import", "load a file written by `mindloop export`", graph.declare_import),
    ("detect", "find corrections: --all over stored logs, --eval FILE to measure, --train to rebuild",
     signal.declare_detect),
    ("flags", "review flagged replies: list, show, confirm, reject, edit", signal.declare_flags),
    ("patterns", "patterns of flags, with counts over time", signal.declare_patterns),
    ("compose", "build a pattern's balanced training examples (accept, push-back, general)", signal.declare_compose),
    ("train", "train the chat model on a pattern's examples or a dataset; writes a checkpoint", training.declare_train),
    ("eval", "evaluate the model or a checkpoint on probe sets", training.declare_eval),
    ("checkpoints", "checkpoints: list, show, promote, rollback", training.declare_checkpoints),
    ("observe", "surface-observe: per checkpoint the windows, rate tests and verdicts; alerts; rollbacks",
     cycle.declare_observe),
    ("daemon", "the scheduler: when a pattern is ripe, compose, train, gate, promote and watch", cycle.declare_daemon),
    ("status", "patterns and their readiness, the queue, the checkpoint in use, runs, verdicts, alerts",
     cycle.declare_status),
    ("report", "write an HTML report: runs before/after with plots, gate checks, the watch, alerts",
     cycle.declare_report),
    ("doctor", "check the data directory (graph.db, vectors, checkpoints, loop.db); exit 1 on problems",
     inspection.declare_doctor),
    ("ui", "the inspection web UI: review flags, patterns, the memory graph, runs, the observer",
     inspection.declare_ui),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mindloop",
        description="Make a chat model learn from the people who use it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Command)
    for name, text, declare in COMMANDS:
        sub.add_parser(name, help=text, declare=declare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None and getattr(args, "home", None):
        candidate = Path(args.home).expanduser() / "config.toml"  # --home D reads D/config.toml, as $MINDLOOP_HOME does
        if candidate.is_file():
            args.config = str(candidate)
    from mindloop.agents.chat.backends import BackendError
    from mindloop.graph import GraphError
    from mindloop.trainer.errors import TrainerError

    try:
        return args.run(args)
    except (GraphError, BackendError, TrainerError) as e:
        print(f"mindloop: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"mindloop: error: {e.filename}: no such file", file=sys.stderr)
        return 2
    except sqlite3.IntegrityError as e:  # a constraint, not damage: say which, do not send the user to doctor
        print(f"mindloop: error: the write conflicts with what is stored ({e})", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as e:  # a damaged page met after opening (graph.db's quick_check passed)
        print(f"mindloop: error: a database in the data directory is damaged ({e}); run `mindloop doctor`",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
