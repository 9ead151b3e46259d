"""The ``mindloop`` command.

Every subcommand prints human output by default and one JSON document with
``--json``. Errors go to stderr as ``mindloop: error: ...`` with exit status 2;
nothing partial is written. Heavy libraries load only inside the subcommand
that needs them, so ``mindloop --help`` stays fast.

    mindloop log import examples/data/conversations.jsonl
    mindloop search "rename the function" --k 5
    mindloop graph stats --json
    mindloop export --scope default --out default.jsonl
    mindloop forget --session s1

Layout: :mod:`~mindloop.agents.cli.parser` builds the parser and runs a subcommand;
:mod:`~mindloop.agents.cli.options` generates options from the config dataclasses'
fields; one module per area declares its subcommands and runs them (``graph``,
``chat``, ``signal``, ``training``, ``cycle``, ``inspection``); ``common`` holds what
several share.
"""

from mindloop.agents.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
