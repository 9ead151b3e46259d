"""Fixtures for the UI: a data directory filled like the demo's, with fakes only (no model weights).

``fill_demo`` logs the scripted conversations of ``examples/data/corrections.jsonl``
spread over three weeks, flags the corrections with the detector's phrase
rules (:class:`RuleDetector`), groups them into patterns (hashing embedder), reviews some, composes the top
pattern's examples, then records two training runs whose checkpoints are
small but valid safetensors files: the first is promoted, the second promoted
and rolled back after an alert. One more run folder is left as a killed run
leaves it (disk only, status "failed").
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from mindloop.graph import Alert, Flag, GraphConfig, HashingEmbedder, MemoryGraph
from mindloop.trainer.checkpoints import checkpoint_id_for

ROOT = Path(__file__).resolve().parents[2]
DAY = 86400.0
PAYLOADS = ('<script>window.__pwned=1</script>', '<img src=x onerror="window.__pwned=1">',
            '"><svg onload=window.__pwned=1>', "</script><script>window.__pwned=1</script>",
            "javascript:window.__pwned=1", "{{ 7*7 }}")
ATTACK = " ".join(PAYLOADS)


def _config(home: Path) -> GraphConfig:
    return GraphConfig(home=home, embedder="hashing", embed_poll_s=0.2)


class RuleDetector:
    """A scripted detector: the detector's own phrase rules decide, so flags carry real types and evidence
    without training the classifier (seconds) or loading the reader (a model)."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder
        self.threshold = 0.5

    def detect(self, pair):
        return self.score([pair])[0]

    def score(self, pairs):
        import hashlib

        from mindloop.agents.signal.detect import Detection
        from mindloop.agents.signal.rules import apply_rules

        out = []
        for p in pairs:
            request = next((m["content"] for m in reversed(p.context) if m["role"] == "user"), "")
            r = apply_rules(request, p.response, p.followup)
            jitter = int(hashlib.sha256(p.followup.encode()).hexdigest()[:4], 16) / 0xFFFF * 0.2
            confidence = min(0.99, 0.45 + 0.15 * r.correction_cues + jitter) if r.correction_cues else 0.1
            out.append(Detection(is_correction=r.correction_cues > 0, confidence=confidence,
                                 type=r.type_hint or "other", evidence=r.evidence))
        return out


def _flags_dated(graph: MemoryGraph, detector) -> list[Flag]:
    """Flag every correction as the loop's hook would have when it happened (dated by the correction)."""
    from mindloop.agents.signal.agent import correction_pairs, flag_id

    found = []
    sessions = sorted({t.session for t in graph.nodes(kind="turn")})
    for name in sessions:
        pairs = correction_pairs(graph.session_turns(name))
        for (reply, follow, _), d in zip(pairs, detector.score([p for *_, p in pairs])):
            if not d.is_correction:
                continue
            flag = Flag(id=flag_id(reply.scope, reply.id), session=name, turn=reply.id, correction=follow.id,
                        type=d.type, confidence=round(d.confidence, 4), evidence=d.evidence,
                        reason=f"{follow.text} || {reply.text}", created=follow.created)
            with graph.transaction():
                graph.add(flag, [(flag.id, reply.id, "flags")])
                graph.link(follow.id, reply.id, "corrects", {"confidence": flag.confidence})
            found.append(flag)
    return found


def _metrics(target: float, pushback: float, capability: float, ppl: float) -> dict:
    return {"kinds": {"target": {"mean_margin": target, "win_rate": 0.5 + target / 4, "n": 12},
                      "pushback": {"mean_margin": pushback, "win_rate": 0.8, "n": 44},
                      "capability": {"mean_margin": 0.4, "win_rate": capability, "n": 68}},
            "perplexity": ppl, "attention_mass": 0.21, "checkpoint": None,
            "steering": {"layer": 15, "consistency": 0.42, "projection": target / 3}}


def _fake_run(graph: MemoryGraph, run_id: str, parent: str | None, example_ids: list[str], *, pattern: str,
              drop: float, model: str = "bundled") -> str:
    """A finished run as trainer.run writes it (files and checkpoint), recorded with trainer.run.record_run."""
    import numpy as np
    from safetensors.numpy import save_file

    from mindloop.trainer.checkpoints import Checkpoints
    from mindloop.trainer.run import TrainResult, record_run

    home = graph.config.home
    run_dir = home / "runs" / run_id
    run_dir.mkdir(parents=True)
    config = {"objective": "sft", "method": "lora", "lr": None, "learning_rate": 1e-4, "epochs": 1.0,
              "context_frozen": True, "model": model, "batch_size": 4, "pattern": pattern}
    steps = [{"step": i, "loss": round(2.4 * (1 - drop) ** i + 0.3, 4), "learning_rate": 1e-4, "epoch": i / 30}
             for i in range(1, 31)]
    before, after = _metrics(-0.35, 1.2, 0.62, 18.4), _metrics(0.41, 1.16, 0.61, 18.6)
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (run_dir / "metrics.json").write_text(json.dumps({"before": before, "after": after}))
    (run_dir / "status").write_text("finished\n")
    checkpoint = checkpoint_id_for(run_id)

    def save(folder: Path) -> None:
        save_file({"lora_A": np.zeros((2, 2), dtype=np.float32)}, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text("{}")

    store = Checkpoints(home / "checkpoints")
    store.write(checkpoint, save, {"kind": "lora", "base_model": "SmolLM2-135M-Instruct", "parent": parent,
                                   "run": run_id, "created": time.time(), "pattern": pattern})
    result = TrainResult(run_id=run_id, run_dir=run_dir, checkpoint=checkpoint, checkpoint_dir=store.root / checkpoint,
                         parent=parent, before=before, after=after, steps=steps, data_hash="0" * 64, config=config)
    record_run(graph, result, example_ids=example_ids)
    return checkpoint


def _set_status(graph: MemoryGraph, node_id: str, status: str) -> None:
    node = graph.get(node_id)
    node.status = status  # type: ignore[attr-defined]
    graph.update(node)


def _date_history(store, times: list[float]) -> None:
    """Give the promotions and rollbacks the dates they would have had: the fixture makes them in a second."""
    events = store.history()
    assert len(events) == len(times)
    path = store.root / "history.jsonl"
    path.write_text("".join(json.dumps({**ev, "at": at}) + "\n" for ev, at in zip(events, times)))


def fill_demo(home: Path, *, attack: bool = False) -> dict:
    """Fill ``home`` (see the module docstring); with ``attack``, plant script and HTML payloads everywhere."""
    from mindloop.agents.signal.compose import compose
    from mindloop.agents.signal.patterns import update_patterns
    from mindloop.agents.signal.agent import SignalAgent
    from mindloop.trainer.checkpoints import Checkpoints

    embedder = HashingEmbedder()
    lines = (ROOT / "examples" / "data" / "corrections.jsonl").read_text(encoding="utf-8").splitlines()
    convs = [json.loads(line) for line in lines if line.strip()]
    start = time.time() - 21 * DAY
    out: dict = {}
    with MemoryGraph.open(_config(home), embedder=embedder) as g:
        for i, conv in enumerate(convs):
            at = start + i * (20 * DAY / len(convs))
            turns = [{"role": m["role"], "text": (f"{m['content']} {ATTACK}" if attack and j == 0 else m["content"]),
                      "created": at + j * 60} for j, m in enumerate(conv["messages"])]
            g.log_turns(conv["session"], turns)
        detector = RuleDetector(embedder)
        flags = _flags_dated(g, detector)
        patterns = update_patterns(g, embedder)
        agent = SignalAgent(g, detector)
        for f in flags:
            if f.confidence >= 0.75:
                agent.confirm(f.id)
        low = sorted(flags, key=lambda f: f.confidence)
        agent.reject(low[0].id)
        top = patterns[0]
        members = agent.flags(pattern=top.id)
        edited = next(f for f in members if f.status == "confirmed")
        agent.edit(edited.id, "Renamed: `retry_count = 0` and every use of `tmp` now reads `retry_count`."
                   + (f" {ATTACK}" if attack else ""))
        if attack:
            top.name = f"alternatives {ATTACK}"
            top.description = ATTACK
            g.update(top)
            flag = g.get(edited.id)
            flag.evidence = [*flag.evidence, ATTACK]  # type: ignore[attr-defined]
            g.update(flag)
        made = compose(g, top, embedder=embedder, backend=None, detector=detector)
        train_ids = [e.id for e in made.examples if e.split == "train"]
        first = _fake_run(g, "run_20261101-090000_aaaaaa", None, train_ids, pattern=top.id, drop=0.12,
                          model=f"bundled {ATTACK}" if attack else "bundled")
        store = Checkpoints(home / "checkpoints")
        store.promote(first, reason=f"gate passed {ATTACK}" if attack else "gate passed")
        _set_status(g, first, "promoted")
        second = _fake_run(g, "run_20261108-090000_bbbbbb", first, train_ids[:4], pattern=top.id, drop=0.25)
        store.promote(second, reason="gate passed")
        _set_status(g, second, "promoted")
        alert = g.add(Alert(checkpoint=second, status="open", details={"kind": "watch"},
                            reason=(f"trained pattern recurred: 0.050 -> 0.180 {ATTACK}" if attack
                                    else "trained pattern recurred: 0.050 -> 0.180 (p=0.0031)")))
        g.link(alert.id, second, "rolled_back")
        store.rollback(reason="trained pattern recurred")
        _set_status(g, second, "rolled_back")
        _date_history(store, [start + 7 * DAY, start + 14 * DAY, start + 15 * DAY])
        killed = home / "runs" / "run_20261109-120000_cccccc"
        killed.mkdir(parents=True)
        (killed / "config.json").write_text(json.dumps({"objective": "dpo", "method": "lora"}))
        (killed / "steps.jsonl").write_text('{"step": 1, "loss": 0.69}\n{"step": 2, "lo')
        (killed / "status").write_text("failed: KeyboardInterrupt: \n")
        g.flush()
        out.update(pattern=top.id, flags=[f.id for f in flags], edited=edited.id, rejected=low[0].id,
                   runs=["run_20261101-090000_aaaaaa", "run_20261108-090000_bbbbbb"], killed=killed.name,
                   checkpoints=[first, second], alert=alert.id, examples=train_ids,
                   turn=g.get(edited.id).turn,  # type: ignore[attr-defined]
                   user_turn=g.session_turns(edited.session)[0].id)  # type: ignore[arg-type]
    (home / "fixture.json").write_text(json.dumps(out))
    return out


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory):
    """A filled data directory, made once; tests use copies (:func:`demo_home`)."""
    home = tmp_path_factory.mktemp("ui-demo") / "home"
    fill_demo(home)
    return home


@pytest.fixture(scope="session")
def attack_template(tmp_path_factory):
    home = tmp_path_factory.mktemp("ui-attack") / "home"
    fill_demo(home, attack=True)
    return home


def _copy(template: Path, dest: Path) -> tuple[Path, dict]:
    shutil.copytree(template, dest)  # chroma.lock comes along: it records that the index was closed cleanly
    return dest, json.loads((dest / "fixture.json").read_text())


@pytest.fixture(scope="module")
def demo(demo_template, tmp_path_factory):
    """(graph, facts) over a fresh copy of the demo data, for one test module."""
    home, facts = _copy(demo_template, tmp_path_factory.mktemp("ui-copy") / "home")
    g = MemoryGraph.open(_config(home), embedder=HashingEmbedder())
    yield g, facts
    g.close()


@pytest.fixture(scope="module")
def attacked(attack_template, tmp_path_factory):
    home, facts = _copy(attack_template, tmp_path_factory.mktemp("ui-attack-copy") / "home")
    g = MemoryGraph.open(_config(home), embedder=HashingEmbedder())
    yield g, facts
    g.close()


def _windows(start: float, flags: list[int], surfaced: list[int]) -> list[dict]:
    return [{"start": start + i * 6 * 3600, "end": start + (i + 1) * 6 * 3600, "turns": 40, "flags": {"p1": f},
             "surfaced_corrections": c, "dependence_mean": None} for i, (f, c) in enumerate(zip(flags, surfaced))]


T0 = 1_700_000_000.0
# surface-observe's report (``mindloop observe --json``): ckpt_a kept; ckpt_b rolled back when p1 came back.
OBSERVER_REPORT = {
    "in_use": "ckpt_a",
    "checkpoints": [
        {"id": "ckpt_a", "parent": None, "promoted_at": T0, "status": "promoted", "verdict": "keep",
         "baseline_windows": _windows(T0 - 24 * 3600, [7, 6, 7, 6], [5, 5, 4, 5]),
         "windows": _windows(T0, [3, 2, 2, 1], [2, 2, 1, 1]),
         "tests": [{"what": "trained pattern recurred: p1", "before_rate": 0.163, "after_rate": 0.05, "p_value": 0.99,
                    "n_before": 160, "n_after": 160, "verdict": "no rise"}]},
        {"id": "ckpt_b", "parent": "ckpt_a", "promoted_at": T0 + 36 * 3600, "status": "rolled_back",
         "verdict": "rollback", "baseline_windows": [],
         "windows": _windows(T0 + 36 * 3600, [6, 8], [4, 5]),
         "tests": [{"what": "trained pattern recurred: p1", "before_rate": 0.05, "after_rate": 0.175,
                    "p_value": 0.0021, "n_before": 160, "n_after": 80, "verdict": "rose"}]}],
    "alerts": [{"id": "alert_b", "kind": "watch", "message": "trained pattern recurred: p1 (0.050 -> 0.175)",
                "checkpoint": "ckpt_b", "open": False, "created_at": T0 + 48 * 3600},
               {"id": "alert_c", "kind": "gate", "message": "candidate ckpt_c: perplexity +3.1% <b>over</b> 2%",
                "checkpoint": "ckpt_c", "open": True, "created_at": T0 + 50 * 3600}],
    "rollbacks": [{"checkpoint": "ckpt_b", "to": "ckpt_a", "at": T0 + 48 * 3600, "reason": "trained pattern recurred"}],
}


def LiveServer(app):
    """A real uvicorn server on 127.0.0.1 in a thread (for the browser): the proxy tests' server, on a free port."""
    from ..agents.conftest import LiveServer as _Server, free_port

    return _Server(app, free_port())
