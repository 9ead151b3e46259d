"""The scheduler on a tiny local model: readiness, a whole cycle, the gate's growth, faults, and SIGKILL at each step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from mindloop.agents.cli import main  # noqa: E402
from mindloop.agents.cycle.gate import ObserveConfig  # noqa: E402
from mindloop.agents.cycle.plans import plan_for  # noqa: E402
from mindloop.agents.cycle.scheduler import Scheduler, SchedulerConfig  # noqa: E402
from mindloop.agents.cycle.service import readiness  # noqa: E402
from mindloop.graph import GraphConfig, HashingEmbedder, MemoryGraph  # noqa: E402
from mindloop.trainer.checkpoints import Checkpoints  # noqa: E402
from mindloop.trainer.evaluate import Probe  # noqa: E402

from .observe_data import add_pattern, log_exchange  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROMPT = [{"role": "user", "content": "rename the function please"}]
PROBES = [Probe(PROMPT, "done it is", "you could use a class", "target"),
          Probe(PROMPT, "no", "sure it is done", "pushback"),
          Probe([{"role": "user", "content": "hello"}], "hi", "tabs spaces", "capability")]
# a gate that passes whatever a two-step run on a random tiny model does, and one that never does
LENIENT = ObserveConfig(min_target_gain=-100, max_ppl_increase=100, max_pushback_drop=100, max_capability_drop=1)
STRICT = ObserveConfig(min_target_gain=100, max_ppl_increase=100, max_pushback_drop=100, max_capability_drop=1)


def _fill(graph, n_flags: int = 4):
    p = add_pattern(graph)
    start = time.time() - 4000
    for i in range(n_flags):
        log_exchange(graph, f"c{i}", checkpoint=None, created=start + 10 * i, pattern=p)
    return p


def _config(tiny_lm, **kw):
    base = dict(model=str(tiny_lm), min_flags=3, idle_s=0, cooldown_s=0, max_steps=2, batch_size=2, generate=False)
    return SchedulerConfig(**{**base, **kw})


def test_readiness_names_what_a_pattern_waits_for(graph, tiny_lm):
    p = _fill(graph, n_flags=2)
    (r,) = readiness(graph, _config(tiny_lm, min_flags=3, idle_s=7200))
    assert r.pattern == p.id and not r.ripe and r.confirmed == 2
    assert any("2/3 confirmed" in w for w in r.waiting_for) and any("chat active" in w for w in r.waiting_for)
    (r,) = readiness(graph, _config(tiny_lm, min_flags=2, idle_s=0))
    assert r.ripe and r.waiting_for == []


def test_a_ripe_pattern_runs_the_whole_cycle_and_is_then_covered(graph, tiny_lm, home):
    p = _fill(graph)
    said: list[str] = []
    s = Scheduler(graph, _config(tiny_lm), observe=LENIENT, probes=PROBES, say=said.append)
    try:
        state = s.tick()
        store = Checkpoints(home / "checkpoints")
        assert state["phase"] == "watch" and state["pattern"] == p.id
        assert store.promoted()["checkpoint"] == state["checkpoint"]
        run = graph.get(state["run_id"])
        assert run.status == "finished" and run.config["pattern"] == p.id
        assert graph.get(state["checkpoint"]).status == "promoted"
        assert any(m.startswith("promoted") for m in said) and any(m.startswith("gate ok") for m in said)
        # the flags it trained on are covered by a kept checkpoint: the pattern is no longer ripe
        (r,) = readiness(graph, _config(tiny_lm))
        assert r.untrained == 0 and not r.ripe
        # still watching (no turns since the promotion): a second tick waits in 'watch' and starts nothing
        again = s.tick()
        assert again["phase"] == "watch" and "watching" in again["note"]
        assert len(list((home / "runs").iterdir())) == 1
    finally:
        s.close()


def test_a_candidate_that_moved_too_little_is_rejected_and_the_next_run_grows(graph, tiny_lm, home):
    p = _fill(graph)
    s = Scheduler(graph, _config(tiny_lm), observe=STRICT, probes=PROBES, say=lambda m: None)
    try:
        state = s.tick()
    finally:
        s.close()
    assert state["phase"] == "wait" and state["last"]["verdict"] == "rejected"
    assert Checkpoints(home / "checkpoints").promoted() is None  # the parent (base model) stays in use
    assert graph.get(state["last"]["checkpoint"]).status == "rejected"
    plan = plan_for(graph.get(p.id))
    assert plan.lr == pytest.approx(2e-4) and plan.max_examples == 13 and plan.reuse
    assert state["last"]["plan"]["lr"] == pytest.approx(2e-4)
    # the rejected run's examples are not in the model in use: the pattern is ripe again, with the grown plan
    (r,) = readiness(graph, _config(tiny_lm))
    assert r.ripe and r.untrained == 4 and r.plan["lr"] == pytest.approx(2e-4)


def test_a_failed_run_returns_to_waiting_with_the_failure_recorded(graph, tiny_lm, home):
    _fill(graph)
    s = Scheduler(graph, _config(tiny_lm, model=str(home / "no-such-model")), observe=LENIENT, probes=PROBES,
                  say=lambda m: None)
    try:
        state = s.tick()
    finally:
        s.close()
    assert state["phase"] == "wait" and state["last"]["verdict"] == "failed"
    assert "no-such-model" in state["error"]
    assert graph.get(state["last"]["run"]).status == "failed"
    assert not (home / "checkpoints").exists() or not any((home / "checkpoints").iterdir())


def test_an_unreachable_backend_backs_off_and_says_why(graph, tiny_lm):
    from mindloop.agents.chat.backends import BackendError

    _fill(graph)

    def unreachable():
        raise BackendError("cannot reach http://127.0.0.1:9/v1: connection refused")

    said: list[str] = []
    s = Scheduler(graph, _config(tiny_lm, generate=True, backoff_s=30), observe=LENIENT, probes=PROBES,
                  backend_factory=unreachable, say=said.append)
    try:
        state = s.tick()
        assert state["phase"] == "wait" and "unreachable" in state["error"] and state["backoff_s"] == 30
        assert state["retry_at"] > time.time() + 20
        assert any("backing off 30s" in m for m in said)
        again = s.tick()  # inside the back-off window: nothing is tried
        assert "backing off until" in again["note"] and again["backoff_s"] == 30
    finally:
        s.close()


def test_status_shows_readiness_the_scheduler_and_alerts(graph, tiny_lm, home, capsys):
    _fill(graph, n_flags=2)
    graph.close()
    assert main(["status", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["in_use"] is None and out["queue"] == [] and out["alerts"] == []
    assert out["patterns"][0]["confirmed"] == 2 and not out["patterns"][0]["ripe"]
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "2/20 confirmed untrained flags" in text and "in use: the base model" in text
    # the service's read model is what `mindloop status --json` prints, key for key
    from mindloop.agents.cycle.service import status

    with MemoryGraph.open(GraphConfig(home=home, embedder="hashing"), embedder=HashingEmbedder()) as g:
        assert json.loads(json.dumps(status(g, SchedulerConfig(), ObserveConfig()))) == out


# -- SIGKILL at every step ------------------------------------------------------------------

KILL_POINTS = ["wait", "compose", "train", "trained", "gate", "promote"]


def _daemon(home: Path, tiny_lm, probes: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MINDLOOP_HOME": str(home), "MINDLOOP_GRAPH_EMBEDDER": "hashing",
           "MINDLOOP_SIGNAL_READER": "off", "MINDLOOP_SCHEDULER_PROBES": str(probes)}
    env.pop("MINDLOOP_KILL_AT", None)
    if kill_at:
        env["MINDLOOP_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "mindloop.agents.cli", "daemon", "--once", "--json", "--model", str(tiny_lm),
                           "--min-flags", "3", "--idle", "0", "--cooldown", "0", "--max-steps", "2", "--no-generate"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def _kill_home(tmp_path: Path, *, baseline: int = 0) -> tuple[Path, Path]:
    home = tmp_path / "home"
    g = MemoryGraph.open(GraphConfig(home=home, embedder="hashing"), embedder=HashingEmbedder())
    try:
        _fill(g)
        for i in range(baseline):  # replies the base model served, none corrected
            log_exchange(g, f"base{i}", checkpoint=None, created=time.time() - 3000 + i)
    finally:
        g.close()
    (home / "config.toml").write_text("[observe]\nmin_target_gain = -100.0\nmax_ppl_increase = 100.0\n"
                                      "max_pushback_drop = 100.0\nmax_capability_drop = 1.0\n")
    probes = tmp_path / "probes.jsonl"
    probes.write_text("\n".join(json.dumps({"prompt": p.prompt, "desired": p.desired, "undesired": p.undesired,
                                            "kind": p.kind}) for p in PROBES) + "\n")
    return home, probes


def _check_consistent(home: Path) -> dict:
    """Nothing duplicated, nothing half-promoted, and graph and disk agree."""
    store = Checkpoints(home / "checkpoints")
    runs = sorted(p.name for p in (home / "runs").iterdir()) if (home / "runs").exists() else []
    ckpts = [m["id"] for m in store.list()]
    assert all("error" not in m for m in store.list())
    promoted = store.promoted()
    if promoted:
        store.get(promoted["checkpoint"])  # whole and readable
    g = MemoryGraph.open(GraphConfig(home=home, embedder="hashing"), embedder=HashingEmbedder())
    try:
        run_nodes = sorted(r.id for r in g.nodes(kind="run"))
        ckpt_nodes = sorted(c.id for c in g.nodes(kind="checkpoint"))
        assert run_nodes == runs  # every run folder is a Run node, once
        assert ckpt_nodes == sorted(ckpts)
    finally:
        g.close()
    return {"runs": runs, "checkpoints": ckpts, "promoted": promoted["checkpoint"] if promoted else None}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_at_each_step_resumes_without_duplicates(tmp_path, tiny_lm, point):
    home, probes = _kill_home(tmp_path)
    killed = _daemon(home, tiny_lm, probes, kill_at=point)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = _daemon(home, tiny_lm, probes)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = json.loads(resumed.stdout)
    if point != "wait":  # killed inside a step: the restart resumes at that step
        assert "resuming at" in resumed.stderr
    seen = _check_consistent(home)
    assert len(seen["runs"]) == 1 and len(seen["checkpoints"]) == 1
    assert seen["promoted"] == seen["checkpoints"][0] == state["checkpoint"]
    assert state["phase"] == "watch"


def test_sigkill_while_training_records_a_failed_run_and_never_runs_it_twice(tmp_path, tiny_lm):
    home, probes = _kill_home(tmp_path)
    env = {**os.environ, "MINDLOOP_HOME": str(home), "MINDLOOP_GRAPH_EMBEDDER": "hashing",
           "MINDLOOP_SIGNAL_READER": "off", "MINDLOOP_SCHEDULER_PROBES": str(probes)}
    env.pop("MINDLOOP_KILL_AT", None)
    # a long run (many steps), killed from outside once its first step is logged
    proc = subprocess.Popen([sys.executable, "-m", "mindloop.agents.cli", "daemon", "--once", "--model", str(tiny_lm),
                             "--min-flags", "3", "--idle", "0", "--cooldown", "0", "--max-steps", "100000",
                             "--no-generate"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not list((home / "runs").glob("*/steps.jsonl")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the run never logged a step"
            time.sleep(0.2)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    resumed = _daemon(home, tiny_lm, probes)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = json.loads(resumed.stdout)
    assert state["phase"] == "wait" and state["last"]["verdict"] == "failed" and "killed" in state["error"]
    seen = _check_consistent(home)
    assert len(seen["runs"]) == 1 and seen["checkpoints"] == [] and seen["promoted"] is None
    assert (home / "runs" / seen["runs"][0] / "status").read_text().startswith("failed")


def test_a_configured_first_learning_rate_is_what_the_plan_grows_from(graph, tiny_lm):
    p = _fill(graph)
    s = Scheduler(graph, _config(tiny_lm, lr=4e-4), observe=STRICT, probes=PROBES, say=lambda m: None)
    try:
        state = s.tick()
    finally:
        s.close()
    assert state["last"]["verdict"] == "rejected"
    assert graph.get(state["last"]["run"]).config["learning_rate"] == pytest.approx(4e-4)
    assert plan_for(graph.get(p.id)).lr == pytest.approx(8e-4)


def test_sigkill_after_the_watch_rolled_back_finishes_the_rollback_on_restart(tmp_path, tiny_lm):
    home, probes = _kill_home(tmp_path, baseline=40)
    first = json.loads(_daemon(home, tiny_lm, probes).stdout)
    assert first["phase"] == "watch"
    ckpt = first["checkpoint"]
    g = MemoryGraph.open(GraphConfig(home=home, embedder="hashing"), embedder=HashingEmbedder())
    try:  # after the promotion the corrected failure comes back in every reply
        (pattern,) = g.nodes(kind="pattern")
        for i in range(40):
            log_exchange(g, f"after{i}", checkpoint=ckpt, created=time.time() + i, pattern=pattern)
    finally:
        g.close()
    killed = _daemon(home, tiny_lm, probes, kill_at="watch")
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = _daemon(home, tiny_lm, probes)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = json.loads(resumed.stdout)
    assert state["phase"] == "wait" and state["last"]["verdict"] == "rollback"
    store = Checkpoints(home / "checkpoints")
    assert store.promoted() is None  # back to the parent, the base model
    assert [e["event"] for e in store.history()] == ["promote", "rollback"]  # rolled back once
    g = MemoryGraph.open(GraphConfig(home=home, embedder="hashing"), embedder=HashingEmbedder())
    try:
        alerts = g.nodes(kind="alert")
        assert [(a.details["kind"], a.status) for a in alerts] == [("watch", "resolved")]
        assert g.get(ckpt).status == "rolled_back"
    finally:
        g.close()


def test_serve_daemon_runs_the_scheduler_beside_the_proxy(tmp_path):
    from mindloop.agents.chat.loop import open_checkpointer

    from .conftest import free_port

    home = tmp_path / "home"
    env = {**os.environ, "MINDLOOP_HOME": str(home), "MINDLOOP_GRAPH_EMBEDDER": "hashing",
           "MINDLOOP_SIGNAL_READER": "off"}
    proc = subprocess.Popen([sys.executable, "-m", "mindloop.agents.cli", "serve", "--daemon", "--upstream",
                             "http://127.0.0.1:9/v1", "--model", "x", "--port", str(free_port())],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        state = {}
        while "note" not in state:  # the scheduler's first tick is in loop.db
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.time() < deadline, "the scheduler never ticked"
            time.sleep(0.5)
            if (home / "loop.db").exists():  # read the workflow's state where it keeps it (the graph is in use)
                saver = open_checkpointer(home)
                try:
                    got = saver.get_tuple({"configurable": {"thread_id": "scheduler/default", "checkpoint_ns": ""}})
                finally:
                    saver.conn.close()
                state = got.checkpoint["channel_values"] if got else {}
        assert "nothing ripe" in state["note"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert "scheduler running" in proc.stderr.read()
    proc.stderr.close()
