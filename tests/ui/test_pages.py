"""The HTML pages over demo-like data: what they show, the review forms, errors as pages."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from mindloop.agents.ui import create_app

from .conftest import OBSERVER_REPORT

HTML = {"accept": "text/html"}
CSRF = "c" * 32


@pytest.fixture(scope="module")
def client(demo):
    g, _ = demo
    with TestClient(create_app(g, csrf_token=CSRF), base_url="http://127.0.0.1:8765", headers=HTML) as c:
        yield c


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr data-flag="([^"]+)"', html)


def test_the_queue_page_lists_and_filters(client, demo):
    g, facts = demo
    page = client.get("/flags").text
    assert set(_rows(page)) == set(facts["flags"])
    assert _escaped(g.get(g.get(facts["edited"]).correction).text) in page
    confirmed = _rows(client.get("/flags", params={"status": "confirmed", "min_confidence": ""}).text)
    assert confirmed and all(g.get(f).status == "confirmed" for f in confirmed)
    high = _rows(client.get("/flags", params={"min_confidence": "0.8"}).text)
    assert set(high) == {f for f in facts["flags"] if g.get(f).confidence >= 0.8}
    bad = client.get("/flags", params={"min_confidence": "lots"})
    assert bad.status_code == 400 and "min_confidence must be a number" in bad.text and "<html" in bad.text


def test_a_flag_page_shows_everything_a_reviewer_needs(client, demo):
    g, facts = demo
    flag = g.get(facts["edited"])
    page = client.get(f"/flags/{flag.id}").text
    for text in (g.get(flag.turn).text, g.get(flag.correction).text, flag.better_response, *flag.evidence):
        assert _escaped(text) in page
    assert 'name="csrf_token" value="' + CSRF in page and 'value="confirm"' in page and 'value="reject"' in page
    assert 'name="response"' in page and f"/graph?node={flag.turn}" in page
    missing = client.get("/flags/flag_nope")
    assert missing.status_code == 404 and "no node with id" in missing.text and "<html" in missing.text


def _escaped(text: str) -> str:
    """``text`` as the templates write it (Jinja2's autoescape)."""
    from markupsafe import escape

    return str(escape(text))


def test_review_forms_write_at_once_and_go_back(client, demo):
    g, facts = demo
    target = next(f for f in facts["flags"] if g.get(f).status == "new")
    r = client.post(f"/flags/{target}/review", follow_redirects=False,
                    data={"action": "confirm", "csrf_token": CSRF, "next": "/flags?status=new"})
    assert r.status_code == 303 and r.headers["location"] == "/flags?status=new"
    assert g.get(target).status == "confirmed"
    r = client.post(f"/flags/{target}/review", follow_redirects=False,
                    data={"action": "edit", "response": "Renamed, nothing else.", "csrf_token": CSRF})
    assert r.headers["location"] == f"/flags/{target}" and g.get(target).better_response == "Renamed, nothing else."
    assert "Renamed, nothing else." in client.get(f"/flags/{target}").text


@pytest.mark.parametrize("form, status", [({"action": "reject"}, 403), ({"action": "reject", "csrf_token": "x"}, 403),
                                          ({"action": "delete", "csrf_token": CSRF}, 400),
                                          ({"action": "edit", "response": " ", "csrf_token": CSRF}, 400)])
def test_a_bad_review_form_changes_nothing(client, demo, form, status):
    g, facts = demo
    target = facts["edited"]
    before = g.get(target).to_json()
    r = client.post(f"/flags/{target}/review", data=form, follow_redirects=False)
    assert r.status_code == status
    assert g.get(target).to_json() == before


def test_review_never_redirects_off_site(client, demo):
    _, facts = demo
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        r = client.post(f"/flags/{facts['edited']}/review", follow_redirects=False,
                        data={"action": "confirm", "csrf_token": CSRF, "next": evil})
        assert r.status_code == 303 and r.headers["location"] == f"/flags/{facts['edited']}"


def test_a_form_must_be_urlencoded_and_small(client, demo):
    _, facts = demo
    assert client.post(f"/flags/{facts['edited']}/review", json={"action": "confirm"}).status_code == 415
    big = client.post(f"/flags/{facts['edited']}/review",
                      data={"action": "edit", "csrf_token": CSRF, "response": "x" * (1024 * 1024 + 1)})
    assert big.status_code == 413


def test_the_patterns_page_has_size_readiness_and_chart_data(client, demo):
    g, facts = demo
    page = client.get("/patterns").text
    pattern = g.get(facts["pattern"])
    assert _escaped(pattern.name) in page and 'data-chart="timeline"' in page
    assert "not ready" in page and "waiting for:" in page
    assert f'/flags?pattern={facts["pattern"]}' in page


def test_the_graph_page_searches_and_draws_neighbourhoods(client, demo):
    g, facts = demo
    found = client.get("/graph", params={"q": "retry_count"}).text
    assert "hit(s) for" in found and "retry_count" in found
    page = client.get("/graph", params={"node": facts["edited"]}).text
    assert 'id="cy"' in page and 'id="hood-data"' in page and "/static/vendor/cytoscape.min.js" in page
    assert f'/graph?node={g.get(facts["edited"]).turn}' in page  # the edges table links every neighbour
    assert client.get("/graph", params={"node": "nope"}).status_code == 404


def test_the_runs_pages(client, demo):
    _, facts = demo
    page = client.get("/runs").text
    for run in [*facts["runs"], facts["killed"]]:
        assert f"/runs/{run}" in page
    assert "disk only" in page and facts["checkpoints"][0] in page
    run = client.get(f"/runs/{facts['runs'][1]}").text
    assert 'data-chart="loss"' in run and "push-back retention" in run and "Checkpoint lineage" in run
    assert client.get(f"/runs/{facts['runs'][0]}/loss.png").status_code == 404  # the fake run drew none


def test_the_loss_image_is_served_when_the_trainer_drew_it(client, demo):
    g, facts = demo
    png = g.config.home / "runs" / facts["runs"][0] / "loss.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n fake")
    try:
        r = client.get(f"/runs/{facts['runs'][0]}/loss.png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG")
        page = client.get(f"/runs/{facts['runs'][0]}").text
        assert f"/runs/{facts['runs'][0]}/loss.png\">the trainer's loss.png" in page
    finally:
        png.unlink()


def test_the_observer_page(demo):
    g, _ = demo
    app = create_app(g, observer=lambda graph, checkpoints, scope: OBSERVER_REPORT)
    with TestClient(app, base_url="http://127.0.0.1:8765", headers=HTML) as c:
        page = c.get("/observer").text
    assert "Checkpoint in use" in page and "ckpt_a" in page and 'data-chart="rates"' in page
    assert "trained pattern recurred: p1" in page and "Rollback history" in page
    assert "&lt;b&gt;over&lt;/b&gt;" in page  # an alert's message is text, not markup
    assert page.count('class="alert-open"') == 1


def test_the_observer_page_without_surface_observe(demo):
    g, facts = demo
    from mindloop.agents.ui.inspector import fallback_report

    app = create_app(g, observer=fallback_report)
    with TestClient(app, base_url="http://127.0.0.1:8765", headers=HTML) as c:
        page = c.get("/observer").text
    assert facts["checkpoints"][0] in page and "no windows yet" in page and "trained pattern recurred" in page
