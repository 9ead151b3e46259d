"""A scripted user who corrects the assistant only when its reply fails, replayed through the agent loop.

Used by the demo (``examples/00_demo.py``) to produce traffic before and after
a promotion. Each request in ``examples/data/replay.jsonl`` says what a good
reply contains (``expect``: all of them, or any with ``"any": true``); a
``direct`` request also fails when the reply offers alternatives instead of
doing it. When the reply fails, the user sends the scripted ``correction``
and the loop's signal hook flags it, exactly as in a live chat; otherwise the
user says thanks. The rates surface-observe compares therefore depend on what
the model in use actually replied.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

REQUESTS = Path(__file__).resolve().parent / "data" / "replay.jsonl"
# offers instead of doing: the failure the demo pattern is about
_ALTERNATIVES = re.compile(r"\b(alternatively|you could|you might|you may want|instead of|another option|"
                           r"have you considered|consider using|would you like|other options)\b", re.I)


def requests(path: Path = REQUESTS) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fails(request: dict, reply: str) -> bool:
    text = reply.lower()
    hits = [e.lower() in text for e in request["expect"]]
    ok = any(hits) if request.get("any") else all(hits)
    if request["kind"] == "direct" and _ALTERNATIVES.search(reply):
        ok = False
    return not ok


def replay(loop, tag: str, *, scope: str | None = None, max_tokens: int = 32, on_reply=None,
           limit: int | None = None) -> dict:
    """Run the scripted requests (the first ``limit`` of them, or all) through ``loop``, each in its own session;
    returns failures by kind."""
    failed, total = Counter(), Counter()
    for req in requests()[:limit]:
        session = f"replay-{tag}-{req['id']}"
        result = loop.run(session, req["user"], scope=scope, max_tokens=max_tokens, temperature=0.0)
        reply = result.reply or ""
        total[req["kind"]] += 1
        bad = fails(req, reply)
        if on_reply is not None:
            on_reply(req, reply, bad)
        if bad:
            failed[req["kind"]] += 1
        # a user corrects a failing reply, and corrects again (once) when the next reply fails too
        for _ in range(2):
            if not bad:
                break
            reply = loop.run(session, req["correction"], scope=scope, max_tokens=max_tokens,
                             temperature=0.0).reply or ""
            bad = fails(req, reply)
        # the user's last word, so the signal hook can judge the last reply; the model's answer to it is not
        # judged, so one token of it is enough
        loop.run(session, "Thanks, that's it." if not bad else "Never mind.", scope=scope, max_tokens=1,
                 temperature=0.0)
    return {"failed": dict(failed), "total": dict(total)}
