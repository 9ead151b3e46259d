"""Builders shared by the observer and scheduler tests: flagged conversations, patterns, checkpoints on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mindloop.graph import Flag, MemoryGraph, Pattern


def add_pattern(graph: MemoryGraph, name: str = "suggests alternatives instead of doing it") -> Pattern:
    return graph.add(Pattern(name=name, description="the user asked for one thing; the reply offered others"))


def log_exchange(graph: MemoryGraph, session: str, *, checkpoint: str | None, created: float,
                 pattern: Pattern | None = None, surfaced_kind: str | None = None, status: str = "confirmed",
                 better: str | None = "done", model: str | None = "tiny") -> list:
    """A user request and the assistant's reply served by ``checkpoint``; with ``pattern`` the user corrects it
    (a flag in that pattern) and the assistant then does it."""
    meta = {"surfaced": [{"id": "mem_x", "kind": surfaced_kind}]} if surfaced_kind else {}
    n = sum(map(ord, session))  # distinct texts per session, so composing does not drop them as near-duplicates
    turns = [dict(role="user", text=f"rename the function please {session} {n}", created=created,
                  checkpoint=checkpoint, model=model),
             dict(role="assistant", text="you could use a class or what", created=created + 0.1,
                  checkpoint=checkpoint, meta=meta, model=model)]
    if pattern is not None:
        turns += [dict(role="user", text="no just do the rename", created=created + 0.2, checkpoint=checkpoint,
                       model=model),
                  dict(role="assistant", text=f"done it is {session}", created=created + 0.3, checkpoint=checkpoint,
                       model=model),
                  dict(role="user", text="ok thanks", created=created + 0.4, checkpoint=checkpoint, model=model)]
    logged = graph.log_turns(session, turns)
    if pattern is not None:
        flag = graph.add(Flag(session=session, turn=logged[1].id, correction=logged[2].id, type="unwanted_alternatives",
                              confidence=0.9, status=status, evidence=["no just do"], better_response=better and f"{better} {session} {n}",
                              created=created + 0.2),
                         [(logged[2].id, logged[1].id, "corrects")])
        graph.link(flag.id, logged[1].id, "flags")
        graph.link(flag.id, pattern.id, "member_of")
    return logged


def fake_checkpoint(root: Path, checkpoint_id: str, *, parent: str | None = None, metrics: dict | None = None,
                    pattern: str | None = None) -> None:
    """A whole LoRA checkpoint folder (tiny safetensors, manifest) as the trainer writes it."""
    from safetensors.numpy import save_file

    import numpy as np

    d = root / checkpoint_id
    d.mkdir(parents=True)
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(d / "adapter_model.safetensors"))
    (d / "adapter_config.json").write_text("{}")
    (d / "manifest.json").write_text(json.dumps({
        "id": checkpoint_id, "kind": "lora", "base_model": "tiny", "parent": parent, "run": "run_" + checkpoint_id,
        "created": time.time(), "metrics": metrics or {}, **({"pattern": pattern} if pattern else {})}))


def metrics(target: float = 0.1, pushback: float = 0.5, capability: float = 0.8, ppl: float = 10.0) -> dict:
    return {"kinds": {"target": {"mean_margin": target, "win_rate": 0.5, "n": 4},
                      "pushback": {"mean_margin": pushback, "win_rate": 0.5, "n": 4},
                      "capability": {"mean_margin": 1.0, "win_rate": capability, "n": 10}},
            "perplexity": ppl}
