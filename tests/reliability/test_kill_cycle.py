"""Crash safety of the learning cycle: SIGKILL at random points of detection, training, promotion and rollback.

Each test starts one *zygote*: a child that imports what the work needs
(torch, transformers, chromadb, the detector) once, then for every trial
forks a worker that opens the data directory and does the real work the
CLI and the scheduler do. The test kills the worker with SIGKILL after a
random delay (before it starts, mid-transaction, mid-fsync, mid-save, or
after it finished), then recovers the way the next process would (the same
recovery code the CLI and the scheduler run at start) and checks:

* detection: after the restart finishes, the flags and patterns are exactly
  those of an uninterrupted run on the same conversations: nothing lost,
  nothing flagged twice;
* training: no run is left ``started``, every visible checkpoint is whole and
  belongs to a finished run, graph and disk list the same runs and
  checkpoints, nothing is promoted by a run, and training works again;
* promotion and rollback: every acknowledged event is in the history once and
  in order, at most the one in-flight event beyond it; the pointer is what
  the last event left in use and names a whole checkpoint; the graph's
  checkpoint statuses agree with the history.

Each test also runs :func:`conftest.recover` (SQLite, FTS, edges, vectors).
The forks come from one process because starting Python with torch costs
seconds per trial on 2 cores; a fork costs milliseconds. Run::

    .venv/bin/python -m pytest tests/reliability/test_kill_cycle.py -q
    MINDLOOP_RELIABILITY_SEED=1234 .venv/bin/python -m pytest tests/reliability/test_kill_cycle.py -q
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from mindloop.graph import Checkpoint, GraphConfig, HashingEmbedder, MemoryGraph  # noqa: E402

TRIALS = 20
REPO = Path(__file__).resolve().parents[2]

# The zygote: PRELOAD, then per stdin line "<args...>" fork a worker running work(*args); report its pid and
# how it ended. The worker writes to the same stdout; "ready" means it has opened everything and starts work.
ZYGOTE = '''
import os, sys, random
{preload}
{work}
print("zygote", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            work(*line.split())
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print("pid", pid, flush=True)
    _, status = os.waitpid(pid, 0)
    # on a line of its own even when the kill tore the worker's last line (print can write in pieces)
    print("\\nexit", os.waitstatus_to_exitcode(status), flush=True)
'''


def _seed() -> int:
    return int(os.environ.get("MINDLOOP_RELIABILITY_SEED") or random.randrange(1 << 30))


class Zygote:
    def __init__(self, spawn, preload: str, work: str, *args: str) -> None:
        self.child = spawn(ZYGOTE.format(preload=preload, work=work), *args, stdin=True)
        line = self.child.readline(timeout=180)
        assert line == "zygote", f"the zygote said {line!r}\n{self.child.stderr()}"

    def trial(self, args: list[str], kill_after: float | None, *, wait_for: str = "ready",
              timeout: float = 300) -> tuple[int, list[str]]:
        """Fork a worker with ``args``; SIGKILL it ``kill_after`` seconds after it says ``wait_for``
        (never, with None). Returns its exit code (-9 when killed) and the lines it printed."""
        self.child.send(" ".join(args))
        lines: list[str] = []
        pid = None
        started = None
        while True:
            wait = timeout
            if started is not None and kill_after is not None and pid is not None:
                wait = max(0.0, started + kill_after - time.monotonic())
                if wait == 0.0:
                    os.kill(pid, signal.SIGKILL)
                    kill_after = None
                    continue
            try:
                line = self.child.readline(timeout=wait)
            except AssertionError:
                if started is not None and kill_after is not None:
                    continue  # the kill is due: loop round and send it
                raise AssertionError(f"the worker printed nothing for {wait:.0f}s; stderr:\n{self.child.stderr()}")
            assert line is not None, f"the zygote died; stderr:\n{self.child.stderr()}"
            if line.startswith("pid "):
                pid = int(line.split()[1])
            elif line.startswith("exit "):
                return int(line.split()[1]), lines
            elif line:
                lines.append(line)
                if line == wait_for:
                    started = time.monotonic()


# -- promotion and rollback -------------------------------------------------------------

PROMOTE_PRELOAD = '''
from mindloop.graph import GraphConfig, MemoryGraph
from mindloop.trainer.checkpoints import Checkpoints
from mindloop.agents.cycle.promotion import in_use, promote, rollback
import safetensors.torch
'''

# Promotes a random other checkpoint, or rolls back (half the time when something is promoted), for ever;
# "doing <event>" before each call, "ack <event> <checkpoint>" after it returns.
PROMOTE_WORK = '''
def work(home, seed):
    rng = random.Random(int(seed))
    g = MemoryGraph.open(GraphConfig(home=home, embedder="hashing"))
    store = Checkpoints(os.path.join(home, "checkpoints"))
    ids = sorted(m["id"] for m in store.list())
    current = in_use(store)  # what every promotion does first: finish the one a kill interrupted
    print("ready", flush=True)
    while True:
        if current and rng.random() < 0.5:
            was = current["checkpoint"]
            print("doing rollback", flush=True)
            current = rollback(g, store, reason="kill test")
            print("ack rollback", was, flush=True)
        else:
            pick = rng.choice([i for i in ids if not current or i != current["checkpoint"]])
            print("doing promote", flush=True)
            current = promote(g, store, pick, reason="kill test")
            print("ack promote", pick, flush=True)
'''

# c0 <- c1 <- c2, c0 <- c3, and c4 without a parent: rollbacks go to parents and to the base model
LINEAGE = {"c0": None, "c1": "c0", "c2": "c1", "c3": "c0", "c4": None}


def _fake_checkpoints(home: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from mindloop.trainer.checkpoints import Checkpoints

    store = Checkpoints(home / "checkpoints")
    with MemoryGraph.open(GraphConfig(home=home, embedder="hashing"), embedder=HashingEmbedder()) as g:
        for i, (cid, parent) in enumerate(LINEAGE.items()):
            def save(folder: Path, i=i) -> None:
                save_file({"lora_A": torch.full((4, 4), float(i))}, str(folder / "adapter_model.safetensors"))
                (folder / "adapter_config.json").write_text("{}")

            store.write(cid, save, {"kind": "lora", "parent": parent, "run": f"run-{cid}", "created": i})
            g.add(Checkpoint(scope="default", id=cid, path=str(store.root / cid), parent=parent))


def _expected_statuses(history: list[dict]) -> dict[str, str]:
    last = {}
    for ev in history:
        last[ev["checkpoint"]] = "promoted" if ev["event"] == "promote" else "rolled_back"
    return last


def test_sigkill_during_promotion_and_rollback_leaves_one_whole_pointer_and_agreeing_records(
        tmp_path, spawn, recovered, figures):
    from mindloop.agents.cycle.promotion import checkpoint_status, in_use, promote
    from mindloop.trainer.checkpoints import Checkpoints

    home = tmp_path / "home"
    _fake_checkpoints(home)
    store = Checkpoints(home / "checkpoints")
    zygote = Zygote(spawn, PROMOTE_PRELOAD, PROMOTE_WORK)
    base = _seed()
    outcomes = {"in-flight event committed": 0, "pointer rolled forward": 0, "acknowledged events": 0}
    during = {"promote": 0, "rollback": 0, "between calls": 0}
    for trial in range(3 * TRIALS):  # at least TRIALS kills land in each kind of call, most runs
        seed = base + trial
        rng = random.Random(seed)
        why = f"trial {trial}, seed {seed} (rerun with MINDLOOP_RELIABILITY_SEED={base})"
        before = len(store.history())
        # an operation takes a few ms (two fsyncs and a transaction): kills land all through them
        code, lines = zygote.trial([str(home), str(seed)], kill_after=rng.uniform(0.0, 0.15))
        assert code == -9, f"the worker ended with {code}; {why}\n{lines[-5:]}\n{zygote.child.stderr()}"
        acked = [tuple(line.split()[1:]) for line in lines if line.startswith("ack ")]
        outcomes["acknowledged events"] += len(acked)
        last = next((line for line in reversed(lines) if line.startswith(("doing ", "ack "))), "")
        during["promote" if last.startswith("doing p") else "rollback" if last.startswith("doing r")
               else "between calls"] += 1

        pointer_file = store.root / "promoted.json"
        raw = json.loads(pointer_file.read_text()) if pointer_file.exists() else None
        with MemoryGraph.open(GraphConfig(home=home, embedder="hashing"), embedder=HashingEmbedder()) as g:
            pointer = in_use(store)  # the next process's recovery
            history = store.history()
            assert [ev["seq"] for ev in history] == list(range(1, len(history) + 1)), f"seq gaps; {why}"
            new = history[before:]
            # a kill can tear the last ack line ("ack rollb"): it still acknowledges, as far as it goes
            assert len(new) >= len(acked) and all(
                len(a) <= 2 and all(have.startswith(part) for part, have in zip(a, (ev["event"], ev["checkpoint"])))
                for a, ev in zip(acked, new)), (
                f"the acknowledged events {acked} are not the history's next events {new}; {why}")
            assert len(new) - len(acked) in (0, 1), f"{len(new) - len(acked)} unacknowledged events; {why}"
            outcomes["in-flight event committed"] += len(new) - len(acked)
            if history:
                last = history[-1]
                want = last["checkpoint"] if last["event"] == "promote" else last.get("to")
            else:
                want = None
            assert (pointer["checkpoint"] if pointer else None) == want, f"pointer {pointer} after {want}; {why}"
            if (raw["checkpoint"] if raw else None) != want:
                outcomes["pointer rolled forward"] += 1
            if pointer:
                store.get(pointer["checkpoint"])  # whole and readable
            # what every reader sees (the UI, status, the watch): the history's word, whatever the kill left
            statuses = {c.id: checkpoint_status(g, store, c.id) for c in g.nodes(kind="checkpoint")}
            for cid, status in _expected_statuses(history).items():
                assert statuses[cid] == status, f"{cid}: the cycle says {statuses[cid]}, history {status}; {why}"
        recovered(home, why=why)

    # the next promotion writes the history's statuses onto every node a kill left behind
    with MemoryGraph.open(GraphConfig(home=home, embedder="hashing"), embedder=HashingEmbedder()) as g:
        current = in_use(store)
        promote(g, store, current["checkpoint"] if current else "c0", reason="after the kills")
        nodes = {c.id: c.status for c in g.nodes(kind="checkpoint")}
        assert {cid: nodes[cid] for cid in _expected_statuses(store.history())} == _expected_statuses(store.history())

    assert outcomes["acknowledged events"] >= TRIALS, outcomes
    assert during["promote"] >= TRIALS // 4 and during["rollback"] >= TRIALS // 4, during
    figures.record("SIGKILL trials", 3 * TRIALS, "promote / roll back in a loop, killed after 0-150 ms: "
                   + ", ".join(f"{v} during {k}" if k != "between calls" else f"{v} {k}" for k, v in during.items()))
    figures.record("acknowledged events", outcomes["acknowledged events"], "every one in history, once, in order")
    figures.record("kills after the commit, before the reply", outcomes["in-flight event committed"],
                   "the event stands (history is the write-ahead log)")
    figures.record("pointers rolled forward at restart", outcomes["pointer rolled forward"],
                   "killed between history.jsonl and promoted.json")
    figures.record("half-promoted checkpoints, disagreeing statuses", 0)


# -- training -----------------------------------------------------------------------------

TRAIN_PRELOAD = '''
import torch, transformers, trl, peft
from mindloop.graph import GraphConfig, MemoryGraph
from mindloop.trainer.run import TrainConfig, record_run, recover_runs, train
from mindloop.trainer.evaluate import Probe
'''

# What `mindloop train --dataset` does: recover, train (1-4 steps, with or without evaluation), record.
TRAIN_WORK = '''
PROMPT = [{"role": "user", "content": "rename the function"}]
ROWS = [{"prompt": PROMPT, "completion": [{"role": "assistant", "content": "done it is"}], "id": f"e{i}"}
        for i in range(8)]
PROBES = [Probe(PROMPT, "done it is", "no use tabs", "target"), Probe(PROMPT, "no", "sure it is done", "pushback")]

def work(home, model, seed):
    rng = random.Random(int(seed))
    g = MemoryGraph.open(GraphConfig(home=home, embedder="hashing"))
    recover_runs(g, home)
    print("ready", flush=True)
    cfg = TrainConfig(model=model, batch_size=2, max_steps=rng.randint(1, 4), lr=1e-2,
                      evaluate=rng.random() < 0.5)
    result = train(cfg, ROWS, home=home, probes=PROBES, progress=False)
    print("trained", result.checkpoint, flush=True)
    record_run(g, result)
    print("recorded", result.checkpoint, flush=True)
    g.close()
'''


def _check_runs(home: Path, why: str) -> dict[str, int]:
    """After recovery: no run left started, checkpoints whole and each of a finished run, graph == disk."""
    from mindloop.trainer.checkpoints import Checkpoints
    from mindloop.trainer.run import recover_runs

    store = Checkpoints(home / "checkpoints")
    with MemoryGraph.open(GraphConfig(home=home, embedder="hashing"), embedder=HashingEmbedder()) as g:
        recover_runs(g, home)
        runs = {d.name: (d / "status").read_text().strip() for d in sorted((home / "runs").iterdir())
                if (d / "config.json").exists()} if (home / "runs").exists() else {}
        assert not [r for r, s in runs.items() if not s.startswith(("finished", "failed"))], f"{runs}; {why}"
        listed = store.list()
        assert not [m for m in listed if "error" in m], f"a visible checkpoint is not whole: {listed}; {why}"
        finished = {r for r, s in runs.items() if s == "finished"}
        assert {m["run"] for m in listed} == finished, f"checkpoints {listed} vs finished runs {finished}; {why}"
        assert store.promoted() is None, f"a training run promoted something; {why}"
        run_nodes = {r.id: r.status for r in g.nodes(kind="run")}
        assert set(run_nodes) == set(runs), f"graph runs {sorted(run_nodes)} vs disk {sorted(runs)}; {why}"
        assert {r for r, s in run_nodes.items() if s == "finished"} == finished, why
        assert {c.id for c in g.nodes(kind="checkpoint")} == {m["id"] for m in listed}, why
    return {"finished": len(finished), "failed": len(runs) - len(finished)}


def test_sigkill_during_training_leaves_no_half_visible_checkpoint_and_records_every_run(
        tmp_path, spawn, recovered, tiny_lm, figures):
    home = tmp_path / "home"
    zygote = Zygote(spawn, TRAIN_PRELOAD, TRAIN_WORK)
    base = _seed()
    # uninterrupted runs first: how long a run takes, so the kills spread over all of it. The first run is
    # slower (first imports in the fork, caches), so the second one's time counts; and any run that finishes
    # before its kill shortens the span, so that a busy machine cannot push every kill past the end
    for warm in range(2):
        t0 = time.monotonic()
        code, lines = zygote.trial([str(home), str(tiny_lm), str(base - 1 - warm)], kill_after=None)
        span = time.monotonic() - t0
        assert code == 0 and lines[-1].startswith("recorded"), f"{code} {lines}\n{zygote.child.stderr()}"
    where = {"before the checkpoint": 0, "after the checkpoint, before the graph": 0, "after the graph": 0}
    for trial in range(TRIALS):
        seed = base + 1 + trial
        rng = random.Random(seed)
        why = f"trial {trial}, seed {seed} (rerun with MINDLOOP_RELIABILITY_SEED={base})"
        t0 = time.monotonic()
        code, lines = zygote.trial([str(home), str(tiny_lm), str(seed)], kill_after=rng.uniform(0.0, span * 1.1))
        assert code in (-9, 0), f"the worker ended with {code}; {why}\n{zygote.child.stderr()}"
        if code == 0:
            span = min(span, time.monotonic() - t0)
        done = {line.split()[0] for line in lines}
        where["after the graph" if "recorded" in done else
              "after the checkpoint, before the graph" if "trained" in done else "before the checkpoint"] += 1
        _check_runs(home, why)
    code, lines = zygote.trial([str(home), str(tiny_lm), str(base + 999)], kill_after=None)
    assert code == 0 and lines[-1].startswith("recorded"), f"training after the kills: {code} {lines}"
    counts = _check_runs(home, "after the last run")
    recovered(home, why="training kills")
    assert where["before the checkpoint"] >= TRIALS // 4, where
    figures.record("SIGKILL trials", TRIALS, ", ".join(f"{v} {k}" for k, v in where.items()))
    figures.record("runs after recovery", f"{counts['finished']} finished, {counts['failed']} failed",
                   "none left started; graph and disk list the same runs and checkpoints")
    figures.record("half-visible or corrupt checkpoints", 0)


# -- detection ----------------------------------------------------------------------------

DETECT_PRELOAD = '''
import numpy, sklearn
from mindloop.graph import GraphConfig, HashingEmbedder, MemoryGraph
from mindloop.agents.signal.detect import Detector
from mindloop.agents.signal.patterns import update_patterns
from mindloop.agents.signal.agent import SignalAgent, SignalConfig
'''

# What `mindloop detect --all` does: score every unflagged pair, store the flags, regroup the patterns.
DETECT_WORK = '''
def work(home, weights):
    g = MemoryGraph.open(GraphConfig(home=home, embedder="hashing"))
    detector = Detector.load(g.embedder, weights_path=weights)
    print("ready", flush=True)
    found = SignalAgent(g, detector, SignalConfig()).detect_all()
    print("flagged", len(found["flags"]), flush=True)
    update_patterns(g, g.embedder, config=SignalConfig())
    print("grouped", flush=True)
    g.close()
'''


def _detection_state(home: Path) -> tuple[dict, set]:
    with MemoryGraph.open(GraphConfig(home=home, embedder="hashing"), embedder=HashingEmbedder()) as g:
        flags = {f.id: (f.turn, f.type, f.confidence, f.status) for f in g.nodes(kind="flag")}
        turns = [f.turn for f in g.nodes(kind="flag")]
        assert len(turns) == len(set(turns)), "a reply was flagged twice"
        groups = set()
        for p in g.nodes(kind="pattern"):
            members = frozenset(e.src for e in g.edges(p.id, kinds=["member_of"], direction="in"))
            if members:
                groups.add(members)
    return flags, groups


def _many_conversations(copies: int) -> list[str]:
    lines = (REPO / "examples" / "data" / "corrections.jsonl").read_text().splitlines()
    out = []
    for k in range(copies):
        for line in lines:
            conv = json.loads(line)
            conv["session"] = f"{conv['session']}-{k}"
            conv["messages"] = [{**m, "content": f"{m['content']} (take {k})"} for m in conv["messages"]]
            out.append(json.dumps(conv))
    return out


def test_sigkill_during_detection_then_restart_gives_the_uninterrupted_flags_and_patterns(
        tmp_path, spawn, recovered, figures):
    from mindloop.agents.signal.detect import Detector
    from mindloop.agents.signal.patterns import update_patterns
    from mindloop.agents.signal.agent import SignalAgent, SignalConfig
    from mindloop.graph.conversations import import_conversations

    pristine, reference = tmp_path / "pristine", tmp_path / "reference"
    weights = tmp_path / "detector.npz"
    detector = Detector.load(HashingEmbedder())
    detector.weights.save(weights)
    with MemoryGraph.open(GraphConfig(home=pristine, embedder="hashing"), embedder=HashingEmbedder()) as g:
        conversations = _many_conversations(6)
        import_conversations(g, conversations)
        assert g.flush(timeout=120)
    shutil.copytree(pristine, reference)

    def restart(home: Path) -> None:  # the next `mindloop detect --all`, run to the end
        with MemoryGraph.open(GraphConfig(home=home, embedder="hashing"), embedder=HashingEmbedder()) as g:
            SignalAgent(g, Detector.load(g.embedder, weights_path=weights), SignalConfig()).detect_all()
            update_patterns(g, g.embedder, config=SignalConfig())

    t0 = time.monotonic()
    restart(reference)
    span = time.monotonic() - t0
    want_flags, want_groups = _detection_state(reference)
    assert len(want_flags) >= 100 and want_groups, (len(want_flags), len(want_groups))

    zygote = Zygote(spawn, DETECT_PRELOAD, DETECT_WORK)
    base = _seed()
    where = {"before any flag was stored": 0, "while flagging": 0, "while grouping": 0, "after it finished": 0}
    for trial in range(TRIALS):
        seed = base + trial
        rng = random.Random(seed)
        why = f"trial {trial}, seed {seed} (rerun with MINDLOOP_RELIABILITY_SEED={base})"
        home = tmp_path / f"trial{trial}"
        shutil.copytree(pristine, home)
        code, lines = zygote.trial([str(home), str(weights)], kill_after=rng.uniform(0.0, span * 1.2))
        assert code in (-9, 0), f"the worker ended with {code}; {why}\n{zygote.child.stderr()}"
        stored, _ = _detection_state(home)
        said = {line.split()[0] for line in lines}
        where["after it finished" if code == 0 else "while grouping" if "flagged" in said else
              "while flagging" if stored else "before any flag was stored"] += 1
        restart(home)
        flags, groups = _detection_state(home)
        assert flags == want_flags, (f"{len(set(want_flags) - set(flags))} flags missing, "
                                     f"{len(set(flags) - set(want_flags))} extra or changed; {why}")
        assert groups == want_groups, f"the patterns differ from an uninterrupted run's; {why}"
        recovered(home, why=why)
        shutil.rmtree(home)
    assert where["while flagging"] + where["while grouping"] >= TRIALS // 4, where
    figures.record("SIGKILL trials", TRIALS, ", ".join(f"{v} {k}" for k, v in where.items()))
    figures.record("flags per run", len(want_flags), f"in {len(want_groups)} pattern(s), over {len(conversations)} conversations")
    figures.record("lost, duplicated or changed flags after restart", 0, "same patterns as an uninterrupted run")
