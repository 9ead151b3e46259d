"""The inspection UI's FastAPI app: pages, the JSON API, the static assets and the security checks.

    mindloop ui                                     # http://127.0.0.1:8765/
    MINDLOOP_UI_TOKEN=... mindloop ui --host 0.0.0.0 --port 8765

or, from Python, with any graph (tests pass one on the hashing embedder)::

    >>> import tempfile
    >>> from fastapi.testclient import TestClient
    >>> from mindloop.graph import GraphConfig, HashingEmbedder, MemoryGraph
    >>> g = MemoryGraph.open(GraphConfig(home=tempfile.mkdtemp()), embedder=HashingEmbedder())
    >>> client = TestClient(create_app(g), base_url="http://127.0.0.1:8765")
    >>> client.get("/api/flags").json()["total"]
    0
    >>> g.close()
"""

from __future__ import annotations

import json
import logging
from html import escape
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from mindloop.agents.cycle.scheduler import SchedulerConfig
from mindloop.agents.signal.agent import SignalAgent
from mindloop.agents.ui.api import build_api
from mindloop.agents.ui.config import UIConfig
from mindloop.agents.ui.inspector import Inspector
from mindloop.agents.ui.pages import build_pages, templates
from mindloop.agents.ui.security import Guard
from mindloop.graph import GraphError, MemoryGraph, NodeNotFound
from mindloop.trainer.checkpoints import Checkpoints
from mindloop.trainer.errors import TrainerError

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_STATIC = Path(__file__).parent / "static"


def create_app(graph: MemoryGraph, config: UIConfig | None = None, *, agent: SignalAgent | None = None,
               checkpoints: Checkpoints | None = None, runs: str | Path | None = None,
               observer: Callable[..., dict[str, Any]] | None = None, scheduler: SchedulerConfig | None = None,
               csrf_token: str | None = None) -> FastAPI:
    """The UI over ``graph`` (and its data directory's ``checkpoints/`` and ``runs/``).

    ``agent`` reviews flags (default: a :class:`SignalAgent` without a
    detector, which review never uses); ``observer`` is surface-observe's
    ``report(graph, checkpoints, scope=)`` (default: ``mindloop.agents.cycle.watch.report``);
    ``scheduler`` is the :class:`SchedulerConfig` whose readiness the patterns page shows (default: the data
    directory's ``config.toml``). See :class:`mindloop.agents.ui.inspector.Inspector`. The app never
    closes ``graph``: its owner does.
    """
    config = config or UIConfig()
    inspector = Inspector(graph, agent=agent, checkpoints=checkpoints, runs=runs, observer=observer,
                          scheduler=scheduler, config=config)
    guard = Guard(config, csrf_token=csrf_token)
    app = FastAPI(title="mindloop UI", version="0.1.0", docs_url=None, redoc_url=None,
                  description="Review flagged failures, browse the memory graph, see training runs and the "
                              "observer. POST requests need the X-CSRF-Token header (GET /api/csrf) or a bearer "
                              "token.")
    app.state.inspector = inspector
    app.state.guard = guard
    app.middleware("http")(guard)
    app.mount("/static", StaticFiles(directory=str(_STATIC)), name="static")
    app.include_router(build_api(inspector, guard))
    app.include_router(build_pages(inspector, guard))
    page_templates = templates()

    def error(request: Request, status: int, message: str):
        # messages can quote the bad input, lone surrogates included, which UTF-8 cannot carry
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"detail": message}, status_code=status)
        try:
            return page_templates.TemplateResponse(request, "error.html", {
                "status": status, "message": message, "nav": "", "csrf": guard.csrf_token,
                "scope": inspector.scope}, status_code=status)
        except Exception:  # the error page must not fail in turn
            log.exception("rendering the error page")
            return HTMLResponse(f"<h1>{status}</h1><p>{escape(message)}</p>", status_code=status)

    @app.exception_handler(NodeNotFound)
    async def not_found(request: Request, e: NodeNotFound):
        return error(request, 404, str(e.args[0]) if e.args else "not found")

    @app.exception_handler(GraphError)
    async def bad_graph_request(request: Request, e: GraphError):
        return error(request, 400, str(e))

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, e: ValueError):
        return error(request, 400, str(e))

    @app.exception_handler(TrainerError)
    async def trainer_error(request: Request, e: TrainerError):
        return error(request, 409, str(e))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return error(request, e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        if request.url.path.startswith("/api/"):
            # FastAPI's own shape, in ASCII JSON: the errors quote the input, lone surrogates included
            body = json.dumps({"detail": jsonable_encoder(e.errors())}, ensure_ascii=True)
            return Response(body, status_code=422, media_type="application/json")
        where = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}" for err in e.errors())
        return error(request, 422, f"bad request: {where}")

    return app
