"""The terminal chat: ``mindloop chat``. Streams replies; slash commands inspect and steer.

    mindloop chat --session work --scope alice

Commands: ``/memories`` (what was surfaced for the last reply), ``/flag
[reason]`` (flag the last reply by hand: a confirmed Flag on it),
``/forget`` (forget this session: the graph and the loop state), ``/quit``
(or end of input).
"""

from __future__ import annotations

import sys
from typing import Callable, TextIO

from mindloop.agents.chat.loop import ChatLoop, TurnResult
from mindloop.graph import Flag

__all__ = ["run_chat"]

HELP = "commands: /memories  /flag [reason]  /forget  /quit"


def run_chat(loop: ChatLoop, session: str, *, scope: str | None = None,
             read: Callable[[str], str] = input, out: TextIO | None = None) -> int:
    """Chat until /quit or end of input. Returns the number of completed turns."""
    out = out or sys.stdout
    scope = loop.graph.resolve_scope(scope)
    last: TurnResult | None = None
    turns = 0
    out.write(f"mindloop chat: session {session!r}, scope {scope!r}, model {loop.backend.model_id}. {HELP}\n")
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return turns
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return turns
        if text == "/memories":
            if last is None or not last.surfaced:
                out.write("no memories were surfaced for the last reply\n")
            for s in (last.surfaced if last else []):
                out.write(f"  [{s['kind']}] {s['text']}  (id {s['id']}, score {s['score']:.4f})\n")
            continue
        if text.startswith("/flag"):
            if last is None or last.assistant_turn is None:
                out.write("nothing to flag yet\n")
                continue
            reason = text[len("/flag"):].strip() or "flagged by hand"
            flag = Flag(scope=scope, session=session, turn=last.assistant_turn, type="other", confidence=1.0,
                        evidence=["flagged by hand in mindloop chat"], status="confirmed", reason=reason)
            loop.graph.add(flag, edges=[(flag.id, last.assistant_turn, "flags")])
            out.write(f"flagged the last reply ({flag.id}): {reason}\n")
            continue
        if text == "/forget":
            n = loop.graph.forget(scope=scope, session=session)
            loop.reset(session, scope)
            last = None
            out.write(f"forgot this session: {n} node(s) removed\n")
            continue
        if text.startswith("/"):
            out.write(f"unknown command {text.split()[0]!r}; {HELP}\n")
            continue
        out.write("bot> ")
        out.flush()
        for item in loop.stream(session, line, scope=scope):
            if isinstance(item, TurnResult):
                last = item
            else:
                out.write(item)
                out.flush()
        out.write("\n")
        if last is not None and last.error:
            out.write(f"[error] {last.error} (your message was logged)\n")
        else:
            turns += 1
