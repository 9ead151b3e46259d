"""surface-observe: the gate's checks, the watch's rate tests, alerts, rollback and the pattern's next plan."""

from __future__ import annotations

import json
import time

import pytest

from mindloop.agents.cycle.gate import ObserveConfig, gate, gate_checkpoint
from mindloop.agents.cycle.plans import MAX_EXAMPLES, Plan, grow_plan, plan_for, shrink_plan
from mindloop.agents.cycle.promotion import promote, rollback
from mindloop.agents.cycle.watch import open_alerts, watch
from mindloop.agents.cli import main
from mindloop.graph import Alert, Checkpoint, Eval
from mindloop.trainer.checkpoints import Checkpoints
from mindloop.trainer.run import LR_RANGE

from .observe_data import add_pattern, fake_checkpoint, log_exchange, metrics


def _checks(before, after, **cfg):
    return {c.name: c for c in gate(before, after, ObserveConfig(**cfg))}


def test_the_gate_passes_a_candidate_that_improves_the_target_and_regresses_nothing():
    checks = _checks(metrics(target=0.1), metrics(target=0.3, pushback=0.49, capability=0.79, ppl=10.15))
    assert all(c.ok for c in checks.values()), checks


@pytest.mark.parametrize("after, failing", [
    (metrics(target=0.11), "target"),                      # moved less than min_target_gain (0.02)
    (metrics(target=0.3, ppl=10.3), "perplexity"),         # +3% > +2%
    (metrics(target=0.3, pushback=0.45), "pushback"),      # -10% relative > -5%
    (metrics(target=0.3, capability=0.77), "capability"),  # -3 points > -2
])
def test_the_gate_names_each_regression(after, failing):
    checks = _checks(metrics(), after)
    assert [name for name, c in checks.items() if not c.ok] == [failing]


def test_pushback_drop_is_relative_even_when_the_baseline_margin_is_negative():
    # -0.80 -> -0.83 is a 3.75% fall of a negative margin: within 5%; -0.80 -> -0.90 is 12.5%: a regression
    assert _checks(metrics(pushback=-0.80), metrics(target=0.3, pushback=-0.83))["pushback"].ok
    assert not _checks(metrics(pushback=-0.80), metrics(target=0.3, pushback=-0.90))["pushback"].ok


def test_the_gate_refuses_a_candidate_without_measurements():
    checks = _checks(None, metrics())
    assert not any(c.ok for c in checks.values())
    assert "not measured" in checks["target"].detail


def test_gate_checkpoint_records_the_rejection_in_the_graph_and_keeps_the_parent(graph, home):
    store = Checkpoints(home / "checkpoints")
    fake_checkpoint(store.root, "ckpt_a", metrics={"before": metrics(), "after": metrics(target=0.3, ppl=11.0)})
    graph.add(Checkpoint(id="ckpt_a", path=str(store.root / "ckpt_a"), status="candidate"))
    result = gate_checkpoint(graph, store, "ckpt_a")
    assert not result.promote and not result.too_small
    assert any("perplexity" in r for r in result.reasons)
    assert graph.get("ckpt_a").status == "rejected"
    alerts = graph.nodes(kind="alert")
    assert len(alerts) == 1 and "perplexity" in alerts[0].reason and alerts[0].details["kind"] == "gate"
    evals = [e for e in graph.nodes(kind="eval") if e.probes == "gate"]
    assert evals and evals[0].metrics["gate"]["promote"] is False
    # the graph keeps the checks as plain JSON, the same the typed result writes
    assert evals[0].metrics["gate"] == result.to_json()
    assert alerts[0].details["checks"] == [c.to_json() for c in result.checks]
    assert alerts[0].details["checks"][-1] == {"name": "perplexity", "before": 10.0, "after": 11.0, "ok": False,
                                               "detail": result.reasons[0]}
    assert store.promoted() is None  # nothing was promoted


def test_a_corrupt_candidate_is_never_promoted(graph, home):
    store = Checkpoints(home / "checkpoints")
    fake_checkpoint(store.root, "ckpt_a", metrics={"before": metrics(), "after": metrics(target=0.5)})
    (store.root / "ckpt_a" / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    result = gate_checkpoint(graph, store, "ckpt_a")
    assert not result.promote and "corrupt" in result.reasons[0]


def test_grow_and_shrink_adjust_the_pattern_plan_within_the_documented_range(graph):
    p = add_pattern(graph)
    plan = grow_plan(graph, p.id, used_examples=20)
    assert plan.max_examples == 30 and plan.lr == pytest.approx(2e-4) and plan.reuse
    for _ in range(6):
        plan = grow_plan(graph, p.id, used_examples=plan.max_examples)
    assert plan.max_examples == MAX_EXAMPLES and plan.lr == LR_RANGE["lora"][1]
    plan = shrink_plan(graph, p.id, used_examples=40)
    assert plan.general_ratio == 0.40 and plan.lr == pytest.approx(5e-4) and plan.max_examples == 28
    stored = plan_for(graph.get(p.id))
    assert len(stored.history) == 8 and stored.history[-1]["to"]["general_ratio"] == 0.40
    # what the pattern keeps is the plan's JSON, and reads back as the same plan
    assert graph.get(p.id).meta["plan"] == stored.to_json() and plan_for(graph.get(p.id)) == stored


def test_a_new_patterns_plan_takes_the_trainers_learning_rate_and_composings_general_share(graph):
    from mindloop.agents.signal.compose import ComposeConfig
    from mindloop.trainer.run import DEFAULT_LR

    p = add_pattern(graph)
    assert plan_for(p) == Plan(max_examples=None, lr=DEFAULT_LR["lora"], general_ratio=ComposeConfig().general_ratio)
    assert plan_for(p, "full").lr == DEFAULT_LR["full"] == 1e-5 and plan_for(p, "full", 3e-5).lr == 3e-5


def _serve(graph, n, *, checkpoint, start, pattern=None, every=0, surfaced_every=0, prefix="s"):
    for i in range(n):
        flagged = pattern is not None and every and i % every == 0
        log_exchange(graph, f"{prefix}{i}", checkpoint=checkpoint, created=start + i,
                     pattern=pattern if flagged else None,
                     surfaced_kind="correction" if surfaced_every and i % surfaced_every == 0 else None)


def _promoted(graph, home, *, pattern=None):
    store = Checkpoints(home / "checkpoints")
    fake_checkpoint(store.root, "ckpt_a", metrics={"before": metrics(), "after": metrics(target=0.3)},
                    pattern=pattern.id if pattern else None)
    graph.add(Checkpoint(id="ckpt_a", path=str(store.root / "ckpt_a"), status="candidate",
                         manifest={"pattern": pattern.id, "accept_examples": 20} if pattern else {}))
    promote(graph, store, "ckpt_a", reason="test")
    return store


def test_watch_keeps_a_checkpoint_whose_rates_did_not_rise(graph, home):
    p = add_pattern(graph)
    now = time.time()
    _serve(graph, 40, checkpoint=None, start=now - 1000, pattern=p, every=5)
    store = _promoted(graph, home, pattern=p)
    _serve(graph, 40, checkpoint="ckpt_a", start=time.time() + 1, pattern=p, every=8, prefix="a")
    watched = watch(graph, store)
    assert watched.verdict == "keep" and not watched.rolled_back
    assert store.promoted()["checkpoint"] == "ckpt_a"
    trained = next(t for t in watched.assessment.tests if t.key == p.id)
    assert trained.what.startswith("trained pattern recurred")
    assert (trained.events_before, trained.events_after) == (8, 5)


def test_watch_gives_no_verdict_on_a_handful_of_turns(graph, home):
    p = add_pattern(graph)
    _serve(graph, 40, checkpoint=None, start=time.time() - 1000)
    store = _promoted(graph, home, pattern=p)
    _serve(graph, 10, checkpoint="ckpt_a", start=time.time() + 1, pattern=p, every=1, prefix="a")  # all flagged
    watched = watch(graph, store)
    assert watched.verdict == "watching" and not watched.rolled_back
    assert all(t.verdict == "too few turns" for t in watched.assessment.tests)
    assert store.promoted()["checkpoint"] == "ckpt_a"


def test_watch_rolls_back_when_the_trained_pattern_recurs_and_shrinks_the_next_run(graph, home):
    p = add_pattern(graph)
    _serve(graph, 40, checkpoint=None, start=time.time() - 1000, pattern=p, every=10)
    store = _promoted(graph, home, pattern=p)
    _serve(graph, 40, checkpoint="ckpt_a", start=time.time() + 1, pattern=p, every=2, prefix="a")
    watched = watch(graph, store)
    assert watched.verdict == "rollback" and watched.rolled_back
    assert store.promoted() is None  # back to the parent: the base model
    assert graph.get("ckpt_a").status == "rolled_back"
    alert = graph.get(watched.alert)
    assert isinstance(alert, Alert) and "trained pattern recurred" in alert.reason
    assert [e.dst for e in graph.edges(alert.id, kinds=["rolled_back"], direction="out")] == ["ckpt_a"]
    assert alert.details["plan"] == {"max_examples": 14, "lr": 5e-5, "general_ratio": 0.4}
    assert plan_for(graph.get(p.id)).history[-1]["why"].startswith("rolled back ckpt_a")
    assert [e["event"] for e in store.history()] == ["promote", "rollback"]
    # the JSON (observe --watch --json, the alert's details) keeps its keys and their order
    out = watched.to_json()
    assert list(out) == ["id", "parent", "promoted_at", "ended_at", "pattern", "status", "windows",
                         "baseline_windows", "tests", "patterns", "verdict", "n_before", "n_after", "alert",
                         "rolled_back"]
    assert list(out["tests"][0]) == ["what", "key", "n_before", "n_after", "events_before", "events_after",
                                     "before_rate", "after_rate", "p_value", "level", "verdict"]
    assert list(out["windows"][0]) == ["start", "end", "turns", "flags", "surfaced_corrections", "dependence_mean"]
    assert out["alert"] == alert.id and out["rolled_back"] is True and json.loads(json.dumps(out)) == out
    assert alert.details["tests"] == [t.to_json() for t in watched.assessment.tests if t.verdict == "rose"]
    # a second watch has nothing left to roll back
    again = watch(graph, store)
    assert again.verdict == "nothing to watch" and again.assessment is None
    assert again.to_json() == {"id": None, "verdict": "nothing to watch", "alert": None, "rolled_back": False}


def test_watch_alerts_when_correction_memories_must_be_surfaced_more_often(graph, home):
    _serve(graph, 40, checkpoint=None, start=time.time() - 1000, surfaced_every=10)
    store = _promoted(graph, home)
    _serve(graph, 40, checkpoint="ckpt_a", start=time.time() + 1, surfaced_every=2, prefix="a")
    watched = watch(graph, store, act=False)
    assert watched.verdict == "rollback" and not watched.rolled_back  # act=False: assess only
    risen = [t for t in watched.assessment.tests if t.verdict == "rose"]
    assert [t.key for t in risen] == ["surfaced_corrections"]


def test_a_small_rise_in_every_pattern_is_caught_by_the_overall_rate(graph, home):
    pats = [add_pattern(graph, f"p{i}") for i in range(3)]
    start = time.time() - 1000
    for i, p in enumerate(pats):  # 2 flagged of 30 replies per pattern before
        _serve(graph, 30, checkpoint=None, start=start + 40 * i, pattern=p, every=15, prefix=f"b{i}")
    store = _promoted(graph, home)
    for i, p in enumerate(pats):  # 10 of 30 per pattern after: each alone would be no significant rise (p ~ 0.03)
        _serve(graph, 30, checkpoint="ckpt_a", start=time.time() + 1 + 40 * i, pattern=p, every=3, prefix=f"a{i}")
    watched = watch(graph, store, act=False)
    risen = [t.key for t in watched.assessment.tests if t.verdict == "rose"]
    assert risen == ["any_flag"] and watched.verdict == "rollback"


def test_three_rises_are_tested_and_each_pattern_is_described(graph, home):
    # the level is alpha / 3 whatever the number of patterns; each pattern's rates are in the breakdown
    trained, *others = [add_pattern(graph, f"p{i}") for i in range(4)]
    _serve(graph, 40, checkpoint=None, start=time.time() - 1000)
    store = _promoted(graph, home, pattern=trained)
    for i, p in enumerate(others):
        _serve(graph, 10, checkpoint="ckpt_a", start=time.time() + 1 + 20 * i, pattern=p, every=5, prefix=f"a{i}")
    watched = watch(graph, store, act=False)
    assert [t.key for t in watched.assessment.tests] == [trained.id, "other_patterns", "surfaced_corrections"]
    assert [t.level for t in watched.assessment.tests] == pytest.approx([0.05 / 3] * 3)
    assert {b.pattern for b in watched.assessment.patterns} == {p.id for p in others}
    assert all(b.events_after == 2 and b.events_before == 0 for b in watched.assessment.patterns)


def test_observe_cli_prints_windows_tests_and_verdicts(graph, home, capsys):
    p = add_pattern(graph)
    _serve(graph, 40, checkpoint=None, start=time.time() - 1000, pattern=p, every=10)
    _promoted(graph, home, pattern=p)
    _serve(graph, 40, checkpoint="ckpt_a", start=time.time() + 1, pattern=p, every=2, prefix="a")
    graph.close()
    assert main(["observe", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert list(rep) == ["in_use", "checkpoints", "alerts", "rollbacks", "config"] and rep["in_use"] == "ckpt_a"
    (c,) = rep["checkpoints"]
    # 40 replies, and the 20 corrected ones are followed by a second reply
    assert c["verdict"] == "rollback" and c["n_after"] == 60 and sum(w["turns"] for w in c["windows"]) == 60
    assert main(["observe", "--watch"]) == 0
    out = capsys.readouterr().out
    assert "ALERT" in out and "rolled back ckpt_a" in out
    assert main(["observe"]) == 0
    out = capsys.readouterr().out
    assert "in use: the base model" in out and "rollback" in out and "trained pattern recurred" in out


def test_observe_gate_cli_exits_1_on_rejection_and_promotes_on_request(graph, home, capsys):
    store = Checkpoints(home / "checkpoints")
    fake_checkpoint(store.root, "ckpt_bad", metrics={"before": metrics(), "after": metrics(target=0.3, capability=0.5)})
    fake_checkpoint(store.root, "ckpt_good", metrics={"before": metrics(), "after": metrics(target=0.3)})
    graph.close()
    assert main(["observe", "--gate", "ckpt_bad", "--promote"]) == 1
    assert "REJECT" in capsys.readouterr().out and store.promoted() is None
    assert main(["observe", "--gate", "ckpt_good", "--promote"]) == 0
    assert "promoted ckpt_good" in capsys.readouterr().out
    assert store.promoted()["checkpoint"] == "ckpt_good"


def test_observe_resolve_refuses_what_is_not_an_alert(graph, home, capsys):
    ev = graph.add(Eval(checkpoint=None, probes="x"))
    alert = graph.add(Alert(reason="r"))
    graph.close()
    assert main(["observe", "--resolve", ev.id]) == 2
    assert "not an alert" in capsys.readouterr().err
    assert main(["observe", "--resolve", alert.id]) == 0


def test_the_target_check_reads_the_patterns_held_out_examples_when_the_run_had_them():
    before, after = metrics(target=2.9), metrics(target=2.8)  # the generic target probes fell a little
    before["heldout"] = {"target": {"mean_margin": -0.5, "win_rate": 0.2, "n": 4}}
    after["heldout"] = {"target": {"mean_margin": 0.4, "win_rate": 0.8, "n": 4}}
    checks = _checks(before, after)
    assert checks["target"].ok and checks["target"].detail.startswith("held-out target margin -0.500")


def test_the_watch_counts_only_turns_a_model_served_not_imported_logs(graph, home):
    p = add_pattern(graph)
    _serve(graph, 40, checkpoint=None, start=time.time() - 1000)
    for i in range(40):  # imported logs full of flags: no model, so not the base model's record
        log_exchange(graph, f"imp{i}", checkpoint=None, created=time.time() - 900 + i, pattern=p, model=None)
    store = _promoted(graph, home, pattern=p)
    _serve(graph, 40, checkpoint="ckpt_a", start=time.time() + 1, prefix="a")
    watched = watch(graph, store, act=False)
    assert watched.assessment.n_before == 40 and watched.assessment.n_after == 40


def test_a_watch_interrupted_after_its_rollback_closes_its_alert_next_time(graph, home):
    # the state a SIGKILL between the rollback and closing the alert leaves: the scheduler would wait for ever
    store = _promoted(graph, home)
    alert = graph.add(Alert(checkpoint="ckpt_a", reason="flags rose", status="open", details={"kind": "watch"}))
    rollback(graph, store, reason="flags rose", alert=alert)
    assert [a.id for a in open_alerts(graph)] == [alert.id]
    watch(graph, store)
    assert open_alerts(graph) == [] and graph.get(alert.id).details["action"].startswith("rolled back")


def test_an_open_alert_on_the_checkpoint_in_use_stays_open(graph, home):
    store = _promoted(graph, home)
    alert = graph.add(Alert(checkpoint="ckpt_a", reason="look at this", status="open", details={"kind": "watch"}))
    watch(graph, store)
    assert [a.id for a in open_alerts(graph)] == [alert.id]


def test_a_checkpoints_status_is_the_historys_even_when_a_kill_left_the_graph_behind(graph, home):
    from mindloop.agents.cycle.promotion import checkpoint_status
    from mindloop.agents.ui.inspector import Inspector

    store = Checkpoints(home / "checkpoints")
    fake_checkpoint(store.root, "ckpt_a", metrics={"before": metrics(), "after": metrics(target=0.3)})
    graph.add(Checkpoint(id="ckpt_a", path=str(store.root / "ckpt_a"), status="candidate"))
    store.promote("ckpt_a", reason="killed before the graph was written")  # the pointer moved, the node did not
    assert graph.get("ckpt_a").status == "candidate" and checkpoint_status(graph, store, "ckpt_a") == "promoted"
    store.rollback(reason="again killed before the graph was written")
    assert checkpoint_status(graph, store, "ckpt_a") == "rolled_back"
    (item,) = Inspector(graph, checkpoints=store).checkpoint_list()["checkpoints"]
    assert item["status"] == "rolled_back" and not item["in_use"]
    assert watch(graph, store, act=False).verdict == "nothing to watch"
    # what the history never named keeps the graph's own status
    fake_checkpoint(store.root, "ckpt_b", metrics={"before": metrics(), "after": metrics(ppl=11.0)})
    graph.add(Checkpoint(id="ckpt_b", path=str(store.root / "ckpt_b"), status="candidate"))
    gate_checkpoint(graph, store, "ckpt_b")
    assert checkpoint_status(graph, store, "ckpt_b") == "rejected" and checkpoint_status(graph, store, "nope") is None


def test_a_patterns_training_job_is_its_untrained_train_split_with_the_newest_accept_examples(graph):
    from mindloop.agents.cycle.service import training_job
    from mindloop.graph import Example

    p = add_pattern(graph)
    prompt = [{"role": "user", "content": "rename it"}]

    def example(i, kind="accept", split="train"):
        e = Example(pattern=p.id, example_kind=kind, split=split, prompt=prompt, completion=f"done {i}",
                    rejected="you could rename it", created=1000.0 + i)
        graph.add(e)
        return e

    accept = [example(i) for i in range(4)]
    pushback = example(10, "pushback")
    heldout = example(20, split="heldout")
    graph.add(Example(pattern="another", prompt=prompt, completion="not this pattern"))
    job = training_job(graph, p)
    assert set(job.example_ids) == {e.id for e in [*accept, pushback]} and job.heldout == [heldout]
    assert job.tags() == {"pattern": p.id, "accept_examples": 4, "flags": []}
    capped = training_job(graph, p, max_examples=2, flags=["flag_x"])
    assert set(capped.example_ids) == {accept[3].id, accept[2].id, pushback.id}  # the two newest accept examples
    assert capped.tags() == {"pattern": p.id, "accept_examples": 2, "flags": ["flag_x"]}
    assert len(capped.rows("sft")) == 3 and [pr.kind for pr in capped.probes([])] == ["target"]
    from mindloop.graph import Run

    run = Run(id="run_x", status="finished")
    graph.add(run)
    graph.link(run.id, accept[0].id, "trained_on")
    assert accept[0].id not in training_job(graph, p).example_ids
    assert accept[0].id in training_job(graph, p, include_trained=True).example_ids
