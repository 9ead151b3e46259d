"""The training-signal agent: flags in the loop and in batch, review, patterns, composing examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mindloop.agents.chat.backends import ScriptedBackend
from mindloop.agents.signal.compose import ComposeConfig, compose, trl_rows, write_jsonl
from mindloop.agents.signal.detect import Detector
from mindloop.agents.chat.loop import ChatLoop
from mindloop.agents.signal.patterns import describe, join_pattern, resolve_pattern, update_patterns
from mindloop.agents.signal.agent import SignalAgent, SignalConfig, flag_id
from mindloop.graph import Flag, HashingEmbedder, Pattern, InvalidRecord, InvalidText, NodeNotFound, Run
from mindloop.graph.conversations import import_conversations

ROOT = Path(__file__).resolve().parents[2]

ALTERNATIVES = [
    ("Rename the function parse_cfg to load_config.", "Before renaming, have you considered splitting parse_cfg "
     "into a loader and a validator?", "No, I asked you to just rename it.", "Renamed parse_cfg to load_config."),
    ("Add an index on orders(customer_id).", "You could also partition the orders table, or add a materialized "
     "view instead.", "I said add the index. Don't suggest alternatives.",
     "CREATE INDEX orders_customer_id_idx ON orders (customer_id);"),
    ("Change the line colour to red.", "A colour-blind friendly palette like viridis might be better. "
     "Alternatively, you could use seaborn.", "Stop suggesting other options. I want red.",
     "plt.plot(x, y, color='red')"),
    ("Format this as JSON: name Ada, age 36.", "You might prefer YAML for readability, or a CSV instead.",
     "No, JSON please, exactly as I asked.", '{"name": "Ada", "age": 36}'),
]


@pytest.fixture(scope="module")
def detector():
    return Detector.load(HashingEmbedder())


@pytest.fixture
def agent(graph, detector):
    return SignalAgent(graph, detector)


def _log_alternatives(graph, accept=True):
    for i, (ask, alt, correction, done) in enumerate(ALTERNATIVES):
        turns = [("user", ask), ("assistant", alt), ("user", correction), ("assistant", done)]
        if accept:
            turns.append(("user", "Thanks, that's what I wanted."))
        graph.log_turns(f"alt-{i}", [{"role": r, "text": t} for r, t in turns])


def test_signal_hook_flags_a_correction_in_the_loop(graph, detector, tmp_path):
    agent = SignalAgent(graph, detector)
    replies = ScriptedBackend(["You might prefer YAML for readability, or CSV instead.", '{"name": "Ada"}'])
    loop = ChatLoop(graph, replies, on_pair=agent.on_pair)
    try:
        first = loop.run("s1", "Format this as JSON: name Ada.")
        assert agent.flags() == []  # nothing to correct yet
        second = loop.run("s1", "No, JSON please, exactly as I asked. Don't suggest alternatives.")
    finally:
        loop.close()
    [flag] = agent.flags()
    assert flag.turn == first.assistant_turn and flag.correction == second.user_turn
    assert flag.id == flag_id("default", first.assistant_turn) and flag.status == "new"
    assert flag.evidence and 0.0 <= flag.confidence <= 1.0
    assert [e.dst for e in graph.edges(flag.id, kinds=["flags"], direction="out")] == [first.assistant_turn]
    assert [e.src for e in graph.edges(first.assistant_turn, kinds=["corrects"], direction="in")] == [second.user_turn]


def test_signal_hook_leaves_thanks_and_new_requests_alone(graph, agent):
    loop = ChatLoop(graph, ScriptedBackend(["The capital of Australia is Canberra.", "17 * 23 = 391."]),
                    on_pair=agent.on_pair)
    try:
        loop.run("s1", "What is the capital of Australia?")
        loop.run("s1", "Thanks! Now, what is 17 * 23?")
    finally:
        loop.close()
    assert agent.flags() == []


def test_detect_all_is_idempotent_and_auto_confirms(graph, detector):
    _log_alternatives(graph)
    agent = SignalAgent(graph, detector, SignalConfig(auto_confirm_above=0.9))
    first = agent.detect_all()
    assert len(first["flags"]) == len(ALTERNATIVES)
    assert all(f.status == ("confirmed" if f.confidence >= 0.9 else "new") for f in first["flags"])
    again = agent.detect_all()
    assert again["flags"] == [] and again["skipped"] == len(ALTERNATIVES)


def test_review_confirm_reject_edit_and_show(graph, agent):
    _log_alternatives(graph)
    flags = agent.detect_all()["flags"]
    a, b = flags[0], flags[1]
    assert agent.confirm(a.id).status == "confirmed"
    assert agent.reject(b.id).status == "rejected"
    edited = agent.edit(b.id, "CREATE INDEX ON orders (customer_id);")
    assert edited.status == "confirmed" and graph.get(b.id).better_response.startswith("CREATE INDEX")
    with pytest.raises(InvalidText):
        agent.edit(a.id, "   ")
    assert graph.get(a.id).better_response is None  # the failed edit changed nothing
    with pytest.raises(NodeNotFound):
        agent.confirm("flag_nope")
    turn = graph.nodes(kind="turn")[0]
    with pytest.raises(NodeNotFound, match="not a flag"):
        agent.confirm(turn.id)
    info = agent.show(a.id)
    assert info["flagged"] == graph.get(a.turn).text and info["correction"] == graph.get(a.correction).text
    assert info["window"][-1]["role"] == "user" and info["reply_after_correction"]
    assert [f.id for f in agent.flags(status="rejected")] == []
    assert {f.id for f in agent.flags(status="confirmed")} == {a.id, b.id}


def test_patterns_group_the_same_failure_and_keep_their_id(graph, agent, detector):
    _log_alternatives(graph)
    graph.log_turns("fact", [{"role": "user", "text": "What is the capital of Australia?"},
                             {"role": "assistant", "text": "The capital of Australia is Sydney."},
                             {"role": "user", "text": "That's wrong, it's actually Canberra."}])
    agent.detect_all()
    patterns = update_patterns(graph, detector.embedder)
    assert len(patterns) >= 1
    top = patterns[0]
    members = {f.id for f in agent.flags(pattern=top.id)}
    alt_flags = {f.id for f in agent.flags() if f.session.startswith("alt-")}
    assert len(members & alt_flags) >= 3 and not any(graph.get(m).session == "fact" for m in members)
    assert top.name.startswith("unwanted alternatives")
    stats = describe(graph, top)
    assert stats["flags"] == len(members) and stats["per_week"][-1] == len(members)
    assert graph.edges(next(iter(members)), kinds=["similar_to"])
    # rebuilding keeps the id; a new flag of the same failure joins through the cheap path
    assert update_patterns(graph, detector.embedder)[0].id == top.id
    graph.log_turns("alt-new", [{"role": "user", "text": "Convert the indentation to tabs."},
                                {"role": "assistant", "text": "You might want to keep spaces instead, or "
                                                              "configure your editor."}])
    loop = ChatLoop(graph, ScriptedBackend(["Done."]), on_pair=agent.on_pair)
    try:
        loop.run("alt-new", "I know. Don't suggest alternatives, convert it to tabs as I asked.", history=[])
    finally:
        loop.close()
    new = [f for f in agent.flags() if f.session == "alt-new"]
    assert len(new) == 1 and new[0].id in {f.id for f in agent.flags(pattern=top.id)}
    assert resolve_pattern(graph, top.name).id == top.id and resolve_pattern(graph, top.id).id == top.id
    with pytest.raises(NodeNotFound, match="matches no pattern"):
        resolve_pattern(graph, "no such pattern")


def test_join_pattern_refuses_a_different_failure(graph, agent, detector):
    _log_alternatives(graph)
    agent.detect_all()
    update_patterns(graph, detector.embedder)
    odd = Flag(scope="default", turn="t", type="factual_error", confidence=0.9, session="x",
               reason="The year is wrong, it was 1969. || Apollo 11 landed in 1970.")
    assert join_pattern(graph, detector.embedder, odd) is None


def _pattern(graph, agent, detector):
    import_conversations(graph, (ROOT / "examples/data/conversations.jsonl").read_text().splitlines())
    _log_alternatives(graph)
    agent.detect_all()
    pattern = update_patterns(graph, detector.embedder)[0]
    for f in agent.flags(pattern=pattern.id):
        agent.confirm(f.id)
    return pattern


def test_compose_builds_balanced_traceable_examples(graph, agent, detector, tmp_path):
    pattern = _pattern(graph, agent, detector)
    model = ScriptedBackend(lambda messages: f"Done as asked ({len(messages)} messages).")
    made = compose(graph, pattern, embedder=detector.embedder, backend=model, detector=detector,
                   config=ComposeConfig(heldout_ratio=0.25))
    kinds = [e.example_kind for e in made.examples]
    n_accept, n_push, n_general = (kinds.count(k) for k in ("accept", "pushback", "general"))
    assert n_accept >= 4 and n_push == round(n_accept / 3) and n_general >= 1
    assert abs(n_general / len(kinds) - 0.25) <= 0.1
    sources = made.counts()["sources"]
    assert sources.get("accepted_reply", 0) >= 4  # the replies after a correction the user then thanked
    for e in made.examples:
        assert e.pattern == pattern.id and e.prompt and e.completion
        if e.example_kind == "accept":
            derived = {x.dst for x in graph.edges(e.id, kinds=["derived_from"], direction="out")}
            assert any(d.startswith("flag_") for d in derived) and any(d.startswith("turn_") for d in derived)
            assert e.prompt[-1]["role"] == "user" and e.rejected  # up to the flagged turn, correction excluded
            assert not any("alternatives" in m["content"].lower() and m["role"] == "user" for m in e.prompt[-1:])
    assert any(e.split == "heldout" for e in made.examples)
    # TRL formats: conversational prompt/completion, preference pairs, KTO with labels
    files = write_jsonl(made.examples, tmp_path / "ex.jsonl")
    sft = [json.loads(x) for x in Path(files["sft"]).read_text().splitlines()]
    pairs = [json.loads(x) for x in Path(files["pairs"]).read_text().splitlines()]
    kto = [json.loads(x) for x in Path(files["kto"]).read_text().splitlines()]
    held = [json.loads(x) for x in Path(files["heldout"]).read_text().splitlines()]
    assert len(sft) + len(held) == len(made.examples)
    assert sft[0]["completion"][0]["role"] == "assistant" and isinstance(sft[0]["prompt"], list)
    assert all(set(p) >= {"prompt", "chosen", "rejected"} for p in pairs) and pairs
    assert {r["label"] for r in kto} == {True, False}
    # composing again stores nothing new
    n_examples = len(graph.nodes(kind="example"))
    compose(graph, pattern, embedder=detector.embedder, backend=model, detector=detector,
            config=ComposeConfig(heldout_ratio=0.25))
    assert len(graph.nodes(kind="example")) == n_examples


def test_a_rebuilt_pattern_composes_the_same_examples_and_split(graph, agent, detector):
    # pattern ids are random: rebuilding the patterns must not move held-out examples into training
    pattern = _pattern(graph, agent, detector)
    model = ScriptedBackend(lambda messages: f"Done as asked ({len(messages)} messages).")
    config = ComposeConfig(heldout_ratio=0.25)
    first = compose(graph, pattern, embedder=detector.embedder, backend=model, detector=detector, config=config,
                    store=False)
    twin = Pattern(scope=pattern.scope, name=pattern.name, description=pattern.description)
    members = [e.src for e in graph.edges(pattern.id, kinds=["member_of"], direction="in")]
    graph.add(twin, [(m, twin.id, "member_of") for m in members])
    second = compose(graph, twin, embedder=detector.embedder, backend=model, detector=detector, config=config,
                     store=False)

    def content(made):
        return sorted((e.example_kind, json.dumps(e.prompt), e.completion, e.split) for e in made.examples)

    assert twin.id != pattern.id and {e.pattern for e in second.examples} == {twin.id}
    assert content(first) == content(second)
    assert {"train", "heldout"} <= {e.split for e in first.examples}


def test_compose_skips_examples_already_trained_on_and_drops_duplicates(graph, agent, detector):
    pattern = _pattern(graph, agent, detector)
    made = compose(graph, pattern, embedder=detector.embedder, detector=detector)
    trained = made.examples[0]
    run = Run(scope="default")
    graph.add(run, [(run.id, trained.id, "trained_on")])
    again = compose(graph, pattern, embedder=detector.embedder, detector=detector)
    assert again.skipped_trained == 1 and trained.id not in {e.id for e in again.examples}
    with_trained = compose(graph, pattern, embedder=detector.embedder, detector=detector,
                           config=ComposeConfig(include_trained=True))
    assert trained.id in {e.id for e in with_trained.examples}
    # the same reply to the same request from two sessions is one example
    graph.log_turns("dup", [{"role": "user", "text": ALTERNATIVES[0][0]},
                            {"role": "assistant", "text": ALTERNATIVES[0][1]},
                            {"role": "user", "text": ALTERNATIVES[0][2]},
                            {"role": "assistant", "text": ALTERNATIVES[0][3]},
                            {"role": "user", "text": "Thanks, that's what I wanted."}])
    agent.detect_all()
    update_patterns(graph, detector.embedder)
    for f in agent.flags(status="new"):
        agent.confirm(f.id)
    deduped = compose(graph, pattern, embedder=detector.embedder, detector=detector, store=False)
    assert deduped.dropped_duplicates >= 1


def test_compose_refuses_a_pattern_without_confirmed_flags(graph, agent, detector):
    _log_alternatives(graph)
    agent.detect_all()
    pattern = update_patterns(graph, detector.embedder)[0]
    with pytest.raises(InvalidRecord, match="no confirmed flags"):
        compose(graph, pattern, embedder=detector.embedder)
    assert graph.nodes(kind="example") == []


def test_write_jsonl_leaves_old_files_when_it_fails(tmp_path, graph, agent, detector):
    pattern = _pattern(graph, agent, detector)
    made = compose(graph, pattern, embedder=detector.embedder, detector=detector)
    out = tmp_path / "out"
    files = write_jsonl(made.examples, out / "ex.jsonl")
    before = Path(files["sft"]).read_text()
    bad = made.examples[:1]
    bad[0].prompt = [{"role": "user", "content": "\ud800"}]  # cannot be encoded: the write fails
    with pytest.raises(UnicodeEncodeError):
        write_jsonl(bad, out / "ex.jsonl")
    assert Path(files["sft"]).read_text() == before
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(f).name for f in files.values())


def test_trl_rows_shapes():
    from mindloop.graph import Example

    e = Example(prompt=[{"role": "user", "content": "hi"}], completion="hello", rejected="go away")
    rows = trl_rows([e])
    assert rows["sft"][0]["completion"] == [{"role": "assistant", "content": "hello"}]
    assert rows["pairs"][0]["rejected"] == [{"role": "assistant", "content": "go away"}]
    assert [r["label"] for r in rows["kto"]] == [True, False]


def test_a_configured_model_names_the_pattern(graph, agent, detector):
    from mindloop.agents.signal.patterns import model_namer

    _log_alternatives(graph)
    agent.detect_all()
    namer_model = ScriptedBackend(["Suggests alternatives instead of doing it."])
    [top, *_] = update_patterns(graph, detector.embedder, namer=model_namer(namer_model))
    assert top.name == "Suggests alternatives instead of doing it"
    assert "corrections users gave" in namer_model.calls[0][0]["content"]
    broken = ScriptedBackend(fail=RuntimeError("down"))
    assert update_patterns(graph, detector.embedder, namer=model_namer(broken))[0].name.startswith("unwanted")


def test_every_example_traces_back_to_its_pattern(graph, agent, detector):
    pattern = _pattern(graph, agent, detector)
    made = compose(graph, pattern, embedder=detector.embedder, detector=detector)
    for e in made.examples:
        assert pattern.id in {x.dst for x in graph.edges(e.id, kinds=["derived_from"], direction="out")}
