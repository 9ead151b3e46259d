"""The UI's HTML pages: server-rendered Jinja2 templates over :class:`mindloop.agents.ui.inspector.Inspector`.

    /flags            the review queue (filters: pattern, status, confidence), with confirm / reject per row
    /flags/{id}       one flag: conversation window, flagged reply, correction, evidence, similar flags; review
    /patterns         each pattern's size, readiness and flags over time, promotions and rollbacks marked
    /graph            search the memory graph; ?node=ID draws its neighbourhood with links to follow
    /runs, /runs/{id} runs: loss curve, before/after table, examples with their source turns, lineage
    /observer         the checkpoint in use, per-window rates around promotions, open alerts, rollbacks

Review buttons are plain HTML forms (they work without JavaScript) posting to
``/flags/{id}/review`` with the CSRF token; the change is written at once and
the browser is sent back to the page it came from.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from mindloop.agents.ui.inspector import Inspector
from mindloop.agents.ui.security import Guard

__all__ = ["build_pages", "rate_chart", "templates"]

_HERE = Path(__file__).parent


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit} ago"
    return "just now"


def _num(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def templates() -> Jinja2Templates:
    """The page templates, autoescaping every value, with the filters they use."""
    t = Jinja2Templates(directory=str(_HERE / "templates"))
    t.env.autoescape = True  # every template, whatever its extension
    t.env.filters.update(when=_when, ago=_ago, num=_num)
    return t


def rate_chart(report: dict[str, Any]) -> dict[str, Any]:
    """The observer chart: flags per turn and turns needing a correction memory, per window, before and after
    each promotion (the parent's baseline windows, then the checkpoint's own), with promotions and rollbacks.

    >>> chart = rate_chart({"checkpoints": [{"id": "c1", "promoted_at": 5.0, "windows": [
    ...     {"start": 6.0, "turns": 10, "flags": {"p": 2}, "surfaced_corrections": 1}]}], "rollbacks": []})
    >>> chart["series"][0]["flags"], chart["events"][0]["event"]
    ([{'x': 6000.0, 'y': 0.2}], 'promote')
    """
    series, events = [], []
    for c in report.get("checkpoints", []):
        for phase, windows in (("before", c.get("baseline_windows")), ("after", c.get("windows"))):
            flags, surfaced = [], []
            for w in windows or []:
                turns = w.get("turns") or 0
                if not turns or w.get("start") is None:
                    continue
                x = float(w["start"]) * 1000
                flags.append({"x": x, "y": round(sum((w.get("flags") or {}).values()) / turns, 4)})
                if w.get("surfaced_corrections") is not None:
                    surfaced.append({"x": x, "y": round(w["surfaced_corrections"] / turns, 4)})
            if flags:
                name = c["id"] if phase == "after" else f"{c.get('parent') or 'base model'} before {c['id']}"
                series.append({"label": name, "checkpoint": c["id"], "phase": phase, "flags": flags,
                               "surfaced": surfaced})
        if c.get("promoted_at"):
            events.append({"at": c["promoted_at"], "event": "promote", "checkpoint": c["id"]})
    for r in report.get("rollbacks", []):
        if r.get("at"):
            events.append({"at": r["at"], "event": "rollback", "checkpoint": r.get("checkpoint")})
    return {"series": series, "events": events}


def _safe_next(target: str | None, fallback: str) -> str:
    """Only a path on this site: never another host (an open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return fallback


def build_pages(inspector: Inspector, guard: Guard) -> APIRouter:
    """The HTML routes; hidden from the OpenAPI schema (the JSON API serves the same data)."""
    pages = APIRouter(include_in_schema=False)
    t = templates()

    def render(request: Request, name: str, nav: str, **data: Any) -> HTMLResponse:
        return t.TemplateResponse(request, name, {"nav": nav, "csrf": guard.csrf_token,
                                                  "scope": inspector.scope, **data})

    @pages.get("/")
    def home():
        return RedirectResponse("/flags", status_code=303)

    @pages.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @pages.post("/login")
    async def login(request: Request):
        form = await _form(request, guard.config.max_body_bytes)
        if not guard.token_ok(form.get("token")):
            raise HTTPException(401, "wrong token")
        return guard.login_response("/flags")

    @pages.get("/flags")
    def flags(request: Request, pattern: str | None = None, status: str | None = None,
              min_confidence: str | None = None, max_confidence: str | None = None):
        # the filter form sends empty strings for "any"
        data = inspector.flags(pattern=pattern or None, status=status or None,
                               min_confidence=_float(min_confidence, "min_confidence"),
                               max_confidence=_float(max_confidence, "max_confidence"))
        here = "/flags" + (f"?{request.url.query}" if request.url.query else "")
        return render(request, "flags.html", "flags", queue=data, here=here)

    @pages.get("/flags/{flag_id}")
    def flag(request: Request, flag_id: str):
        return render(request, "flag.html", "flags", info=inspector.flag(flag_id), here=f"/flags/{flag_id}")

    @pages.post("/flags/{flag_id}/review")
    async def review(request: Request, flag_id: str):
        form = await _form(request, guard.config.max_body_bytes)
        if not guard.check_csrf(request, form.get("csrf_token")):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
        action = form.get("action", "")
        if action not in ("confirm", "reject", "edit"):
            raise HTTPException(400, f"unknown action {action!r}; allowed: confirm, reject, edit")
        await run_in_threadpool(inspector.review, flag_id, action, form.get("response"))
        return RedirectResponse(_safe_next(form.get("next"), f"/flags/{flag_id}"), status_code=303)

    @pages.get("/patterns")
    def patterns(request: Request):
        return render(request, "patterns.html", "patterns", data=inspector.patterns())

    @pages.get("/graph")
    def graph(request: Request, node: str | None = None, q: str | None = None, hops: int = 1):
        found = inspector.search(q) if q and q.strip() else None
        hood = inspector.node(node, hops=hops) if node else None
        return render(request, "graph.html", "graph", hood=hood, found=found, q=q or "", node_id=node or "",
                      hops=hops)

    @pages.get("/runs")
    def runs(request: Request):
        return render(request, "runs.html", "runs", runs=inspector.runs()["runs"],
                      checkpoints=inspector.checkpoint_list())

    @pages.get("/runs/{run_id}")
    def run(request: Request, run_id: str):
        return render(request, "run.html", "runs", run=inspector.run(run_id))

    @pages.get("/runs/{run_id}/loss.png")
    def loss_png(run_id: str):
        return FileResponse(inspector.loss_png(run_id), media_type="image/png")

    @pages.get("/observer")
    def observer(request: Request):
        report = inspector.observer()
        return render(request, "observer.html", "observer", report=report, chart=rate_chart(report))

    return pages


def _float(value: str | None, name: str) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}") from None


async def _form(request: Request, limit: int) -> dict[str, str]:
    """A urlencoded form body (first value of each field); 413 over ``limit`` bytes, 400 if it is not a form."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, "send the form as application/x-www-form-urlencoded")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise HTTPException(413, f"the form exceeds the limit of {limit} bytes")
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise HTTPException(400, "the form is not valid UTF-8") from None
    return {k: v[0] for k, v in fields.items()}

