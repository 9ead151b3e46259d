"""Composing a pattern's balanced training examples from its confirmed flags.

For one pattern, :func:`compose` builds (and stores as :class:`graph.Example`
nodes with ``derived_from`` edges to their turns and flags):

- **accept** examples: the conversation up to the flagged turn (without the
  correction) → the better response. The better response is, in order of
  precedence: the one a reviewer supplied (``flags edit``); the assistant's
  reply after the correction when the user then accepted it; a reply the
  model generates with the flagged reply and the correction in its context.
  A reviewer's edit comes first because a person wrote it for this purpose.
- **push-back** examples (``pushback_ratio`` per accept example, default 1/3):
  logged turns where the assistant pushed back and the user agreed, then the
  shipped wrong-direction scenarios (``agents/signal/data/pushback_scenarios.jsonl``)
  that guard the pattern's failure family.
- **general** replay (``general_ratio`` of the whole set, default 25%): logged
  replies the user was satisfied with, then shipped general prompts
  (``agents/signal/data/general_prompts.jsonl``) answered by the current model before
  training (or their reference answers when no model is given).

Near-duplicates are dropped (cosine similarity of the embedded example), a
share of each kind is held out for evaluation (chosen by a hash of the
example id, so it is stable), and examples a run already trained on are not
reused unless asked. :func:`write_jsonl` writes the TRL formats.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from mindloop.agents.signal.patterns import confirmed_flags
from mindloop.agents.signal.rules import apply_rules
from mindloop.graph import Embedder, Example, InvalidRecord, MemoryGraph, NodeNotFound, Pattern, Turn

__all__ = ["ComposeConfig", "Composed", "compose", "general_prompts", "pushback_scenarios", "write_jsonl"]

log = logging.getLogger(__name__)

KINDS = ("accept", "pushback", "general")


@dataclass
class ComposeConfig:
    """Settings of :func:`compose`. Section ``[compose]`` of config.toml."""

    general_ratio: float = field(default=0.25, metadata={"help": "share of general replay in the set, in [0, 1)"})
    pushback_ratio: float = field(default=1 / 3, metadata={"help": "push-back examples per accept example; 0 = none"})
    heldout_ratio: float = field(default=0.2, metadata={"help": "share of each kind held out for evaluation"})
    dedup_similarity: float = field(default=0.95, metadata={
        "help": "cosine similarity from which an example is a near-duplicate of an earlier one; 1 = off"})
    max_tokens: int = field(default=160, metadata={"help": "token cap for generated replies"})
    include_trained: bool = field(default=False, metadata={"help": "reuse examples a run already trained on"})

    def __post_init__(self) -> None:
        from mindloop.graph.config import ConfigError

        if not 0.0 <= self.general_ratio < 1.0:
            raise ConfigError(f"general ratio must be in [0, 1), got {self.general_ratio}")
        if self.pushback_ratio < 0:
            raise ConfigError(f"push-back ratio must be 0 or more, got {self.pushback_ratio}")
        if not 0.0 <= self.heldout_ratio < 1.0:
            raise ConfigError(f"held-out ratio must be in [0, 1), got {self.heldout_ratio}")
        if not 0.0 < self.dedup_similarity <= 1.0:
            raise ConfigError(f"dedup similarity must be in (0, 1], got {self.dedup_similarity}")


@dataclass
class Composed:
    """What :func:`compose` made for one pattern."""

    pattern: Pattern
    examples: list[Example] = field(default_factory=list)
    dropped_duplicates: int = 0
    skipped_trained: int = 0
    skipped_flags: list[str] = field(default_factory=list)  # flags with no better response to learn from

    def counts(self) -> dict[str, Any]:
        by = Counter((e.example_kind, e.split) for e in self.examples)
        return {"pattern": self.pattern.id, "name": self.pattern.name,
                "kinds": {k: {"train": by[(k, "train")], "heldout": by[(k, "heldout")]} for k in KINDS},
                "sources": dict(Counter(e.source.split(":")[0] for e in self.examples)),
                "preference_pairs": sum(1 for e in self.examples if e.rejected),
                "dropped_duplicates": self.dropped_duplicates, "skipped_trained": self.skipped_trained,
                "skipped_flags": len(self.skipped_flags), "total": len(self.examples)}


def _read_shipped(name: str) -> list[dict[str, Any]]:
    path = Path(str(resources.files("mindloop.agents.signal") / "data" / name))
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def pushback_scenarios() -> list[dict[str, Any]]:
    """The shipped wrong-direction scenarios: messages, the push-back reply, the compliant reply."""
    return _read_shipped("pushback_scenarios.jsonl")


def general_prompts() -> list[dict[str, Any]]:
    """The shipped general replay prompts (code, arithmetic, writing, facts) with reference answers."""
    return _read_shipped("general_prompts.jsonl")


_AGREES = re.compile(r"^\W*(ok(ay)?|right|fair|good (catch|point)|you'?re right|true|makes sense|agreed|sure|"
                     r"fine|yes|yep|got it|good call)\b", re.IGNORECASE)


def is_pushback(text: str) -> bool:
    """Does an assistant reply push back on the user's direction? (the ``response_pushback`` rule)"""
    return apply_rules("", text, "").pushback


def _messages(turns: Sequence[Turn]) -> list[dict[str, str]]:
    return [{"role": t.role, "content": t.text} for t in turns]


def _example_id(scope: str, pattern: str, kind: str, prompt: list[dict], completion: str) -> str:
    key = json.dumps([scope, pattern, kind, prompt, completion], ensure_ascii=False, sort_keys=True)
    return "example_" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _bucket(example: Example) -> float:
    """Where an example falls in [0, 1) for the held-out split: a hash of its content, never of its pattern.

    Pattern ids are drawn at random when patterns are (re)built, so a bucket from the example id would move
    examples between the splits whenever a pattern is rebuilt: an example held out once could be trained on
    after, and the gate would score a run on what it learned.
    """
    key = json.dumps([example.scope, example.example_kind, example.prompt, example.completion], ensure_ascii=False,
                     sort_keys=True)
    return int(hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) / 0xFFFFFFFF


class _Builder:
    def __init__(self, graph: MemoryGraph, pattern: Pattern, embedder: Embedder, backend, detector,
                 config: ComposeConfig) -> None:
        self.graph, self.pattern, self.embedder = graph, pattern, embedder
        self.backend, self.detector, self.config = backend, detector, config
        self.scope = pattern.scope
        self.items: list[tuple[Example, list[str]]] = []  # example, ids it derives from
        self.sessions: dict[str, list[Turn]] = {}

    def turns(self, session: str) -> list[Turn]:
        if session not in self.sessions:
            self.sessions[session] = self.graph.session_turns(session, self.scope)
        return self.sessions[session]

    def add(self, kind: str, prompt: list[dict], completion: str, source: str, derived: list[str],
            rejected: str | None = None) -> None:
        ex = Example(scope=self.scope, id=_example_id(self.scope, self.pattern.id, kind, prompt, completion),
                     pattern=self.pattern.id, example_kind=kind, prompt=prompt, completion=completion.strip(),
                     rejected=rejected, source=source)
        self.items.append((ex, derived))

    def generate(self, messages: list[dict]) -> str | None:
        if self.backend is None:
            return None
        reply = self.backend.complete(messages, max_tokens=self.config.max_tokens, temperature=0.0).strip()
        return reply or None

    def accepted(self, turns: list[Turn], at: int) -> bool:
        """Is there a user turn after turns[at] that does not correct it?"""
        if at + 1 >= len(turns) or turns[at + 1].role != "user":
            return False
        if self.detector is not None:
            from mindloop.agents.signal.detect import Pair

            return not self.detector.detect(Pair(context=_messages(turns[:at]), response=turns[at].text,
                                                 followup=turns[at + 1].text)).is_correction
        rules = apply_rules(turns[at - 1].text if at else "", turns[at].text, turns[at + 1].text)
        return "thanks" in rules.families and rules.correction_cues == 0


def compose(graph: MemoryGraph, pattern: Pattern, *, embedder: Embedder, backend=None, detector=None,
            config: ComposeConfig | None = None, store: bool = True) -> Composed:
    """Build the pattern's balanced examples; see the module docstring. Stores them unless ``store=False``."""
    config = config or ComposeConfig()
    flags = confirmed_flags(graph, pattern.id)
    if not flags:
        raise InvalidRecord(f"pattern {pattern.id} ({pattern.name}) has no confirmed flags: review them with "
                            f"`mindloop flags list --pattern {pattern.id}` and `mindloop flags confirm ID`")
    b = _Builder(graph, pattern, embedder, backend, detector, config)
    out = Composed(pattern=pattern)

    # accept: the conversation up to the flagged turn -> the better response
    for flag in flags:
        turns = b.turns(flag.session)  # type: ignore[arg-type]
        at = next((i for i, t in enumerate(turns) if t.id == flag.turn), None)
        if at is None:
            out.skipped_flags.append(flag.id)
            continue
        prompt = _messages(turns[:at])
        derived = [flag.id, flag.turn] + ([flag.correction] if flag.correction else [])
        if flag.better_response:
            b.add("accept", prompt, flag.better_response, "edited", derived, rejected=turns[at].text)
            continue
        reply_at = at + 2
        if (reply_at < len(turns) and turns[reply_at].role == "assistant" and turns[at + 1].id == flag.correction
                and b.accepted(turns, reply_at)):
            b.add("accept", prompt, turns[reply_at].text, "accepted_reply", derived + [turns[reply_at].id],
                  rejected=turns[at].text)
            continue
        correction = next((t for t in turns if t.id == flag.correction), None)
        generated = b.generate(prompt + [{"role": "assistant", "content": turns[at].text},
                                         {"role": "user", "content": correction.text}]) if correction else None
        if generated:
            b.add("accept", prompt, generated, "generated", derived, rejected=turns[at].text)
        else:
            out.skipped_flags.append(flag.id)
    n_accept = sum(1 for e, _ in b.items if e.example_kind == "accept")
    if n_accept == 0:
        raise InvalidRecord(f"pattern {pattern.id}: none of its {len(flags)} confirmed flags has a better "
                            "response; supply one with `mindloop flags edit ID --response TEXT` or compose with a "
                            "model to generate it")
    flagged_turns = {f.turn for f in graph.nodes(kind="flag", scope=pattern.scope)  # type: ignore[attr-defined]
                     if f.status != "rejected"}  # type: ignore[attr-defined]

    # push-back: logged push-backs the user agreed with, then shipped scenarios of this failure family
    want_push = round(n_accept * config.pushback_ratio)
    logged_push, logged_general = [], []
    for t in graph.nodes(kind="turn", scope=pattern.scope):
        if t.role != "assistant" or t.id in flagged_turns:  # type: ignore[attr-defined]
            continue
        turns = b.turns(t.session)  # type: ignore[arg-type]
        at = t.index  # type: ignore[attr-defined]
        if at >= len(turns) or turns[at].id != t.id or at + 1 >= len(turns):
            continue
        follow = turns[at + 1]
        if is_pushback(t.text) and _AGREES.search(follow.text):  # type: ignore[attr-defined]
            logged_push.append((turns, at))
        elif b.accepted(turns, at) and "thanks" in apply_rules("", t.text, follow.text).families:  # type: ignore
            logged_general.append((turns, at))
    for turns, at in logged_push[:want_push]:
        b.add("pushback", _messages(turns[:at]), turns[at].text, "logged_pushback", [turns[at].id, turns[at + 1].id])
    kind_of = Counter(f.type for f in flags).most_common(1)[0][0]
    # which shipped scenarios and prompts a pattern draws: by its name, which its members decide, not by its id,
    # which is drawn at random when patterns are built: the same failure composes the same examples every time
    draw = f"{pattern.scope}/{pattern.name}"
    scenarios = [s for s in pushback_scenarios() if s.get("pattern_hint") in (kind_of, "any")]
    scenarios.sort(key=lambda s: hashlib.sha256(f"{draw}{s['id']}".encode()).hexdigest())
    for s in scenarios[: max(0, want_push - len(logged_push))]:
        b.add("pushback", s["messages"], s["pushback"], f"scenario:{s['id']}", [], rejected=s.get("comply"))

    # general replay: satisfied logged turns first, then shipped prompts answered by the current model
    n_rest = len(b.items)
    want_general = math.ceil(n_rest * config.general_ratio / (1 - config.general_ratio)) if config.general_ratio else 0
    for turns, at in logged_general[:want_general]:
        b.add("general", _messages(turns[:at]), turns[at].text, "logged_satisfied", [turns[at].id, turns[at + 1].id])
    prompts = sorted(general_prompts(), key=lambda g: hashlib.sha256(f"{draw}{g['id']}".encode()).hexdigest())
    for g in prompts[: max(0, want_general - len(logged_general))]:
        messages = [{"role": "user", "content": g["prompt"]}]
        answer = b.generate(messages)
        b.add("general", messages, answer or g["reference"], "model_before_training" if answer else "reference", [])

    _finish(graph, b, out, store)
    return out


def _finish(graph: MemoryGraph, b: _Builder, out: Composed, store: bool) -> None:
    config = b.config
    items = b.items
    # near-duplicates, in order (accept first, so a general replay never pushes out an accept example)
    if items and config.dedup_similarity < 1.0:
        texts = [" ".join(m["content"] for m in e.prompt[-1:]) + " => " + e.completion for e, _ in items]
        v = b.embedder.embed(texts)
        keep: list[int] = []
        for i in range(len(items)):
            if keep and float((v[keep] @ v[i]).max()) >= config.dedup_similarity:
                out.dropped_duplicates += 1
                continue
            keep.append(i)
        items = [items[i] for i in keep]
    # examples a run already trained on
    if not config.include_trained:
        fresh = []
        for e, d in items:
            try:
                graph.get(e.id)
                trained = bool(graph.edges(e.id, kinds=["trained_on"], direction="in"))
            except NodeNotFound:
                trained = False
            if trained:
                out.skipped_trained += 1
            else:
                fresh.append((e, d))
        items = fresh
    # held out per kind: the examples with the lowest hash buckets, at least one when a kind has 3 or more
    for kind in KINDS:
        of_kind = sorted((e for e, _ in items if e.example_kind == kind), key=_bucket)
        n_held = round(len(of_kind) * config.heldout_ratio)
        if config.heldout_ratio > 0 and len(of_kind) >= 3:
            n_held = max(1, n_held)
        for e in of_kind[:n_held]:
            e.split = "heldout"
    out.examples = [e for e, _ in items]
    if not store:
        return
    with graph.transaction():
        for e, derived in items:
            try:
                old = graph.get(e.id)
                old.split, old.source, old.rejected = e.split, e.source, e.rejected  # type: ignore[attr-defined]
                graph.update(old)
            except NodeNotFound:
                # every example traces back: to its turns and flags, and always to the pattern it serves
                graph.add(e, [(e.id, d, "derived_from") for d in dict.fromkeys([*derived, b.pattern.id])])


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def trl_rows(examples: Sequence[Example]) -> dict[str, list[dict[str, Any]]]:
    """The examples in TRL's conversational formats: ``sft`` (prompt/completion), ``pairs``
    (prompt/chosen/rejected) and ``kto`` (prompt/completion/label)."""
    sft, pairs, kto = [], [], []
    for e in examples:
        meta = {"id": e.id, "kind": e.example_kind}
        sft.append({"prompt": e.prompt, "completion": _assistant(e.completion), **meta})
        kto.append({"prompt": e.prompt, "completion": _assistant(e.completion), "label": True, **meta})
        if e.rejected:
            pairs.append({"prompt": e.prompt, "chosen": _assistant(e.completion), "rejected": _assistant(e.rejected),
                          **meta})
            kto.append({"prompt": e.prompt, "completion": _assistant(e.rejected), "label": False, **meta})
    return {"sft": sft, "pairs": pairs, "kto": kto}


def write_jsonl(examples: Sequence[Example], out: str | os.PathLike) -> dict[str, str]:
    """Write ``out`` (SFT, train split) and beside it ``.pairs``, ``.kto`` and ``.heldout`` files.

    Each file is written to a temporary name, fsynced and renamed, so a failed
    run leaves the old files (or none), never a half-written one.
    """
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".jsonl" else out
    train = [e for e in examples if e.split == "train"]
    held = [e for e in examples if e.split == "heldout"]
    rows = trl_rows(train)
    files = {"sft": out, "pairs": Path(f"{stem}.pairs.jsonl"), "kto": Path(f"{stem}.kto.jsonl"),
             "heldout": Path(f"{stem}.heldout.jsonl")}
    content = {**rows, "heldout": trl_rows(held)["sft"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmps = []
    try:
        for key, path in files.items():
            tmp = path.with_name(f".{path.name}.tmp")
            tmps.append((tmp, path))
            with open(tmp, "w", encoding="utf-8") as fh:
                for row in content[key]:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, path in tmps:
            tmp.replace(path)
    finally:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)
    return {k: str(v) for k, v in files.items()}
