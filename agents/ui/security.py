"""Who may use the inspection UI, and what a page from another site cannot make it do.

- **Binding.** Loopback by default; any other address needs a token and the
  UI refuses to start without one (:meth:`mindloop.agents.ui.config.UIConfig.check_bind`).
- **Access with a token.** ``Authorization: Bearer T``, or the cookie a
  browser gets by opening ``/?token=T`` once (the URL ``mindloop ui`` prints)
  or by posting the token to ``/login``. The cookie is HttpOnly and
  SameSite=Strict and holds an HMAC of the token, not the token.
- **DNS rebinding.** Without a token (loopback only) the ``Host`` header must
  name a loopback host, so a page on ``evil.example`` that re-resolves to
  127.0.0.1 gets a 400, not the data.
- **Cross-site requests (CSRF).** Every state-changing request (POST, PUT,
  PATCH, DELETE) must carry the UI's CSRF token: the hidden field of its
  forms, or the ``X-CSRF-Token`` header for API clients (``GET /api/csrf``
  tells it; another site cannot read it). Requests authenticated by an
  ``Authorization`` header are exempt: a browser never adds one on its own.
  An ``Origin`` that is not the UI's own, or ``Sec-Fetch-Site: cross-site``,
  is refused outright.
- **Headers.** Every response carries a Content-Security-Policy that allows
  scripts, styles and images from the UI itself only (so even markup that
  slipped through escaping could not run), ``nosniff``, no framing, and no
  referrer to other sites.

Templates escape every user and model text (Jinja2 autoescape); data for
the charts travels as JSON in ``<script type="application/json">`` blocks
(``tojson`` escapes ``<``, ``>``, ``&`` and ``'``) and is drawn on canvases.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlencode, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from mindloop.agents.ui.config import UIConfig, is_loopback

__all__ = ["COOKIE", "CSP", "Guard"]

COOKIE = "mindloop_ui"
# Cytoscape.js inserts one fixed <style> element (its container rules); its hash is allowed, no other inline style.
_CYTOSCAPE_STYLE = "'sha256-pgvDUBa4IjFA2yuSJ2cqcyxmNYJMborsd0ORcRv9vw8='"
CSP = (f"default-src 'none'; script-src 'self'; style-src 'self' {_CYTOSCAPE_STYLE}; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
_PUBLIC = ("/static/", "/healthz", "/login")


class Guard:
    """The UI's access and CSRF checks, as one HTTP middleware plus :meth:`check_csrf` for handlers."""

    def __init__(self, config: UIConfig, *, csrf_token: str | None = None) -> None:
        self.config = config
        self.csrf_token = csrf_token or secrets.token_urlsafe(32)
        self._cookie = (hmac.new(config.token.encode(), b"mindloop-ui-session", hashlib.sha256).hexdigest()
                        if config.token else None)

    # -- checks ----------------------------------------------------------------------

    def token_ok(self, given: str | None) -> bool:
        if not self.config.token or not given:
            return False
        return hmac.compare_digest(given.encode(), self.config.token.encode())

    def _bearer(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        return auth.startswith("Bearer ") and self.token_ok(auth[7:])

    def authenticated(self, request: Request) -> bool:
        if not self.config.token:
            return True
        cookie = request.cookies.get(COOKIE, "")
        if self._bearer(request):
            return True
        return bool(cookie) and hmac.compare_digest(cookie.encode(), (self._cookie or "").encode())

    def _host_ok(self, request: Request) -> bool:
        if self.config.token:
            return True  # the token guards; the host may be any name of this machine
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return is_loopback(name)

    def _cross_site(self, request: Request) -> str | None:
        """Why an unsafe request comes from another site, or None."""
        if request.headers.get("sec-fetch-site") == "cross-site":
            return "Sec-Fetch-Site says the request comes from another site"
        origin = request.headers.get("origin")
        if origin is not None:
            if origin == "null" or urlsplit(origin).netloc != request.headers.get("host", ""):
                return f"Origin {origin!r} is not this UI"
        return None

    def check_csrf(self, request: Request, given: str | None) -> bool:
        """True when an unsafe request may go ahead: bearer-authenticated, or carrying the CSRF token."""
        if self._bearer(request):
            return True
        given = given or request.headers.get("x-csrf-token")
        return bool(given) and hmac.compare_digest(given.encode(), self.csrf_token.encode())  # type: ignore

    # -- the middleware --------------------------------------------------------------

    @staticmethod
    def _deny(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"detail": message}, status_code=status)
        from html import escape

        login = ('<form method="post" action="/login"><label>Token <input name="token" type="password" autofocus>'
                 "</label> <button>Open</button></form>") if status == 401 else ""
        return HTMLResponse(f'<!doctype html><html lang="en"><meta charset="utf-8"><title>mindloop: {status}</title>'
                            f'<link rel="stylesheet" href="/static/ui.css"><link rel="icon" href="/static/favicon.svg">'
                            f'<main class="narrow"><h1>{status}</h1>'
                            f"<p>{escape(message)}</p>{login}</main></html>", status_code=status)

    async def __call__(self, request: Request, call_next) -> Response:
        if not self._host_ok(request):
            response = self._deny(request, 400, f"Host {request.headers.get('host')!r} is not a loopback name; "
                                                 "open the UI at http://127.0.0.1:PORT/")
        elif request.method in _UNSAFE and (why := self._cross_site(request)):
            response = self._deny(request, 403, f"cross-site request refused: {why}")
        elif self.config.token and request.query_params.get("token") is not None:
            response = self._login(request, request.query_params["token"])
        elif not self.authenticated(request) and not request.url.path.startswith(_PUBLIC):
            response = self._deny(request, 401, "this UI needs its token: open the URL `mindloop ui` printed "
                                                 "(it ends in ?token=...), or enter the token")
        else:
            response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        # not no-referrer: with it Chromium sends "Origin: null" on the UI's own form posts
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store" if not request.url.path.startswith("/static/")
                                    else "max-age=3600")
        return response

    def _login(self, request: Request, token: str) -> Response:
        """A right token sets the cookie and sends the browser to the same URL without it."""
        if not self.token_ok(token):
            return self._deny(request, 401, "wrong token")
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
        return self.login_response(target)

    def login_response(self, target: str) -> Response:
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, self._cookie or "", httponly=True, samesite="strict", path="/")
        return response
