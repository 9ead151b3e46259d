"""Importing conversation logs: OpenAI-style JSONL, one conversation per line.

Each line is ``{"messages": [{"role": ..., "content": ...}, ...], "session": "...", "scope": "..."}``;
``session`` and ``scope`` are optional (a session id is derived from the
messages, the scope from the caller). ``content`` is a string or a list of
``{"type": "text", "text": ...}`` parts. Roles are user, assistant, system.

Turn ids are derived from the line's content, so importing the same file
twice adds nothing. By default a file with any bad line is rejected whole,
with every problem listed by line number; ``skip_bad=True`` imports the good
lines and reports the others. Either way, the import is one transaction.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from mindloop.graph.errors import GraphError, InvalidRecord
from mindloop.graph.records import ROLES, check_text

if TYPE_CHECKING:
    from mindloop.graph.memory_graph import MemoryGraph

__all__ = ["Conversation", "ImportReport", "import_conversations", "parse_conversation"]


@dataclass
class Conversation:
    lineno: int
    session: str
    scope: str | None
    messages: list[dict[str, str]]


@dataclass
class ImportReport:
    conversations: int = 0
    turns_added: int = 0
    turns_present: int = 0
    errors: list[str] = field(default_factory=list)  # "line N: problem"

    def to_json(self) -> dict[str, Any]:
        return {"conversations": self.conversations, "turns_added": self.turns_added,
                "turns_present": self.turns_present, "errors": self.errors}


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRecord(f"{where}: content part {j} is not a text part ({{'type': 'text', 'text': ...}})")
            parts.append(part["text"])
        return "\n".join(parts)
    raise InvalidRecord(f"{where}: content must be a string or a list of text parts, got {type(value).__name__}")


def parse_conversation(line: str, lineno: int, *, max_bytes: int | None = None) -> Conversation | None:
    """Parse one line; None for a blank line; :class:`InvalidRecord` naming the problem otherwise."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InvalidRecord(f"line {lineno}: not JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # an integer of over 4300 digits; nesting too deep
        problem = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(":")[0]
        raise InvalidRecord(f"line {lineno}: not JSON we can read ({problem})") from None
    if not isinstance(obj, dict):
        raise InvalidRecord(f"line {lineno}: expected an object with 'messages', got {type(obj).__name__}")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRecord(f"line {lineno}: 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        where = f"line {lineno}: message {i}"
        if not isinstance(m, dict):
            raise InvalidRecord(f"{where} is not an object")
        role = m.get("role")
        if role not in ROLES:
            raise InvalidRecord(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        try:
            text = check_text(_content(m.get("content"), where), max_bytes=max_bytes, what=f"{where} content")
        except GraphError as e:
            raise InvalidRecord(str(e)) from None
        out.append({"role": role, "content": text})
    for key in ("session", "scope"):
        if key in obj and (not isinstance(obj[key], str) or not obj[key].strip()):
            raise InvalidRecord(f"line {lineno}: '{key}' must be a non-empty string")
    digest = hashlib.sha256(json.dumps(out, ensure_ascii=True).encode()).hexdigest()
    session = obj.get("session") or f"import-{digest[:12]}"
    return Conversation(lineno=lineno, session=session, scope=obj.get("scope"), messages=out)


def import_conversations(graph: "MemoryGraph", lines: Iterable[str], *, scope: str | None = None,
                         skip_bad: bool = False) -> ImportReport:
    """Import a conversations file into ``graph`` in one transaction; see the module docstring."""
    report = ImportReport()
    convs: list[Conversation] = []
    for lineno, line in enumerate(lines, 1):
        try:
            conv = parse_conversation(line, lineno, max_bytes=graph.config.max_text_bytes)
        except InvalidRecord as e:
            report.errors.append(str(e))
            continue
        if conv is not None:
            convs.append(conv)
    if report.errors and not skip_bad:
        shown = report.errors[:20]
        more = f"\n... and {len(report.errors) - 20} more" if len(report.errors) > 20 else ""
        raise InvalidRecord(f"{len(report.errors)} bad line(s); nothing was imported:\n" + "\n".join(shown) + more)
    from mindloop.graph.memory_graph import turn_id

    with graph.store.write():
        for conv in convs:
            conv_scope = conv.scope or scope or graph.config.scope
            digest = hashlib.sha256(json.dumps(conv.messages, ensure_ascii=True).encode()).hexdigest()
            turns = [
                {"role": m["role"], "text": m["content"],
                 "id": turn_id(conv_scope, conv.session, i, m["role"], digest)}
                for i, m in enumerate(conv.messages)
            ]
            existing = sum(graph.store.exists(graph.store.conn, t["id"]) for t in turns)
            graph.log_turns(conv.session, turns, scope=conv_scope)
            report.conversations += 1
            report.turns_present += existing
            report.turns_added += len(turns) - existing
    return report
