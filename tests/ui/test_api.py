"""The JSON API over demo-like data: what each endpoint returns, review writes at once, errors are 4xx."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from mindloop.agents.ui import UIConfig, create_app
from mindloop.agents.ui.inspector import evaluation_rows, fallback_report
from mindloop.trainer.checkpoints import Checkpoints

from .conftest import OBSERVER_REPORT

BASE = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def client(demo):
    g, _ = demo
    with TestClient(create_app(g, csrf_token="t" * 32), base_url=BASE) as c:
        yield c


CSRF = {"X-CSRF-Token": "t" * 32}


def test_the_queue_lists_flags_newest_first_with_their_texts(client, demo):
    g, facts = demo
    data = client.get("/api/flags").json()
    assert data["total"] == len(facts["flags"]) == data["shown"]
    created = [f["created"] for f in data["flags"]]
    assert created == sorted(created, reverse=True)
    edited = next(f for f in data["flags"] if f["id"] == facts["edited"])
    flag = g.get(facts["edited"])
    assert edited["reply"] == g.get(flag.turn).text and edited["correction"] == g.get(flag.correction).text
    assert edited["edited"] is True and edited["patterns"][0]["id"] == facts["pattern"]


def test_the_queue_filters_by_status_pattern_and_confidence(client, demo):
    g, facts = demo
    everything = client.get("/api/flags").json()["flags"]
    confirmed = client.get("/api/flags", params={"status": "confirmed"}).json()["flags"]
    assert confirmed and {f["status"] for f in confirmed} == {"confirmed"}
    assert len(confirmed) == sum(f["status"] == "confirmed" for f in everything)
    sure = client.get("/api/flags", params={"min_confidence": 0.75, "max_confidence": 0.9}).json()["flags"]
    assert sure and all(0.75 <= f["confidence"] <= 0.9 for f in sure)
    assert len(sure) == sum(0.75 <= f["confidence"] <= 0.9 for f in everything)
    mine = client.get("/api/flags", params={"pattern": facts["pattern"]}).json()
    members = {e.src for e in g.edges(facts["pattern"], kinds=["member_of"], direction="in")}
    assert {f["id"] for f in mine["flags"]} == members and 0 < len(members) < len(everything)
    by_name = client.get("/api/flags", params={"pattern": g.get(facts["pattern"]).name}).json()
    assert by_name["filters"]["pattern"] == facts["pattern"]


@pytest.mark.parametrize("params, status", [({"status": "maybe"}, 422), ({"min_confidence": 2}, 422),
                                            ({"pattern": "no such pattern"}, 404)])
def test_bad_queue_filters_are_4xx_naming_the_problem(client, params, status):
    r = client.get("/api/flags", params=params)
    assert r.status_code == status
    if status == 404:
        assert "no such pattern" in r.json()["detail"] and "patterns:" in r.json()["detail"]


def test_a_flag_has_window_reply_correction_evidence_and_similar_flags(client, demo):
    g, facts = demo
    info = client.get(f"/api/flags/{facts['edited']}").json()
    flag = g.get(facts["edited"])
    assert info["flagged"] == g.get(flag.turn).text and info["correction"] == g.get(flag.correction).text
    assert info["window"] and info["window"][-1]["role"] == "user"
    assert info["flag"]["evidence"] == flag.evidence and info["flag"]["confidence"] == flag.confidence
    similar = {e.dst if e.src == flag.id else e.src for e in g.edges(flag.id, kinds=["similar_to"])}
    assert info["similar"] and {s["id"] for s in info["similar"]} <= similar
    assert all(s["href"] == f"/flags/{s['id']}" for s in info["similar"])
    assert client.get("/api/flags/flag_nope").status_code == 404
    turn = client.get(f"/api/flags/{flag.turn}")
    assert turn.status_code == 404 and "not a flag" in turn.json()["detail"]


def test_review_writes_at_once_through_the_signal_agent(client, demo):
    g, facts = demo
    target = next(f for f in facts["flags"] if g.get(f).status == "new")
    r = client.post(f"/api/flags/{target}/reject", headers=CSRF)
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    assert g.get(target).status == "rejected"
    r = client.post(f"/api/flags/{target}/confirm", headers=CSRF)
    assert r.json()["status"] == "confirmed" and g.get(target).status == "confirmed"
    r = client.post(f"/api/flags/{target}/edit", headers=CSRF, json={"response": "Done: renamed it."})
    assert r.status_code == 200 and g.get(target).better_response == "Done: renamed it."
    assert client.post(f"/api/flags/{target}/edit", headers=CSRF, json={"response": ""}).status_code == 422
    assert client.post(f"/api/flags/{target}/edit", headers=CSRF, json={"response": "   "}).status_code == 400
    assert client.post("/api/flags/flag_nope/confirm", headers=CSRF).status_code == 404


def test_patterns_have_size_readiness_and_a_timeline_with_promotions_and_rollbacks(client, demo):
    g, facts = demo
    data = client.get("/api/patterns").json()
    p = next(p for p in data["patterns"] if p["id"] == facts["pattern"])
    members = [g.get(e.src) for e in g.edges(facts["pattern"], kinds=["member_of"], direction="in")]
    live = [f for f in members if f.status != "rejected"]
    assert p["flags"] == len(live)
    assert sum(b["flags"] for b in p["timeline"]["bins"]) == len(live)
    events = [(e["event"], e["checkpoint"]) for e in p["timeline"]["events"]]
    first, second = facts["checkpoints"]
    # the promotion a rollback makes is folded into the rollback
    assert events == [("promote", first), ("promote", second), ("rollback", second)]
    assert all(e["this_pattern"] for e in p["timeline"]["events"])
    r = p["readiness"]
    assert r["ready"] is False and r["waiting_for"] and r["confirmed"] == sum(f.status == "confirmed" for f in members)
    assert p["runs"] == facts["runs"]


def test_readiness_is_the_schedulers_rule_with_its_settings(demo):
    from mindloop.agents.cycle.scheduler import SchedulerConfig
    from mindloop.agents.cycle.service import readiness

    g, facts = demo
    config = SchedulerConfig(min_flags=2, cooldown_s=0, idle_s=0)
    app = create_app(g, UIConfig(), scheduler=config)
    with TestClient(app, base_url=BASE) as c:
        data = c.get("/api/patterns").json()
    p = next(p for p in data["patterns"] if p["id"] == facts["pattern"])
    r = p["readiness"]
    assert (data["min_flags"], data["cooldown_s"]) == (2, 0)
    assert r["source"] == "scheduler" and r["needed"] == 2 and r["confirmed"] >= 2
    assert r["ready"] is False and r["waiting_for"] == ["1 open alert(s)"]  # the demo's alert is still open
    (row,) = [row for row in readiness(g, config) if row.pattern == facts["pattern"]]
    assert (r["ready"], r["waiting_for"], r["confirmed"], r["untrained_flags"], r["plan"]) == (
        row.ripe, row.waiting_for, row.confirmed, row.untrained, row.plan)


@pytest.mark.parametrize("key, replacement", [("ripe_flags", "[scheduler] min_flags"),
                                              ("cooldown_h", "[scheduler] cooldown_s")])
def test_a_config_that_still_sets_the_uis_readiness_names_the_schedulers_setting(tmp_path, key, replacement):
    from mindloop.graph import ConfigError, load_config

    (tmp_path / "config.toml").write_text(f"[ui]\n{key} = 3\n")
    with pytest.raises(ConfigError, match=re.escape(replacement)):
        load_config(UIConfig, "ui", file=tmp_path / "config.toml")


def test_a_neighbourhood_has_labelled_linked_nodes_and_edges(client, demo):
    g, facts = demo
    data = client.get(f"/api/graph/nodes/{facts['edited']}").json()
    ids = {n["id"] for n in data["nodes"]}
    flag = g.get(facts["edited"])
    assert {facts["edited"], flag.turn, facts["pattern"]} <= ids
    assert {"source": facts["edited"], "target": flag.turn, "kind": "flags"} in data["edges"]
    assert all(e["source"] in ids and e["target"] in ids for e in data["edges"])
    centre = next(n for n in data["nodes"] if n["id"] == facts["edited"])
    assert centre["depth"] == 0 and all(n["depth"] == 1 for n in data["nodes"] if n["id"] != facts["edited"])
    turn = next(n for n in data["nodes"] if n["id"] == flag.turn)
    assert turn["href"] == f"/graph?node={flag.turn}" and turn["label"].startswith("assistant: ")
    assert data["node"]["record"]["better_response"] == flag.better_response
    two = client.get(f"/api/graph/nodes/{facts['edited']}", params={"hops": 2}).json()
    assert len(two["nodes"]) > len(data["nodes"])
    assert client.get(f"/api/graph/nodes/{facts['edited']}", params={"hops": 9}).status_code == 422
    assert client.get("/api/graph/nodes/nothing_here").status_code == 404


def test_search_uses_the_graphs_hybrid_search(client, demo):
    g, _ = demo
    data = client.get("/api/search", params={"q": "rename tmp to retry_count", "k": 5}).json()
    expected = [h.node.id for h in g.search("rename tmp to retry_count", 5)]
    assert [h["id"] for h in data["hits"]] == expected and expected
    assert client.get("/api/search", params={"q": ""}).status_code == 422
    assert client.get("/api/search", params={"q": "x", "kind": "nonsense"}).status_code == 422
    only = client.get("/api/search", params={"q": "rename", "kind": "flag"}).json()["hits"]
    assert only and {h["kind"] for h in only} == {"flag"}


def test_runs_list_the_recorded_and_the_killed(client, demo):
    g, facts = demo
    runs = {r["id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert set(runs) == {*facts["runs"], facts["killed"]}
    assert runs[facts["killed"]]["in_graph"] is False and runs[facts["killed"]]["status"].startswith("failed")
    assert runs[facts["runs"][0]]["checkpoint"] == facts["checkpoints"][0]
    assert runs[facts["runs"][0]]["pattern_name"] == g.get(facts["pattern"]).name
    assert runs[facts["runs"][0]]["final_loss"] == pytest.approx(2.4 * 0.88 ** 30 + 0.3, abs=1e-3)


def test_a_run_has_its_loss_curve_eval_table_examples_and_lineage(client, demo):
    g, facts = demo
    run = client.get(f"/api/runs/{facts['runs'][1]}").json()
    assert [s["step"] for s in run["steps"]] == list(range(1, 31))
    rows = {r["metric"]: r for r in run["evaluation"]}
    assert rows["target margin"]["before"] == -0.35 and rows["target margin"]["change"] == pytest.approx(0.76)
    assert rows["push-back retention"]["after"] == pytest.approx(1.16 / 1.2, abs=1e-4)
    assert rows["perplexity drift"]["after"] == pytest.approx(18.6 / 18.4 - 1, abs=1e-4)
    assert {"capability win rate", "perplexity"} <= set(rows)
    assert len(run["examples"]) == 4 and run["examples"][0]["kind"] == "accept"
    accept = run["examples"][0]
    kinds = {d["kind"] for d in accept["derived_from"]}
    assert {"flag", "turn"} <= kinds
    flag = next(d for d in accept["derived_from"] if d["kind"] == "flag")
    assert flag["href"] == f"/flags/{flag['id']}" and g.get(flag["id"]).kind == "flag"
    lineage = [(c["id"], c["relation"], c["in_use"], c["status"]) for c in run["lineage"]]
    first, second = facts["checkpoints"]
    assert lineage == [(first, "ancestor", True, "promoted"), (second, "this", False, "rolled_back")]
    older = client.get(f"/api/runs/{facts['runs'][0]}").json()
    assert [(c["id"], c["relation"]) for c in older["lineage"]] == [(first, "this"), (second, "child")]


def test_a_killed_run_reads_what_it_left(client, demo):
    _, facts = demo
    run = client.get(f"/api/runs/{facts['killed']}").json()
    assert run["in_graph"] is False and run["steps"] == [{"step": 1, "loss": 0.69}]  # the torn line is skipped
    assert run["evaluation"] == [] and run["lineage"] == [] and run["config"]["objective"] == "dpo"
    for bad in ("run_missing", "..", ".hidden", "a b"):
        assert client.get(f"/api/runs/{bad}").status_code == 404


def test_checkpoints_name_the_one_in_use_and_the_history(client, demo):
    _, facts = demo
    data = client.get("/api/checkpoints").json()
    first, second = facts["checkpoints"]
    assert data["in_use"] == first
    assert {c["id"]: c["status"] for c in data["checkpoints"]} == {first: "promoted", second: "rolled_back"}
    assert [e["event"] for e in data["history"]] == ["promote", "promote", "rollback"]
    assert data["history"][-1]["to"] == first  # one event: the rollback to the parent


def test_the_observer_shows_surface_observes_report(demo):
    g, _ = demo
    with TestClient(create_app(g, observer=lambda graph, checkpoints, scope: OBSERVER_REPORT), base_url=BASE) as c:
        data = c.get("/api/observer").json()
    assert data["source"] == "observer" and data["in_use"] == "ckpt_a"
    assert [c["verdict"] for c in data["checkpoints"]] == ["keep", "rollback"]
    assert data["checkpoints"][0]["baseline_windows"][0]["flags"] == {"p1": 7}
    assert [a["open"] for a in data["alerts"]] == [False, True]


def test_the_default_observer_is_agents_observe_report(client, demo):
    g, facts = demo
    from mindloop.agents.cycle.watch import report

    data = client.get("/api/observer").json()
    expected = report(g, Checkpoints(g.config.home / "checkpoints"))
    assert data["source"] == "observer" and data["in_use"] == expected.in_use == facts["checkpoints"][0]
    assert [c["id"] for c in data["checkpoints"]] == [c.id for c in expected.checkpoints]
    assert {k: v for k, v in data.items() if k != "source"} == json.loads(json.dumps(expected.to_json()))
    assert data["alerts"][0]["id"] == facts["alert"] and data["alerts"][0]["open"] is True


def test_the_fallback_report_has_the_observers_shape(demo):
    g, facts = demo
    report = fallback_report(g, Checkpoints(g.config.home / "checkpoints"))
    first, second = facts["checkpoints"]
    assert report["in_use"] == first
    assert [(c["id"], c["parent"], c["status"]) for c in report["checkpoints"]] == [
        (first, None, "promoted"), (second, first, "rolled_back")]
    assert report["rollbacks"][0]["checkpoint"] == second and report["rollbacks"][0]["to"] == first
    assert report["alerts"][0]["id"] == facts["alert"] and report["alerts"][0]["open"] is True


def test_the_openapi_schema_describes_every_endpoint(client):
    schema = client.get("/openapi.json").json()
    paths = set(schema["paths"])
    assert {"/api/flags", "/api/flags/{flag_id}", "/api/flags/{flag_id}/confirm", "/api/flags/{flag_id}/reject",
            "/api/flags/{flag_id}/edit", "/api/patterns", "/api/graph/nodes/{node_id}", "/api/search", "/api/runs",
            "/api/runs/{run_id}", "/api/checkpoints", "/api/observer", "/api/csrf"} == paths
    assert "FlagDetail" in schema["components"]["schemas"] and "ObserverReport" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN


def test_evaluation_rows_skip_missing_metrics():
    assert evaluation_rows(None, None) == []
    rows = evaluation_rows(None, {"kinds": {"mine": {"mean_margin": 0.5}}, "perplexity": 9.0})
    assert [(r["metric"], r["before"], r["after"], r["change"]) for r in rows] == [
        ("perplexity", None, 9.0, None), ("mine margin", None, 0.5, None)]


@pytest.mark.parametrize("odd", ["%00", "..", "%F0%9F%92%A9", "'", '"', "*", "NEAR(", "%FF", "a" * 3000])
def test_odd_input_is_a_4xx_never_a_5xx(client, odd):
    for path in ("/api/flags/{}", "/api/graph/nodes/{}", "/api/runs/{}", "/api/search?q={}", "/api/flags?pattern={}",
                 "/flags/{}", "/graph?node={}", "/graph?q={}", "/runs/{}", "/flags?min_confidence={}"):
        r = client.get(path.format(odd))
        assert r.status_code < 500, (path, r.status_code, r.text[:200])
    r = client.post(f"/api/flags/{odd}/edit", headers=CSRF, content=odd.encode())
    assert 400 <= r.status_code < 500


def test_a_lone_surrogate_in_a_body_is_a_422_that_says_where(client, demo):
    _, facts = demo
    r = client.post(f"/api/flags/{facts['edited']}/edit", headers={**CSRF, "content-type": "application/json"},
                    content=b'{"response": "\\ud800"}')
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "response"]
