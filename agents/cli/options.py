"""Command-line options: those generated from a config dataclass's fields, and the value types of the rest.

A setting is declared once, as a field of the config dataclass beside what it configures; its flag comes from
the field: the name (``max_steps`` -> ``--max-steps``), the type, the choices the field lists in
``metadata["choices"]``, and the help from ``metadata["help"]`` followed by the default read from the field
itself. A flag's own default is None, so an unset flag never hides config.toml or ``MINDLOOP_*`` (see
:func:`mindloop.graph.config.load_config`)::

    add_field(parser, TrainConfig, "max_steps", type=positive)   # --max-steps N
    add_field(parser, TrainConfig, "evaluate", flag="--no-eval")  # a True field: the flag turns it off

Flags with no field behind them (``--json``, ``--out``) are declared by hand in their subcommand.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import typing
from datetime import datetime
from typing import Any, Callable

__all__ = ["add_field", "field_help", "fraction", "non_negative", "non_negative_float", "positive",
           "positive_float", "ratio", "since"]


def _field(cls: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise AttributeError(f"{cls.__name__} has no field {name!r}")


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{round(value, 4):g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _default(f: dataclasses.Field) -> Any:
    """The field's default; for a factory, the first line of its docstring (it may read the environment)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    doc = (f.default_factory.__doc__ or f.default_factory.__name__).strip().splitlines()[0]  # type: ignore[union-attr]
    return doc.replace("``", "").rstrip(".")


def field_help(cls: type, name: str) -> str:
    """The field's help, then its default (none for an unset default: the help says what unset means)."""
    f = _field(cls, name)
    text = f.metadata["help"]
    default = _default(f)
    if default is None:
        return text
    if isinstance(default, bool) and default:
        return f"{text} (default on; this flag turns it off)"
    return f"{text} (default {_render(default)})"


def _value_type(cls: type, name: str) -> Callable[[str], Any]:
    """The field's type without None (``float | None`` -> float)."""
    tp = typing.get_type_hints(cls)[name]
    inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return inner[0] if inner[0] in (int, float) else str


def add_field(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, name: str, *,
              flag: str | None = None, type: Callable[[str], Any] | None = None) -> argparse.Action:
    """Add the option of ``cls``'s field ``name``; its value lands in ``args.<name>`` (None when not given).

    ``flag`` renames the option (default ``--field-name``; ``--no-...`` for a field that defaults to True);
    ``type`` parses and checks the value (default the field's own type).
    """
    f = _field(cls, name)
    help_text = field_help(cls, name)
    if typing.get_type_hints(cls)[name] is bool:
        on = _default(f) is True
        option = flag or ("--no-" if on else "--") + name.replace("_", "-")
        return parser.add_argument(option, dest=name, action="store_false" if on else "store_true", default=None,
                                   help=help_text)
    option = flag or "--" + name.replace("_", "-")
    choices = f.metadata.get("choices")
    metavar = None if choices else option.lstrip("-").replace("-", "_").upper()  # named for the flag, not the field
    return parser.add_argument(option, dest=name, metavar=metavar, type=type or _value_type(cls, name),
                               choices=choices, help=help_text)


def since(value: str) -> float:
    """``--since``: an ISO date/time, or a duration ago such as 90s, 30m, 12h, 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value and value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(value[:-1]) * units[value[-1]]
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {value!r}: give an ISO date/time (2026-11-01T09:00) or a duration ago (90s, 30m, 12h, 7d)"
        ) from None


def _number(value: str, cast: type, test, needs: str):
    """Parse ``value`` with ``cast``; ``test(x)`` must hold, else argparse reports ``value needs``."""
    try:
        x = cast(value)
    except ValueError:
        kind = "whole number" if cast is int else "number"
        raise argparse.ArgumentTypeError(f"{value!r} is not a {kind}") from None
    if not test(x):
        raise argparse.ArgumentTypeError(f"{value} {needs}")
    return x


def positive(value: str) -> int:
    return _number(value, int, lambda n: n >= 1, "must be at least 1")


def non_negative(value: str) -> int:
    return _number(value, int, lambda n: n >= 0, "must be 0 or more")


def positive_float(value: str) -> float:
    return _number(value, float, lambda x: x > 0, "must be more than 0")


def non_negative_float(value: str) -> float:
    return _number(value, float, lambda x: x >= 0, "must be 0 or more")


def fraction(value: str) -> float:
    """A number strictly between 0 and 1."""
    return _number(value, float, lambda x: 0.0 < x < 1.0, "must be between 0 and 1")


def ratio(value: str) -> float:
    """A number in [0, 1)."""
    return _number(value, float, lambda x: 0.0 <= x < 1.0, "must be at least 0 and below 1")
