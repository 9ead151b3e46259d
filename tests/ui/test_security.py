"""The UI's security: loopback by default, a token elsewhere, no cross-site writes, no live markup from data."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from mindloop.agents.ui import UIConfig, create_app
from mindloop.agents.ui.security import CSP
from mindloop.graph import ConfigError

from .conftest import PAYLOADS

BASE = "http://127.0.0.1:8765"
TOKEN = "correct-horse-battery"
HTML = {"accept": "text/html"}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_token(host):
    UIConfig(host=host).check_bind()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.org"])
def test_any_other_address_refuses_to_start_without_a_token(host):
    with pytest.raises(ConfigError, match=f"refusing to listen on {host} without a token"):
        UIConfig(host=host).check_bind()
    UIConfig(host=host, token=TOKEN).check_bind()


def test_config_rejects_bad_values_naming_them():
    with pytest.raises(ConfigError, match="ui.port"):
        UIConfig(port=70000)
    with pytest.raises(ConfigError, match="at least 8 characters"):
        UIConfig(token="short")
    assert UIConfig(host="0.0.0.0", token=TOKEN, port=9000).url(with_token=True) == \
        f"http://127.0.0.1:9000/?token={TOKEN}"


@pytest.fixture(scope="module")
def open_client(demo):
    g, _ = demo
    with TestClient(create_app(g, csrf_token="k" * 32), base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def token_client(demo):
    g, _ = demo
    with TestClient(create_app(g, UIConfig(host="0.0.0.0", token=TOKEN)), base_url="http://10.0.0.5:8765") as c:
        yield c


def test_with_a_token_nothing_is_served_without_it(token_client):
    token_client.cookies.clear()
    assert token_client.get("/api/flags").status_code == 401
    page = token_client.get("/flags", headers=HTML)
    assert page.status_code == 401 and 'name="token"' in page.text  # a form to enter it
    assert token_client.get("/api/flags", headers={"Authorization": "Bearer wrong-token-x"}).status_code == 401
    assert token_client.get("/flags", params={"token": "wrong-token-x"}).status_code == 401
    assert token_client.get("/static/ui.css").status_code == 200  # assets carry no data
    assert token_client.get("/healthz").json() == {"status": "ok"}


def test_a_bearer_token_opens_the_api(token_client):
    token_client.cookies.clear()
    r = token_client.get("/api/flags", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["total"] > 0


def test_opening_the_printed_url_sets_a_cookie_and_drops_the_token_from_the_address(token_client):
    token_client.cookies.clear()
    r = token_client.get("/flags", params={"status": "new", "token": TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/flags?status=new"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    assert token_client.get("/flags", headers=HTML).status_code == 200
    token_client.cookies.clear()
    r = token_client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and token_client.get("/api/runs").status_code == 200
    token_client.cookies.clear()
    assert token_client.post("/login", data={"token": "nope-nope-nope"}).status_code == 401


def test_without_a_token_only_loopback_host_names_are_served(open_client):
    """A page on evil.example that re-resolves its name to 127.0.0.1 (DNS rebinding) gets nothing."""
    r = open_client.get("/api/flags", headers={"host": "evil.example:8765"})
    assert r.status_code == 400 and "not a loopback name" in r.json()["detail"]
    assert open_client.get("/api/flags", headers={"host": "localhost:8765"}).status_code == 200
    assert open_client.get("/api/flags", headers={"host": "[::1]:8765"}).status_code == 200


def test_state_changes_need_the_csrf_token(open_client, demo):
    g, facts = demo
    target = facts["edited"]
    before = g.get(target).status
    assert open_client.post(f"/api/flags/{target}/reject").status_code == 403
    assert open_client.post(f"/api/flags/{target}/reject", headers={"X-CSRF-Token": "guess"}).status_code == 403
    assert g.get(target).status == before
    token = open_client.get("/api/csrf").json()["csrf_token"]
    assert token == "k" * 32
    assert open_client.post(f"/api/flags/{target}/confirm", headers={"X-CSRF-Token": token}).status_code == 200


@pytest.mark.parametrize("headers", [{"origin": "https://evil.example"}, {"origin": "null"},
                                     {"sec-fetch-site": "cross-site"}])
def test_cross_site_writes_are_refused_even_with_the_csrf_token(open_client, demo, headers):
    g, facts = demo
    before = g.get(facts["rejected"]).status
    r = open_client.post(f"/api/flags/{facts['rejected']}/confirm", headers={"X-CSRF-Token": "k" * 32, **headers})
    assert r.status_code == 403 and "cross-site" in r.json()["detail"]
    assert g.get(facts["rejected"]).status == before


def test_same_origin_writes_pass(open_client, demo):
    _, facts = demo
    r = open_client.post(f"/api/flags/{facts['edited']}/confirm",
                         headers={"X-CSRF-Token": "k" * 32, "origin": BASE, "sec-fetch-site": "same-origin"})
    assert r.status_code == 200


def test_bearer_clients_need_no_csrf_token(token_client, demo):
    g, facts = demo
    token_client.cookies.clear()
    r = token_client.post(f"/api/flags/{facts['edited']}/confirm", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    token_client.get("/flags", params={"token": TOKEN})  # a browser session: the cookie alone does not do
    assert token_client.post(f"/api/flags/{facts['edited']}/confirm").status_code == 403


def test_every_response_carries_the_security_headers(open_client):
    for path in ("/flags", "/api/flags", "/static/ui.js", "/nowhere"):
        r = open_client.get(path, headers=HTML)
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP and "frame-ancestors 'none'" in CSP


class _Markup(HTMLParser):
    """Every element and attribute of a page, and the text of each <script>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self._in: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "script":
            self._in = attrs
            self.scripts.append((attrs, ""))

    def handle_data(self, data):
        if self._in is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = None


def _pages(facts: dict) -> list[str]:
    return ["/flags", f"/flags/{facts['edited']}", "/patterns", f"/graph?node={facts['edited']}",
            f"/graph?node={facts['pattern']}", f"/graph?node={facts['alert']}", f"/graph?node={facts['user_turn']}",
            "/graph?q=" + quote(PAYLOADS[0] + " " + PAYLOADS[2]), "/runs", f"/runs/{facts['runs'][0]}", "/observer"]


def test_planted_script_and_html_never_become_markup(attacked):
    """Payloads planted in turns, flags (evidence, better response), a pattern's name, a run's config and an
    alert come back as text: no script of theirs, no event handler, no element they add."""
    g, facts = attacked
    with TestClient(create_app(g), base_url=BASE, headers=HTML) as c:
        for path in _pages(facts):
            r = c.get(path)
            assert r.status_code == 200, path
            html = r.text
            assert "window.__pwned" in html, f"{path}: the payload should be on the page, as text"
            for payload in PAYLOADS[:4]:
                assert payload not in html, f"{path}: {payload!r} is in the page unescaped"
            if "7*7" in html:
                assert "{{ 7*7 }}" in html, f"{path}: template syntax in data must be shown as typed"
            page = _Markup()
            page.feed(html)
            for tag, attrs in page.tags:
                assert tag not in ("img", "svg", "iframe", "object"), f"{path}: a planted <{tag}>"
                assert not [a for a in attrs if a.startswith("on")], f"{path}: event handler on <{tag}>"
                for a in ("href", "src", "action"):
                    assert not (attrs.get(a) or "").lower().startswith("javascript:"), f"{path}: {a}={attrs[a]}"
            for attrs, text in page.scripts:
                if attrs.get("type") == "application/json":
                    assert "<" not in text and ">" not in text, f"{path}: markup inside a JSON block"
                else:
                    assert attrs.get("src", "").startswith("/static/") and not text.strip(), f"{path}: {attrs}"
