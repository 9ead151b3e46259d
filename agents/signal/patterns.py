"""Patterns: clusters of flags that are the same failure.

:func:`update_patterns` rebuilds a scope's patterns:

1. each flag gets a vector that describes its failure rather than its topic
   (:func:`flag_vectors`): its type, the rule cues its correction and the
   flagged response match (``response_alternatives``, ``stop_alternatives``,
   ``i_said``, ...), and the sentence embedding of the type and the
   correction. Pairs above ``signal.similar_threshold`` get a ``similar_to``
   edge with the score. (Plain embeddings of correction + response group by
   topic: "rename it" and "add the index" land far apart although both
   complain about unwanted alternatives.)
2. Louvain communities of the flags on the networkx view
   (:meth:`mindloop.graph.view.GraphView.communities`) become patterns when they have
   at least ``signal.min_pattern_size`` flags; a community keeps the pattern
   most of its flags already belonged to, so ids survive a rebuild;
3. a pattern's name is its dominant flag type and its most distinctive
   words (highest in the pattern against all flags, TF-IDF style), or a
   short summary from the chat model when a judge is configured.

:func:`join_pattern` is the cheap path the chat loop takes for one new flag:
it joins the pattern whose centre is closest, when close enough.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

from mindloop.agents.signal.rules import FAMILIES, apply_rules
from mindloop.graph import Embedder, Flag, MemoryGraph, NodeNotFound, Pattern
from mindloop.graph.records import FlagType

__all__ = ["confirmed_flag_ids", "confirmed_flags", "describe", "flag_vectors", "join_pattern", "model_namer",
           "pattern_name", "pattern_flags", "resolve_pattern", "update_patterns"]

_STOP = set("""a an the to of in on for and or but is it this that these those i you me my your we our with be as
at by it's i'm was are do did does not no so just please can could would should will what which how why when
there here from into than then them they he she his her its if any all some one more most very really also
about up out over only have has had get got like make made use used want wanted asked said know don't dont
didn't isn't that's ok okay yes thanks sure let me instead other""".split())


def _tokens(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z][a-z0-9_'-]+", text.lower()) if w not in _STOP and len(w) > 2]


def pattern_name(members: Sequence[Flag], everyone: Sequence[Flag], *, words: int = 3) -> str:
    """The dominant flag type, then the ``words`` most distinctive words of the members' corrections."""
    kinds = Counter(f.type for f in members).most_common(1)[0][0].replace("_", " ")
    df: Counter[str] = Counter()
    for f in everyone:
        df.update(set(_tokens(f.reason.split(" || ")[0])))
    tf: Counter[str] = Counter()
    for f in members:
        tf.update(_tokens(f.reason.split(" || ")[0]))
    n = max(len(everyone), 1)
    ranked = sorted(tf, key=lambda w: (-(tf[w] * math.log(1 + n / df[w])), w))
    return f"{kinds}: {', '.join(ranked[:words])}" if ranked else kinds


_TYPES = [t.value for t in FlagType]


def flag_vectors(embedder: Embedder, flags: Sequence[Flag]) -> np.ndarray:
    """One unit vector per flag: type (weight 0.6), rule cues (0.5), embedding of type + correction (0.6)."""
    if not flags:
        return np.zeros((0, 0))
    corrections = [f.reason.split(" || ")[0] for f in flags]
    responses = [f.reason.split(" || ")[1] if " || " in f.reason else "" for f in flags]
    types = np.zeros((len(flags), len(_TYPES)))
    cues = np.zeros((len(flags), len(FAMILIES)))
    for i, f in enumerate(flags):
        types[i, _TYPES.index(f.type)] = 1.0
        for fam in apply_rules("", responses[i], corrections[i]).families:
            cues[i, FAMILIES.index(fam)] = 1.0
    cues /= np.maximum(np.linalg.norm(cues, axis=1, keepdims=True), 1e-9)
    text = embedder.embed([f"{f.type.replace('_', ' ')}: {c}" for f, c in zip(flags, corrections)])
    v = np.hstack([0.6 * types, 0.5 * cues, 0.6 * text])
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def pattern_flags(graph: MemoryGraph, pattern_id: str) -> list[Flag]:
    out = []
    for e in graph.edges(pattern_id, kinds=["member_of"], direction="in"):
        try:
            node = graph.get(e.src)
        except NodeNotFound:
            continue
        if isinstance(node, Flag) and node.status != "rejected":
            out.append(node)
    return out


def confirmed_flags(graph: MemoryGraph, pattern_id: str) -> list[Flag]:
    """The pattern's confirmed flags, oldest first: what composing, training and readiness count."""
    return sorted((f for f in pattern_flags(graph, pattern_id) if f.status == "confirmed"), key=lambda f: f.created)


def confirmed_flag_ids(graph: MemoryGraph, pattern_id: str) -> list[str]:
    """The ids of :func:`confirmed_flags`, sorted: what a run's tags and a checkpoint's manifest record."""
    return sorted(f.id for f in confirmed_flags(graph, pattern_id))


def _set_membership(graph: MemoryGraph, flag_id: str, pattern_id: str | None) -> None:
    for e in graph.edges(flag_id, kinds=["member_of"], direction="out"):
        if e.dst != pattern_id:
            graph.unlink(flag_id, e.dst, "member_of")
    if pattern_id is not None:
        graph.link(flag_id, pattern_id, "member_of")


def model_namer(backend) -> Callable[[Sequence[Flag]], str | None]:
    """A pattern namer that asks a chat model (used when ``signal.judge = "model"``); None on any failure."""

    def name(members: Sequence[Flag]) -> str | None:
        lines = "\n".join(f"- {f.reason.split(' || ')[0][:160]}" for f in members[:8])
        prompt = ("These are corrections users gave an assistant. Name the assistant's common mistake in at most "
                  f"six words, no punctuation:\n{lines}")
        try:
            text = backend.complete([{"role": "user", "content": prompt}], max_tokens=16, temperature=0.0)
        except Exception:  # the name is a nicety; the pattern stands without it
            return None
        text = " ".join(text.strip().strip(".\"'").split()[:8])
        return text or None

    return name


def update_patterns(graph: MemoryGraph, embedder: Embedder, *, scope: str | None = None, config=None,
                    namer: Callable[[Sequence[Flag]], str | None] | None = None) -> list[Pattern]:
    """Recompute similarity edges, communities and patterns for ``scope``; returns its patterns, largest first.

    ``namer`` (e.g. :func:`model_namer`) names a pattern from its flags; without one, or when it gives
    nothing, the name is the dominant type and the most distinctive words.
    """
    from mindloop.agents.signal.agent import SignalConfig

    config = config or SignalConfig()
    scope = graph.resolve_scope(scope)
    flags: list[Flag] = [f for f in graph.nodes(kind="flag", scope=scope) if f.status != "rejected"]  # type: ignore
    if not flags:
        return []
    vectors = flag_vectors(embedder, flags)
    sims = vectors @ vectors.T
    with graph.transaction():
        for i in range(len(flags)):
            for j in range(i + 1, len(flags)):
                if sims[i, j] >= config.similar_threshold:
                    graph.link(flags[i].id, flags[j].id, "similar_to", {"score": round(float(sims[i, j]), 4)})
    by_id = {f.id: f for f in flags}
    communities = [[by_id[n] for n in c if n in by_id] for c in graph.view.communities(
        scope, kinds=["flag"], resolution=config.pattern_resolution)]
    existing = {p.id: p for p in graph.nodes(kind="pattern", scope=scope)}
    current = {f.id: e.dst for f in flags for e in graph.edges(f.id, kinds=["member_of"], direction="out")}
    kept: set[str] = set()
    with graph.transaction():
        for members in communities:
            if len(members) < config.min_pattern_size:
                for f in members:
                    _set_membership(graph, f.id, None)
                continue
            votes = Counter(current[f.id] for f in members if current.get(f.id) in existing)
            votes = Counter({p: n for p, n in votes.items() if p not in kept})
            name = pattern_name(members, flags)
            if namer is not None:
                named = namer(members)
                if named:
                    name = named
            if votes:
                pattern = existing[votes.most_common(1)[0][0]]
                pattern.name = name
                pattern.description = _describe_members(members)
                graph.update(pattern)
            else:
                pattern = Pattern(scope=scope, name=name, description=_describe_members(members))
                graph.add(pattern)
            kept.add(pattern.id)
            for f in members:
                _set_membership(graph, f.id, pattern.id)
        for pid, pattern in existing.items():
            if pid not in kept and pattern.status == "open" and not pattern_flags(graph, pid):
                pattern.status = "empty"
                graph.update(pattern)
    return sorted((existing.get(pid) or graph.get(pid) for pid in kept),  # type: ignore[misc]
                  key=lambda p: -len(pattern_flags(graph, p.id)))


def _describe_members(members: Sequence[Flag]) -> str:
    examples = [f.reason.split(" || ")[0] for f in sorted(members, key=lambda f: -f.confidence)[:3]]
    return f"{len(members)} corrections, e.g. " + " / ".join(repr(e[:80]) for e in examples)


def join_pattern(graph: MemoryGraph, embedder: Embedder, flag: Flag, config=None) -> Pattern | None:
    """Put one new flag into the pattern whose centre is closest, if within ``signal.join_threshold``."""
    from mindloop.agents.signal.agent import SignalConfig

    config = config or SignalConfig()
    best: tuple[float, Pattern] | None = None
    v = flag_vectors(embedder, [flag])[0]
    for p in graph.nodes(kind="pattern", scope=flag.scope):
        members = [m for m in pattern_flags(graph, p.id) if m.id != flag.id]
        if not members:
            continue
        centre = flag_vectors(embedder, members).mean(axis=0)
        score = float(v @ centre / (np.linalg.norm(centre) or 1.0))
        if best is None or score > best[0]:
            best = (score, p)  # type: ignore[assignment]
    if best is None or best[0] < config.join_threshold:
        return None
    _set_membership(graph, flag.id, best[1].id)
    return best[1]


def resolve_pattern(graph: MemoryGraph, ref: str, scope: str | None = None) -> Pattern:
    """A pattern by id, or by its name (exact, then a unique case-insensitive prefix)."""
    scope = graph.resolve_scope(scope)
    try:
        node = graph.get(ref, scope)
        if isinstance(node, Pattern):
            return node
    except NodeNotFound:
        pass
    patterns = [p for p in graph.nodes(kind="pattern", scope=scope) if p.status != "empty"]
    exact = [p for p in patterns if p.name == ref]  # type: ignore[attr-defined]
    prefix = [p for p in patterns if p.name.lower().startswith(ref.lower())]  # type: ignore[attr-defined]
    found = exact or prefix
    if len(found) == 1:
        return found[0]  # type: ignore[return-value]
    names = ", ".join(f"{p.id} ({p.name})" for p in patterns) or "none"  # type: ignore[attr-defined]
    why = "matches several patterns" if found else "matches no pattern"
    raise NodeNotFound(f"pattern {ref!r} {why} in scope {scope!r}; patterns: {names}")


def describe(graph: MemoryGraph, pattern: Pattern, *, now: float | None = None) -> dict[str, Any]:
    """A pattern's counts: flags by status and type, and flags per week over the last 8 weeks."""
    members = pattern_flags(graph, pattern.id)
    now = now or time.time()
    weeks = [0] * 8
    for f in members:
        age = int((now - f.created) // (7 * 86400))
        if 0 <= age < 8:
            weeks[7 - age] += 1
    return {"id": pattern.id, "name": pattern.name, "status": pattern.status, "flags": len(members),
            "by_status": dict(Counter(f.status for f in members)), "by_type": dict(Counter(f.type for f in members)),
            "per_week": weeks, "first": min((f.created for f in members), default=None),
            "last": max((f.created for f in members), default=None), "description": pattern.description}
