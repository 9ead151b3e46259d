"""The UI in a real browser: Debian's headless Chromium driven by Playwright, over demo-like data.

Every page loads without a console error or a Content-Security-Policy violation
and draws its charts and graph; a flag confirmed by clicking stays confirmed
after a reload; a run opened from the list draws its loss curve; planted
script never runs. Screenshots go to ``$MINDLOOP_UI_ARTIFACTS`` (default: the
pytest temporary folder, printed in the report header of the module); with
``MINDLOOP_UI_SCREENSHOTS=docs/screenshots`` they also refresh the README's.

``make test`` installs ``chromium`` first when it can (``apt-get``, as root);
without it these tests skip, saying so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mindloop.agents.ui import create_app

from .conftest import OBSERVER_REPORT, LiveServer

CHROMIUM = os.environ.get("MINDLOOP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"no Chromium at {CHROMIUM}: `apt-get install -y chromium chromium-driver` (what `make test` tries as "
           "root) or set MINDLOOP_CHROMIUM to a Chromium binary")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is in the dev extra: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = Path(os.environ.get("MINDLOOP_UI_ARTIFACTS") or tmp_path_factory.mktemp("ui-screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def site(demo):
    g, facts = demo
    with LiveServer(create_app(g, observer=lambda graph, checkpoints, scope: OBSERVER_REPORT)) as server:
        yield server, g, facts


class Watched:
    """A page that records console errors, page errors and dialogs (a dialog means script ran)."""

    def __init__(self, browser) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 800})
        self.page.set_default_timeout(10_000)  # a failure should not eat the suite's minute
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))

    def open(self, url: str) -> None:
        response = self.page.goto(url)
        assert response is not None and response.status == 200, f"{url}: {response and response.status}"
        self.page.wait_for_load_state("load")

    def painted(self, selector: str) -> int:
        """Non-transparent pixels over every canvas matched by ``selector``."""
        return self.page.evaluate("""(sel) => {
            let n = 0;
            for (const c of document.querySelectorAll(sel)) {
                if (!c.width || !c.height) continue;
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
            }
            return n; }""", selector)


def _shoot(w: Watched, artifacts: Path, name: str) -> None:
    w.page.screenshot(path=str(artifacts / f"{name}.png"))
    docs = os.environ.get("MINDLOOP_UI_SCREENSHOTS")
    if docs:
        Path(docs).mkdir(parents=True, exist_ok=True)
        w.page.screenshot(path=str(Path(docs) / f"{name}.png"))


def _pages(facts: dict) -> dict[str, tuple[str, str | None]]:
    """name -> (path, what must be drawn there)."""
    return {"flags": ("/flags", None), "flag": (f"/flags/{facts['edited']}", None),
            "patterns": ("/patterns", "canvas[data-chart=timeline]"),
            "graph": (f"/graph?node={facts['edited']}", "#cy canvas"),
            "runs": ("/runs", None), "run": (f"/runs/{facts['runs'][1]}", "canvas[data-chart=loss]"),
            "observer": ("/observer", "canvas[data-chart=rates]")}


@pytest.mark.parametrize("name", list(_pages({"edited": "", "runs": ["", ""]})))
def test_every_page_loads_and_draws(browser, site, artifacts, name):
    server, _, facts = site
    path, drawn = _pages(facts)[name]
    w = Watched(browser)
    try:
        w.open(server.url + path)
        assert w.page.locator("h1").first.is_visible()
        if drawn:
            w.page.wait_for_selector(drawn.split(" ")[0] + "[data-drawn='1']" if "[data-chart" in drawn
                                     else "#cy[data-drawn='1']")
            assert w.painted(drawn) > 500, f"{name}: {drawn} is blank"
        _shoot(w, artifacts, name)
        assert w.problems == []  # no script error, no CSP violation, no missing asset
    finally:
        w.page.close()


def test_confirming_a_flag_by_clicking_persists(browser, site, artifacts):
    server, g, facts = site
    target = next(f for f in facts["flags"] if g.get(f).status == "new")
    w = Watched(browser)
    try:
        w.open(f"{server.url}/flags?status=new")
        row = w.page.locator(f"tr[data-flag='{target}']")
        row.get_by_role("button", name="Confirm").click()
        w.page.wait_for_url(f"{server.url}/flags?status=new")  # back where the reviewer was, after the POST
        assert w.page.locator(f"tr[data-flag='{target}']").count() == 0  # no longer new
        assert g.get(target).status == "confirmed"  # written at once
        w.open(f"{server.url}/flags/{target}")
        w.page.reload()
        assert w.page.locator("h1 .badge").inner_text() == "confirmed"
        assert w.page.get_by_role("button", name="Confirm").is_disabled()
        assert w.problems == []
    finally:
        w.page.close()


def test_editing_the_better_response_in_the_page(browser, site):
    server, g, facts = site
    target = facts["rejected"]
    w = Watched(browser)
    try:
        w.open(f"{server.url}/flags/{target}")
        w.page.locator("summary").click()
        w.page.locator("textarea[name=response]").fill("Here it is, renamed as asked.")
        w.page.get_by_role("button", name="Save and confirm").click()
        w.page.wait_for_url(f"{server.url}/flags/{target}")
        w.page.reload()
        assert w.page.locator(".turn.better .text").inner_text() == "Here it is, renamed as asked."
        assert w.page.locator("h1 .badge").inner_text() == "confirmed"
        assert g.get(target).better_response == "Here it is, renamed as asked."
    finally:
        w.page.close()


def test_a_run_opened_from_the_list_draws_its_loss_curve(browser, site):
    server, _, facts = site
    w = Watched(browser)
    try:
        w.open(f"{server.url}/runs")
        with w.page.expect_navigation():
            w.page.get_by_role("link", name=facts["runs"][0], exact=True).first.click()
        w.page.wait_for_selector("canvas[data-chart=loss][data-drawn='1']")
        assert w.painted("canvas[data-chart=loss]") > 500
        assert w.page.locator("table.eval").inner_text().count("push-back retention") == 1
        with w.page.expect_navigation():  # an example links back to the turn it came from
            w.page.locator("table.examples a", has_text="turn").first.click()
        assert "/graph?node=turn_" in w.page.url
        w.page.wait_for_selector("#cy[data-drawn='1']")
        assert w.problems == []
    finally:
        w.page.close()


def test_planted_script_never_runs(browser, attacked):
    g, facts = attacked
    pages = ["/flags", f"/flags/{facts['edited']}", "/patterns", f"/graph?node={facts['user_turn']}",
             f"/graph?node={facts['pattern']}", "/runs", f"/runs/{facts['runs'][0]}", "/observer"]
    with LiveServer(create_app(g)) as server:
        w = Watched(browser)
        try:
            for path in pages:
                w.open(server.url + path)
                assert w.page.evaluate("typeof window.__pwned") == "undefined", path
                assert w.page.locator("img, svg, iframe").count() == 0, path
            assert w.problems == []
        finally:
            w.page.close()
